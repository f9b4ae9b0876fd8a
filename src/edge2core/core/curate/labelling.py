"""The labelling queue: shopper photos the edge was unsure of, waiting for a person.

Every shopper photo enters the queue on arrival (the edge sends only those it could not
recognise or was not confident about) with the edge model's top guesses. A person confirms the
top guess, corrects it to a catalogue SKU, marks the photo as a new product (a catalogue entry
in `pending-data` status, or an existing pending one), or discards it. A decided label is
written to the photo's row with label origin `human`, so it enters the next dataset version;
a discarded photo stays unlabelled (and retention deletes it in time).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.errors import Conflict, Invalid
from edge2core.common.events import Guess, as_utc, utcnow
from edge2core.common.identifiers import IdKind, check, is_valid
from edge2core.common.products import SKU_PATTERN, Product, ProductStatus
from edge2core.core.catalogue.catalogue import Catalogue, DuplicateProduct
from edge2core.core.db.schema import ImageRow, LabelTaskRow
from edge2core.core.jsontypes import JSON_NUMBER


class LabelStatus(StrEnum):
    PENDING = "pending"
    CONFIRMED = "confirmed"  # the edge's top guess was right
    CORRECTED = "corrected"  # a person chose another catalogue SKU
    NEW_PRODUCT = "new_product"  # not in the catalogue yet (pending-data entry)
    DISCARDED = "discarded"  # not a usable product photo


class LabelConflict(Conflict):
    """The decision does not fit the task's state (HTTP 409)."""


class UnknownSku(Invalid):
    code = "unknown_sku"
    """The SKU is not in the catalogue (HTTP 422)."""


class LabelTask(BaseModel):
    sha256: str
    site: str
    device: str
    status: LabelStatus
    reason: str
    top_guesses: list[Guess]
    confidence: float | None
    edge_model_version: int | None
    captured_at: datetime | None
    received_at: datetime
    sku: str | None = Field(description="the label a person gave")
    decided_at: datetime | None
    decided_by: str | None
    image_url: str


class TaskPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[LabelTask]


class NewProduct(BaseModel):
    sku: str | None = Field(default=None, pattern=SKU_PATTERN,
                            description="an existing pending SKU, or the new one's")
    name: str | None = Field(default=None, min_length=1, max_length=200,
                             description="required when the SKU is new")
    coarse: str = Field(default="", max_length=200)
    price: Annotated[float, Field(ge=0, allow_inf_nan=False), JSON_NUMBER] = 0.0
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")


