"""Tests of edge2core.core.catalogue."""
