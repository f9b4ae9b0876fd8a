"""HTTPS for edge2core's uvicorn servers: our own `ssl` context (reloadable, with a CRL), and
the verified client certificate's identity handed to the app.

uvicorn does not tell an ASGI app who the TLS peer is. The protocol class here reads the peer's
verified certificate once per connection and puts its subject in each request's scope, at
`scope["extensions"]["tls"]["client"]` as `{"cn": ..., "ou": ...}` (None without a certificate),
so the core can check that the site whose token is presented is the site whose certificate
opened the connection.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["TLS_SCOPE_KEY", "peer_identity", "uvicorn_tls_options"]

TLS_SCOPE_KEY = "tls"


def _subject(cert: dict[str, Any] | None) -> dict[str, str] | None:
    """`{"cn", "ou"}` of a certificate as `SSLObject.getpeercert()` returns it."""
    if not cert:
        return None
    fields = {key: value for rdn in cert.get("subject", ()) for key, value in rdn}
    return {"cn": fields.get("commonName", ""), "ou": fields.get("organizationalUnitName", "")}


def peer_identity(scope: Mapping[str, Any]) -> dict[str, str] | None:
    """The verified client certificate's subject for this request (None: no certificate, or
    not served over our TLS)."""
    tls = scope.get("extensions", {}).get(TLS_SCOPE_KEY)
    return tls.get("client") if isinstance(tls, dict) else None


def _with_peer(base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    class PeerProtocol(base):  # type: ignore[misc,valid-type]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            # getpeercert() returns only a certificate the handshake verified (CA, dates, CRL).
            client = _subject(ssl_object.getpeercert()) if ssl_object is not None else None
            app: Any = self.app  # type: ignore[has-type,unused-ignore]

            async def tagged(scope: Any, receive: Any, send: Any) -> None:
                extensions = {**scope.get("extensions", {}), TLS_SCOPE_KEY: {"client": client}}
                await app({**scope, "extensions": extensions}, receive, send)

            self.app = tagged

    PeerProtocol.__name__ = f"Peer{base.__name__}"
    return PeerProtocol


_PROTOCOL = _with_peer(AutoHTTPProtocol if AutoHTTPProtocol in (H11Protocol, HttpToolsProtocol)
                       else H11Protocol)


def uvicorn_tls_options(ctx: ssl.SSLContext | None) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.Config`: serve with `ctx` (None: plain HTTP, no change)."""
    if ctx is None:
        return {}
    return {"ssl_context_factory": lambda _config, _default: ctx, "http": _PROTOCOL}
