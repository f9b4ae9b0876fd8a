"""The dashboard's pages (GET): each needs a signed-in person, admin or labeller."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from edge2core.common.errors import NotFound
from edge2core.common.objectstore import image_key
from edge2core.common.products import ProductStatus
from edge2core.core.catalogue.catalogue import image_media_type
from edge2core.core.curate.labelling import LabelStatus
from edge2core.web.dashboard.context import Board, Dashboard, Reader
from edge2core.web.dashboard.views import (
    class_balance,
    confusion_cells,
    fleet_rows,
    metric_summary,
    reliability,
    where_running,
)

router = APIRouter(prefix="/dashboard", include_in_schema=False)


def fleet_of(board: Dashboard) -> list[dict[str, Any]]:
    services = board.services
    return fleet_rows(services.reports.fleet.sites(), services.reports.all(),
                      services.registry.canary(), services.registry.production())


@router.get("", response_class=HTMLResponse)
def fleet(request: Request, board: Board, session: Reader) -> Response:
    return board.page(request, "dashboard/fleet.html", session, "fleet", rows=fleet_of(board))


@router.get("/fragments/fleet", response_class=HTMLResponse)
def fleet_fragment(request: Request, board: Board, session: Reader) -> Response:
    return board.page(request, "dashboard/_fleet_table.html", session, rows=fleet_of(board))


@router.get("/pipeline", response_class=HTMLResponse)
def pipeline(request: Request, board: Board, session: Reader) -> Response:
    sites = [row["site"] for row in board.services.reports.fleet.sites()]
    return board.page(request, "dashboard/pipeline.html", session, "pipeline", sites=sites,
                      refusals=board.services.reports.fleet.refusals())


@router.get("/datasets", response_class=HTMLResponse)
def datasets(request: Request, board: Board, session: Reader, version: int | None = None,
             base: int | None = None, other: int | None = None) -> Response:
    store = board.services.datasets
    versions = list(reversed(store.list()))
    chosen = next((d for d in versions if d.version == version), versions[0] if versions else None)
    diff, problem = None, ""
    if base is not None and other is not None:
        try:
            diff = store.diff(base, other)
        except LookupError as exc:
            problem = str(exc)
    return board.page(request, "dashboard/datasets.html", session, "datasets", versions=versions,
                      chosen=chosen, balance=class_balance(chosen.stats) if chosen else None,
                      diff=diff, problem=problem)


def models_of(board: Dashboard) -> dict[str, Any]:
    return {"models": list(reversed(board.services.registry.list())),
            "running": where_running(fleet_of(board))}


@router.get("/models", response_class=HTMLResponse)
def models(request: Request, board: Board, session: Reader) -> Response:
    return board.page(request, "dashboard/models.html", session, "models", **models_of(board))


@router.get("/fragments/models", response_class=HTMLResponse)
def models_fragment(request: Request, board: Board, session: Reader) -> Response:
    return board.page(request, "dashboard/_models_table.html", session, **models_of(board))


@router.get("/fragments/datasets", response_class=HTMLResponse)
def datasets_fragment(request: Request, board: Board, session: Reader) -> Response:
    return board.page(request, "dashboard/_datasets_table.html", session,
                      versions=list(reversed(board.services.datasets.list())))


@router.get("/models/{version:int}", response_class=HTMLResponse)
async def model(request: Request, version: int, board: Board, session: Reader,
                why: str | None = Query(None, max_length=64)) -> Response:
    services = board.services
    info = services.registry.get(version)
    rows = fleet_of(board)
    explanation = None
    if why:
        try:
            explanation = await run_in_threadpool(services.loop.explain, why)
        except LookupError as exc:
            explanation = {"error": str(exc)}
    return board.page(request, "dashboard/model.html", session, "models", model=info,
                      summary=metric_summary(info), confusion=confusion_cells(info),
                      reliability=reliability(info),
                      running=where_running(rows).get(version, []),
                      sites=[r["site"] for r in rows], why_site=why, why=explanation,
                      audit=services.audit.query(subject=f"model:{version}", limit=20))


@router.get("/labelling", response_class=HTMLResponse)
def labelling(request: Request, board: Board, session: Reader) -> Response:
    page = board.services.labelling.list(status=LabelStatus.PENDING, limit=200)
    products = board.services.catalogue.list()
    names = {p.sku: p.name for p in products}
    task_data = [{"sha256": t.sha256, "site": t.site, "reason": t.reason,
                  "received_at": t.received_at.isoformat(),
                  "guesses": [{"sku": g.sku, "name": names.get(g.sku, g.sku),
                               "confidence": g.confidence} for g in t.top_guesses]}
                 for t in page.items]
    return board.page(request, "dashboard/labelling.html", session, "labelling", tasks=page.items,
                      total=page.total, products=products, task_data=task_data)


@router.get("/images/{sha256}")
def image(sha256: str, board: Board, session: Reader) -> Response:
    """A stored photo, for people signed in (the API's photo route needs the admin token)."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise NotFound("no such photo")
    key = image_key(sha256)
    if not board.services.store.exists(key):
        raise NotFound("no such photo")
    return Response(board.services.store.get(key), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


@router.get("/catalogue/{sku}/image")
def product_image(sku: str, board: Board, session: Reader) -> Response:
    product = board.services.catalogue.require(sku)
    if product.image_key is None:
        raise NotFound(f"{sku} has no catalogue image")
    return Response(board.services.store.get(product.image_key),
                    media_type=image_media_type(product.image_key),
                    headers={"Cache-Control": "private, max-age=300"})


@router.get("/catalogue", response_class=HTMLResponse)
def catalogue(request: Request, board: Board, session: Reader,
              status: ProductStatus | None = None) -> Response:
    return board.page(request, "dashboard/catalogue.html", session, "catalogue",
                      products=board.services.catalogue.list(status), status=status)


@router.get("/audit", response_class=HTMLResponse)
def audit(request: Request, board: Board, session: Reader) -> Response:
    return board.page(request, "dashboard/audit.html", session, "",
                      events=board.services.audit.query(limit=100))
