"""Tests of edge2core.edge: the edge site's parts."""
