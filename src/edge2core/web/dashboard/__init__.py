"""The operations dashboard, served by the core: fleet, pipeline, datasets, models,
labelling, catalogue; sign-in with roles; live updates over server-sent events."""
