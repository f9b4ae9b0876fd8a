"""The core's HTTP routes, one module per resource, each a module-level `router` with its own
prefix and tags; `core.api.app` includes them in `ROUTERS` order."""
