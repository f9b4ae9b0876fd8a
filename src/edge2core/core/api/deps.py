"""What the core's routes work with, and how a route asks for it.

`CoreServices` holds every part of the core a route may call, each built once by
`core.service.build_core_services`: no field is optional, so no route checks whether a part
exists. A route declares `services: Services` and FastAPI hands it the app's instance (set by
`create_core_app`); routers never import the app that includes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session, sessionmaker

from edge2core.common.objectstore import ObjectStore
from edge2core.common.rate_limit import RateLimit
from edge2core.core.api.token_store import TokenStore
from edge2core.core.audit import AuditLog
from edge2core.core.catalogue.catalogue import Catalogue
from edge2core.core.curate.datasets import DatasetStore
from edge2core.core.curate.governance import Governance
from edge2core.core.curate.labelling import LabellingQueue
from edge2core.core.deliver.registry import ModelRegistry
from edge2core.core.deliver.site_reports import SiteReports
from edge2core.core.ingest.direct import DirectUploads
from edge2core.core.ingest.receiver import ImageReceiver
from edge2core.core.ingest.uploads import ResumableUploads
from edge2core.core.loop.automation import LearningLoop
from edge2core.core.train.on_demand import TrainerOnDemand  # no PyTorch until a run starts


@dataclass
class CoreServices:
    """The core's parts, as the HTTP API sees them."""

    store: ObjectStore
    sessions: sessionmaker[Session]
    receiver: ImageReceiver
    uploads: ResumableUploads
    datasets: DatasetStore
    labelling: LabellingQueue
    governance: Governance
    catalogue: Catalogue
    audit: AuditLog
    trainer: TrainerOnDemand
    registry: ModelRegistry
    reports: SiteReports
    loop: LearningLoop
    site_tokens: dict[str, str]
    admin_token: str | None  # None: the API is open (development), see `access.py`
    site_rate: RateLimit | None = None  # each site's uploads (`access.SiteRateLimit`)
    api_tokens: TokenStore | None = None  # scoped tokens for people and tools (`access.py`)
    direct: DirectUploads | None = None  # presigned uploads straight to S3 (`ingest.direct`)


async def core_services(request: Request) -> CoreServices:
    """The app's services (async: FastAPI runs it on the event loop, no thread hop)."""
    services = request.app.state.services
    assert isinstance(services, CoreServices), "create_core_app sets app.state.services"
    return services


Services = Annotated[CoreServices, Depends(core_services)]
