"""Tests of edge2core.core.curate."""
