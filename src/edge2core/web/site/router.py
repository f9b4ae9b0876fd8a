"""The shopper app (`/shop`) and the staff capture page (`/staff`), served by an edge site.

Neither page holds a secret. The shopper app asks for a guest pass (`POST /shop/guest-pass`,
see `edge/guests.py`) and talks MQTT over WebSockets with it; the staff page sends captures
to the site's own HTTP door (`POST /v1/photos`) with the staff member's device code, typed
into the page and kept only in that tab's session storage.
"""

from __future__ import annotations

from dataclasses import dataclass
from secrets import token_hex
from typing import Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from edge2core.common.topics import ROOT
from edge2core.edge.catalogue_replica import CatalogueReplica
from edge2core.edge.guests import GuestPasses
from edge2core.web.assets import TEMPLATES, mount_static

router = APIRouter(include_in_schema=False)


@dataclass
class SitePages:
    site: str
    catalogue: CatalogueReplica
    guests: GuestPasses | None  # None: device identity is off, the broker is open
    mqtt_ws_port: int


def _pages(request: Request) -> SitePages:
    pages = request.app.state.site_pages
    assert isinstance(pages, SitePages), "mount_site_pages sets app.state.site_pages"
    return pages


@router.get("/", include_in_schema=False)
def home() -> RedirectResponse:
    return RedirectResponse("/shop", status_code=307)


@router.get("/shop", response_class=HTMLResponse)
def shop(request: Request) -> Response:
    pages = _pages(request)
    return TEMPLATES.TemplateResponse(request, "site/shop.html", {
        "site": pages.site, "ws_port": pages.mqtt_ws_port,
        "max_bytes": pages.guests.max_bytes if pages.guests else 2_000_000})


@router.post("/shop/guest-pass", response_model=None)
def guest_pass(request: Request) -> dict[str, Any] | JSONResponse:
    """A fresh guest identity for one shopper page: MQTT username (= client id) and password,
    and the topics it may use; 429 `rate_limited` past the passes one address may have."""
    pages = _pages(request)
    address = request.client.host if request.client else "-"
    if pages.guests is not None and not pages.guests.may_issue(address):
        return JSONResponse({"error": "rate_limited", "detail": "too many guest passes from this "
                             "address: wait a minute"}, status_code=429)
    if pages.guests is None:  # an open broker: any id will do, no password
        device, password, expires = f"guest-{token_hex(8)}", "", None
    else:
        issued = pages.guests.issue()
        device, password, expires = issued.device, issued.password, issued.expires_at
    base = f"{ROOT}/{pages.site}/shopper/{device}"
    return {"device": device, "password": password, "expires_at": expires,
            "recognize_topic": f"{base}/recognize", "answer_topics": f"{base}/answer/+",
            "error_topic": f"{base}/error",
            "limits": {"max_bytes": pages.guests.max_bytes if pages.guests else None,
                       "per_minute": pages.guests.per_minute if pages.guests else None}}


@router.get("/staff", response_class=HTMLResponse)
def staff(request: Request) -> Response:
    pages = _pages(request)
    return TEMPLATES.TemplateResponse(request, "site/staff.html", {
        "site": pages.site, "identity": pages.guests is not None})


@router.get("/staff/products")
def products(request: Request, q: str = Query("", max_length=100)) -> list[dict[str, Any]]:
    """Catalogue search for the staff page: SKU or name containing `q` (case-insensitive)."""
    needle = q.strip().lower()
    found = [p for p in _pages(request).catalogue.list()
             if needle in p.sku.lower() or needle in p.name.lower()]
    return [{"sku": p.sku, "name": p.name, "status": p.status.value, "price": p.price,
             "currency": p.currency} for p in found[:20]]


def mount_site_pages(app: FastAPI, pages: SitePages) -> None:
    """Add the shopper and staff pages and the static files to the edge's app."""
    app.state.site_pages = pages
    app.include_router(router)
    mount_static(app)
