"""Tests of edge2core.core.db."""