class LabellingQueue:
    def __init__(self, sessions: sessionmaker[Session], catalogue: Catalogue) -> None:
        self._sessions = sessions
        self._catalogue = catalogue

    def list(
        self,
        *,
        status: LabelStatus | None = LabelStatus.PENDING,
        site: str | None = None,
        reason: str | None = None,
        guess: str | None = None,
        max_confidence: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> TaskPage:
        """Oldest first; `guess` matches the edge's top guess."""
        stmt = select(LabelTaskRow, ImageRow).join(ImageRow, ImageRow.sha256 == LabelTaskRow.sha256)
        if status is not None:
            stmt = stmt.where(LabelTaskRow.status == status.value)
        if site is not None:
            stmt = stmt.where(LabelTaskRow.site == site)
        if reason is not None:
            stmt = stmt.where(LabelTaskRow.reason == reason)
        if guess is not None:
            stmt = stmt.where(LabelTaskRow.top_sku == guess)
        if max_confidence is not None:
            stmt = stmt.where(func.coalesce(LabelTaskRow.top_confidence, 0.0) <= max_confidence)
        with self._sessions() as session:
            total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
            rows = session.execute(
                stmt.order_by(LabelTaskRow.created_at, LabelTaskRow.sha256).limit(limit).offset(offset)
            ).all()
        return TaskPage(total=total, limit=limit, offset=offset,
                        items=[_task(t, i) for t, i in rows])

    def get(self, sha256: str) -> LabelTask:
        with self._sessions() as session:
            task, image = self._load(session, sha256)
            return _task(task, image)

    def confirm(self, sha256: str, by: str | None = None) -> LabelTask:
        def choose(task: LabelTaskRow, _image: ImageRow) -> str:
            if task.top_sku is None:
                raise LabelConflict("the edge had no guess to confirm; correct it instead")
            if not is_valid(IdKind.SKU, task.top_sku):  # kept before ids were checked
                raise UnknownSku(f"the edge's guess {task.top_sku[:80]!r} is not a valid SKU; "
                                 "correct the label instead")
            return task.top_sku

        return self._decide(sha256, LabelStatus.CONFIRMED, choose, by)

    def correct(self, sha256: str, sku: str, by: str | None = None) -> LabelTask:
        if not is_valid(IdKind.SKU, sku):  # labels become classes and file names
            raise UnknownSku(f"{sku[:80]!r} is not a valid SKU")
        product = self._catalogue.get(sku)
        if product is None:
            raise UnknownSku(f"{sku!r} is not in the catalogue; mark the photo as a new product")
        return self._decide(sha256, LabelStatus.CORRECTED, lambda _t, _i: sku, by,
                            redecide=True)

    def new_product(self, sha256: str, product: NewProduct, by: str | None = None) -> LabelTask:
        sku = check(IdKind.SKU, product.sku or f"NEW-{sha256[:8].upper()}")
        existing = self._catalogue.get(sku)
        if existing is not None and existing.status is not ProductStatus.PENDING_DATA:
            raise LabelConflict(f"{sku} is already a {existing.status.value} product; correct the "
                                "label to it instead")
        if existing is None:
            if not product.name:
                raise UnknownSku(f"{sku!r} is new: give it a name")
            try:
                self._catalogue.add(Product(
                    sku=sku, name=product.name, coarse=product.coarse, price=product.price,
                    currency=product.currency, status=ProductStatus.PENDING_DATA,
                ), by=by)
            except DuplicateProduct:  # made meanwhile by another decision: fine if pending
                made = self._catalogue.get(sku)
                if made is None or made.status is not ProductStatus.PENDING_DATA:
                    raise LabelConflict(f"{sku} was just added to the catalogue") from None
        return self._decide(sha256, LabelStatus.NEW_PRODUCT, lambda _t, _i: sku, by)

    def discard(self, sha256: str, by: str | None = None) -> LabelTask:
        return self._decide(sha256, LabelStatus.DISCARDED, lambda _t, _i: None, by)

    def _decide(self, sha256: str, status: LabelStatus,
                choose: Callable[[LabelTaskRow, ImageRow], str | None], by: str | None,
                redecide: bool = False) -> LabelTask:
        with self._sessions.begin() as session:
            task, image = self._load(session, sha256, lock=True)
            sku = choose(task, image)
            if task.status != LabelStatus.PENDING.value:
                if task.status == status.value and task.sku == sku:
                    return _task(task, image)  # the same decision again: nothing to do
                if not redecide:
                    raise LabelConflict(f"the photo was already {task.status}; only a correction "
                                        "can change it now")
            task.status, task.sku = status.value, sku
            task.decided_at, task.decided_by = utcnow(), by
            image.sku = sku
            image.label_origin = "human" if sku is not None else None
            return _task(task, image)

    @staticmethod
    def _load(session: Session, sha256: str, lock: bool = False) -> tuple[LabelTaskRow, ImageRow]:
        task = session.get(LabelTaskRow, sha256, with_for_update=lock)
        image = session.get(ImageRow, sha256) if task is not None else None
        if task is None or image is None:
            raise LookupError(f"no photo {sha256} in the labelling queue")
        return task, image


def _task(task: LabelTaskRow, image: ImageRow) -> LabelTask:

    return LabelTask(
        sha256=task.sha256,
        site=task.site,
        device=image.device,
        status=LabelStatus(task.status),
        reason=task.reason,
        top_guesses=[Guess.model_validate(g) for g in image.top_guesses or []],
        confidence=image.confidence,
        edge_model_version=image.edge_model_version,
        captured_at=as_utc(image.captured_at),
        received_at=as_utc(image.received_at),
        sku=task.sku,
        decided_at=as_utc(task.decided_at),
        decided_by=task.decided_by,
        image_url=f"/v1/images/{task.sha256}",
    )
