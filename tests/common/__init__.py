"""Tests of edge2core.common: what both roles use."""
