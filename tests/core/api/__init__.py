"""Tests of edge2core.core.api."""
