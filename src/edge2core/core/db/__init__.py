"""db: see docs/architecture.md."""
