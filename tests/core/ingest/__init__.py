"""Tests of edge2core.core.ingest."""
