"""Tests of edge2core.core.train."""
