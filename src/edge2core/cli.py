"""The `edge2core` command line."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from edge2core import __version__
from edge2core.common.logging import configure_logging
from edge2core.common.tls import trust
from edge2core.config import CONFIG_ENV, CoreSettings, DemoSettings, EdgeSettings
from edge2core.core.cli.catalogue import catalogue_app
from edge2core.core.cli.certs import certs_app
from edge2core.core.cli.datasets import datasets_app
from edge2core.core.cli.loop import loop_app
from edge2core.core.cli.models import eval_command, models_app
from edge2core.core.cli.tokens import tokens_app
from edge2core.web.cli import users_app

app = typer.Typer(
    help="edge2core: acquire photos at the edge, learn from them at the core, answer at the edge.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
core_app = typer.Typer(help="The core: receiver, datasets, training, registry, catalogue.")
edge_app = typer.Typer(help="An edge site: MQTT/HTTP doors, spool, forwarder, recognition.")
app.add_typer(core_app, name="core")
app.add_typer(edge_app, name="edge")
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
app.add_typer(catalogue_app, name="catalogue")
app.add_typer(loop_app, name="loop")
app.add_typer(certs_app, name="certs")
core_app.add_typer(tokens_app, name="tokens")
core_app.add_typer(users_app, name="users")
app.command("eval", help="Score an image list with a registered or local ONNX model.")(eval_command)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", envvar=CONFIG_ENV, help="TOML file with sections core, edge and demo."),
]
LogLevel = Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING or ERROR.")]


def _given(**values: Any) -> dict[str, Any]:
    """Only the options the user actually set, so env and TOML fill in the rest."""
    return {k: v for k, v in values.items() if v is not None}


def _use_config(config: Path | None) -> None:
    import os

    if config is not None:
        os.environ[CONFIG_ENV] = str(config)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


@core_app.command("up")
def core_up(
    data_dir: Annotated[Path | None, typer.Option(help="Where objects, database and JetStream live.")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP API port.")] = None,
    nats_port: Annotated[int | None, typer.Option(help="NATS client port.")] = None,
    leafnode_port: Annotated[int | None, typer.Option(help="Port edge sites' leaf nodes join.")] = None,
    database_url: Annotated[str | None, typer.Option(help="SQLAlchemy URL (default SQLite).")] = None,
    config: ConfigOpt = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Run the core until interrupted."""
    from edge2core.core.service import serve_core

    configure_logging(log_level)
    _use_config(config)
    settings = CoreSettings(**_given(data_dir=data_dir, http_port=http_port, nats_port=nats_port,
                                     leafnode_port=leafnode_port, database_url=database_url))
    _run_role(serve_core(settings))


@edge_app.command("up")
def edge_up(
    site: Annotated[str | None, typer.Option(help="This site's id.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Spool, models and JetStream live here.")] = None,
    http_port: Annotated[int | None, typer.Option(help="HTTP door and API port.")] = None,
    mqtt_port: Annotated[int | None, typer.Option(help="MQTT (TCP) port for devices.")] = None,
    mqtt_ws_port: Annotated[int | None, typer.Option(help="MQTT over WebSockets port.")] = None,
    nats_port: Annotated[int | None, typer.Option(help="NATS client port.")] = None,
    core_url: Annotated[str | None, typer.Option(help="The core's HTTP URL.")] = None,
    core_leaf_url: Annotated[str | None, typer.Option(help="The core's leaf node URL.")] = None,
    config: ConfigOpt = None,
    log_level: LogLevel = "INFO",
) -> None:
    """Run one edge site until interrupted."""
    from edge2core.edge.service import serve_edge

    configure_logging(log_level)
    _use_config(config)
    settings = EdgeSettings(**_given(
        site=site, data_dir=data_dir, http_port=http_port, mqtt_port=mqtt_port,
        mqtt_ws_port=mqtt_ws_port, nats_port=nats_port, core_url=core_url,
        core_leaf_url=core_leaf_url,
    ))
    _run_role(serve_edge(settings))


