"""Tests of edge2core.core.deliver."""
