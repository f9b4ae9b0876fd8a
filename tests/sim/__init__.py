"""Tests of edge2core.sim: the simulated devices and photo sources."""
