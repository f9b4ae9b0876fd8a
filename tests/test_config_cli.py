"""Settings precedence and the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge2core.cli import app
from edge2core.config import CONFIG_ENV, CoreSettings, EdgeSettings


def test_defaults_avoid_standard_service_ports() -> None:
    used = {1883, 4222, 5432, 6379}
    core, edge = CoreSettings(), EdgeSettings()
    ports = {core.http_port, core.nats_port, core.leafnode_port, edge.http_port, edge.nats_port,
             edge.mqtt_port, edge.mqtt_ws_port}
    assert not ports & used


def test_precedence_is_arguments_then_env_then_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "e2c.toml"
    config.write_text('[edge]\nsite = "from-toml"\nhttp_port = 9001\nmqtt_port = 9002\n')
    monkeypatch.setenv(CONFIG_ENV, str(config))
    monkeypatch.setenv("E2C_EDGE_HTTP_PORT", "9101")
    settings = EdgeSettings(mqtt_port=9203)
    assert settings.site == "from-toml"
    assert settings.http_port == 9101
    assert settings.mqtt_port == 9203


def test_missing_config_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "nope.toml"))
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        CoreSettings()


def test_invalid_value_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("E2C_EDGE_JPEG_QUALITY", "5")
    with pytest.raises(ValueError, match="jpeg_quality"):
        EdgeSettings()


def test_core_database_defaults_to_sqlite_in_data_dir(tmp_path: Path) -> None:
    settings = CoreSettings(data_dir=tmp_path)
    assert settings.resolved_database_url == f"sqlite:///{tmp_path.resolve() / 'core.db'}"
    assert CoreSettings(database_url="postgresql+psycopg://x/y").resolved_database_url.startswith("postgresql")


def test_cli_help_lists_the_roles() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("demo", "core", "edge", "version"):
        assert command in result.output
    edge = CliRunner().invoke(app, ["edge", "up", "--help"])
    assert edge.exit_code == 0 and "--site" in edge.output


def test_edge_status_explains_an_unreachable_edge() -> None:
    result = CliRunner().invoke(app, ["edge", "status", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "edge up" in result.output


def test_edge_openapi_describes_both_upload_forms(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from edge2core.edge.api import create_edge_app
    from edge2core.edge.catalogue_replica import CatalogueReplica
    from edge2core.edge.gateway import Gateway
    from edge2core.edge.inference import Recognizer
    from edge2core.edge.intake import Intake
    from edge2core.edge.prepare import PreparePolicy
    from edge2core.edge.spool import Spool

    spool = Spool(tmp_path / "spool", 10**6)
    gateway = Gateway(Intake("s1", PreparePolicy(), spool), Recognizer(CatalogueReplica(tmp_path / "c")))
    spec = TestClient(create_edge_app(gateway, "s1", dict, 10**6)).get("/openapi.json").json()
    for path in ("/v1/photos", "/v1/recognize"):
        content = spec["paths"][path]["post"]["requestBody"]["content"]
        assert {"image/jpeg", "multipart/form-data"} <= content.keys()
    gateway.close()
    spool.close()
