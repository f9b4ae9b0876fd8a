"""`edge2core datasets ...`: build, inspect, diff and export dataset versions; erasure and
retention. Works on the core's database and object store directly (from the core's settings),
so it needs no running core.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edge2core.common.events import Source
from edge2core.config import CONFIG_ENV, CoreSettings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from edge2core.common.objectstore import ObjectStore
    from edge2core.core.curate.datasets import DatasetStore
    from edge2core.core.train.embedding_cache import EmbeddingCache

datasets_app = typer.Typer(
    help="Datasets: build versions from a query, diff, export; erasure and retention.",
    no_args_is_help=True,
)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", envvar=CONFIG_ENV, help="TOML file whose core table holds the settings."),
]
DataDirOpt = Annotated[Path | None, typer.Option(help="The core's data dir.")]
DbOpt = Annotated[str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in data dir).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _settings(config: Path | None, data_dir: Path | None, database_url: str | None) -> CoreSettings:
    if config is not None:
        os.environ[CONFIG_ENV] = str(config)
    given: dict[str, Any] = {
        k: v for k, v in {"data_dir": data_dir, "database_url": database_url}.items()
        if v is not None}
    return CoreSettings(**given)


def _parts(
    settings: CoreSettings,
) -> tuple[ObjectStore, sessionmaker[Session], DatasetStore]:
    from edge2core.core.curate.datasets import DatasetStore
    from edge2core.core.db import storage

    sessions = storage.database(settings)
    store = storage.object_store(settings)
    return store, sessions, DatasetStore(store, sessions)


def _echo_json(value: object) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


@datasets_app.command("build")
def build(
    sku: Annotated[list[str] | None, typer.Option("--sku", help="Only these products (repeat).")] = None,
    site: Annotated[list[str] | None, typer.Option("--site", help="Only these sites (repeat).")] = None,
    device: Annotated[list[str] | None, typer.Option("--device", help="Only these devices.")] = None,
    source: Annotated[
        list[Source] | None, typer.Option("--source", help="kiosk and/or shopper (default both).")] = None,
    since: Annotated[datetime | None, typer.Option(help="Captured at or after (ISO 8601).")] = None,
    until: Annotated[datetime | None, typer.Option(help="Captured before (ISO 8601).")] = None,
    min_sharpness: Annotated[float | None, typer.Option(help="Minimum edge sharpness measure.")] = None,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Build a new dataset version from a query; prints its version, manifest hash and stats."""
    from edge2core.core.curate.datasets import DatasetQuery

    _store, _sessions, datasets = _parts(_settings(config, data_dir, database_url))
    query = DatasetQuery(skus=sku or None, sites=site or None, devices=device or None,
                         since=since, until=until, min_sharpness=min_sharpness,
                         **({"sources": source} if source else {}))
    try:
        info = datasets.build(query)
    except LookupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc
    if as_json:
        _echo_json(info.model_dump(mode="json"))
        return
    typer.echo(f"dataset version {info.version}: {info.stats['images']} photos, "
               f"{info.stats['classes']} classes, splits {info.stats['per_split']}")
    typer.echo(f"manifest {info.manifest_key} (sha256 {info.manifest_sha256})")


