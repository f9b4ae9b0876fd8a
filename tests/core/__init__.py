"""Tests of edge2core.core, one folder per stage of the loop."""
