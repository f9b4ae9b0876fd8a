"""deliver: see docs/architecture.md."""
