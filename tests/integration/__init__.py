"""Tests that start real servers and processes across roles; all marked `integration`
(by this folder's conftest.py)."""
