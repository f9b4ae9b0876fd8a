"""A DeploySink that remembers what the registry told the sites (tests of the registry alone)."""

from __future__ import annotations

from collections.abc import Sequence

from edge2core.common.events import ModelPublished


class RecordedSites:
    def __init__(self, fleet: list[ModelPublished] | None = None) -> None:
        self.fleet = fleet if fleet is not None else []
        self.targets: dict[str, ModelPublished] = {}

    def production(self, model: ModelPublished) -> None:
        self.fleet.append(model)

    def canary(self, model: ModelPublished, sites: Sequence[str]) -> None:
        self.targets.update(dict.fromkeys(sites, model))

    def end_canary(self, sites: Sequence[str]) -> None:
        for site in sites:
            self.targets.pop(site, None)

    def version_at(self, site: str) -> int | None:
        model = self.targets.get(site) or (self.fleet[-1] if self.fleet else None)
        return model.version if model else None
