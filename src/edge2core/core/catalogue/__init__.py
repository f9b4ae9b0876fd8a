"""catalogue: see docs/architecture.md."""
