"""Versioned datasets: build one from a query, list and read them, compare two versions,
download a version's manifest (Parquet)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from fastapi.responses import Response

from edge2core.core.api.deps import Services
from edge2core.core.api.openapi import binary_answer, errors
from edge2core.core.api.params import INT32_MAX, Version
from edge2core.core.curate.datasets import DatasetDiff, DatasetInfo, DatasetQuery

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post("", status_code=201, responses=errors(404))
def build_dataset(query: DatasetQuery, services: Services) -> DatasetInfo:
    return services.datasets.build(query)


@router.get("")
def list_datasets(services: Services) -> list[DatasetInfo]:
    return services.datasets.list()


@router.get("/{version:int}", responses=errors(404))
def get_dataset(version: Version, services: Services) -> DatasetInfo:
    return services.datasets.get(version)


@router.get("/{base:int}/diff/{other:int}", responses=errors(404))
def diff_datasets(base: Version, other: Version, services: Services,
                  limit: int = Query(1000, ge=0, le=INT32_MAX)) -> DatasetDiff:
    """What changed from `base` to `other`: each list cut at `limit` entries."""
    diff = services.datasets.diff(base, other)
    return diff.model_copy(update={"added": diff.added[:limit], "removed": diff.removed[:limit],
                                   "relabelled": diff.relabelled[:limit]})


@router.get("/{version:int}/manifest", response_class=Response, responses={
    200: binary_answer("application/vnd.apache.parquet", "The manifest (Parquet)"),
    **errors(404)})
def dataset_manifest(version: Version, services: Services) -> Response:
    info = services.datasets.get(version)
    return Response(services.datasets.manifest_bytes(version),
                    media_type="application/vnd.apache.parquet",
                    headers={"X-E2C-Sha256": info.manifest_sha256,
                             "Content-Disposition":
                                 f'attachment; filename="dataset-v{version}.parquet"'})
