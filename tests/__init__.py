"""edge2core's tests; the folders mirror src/edge2core (common, edge, core/<stage>, sim), plus
integration/ (real servers and processes across roles) and support/ (helpers, fixture plugins)."""
