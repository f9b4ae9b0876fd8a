"""The dashboard's changes (POST): each checks the session's CSRF token, then the role.

Forms answer with a redirect back to their page carrying a `notice` or an `error` (so a
refused change is said on the page, and a reload never repeats it); the labelling page's
keyboard flow posts JSON and reads the task back. Model promotions and rollbacks are confirmed
in the page first and recorded in the audit log with who did them.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from pydantic import BaseModel, Field, ValidationError

from edge2core.common.errors import DomainError, Invalid
from edge2core.common.events import utcnow
from edge2core.common.identifiers import Sku
from edge2core.common.products import Product, ProductStatus, Promotion, PromotionKind
from edge2core.core.curate.datasets import DatasetQuery
from edge2core.core.curate.labelling import LabelTask, NewProduct
from edge2core.web.dashboard.context import Admin, Board, Labeller, who

router = APIRouter(prefix="/dashboard", include_in_schema=False)


def back(page: str, *, notice: str = "", error: str = "") -> RedirectResponse:
    query = urlencode({k: v for k, v in (("notice", notice), ("error", error)) if v})
    joiner = "&" if "?" in page else "?"
    return RedirectResponse(f"{page}{joiner}{query}" if query else page, status_code=303)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(e["msg"] for e in exc.errors())[:300]
    return str(exc)[:300]


# --- models ------------------------------------------------------------------------------


@router.post("/models/{version:int}/promote")
async def promote(version: int, board: Board, session: Admin, stage: str = Form(...),
                  sites: str = Form(""), reason: str = Form(""), confirm: str = Form("")) -> Any:
    page = f"/dashboard/models/{version}"
    if confirm != "yes":
        return back(page, error="not confirmed: nothing changed")
    chosen = [s.strip() for s in sites.split(",") if s.strip()]
    try:
        info = await run_in_threadpool(lambda: board.services.registry.promote(
            version, stage=stage, sites=chosen, reason=reason))
    except (ValueError, LookupError, DomainError) as exc:
        return back(page, error=f"not promoted: {_reason(exc)}")
    board.services.audit.record("dashboard.model_promoted", f"model:{version}", by=who(session),
                                stage=info.stage, sites=chosen, reason=reason)
    return back(page, notice=f"model {version} is now {info.stage}"
                             + (f" on {', '.join(chosen)}" if chosen else ""))


@router.post("/models/rollback")
async def rollback(board: Board, session: Admin, reason: str = Form(""), confirm: str = Form(""),
                   back_to: int = Form(0)) -> Any:
    page = f"/dashboard/models/{back_to}" if back_to else "/dashboard/models"
    if confirm != "yes" or not reason.strip():
        return back(page, error="a rollback needs a confirmation and a reason: nothing changed")
    try:
        info = await run_in_threadpool(board.services.registry.rollback, reason)
    except (ValueError, LookupError, DomainError) as exc:
        return back(page, error=f"not rolled back: {_reason(exc)}")
    board.services.audit.record("dashboard.model_rolled_back", f"model:{info.version}",
                                by=who(session), reason=reason)
    return back(page, notice=f"rolled back: model {info.version} is in production again")


# --- datasets ----------------------------------------------------------------------------


@router.post("/datasets/build")
async def build_dataset(board: Board, session: Admin) -> Any:
    try:
        info = await run_in_threadpool(board.services.datasets.build, DatasetQuery())
    except DomainError as exc:
        return back("/dashboard/datasets", error=f"not built: {_reason(exc)}")
    board.services.audit.record("dashboard.dataset_built", f"dataset:{info.version}",
                                by=who(session), images=info.stats.get("images"))
    return back(f"/dashboard/datasets?version={info.version}",
                notice=f"dataset version {info.version}: {info.stats.get('images')} photos")


# --- labelling (JSON: the keyboard flow) ----------------------------------------------------


class LabelDecision(BaseModel):
    action: str = Field(pattern="^(confirm|correct|new-product|discard)$")
    sku: Sku | None = None
    name: str | None = Field(default=None, max_length=200)
    price: float = Field(default=0.0, ge=0, allow_inf_nan=False)


@router.post("/labelling/{sha256}")
async def label(sha256: str, decision: LabelDecision, board: Board,
                session: Labeller) -> LabelTask:
    queue, by = board.services.labelling, who(session)

    def decide() -> LabelTask:
        if decision.action == "confirm":
            return queue.confirm(sha256, by=by)
        if decision.action == "discard":
            return queue.discard(sha256, by=by)
        if decision.action == "correct":
            if not decision.sku:
                raise Invalid("a correction names the right product (sku)")
            return queue.correct(sha256, decision.sku, by=by)
        return queue.new_product(sha256, NewProduct(sku=decision.sku, name=decision.name,
                                                    price=decision.price), by=by)

    return await run_in_threadpool(decide)


# --- catalogue -----------------------------------------------------------------------------


@router.post("/catalogue")
async def add_product(board: Board, session: Admin, sku: str = Form(...), name: str = Form(...),
                      price: float = Form(...), coarse: str = Form("")) -> Any:
    try:
        product = Product(sku=sku.strip(), name=name.strip(), price=price, coarse=coarse.strip())
        await run_in_threadpool(board.services.catalogue.add, product, by=who(session))
    except (ValidationError, DomainError, ValueError) as exc:
        return back("/dashboard/catalogue", error=f"not added: {_reason(exc)}")
    return back("/dashboard/catalogue", notice=f"added {product.sku}")


@router.post("/catalogue/{sku}")
async def change_product(sku: str, board: Board, session: Admin, name: str = Form(...),
                         price: float = Form(...), status: ProductStatus = Form(...)) -> Any:
    catalogue = board.services.catalogue

    def save() -> None:
        if status is ProductStatus.RETIRED and catalogue.require(sku).status is not status:
            catalogue.retire(sku, "retired from the dashboard", by=who(session))  # masks it at once
            catalogue.change(sku, by=who(session), name=name.strip(), price=price)
        else:
            catalogue.change(sku, by=who(session), name=name.strip(), price=price, status=status)

    try:
        await run_in_threadpool(save)
    except (ValidationError, DomainError, ValueError) as exc:
        return back("/dashboard/catalogue", error=f"{sku} not changed: {_reason(exc)}")
    return back("/dashboard/catalogue", notice=f"{sku} saved")


@router.post("/catalogue/{sku}/retire")
async def retire_product(sku: str, board: Board, session: Admin,
                         reason: str = Form("retired from the dashboard")) -> Any:
    try:
        await run_in_threadpool(lambda: board.services.catalogue.retire(
            sku, reason or "retired from the dashboard", by=who(session)))
    except (ValidationError, DomainError, ValueError) as exc:
        return back("/dashboard/catalogue", error=f"{sku} not retired: {_reason(exc)}")
    return back("/dashboard/catalogue", notice=f"{sku} retired")


@router.post("/catalogue/{sku}/promotions")
async def promote_product(sku: str, board: Board, session: Admin, label: str = Form(""),
                          kind: PromotionKind = Form(...), value: float = Form(...),
                          days: int = Form(7)) -> Any:
    now = utcnow()
    try:
        promotion = Promotion(id=f"dash-{int(now.timestamp())}", label=label.strip(), kind=kind,
                              value=value, starts_at=now - timedelta(minutes=1),
                              ends_at=now + timedelta(days=max(1, days)))
        await run_in_threadpool(lambda: board.services.catalogue.promote(
            sku, promotion, by=who(session)))
    except (ValidationError, DomainError, ValueError) as exc:
        return back("/dashboard/catalogue", error=f"{sku}: promotion refused: {_reason(exc)}")
    return back("/dashboard/catalogue", notice=f"{sku}: promotion {promotion.label or kind} on")


@router.post("/catalogue/{sku}/promotions/{promotion_id}/withdraw")
async def withdraw_promotion(sku: str, promotion_id: str, board: Board, session: Admin) -> Any:
    try:
        await run_in_threadpool(lambda: board.services.catalogue.withdraw_promotion(
            sku, promotion_id, by=who(session)))
    except (DomainError, ValueError) as exc:
        return back("/dashboard/catalogue", error=f"{sku}: {_reason(exc)}")
    return back("/dashboard/catalogue", notice=f"{sku}: promotion {promotion_id} withdrawn")
