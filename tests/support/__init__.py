"""Helpers and fixture plugins shared by the test folders (no tests here)."""
