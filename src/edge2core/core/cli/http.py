"""What the core's command-line groups share: talking to a running core over its HTTP API."""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from typing import Annotated, Any

import httpx
import typer

UrlOpt = Annotated[str | None, typer.Option("--url", help="The core's HTTP URL (default from settings).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def admin_headers() -> dict[str, str]:
    """The admin token from the core's settings (`E2C_CORE_ADMIN_TOKEN` or the TOML file)."""
    from edge2core.config import CoreSettings

    token = CoreSettings().admin_token
    return {"Authorization": f"Bearer {token}"} if token else {}


def core_trust() -> ssl.SSLContext | bool:
    """The core's private CA (its `tls_dir`) when this machine has it, else the system's."""
    from edge2core.common.tls import trust
    from edge2core.config import CoreSettings

    return trust(CoreSettings().resolved_tls_dir)


def core_url(url: str | None) -> str:
    if url:
        return url.rstrip("/")
    from edge2core.config import CoreSettings

    return CoreSettings().http_url


def call(method: str, url: str | None, path: str, *,
         refused_exit: Callable[[int], int] = lambda _status: 2, **kw: Any) -> Any:
    """One request; exits 1 when the core is unreachable or fails, `refused_exit(status)`
    when it refuses the request (4xx), printing the core's error body."""
    base = core_url(url)
    try:
        headers = {**admin_headers(), **kw.pop("headers", {})}
        response = httpx.request(method, f"{base}{path}", timeout=kw.pop("timeout", 60),
                                 headers=headers, verify=core_trust(), **kw)
    except httpx.HTTPError as exc:
        typer.echo(f"cannot reach the core at {base}: {exc}. Is `edge2core core up` running?",
                   err=True)
        raise typer.Exit(1) from exc
    if response.status_code >= 400:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        typer.echo(body if isinstance(body, str) else json.dumps(body, indent=2), err=True)
        raise typer.Exit(refused_exit(response.status_code) if response.status_code < 500 else 1)
    return response.json()