@datasets_app.command("list")
def list_versions(data_dir: DataDirOpt = None, database_url: DbOpt = None,
                  config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List dataset versions."""
    _store, _sessions, datasets = _parts(_settings(config, data_dir, database_url))
    infos = datasets.list()
    if as_json:
        _echo_json([i.model_dump(mode="json") for i in infos])
        return
    table = Table(title="dataset versions")
    for col in ("version", "photos", "classes", "manifest", "created"):
        table.add_column(col)
    for i in infos:
        table.add_row(str(i.version), str(i.stats["images"]), str(i.stats["classes"]),
                      i.manifest_sha256[:12], i.created_at.isoformat(timespec="seconds"))
    Console().print(table)


@datasets_app.command("show")
def show(version: int, data_dir: DataDirOpt = None, database_url: DbOpt = None,
         config: ConfigOpt = None) -> None:
    """Print one version's query, manifest hash and stats as JSON."""
    _store, _sessions, datasets = _parts(_settings(config, data_dir, database_url))
    try:
        _echo_json(datasets.get(version).model_dump(mode="json"))
    except LookupError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from exc


@datasets_app.command("diff")
def diff(base: int, other: int, data_dir: DataDirOpt = None, database_url: DbOpt = None,
         config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """What changed between two versions: photos added, removed, relabelled."""
    _store, _sessions, datasets = _parts(_settings(config, data_dir, database_url))
    result = datasets.diff(base, other)
    if as_json:
        _echo_json(result.model_dump(mode="json"))
        return
    typer.echo(f"v{base} -> v{other}: {result.counts}")
    for r in result.relabelled[:50]:
        typer.echo(f"  relabelled {r.sha256[:12]}: {r.before} -> {r.after}")


@datasets_app.command("export")
def export(
    version: int,
    out: Annotated[Path, typer.Option(help="Output folder.")],
    fmt: Annotated[str, typer.Option("--format", help="imagefolder, webdataset or parquet.")] = "imagefolder",
    shard_size: Annotated[int, typer.Option(help="Photos per WebDataset shard.")] = 1000,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Export a version as an ImageFolder tree, WebDataset tar shards or Parquet with bytes."""
    from edge2core.core.curate.export import ExportFormat, export_dataset

    _store, _sessions, datasets = _parts(_settings(config, data_dir, database_url))
    report = export_dataset(datasets, version, out, ExportFormat(fmt), shard_size=shard_size)
    _echo_json(report.model_dump(mode="json", exclude={"files"}))


@datasets_app.command("erase")
def erase(
    site: Annotated[str | None, typer.Option(help="Photos from this site.")] = None,
    device: Annotated[str | None, typer.Option(help="Photos from this device.")] = None,
    source: Annotated[Source | None, typer.Option(help="kiosk or shopper.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Captured at or after.")] = None,
    until: Annotated[datetime | None, typer.Option(help="Captured before.")] = None,
    sha256: Annotated[list[str] | None, typer.Option("--sha256", help="These photos.")] = None,
    reason: Annotated[str, typer.Option(help="Why (kept in the erasure log).")] = "",
    yes: Annotated[bool, typer.Option("--yes", help="Really delete.")] = False,
    data_dir: DataDirOpt = None,
    database_url: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Erase every photo that matches: bytes, rows, labels; absent from future versions."""
    from pydantic import ValidationError

    from edge2core.core.curate.governance import EraseRequest, Governance

    try:
        request = EraseRequest(site=site, device=device, source=source, since=since, until=until,
                               sha256s=sha256 or None, reason=reason)
    except ValidationError as exc:
        typer.echo(f"nothing to erase: {exc.errors()[0]['msg']}", err=True)
        raise typer.Exit(2) from exc
    if not yes:
        typer.echo("erasure cannot be undone; add --yes to go ahead", err=True)
        raise typer.Exit(2)
    settings = _settings(config, data_dir, database_url)
    store, sessions, _datasets = _parts(settings)
    report = Governance(store, sessions, on_erased=_embedding_cache(settings).purge).erase(request)
    _echo_json(report.model_dump(mode="json"))


def _embedding_cache(settings: CoreSettings) -> EmbeddingCache:
    """The core's embedding cache: erased photos' embeddings go with them."""
    from edge2core.core.train.embedding_cache import EmbeddingCache

    return EmbeddingCache(settings.resolved_embedding_cache_dir)


@datasets_app.command("retention")
def retention(data_dir: DataDirOpt = None, database_url: DbOpt = None,
              config: ConfigOpt = None) -> None:
    """Apply the retention rules (`retention_days`, e.g. shopper = 30): run it daily."""
    from edge2core.core.curate.governance import Governance

    settings = _settings(config, data_dir, database_url)
    store, sessions, _datasets = _parts(settings)
    reports = Governance(store, sessions, retention_days=settings.retention_days,
                         on_erased=_embedding_cache(settings).purge).apply_retention()
    _echo_json([r.model_dump(mode="json") for r in reports])


@datasets_app.command("migrate")
def migrate(data_dir: DataDirOpt = None, database_url: DbOpt = None,
            config: ConfigOpt = None) -> None:
    """Bring the core's database to the newest schema (the core also does this at start)."""
    from edge2core.core.db import migrations
    from edge2core.core.db.engine import make_engine

    settings = _settings(config, data_dir, database_url)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.resolved_database_url)
    migrations.upgrade(engine)
    typer.echo(f"database at revision {migrations.current(engine)}")