def _run_role(role: Coroutine[Any, Any, None]) -> None:
    """Run a role; missing files it needs (TLS certificates, the nats-server binary) end it
    with the reason and exit status 2, not a traceback."""
    try:
        asyncio.run(role)
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@edge_app.command("status")
def edge_status(
    url: Annotated[str | None, typer.Option(help="The edge's HTTP URL.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Show a running edge site's model, spool backlog and catalogue."""
    _use_config(config)
    settings = EdgeSettings()
    base = url or settings.http_url
    try:
        report = httpx.get(f"{base}/v1/status", timeout=5,
                           verify=trust(settings.resolved_tls_dir)).raise_for_status().json()
    except httpx.HTTPError as exc:
        typer.echo(f"cannot reach the edge at {base}: {exc}. Is `edge2core edge up` running?", err=True)
        raise typer.Exit(1) from exc
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    table = Table(title=f"edge site {report['site']}")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("model version", str(report["model_version"]))
    table.add_row("catalogue products", str(report["catalogue_products"]))
    for key, value in report["spool"].items():
        table.add_row(f"spool {key}", "-" if value is None else f"{value:,.0f}")
    table.add_row("forwarded bytes/s (last minute)", f"{report['forwarded_bytes_per_s']:,.0f}")
    for name, value in sorted(report.get("counters", {}).items()):
        if isinstance(value, dict):
            for labels, number in sorted(value.items()):
                table.add_row(f"{name} {{{labels}}}", f"{number:,.0f}")
        else:
            table.add_row(name, f"{value:,.0f}")
    Console().print(table)


devices_app = typer.Typer(help="Devices allowed to send photos to this edge site.")
edge_app.add_typer(devices_app, name="devices")
DataDir = Annotated[Path | None, typer.Option(help="The edge's data dir (default from settings).")]


def _registry(data_dir: Path | None):
    from edge2core.edge.devices import DeviceRegistry

    return DeviceRegistry((data_dir or EdgeSettings().data_dir) / "devices.json")


@devices_app.command("add")
def devices_add(
    device_id: Annotated[str, typer.Argument(help="The device's id, e.g. kiosk-7.")],
    role: Annotated[str, typer.Option(help="kiosk or shopper.")] = "kiosk",
    data_dir: DataDir = None,
) -> None:
    """Register a device and print its secret (shown once: configure the device with it)."""
    from edge2core.edge.devices import DeviceRole

    try:
        token = _registry(data_dir).add(device_id, DeviceRole(role))
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(json.dumps({"device": device_id, "role": role, "mqtt_username": device_id,
                           "mqtt_password": token, "http_token": token}))


@devices_app.command("revoke")
def devices_revoke(
    device_id: Annotated[str, typer.Argument(help="The device to shut out.")],
    data_dir: DataDir = None,
) -> None:
    """Revoke a device; a running edge closes its connection within seconds."""
    try:
        _registry(data_dir).revoke(device_id)
    except KeyError as exc:
        typer.echo(f"error: {exc.args[0]}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"revoked {device_id}")


@devices_app.command("list")
def devices_list(data_dir: DataDir = None) -> None:
    """List registered devices."""
    table = Table(title="devices")
    for column in ("id", "role", "revoked", "created"):
        table.add_column(column)
    for device in _registry(data_dir).list():
        table.add_row(device.id, device.role.value, str(device.revoked), device.created_at)
    Console().print(table)


@edge_app.command("dead-letters")
def edge_dead_letters(
    data_dir: DataDir = None,
    payload: Annotated[str | None, typer.Option(help="Write this letter's raw payload to stdout.")] = None,
) -> None:
    """Device messages the edge failed on every attempt: kept with the reason, never dropped."""
    from edge2core.edge.dead_letters import DeadLetters

    letters = DeadLetters((data_dir or EdgeSettings().data_dir) / "dead-letters")
    if payload:
        matches = [letter for letter in letters.list() if letter.id.startswith(payload)]
        if len(matches) != 1:
            typer.echo(f"error: {len(matches)} dead letters start with {payload!r}", err=True)
            raise typer.Exit(2)
        sys.stdout.buffer.write(letters.payload(matches[0].id))
        return
    table = Table(title="dead letters (republish a payload once the cause is fixed)")
    for column in ("id", "topic", "bytes", "reason", "error"):
        table.add_column(column)
    for letter in letters.list():
        table.add_row(letter.id[:12], letter.topic, str(letter.size), letter.reason, letter.error)
    Console().print(table)


@datasets_app.command("import")
def datasets_import(
    folder: Annotated[Path, typer.Argument(help="Photos in ImageFolder (DIR/<sku>/*.jpg) or grocery layout.")],
    token: Annotated[str, typer.Option(envvar="E2C_KIOSK_TOKEN", help="A kiosk's token at that site.")] = "",
    edge: Annotated[str | None, typer.Option(help="The site's HTTP URL (default from settings).")] = None,
    layout: Annotated[str, typer.Option(help="auto, imagefolder or grocery.")] = "auto",
    split: Annotated[str, typer.Option(help="Grocery layout: which list to send (train, val).")] = "train",
    state: Annotated[Path | None, typer.Option(help="Progress file (default DIR/.e2c-import.json).")] = None,
) -> None:
    """Send photos you already have through a site's door as kiosk captures: the same
    preparation and privacy step; resumable (run again after an interruption); idempotent."""
    from rich.progress import Progress

    from edge2core.edge.bulk_import import BulkImporter, ImportState, SiteUnavailable, photos_in

    try:
        photos = photos_in(folder, layout, split)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    settings = EdgeSettings()
    base = edge or settings.http_url
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    progress_file = ImportState(state or folder / ".e2c-import.json")
    with httpx.Client(base_url=base, headers=headers, timeout=60,
                      verify=trust(settings.resolved_tls_dir)) as http, Progress() as bar:
        task = bar.add_task(f"importing {len(photos)} photos", total=len(photos))
        importer = BulkImporter(http, folder, progress_file)
        try:
            counts = importer.run(photos, lambda _p, _o: bar.advance(task))
        except SiteUnavailable as exc:
            typer.echo(f"stopped: {exc}", err=True)
            raise typer.Exit(1) from exc
    typer.echo(json.dumps({"photos": len(photos), **counts}))


@app.command()
def demo(
    dataset: Annotated[Path | None, typer.Option(
        envvar="E2C_DATASET", help="A grocery-layout photo folder; synthetic photos if absent.")] = None,
    classes: Annotated[int | None, typer.Option(help="How many products.")] = None,
    per_class: Annotated[int | None, typer.Option(help="Kiosk captures per product.")] = None,
    held_out_per_class: Annotated[
        int | None, typer.Option(help="Shopper photos per product, never trained on.")] = None,
    work_dir: Annotated[Path | None, typer.Option(help="Keep the run's data here (default: a temp dir).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Also print the summary as JSON.")] = False,
    keep_running: Annotated[bool, typer.Option(
        "--keep-running", help="Keep serving the dashboard and the shopper app until Ctrl-C.")] = False,
    config: ConfigOpt = None,
    log_level: LogLevel = "WARNING",
) -> None:
    """Run a core, an edge site and simulated devices through the whole loop."""
    from edge2core.demo import run_demo

    configure_logging(log_level)
    _use_config(config)
    settings = DemoSettings(**_given(dataset=dataset, classes=classes, per_class=per_class,
                                     held_out_per_class=held_out_per_class, work_dir=work_dir,
                                     keep_running=keep_running or None))
    summary = run_demo(settings)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=str))
    if not summary.get("ok"):
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
