"""Tests of edge2core.core.loop."""
