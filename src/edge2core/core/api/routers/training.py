"""Training runs: train a model on a dataset version, by the fast path (cached embeddings and
a classifier head) or the full one (fine-tuning). The run registers the model it makes."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from edge2core.common.errors import DomainError, Invalid
from edge2core.common.identifiers import IdKind, is_valid
from edge2core.core.api.deps import Services
from edge2core.core.api.openapi import errors
from edge2core.core.api.params import INT32_MAX
from edge2core.core.deliver.registry import ModelInfo
from edge2core.core.jsontypes import JSON_INTEGER

router = APIRouter(prefix="/v1/training-runs", tags=["training"])

JsonScalar = bool | int | float | str | None


class TrainRequest(BaseModel):
    # JSON types as the document states them ("1" is not an integer).
    dataset_version: Annotated[int, Field(ge=1, le=INT32_MAX), JSON_INTEGER]
    seed: Annotated[int, Field(ge=0, le=2**32 - 1), JSON_INTEGER] = 0
    path: Literal["fast", "full"] = "fast"  # cached embeddings + head, or fine-tuning
    # Hyper-parameters (core.train.run.FAST_DEFAULTS, core.train.finetune.FineTuneConfig,
    # backbone, base_backbone): JSON scalars; unknown names are refused (422) before a run starts.
    params: dict[str, JsonScalar] = {}


class TrainResponse(BaseModel):
    model: ModelInfo
    timings_s: dict[str, float]


def check_params(params: dict[str, Any]) -> None:
    """Refuse (422 `invalid`) hyper-parameters a run does not know, and backbone names that
    are not plain names (they become object keys)."""
    # Imported here: train/ brings PyTorch, which the API does not need until a run starts.
    from edge2core.core.train.finetune import FineTuneConfig
    from edge2core.core.train.fit import full_head
    from edge2core.core.train.run import FAST_DEFAULTS

    known = {*FAST_DEFAULTS, *FineTuneConfig.__dataclass_fields__, "backbone", "base_backbone",
             "full_head"}
    if unknown := sorted(set(params) - known):
        raise Invalid(f"unknown hyper-parameters {unknown}; known: {sorted(known)}")
    try:
        full_head(params)
        FineTuneConfig.from_dict(params).check()
    except (ValueError, TypeError) as exc:  # TypeError: a number given as text, say
        raise Invalid(str(exc)) from exc
    for name in ("backbone", "base_backbone"):
        value = params.get(name)
        if value is not None and not (isinstance(value, str) and is_valid(IdKind.SKU, value)):
            raise Invalid(f"{name} names a backbone version (letters, digits, '.', '_', '-')")


@router.post("", status_code=201, responses=errors(404))
async def train(req: TrainRequest, services: Services) -> TrainResponse:
    """Blocks until the run ends (minutes on the full path)."""
    check_params(req.params)
    try:
        result = await run_in_threadpool(
            services.trainer.train, req.dataset_version, seed=req.seed, path=req.path,
            params=req.params,
        )
    except DomainError:
        raise
    except (ValueError, TypeError) as exc:  # a dataset of one class, a hyper-parameter's type
        raise Invalid(str(exc)) from exc
    return TrainResponse(model=result.model, timings_s=result.timings_s)
