"""The dashboard's live views and the model's calibration over HTTP (no browser), on a real
core's services: what the event stream keys on, the fragments the pages fetch when told,
and the reliability diagram (or its absence for a model evaluated before bins were kept)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient

from edge2core.config import CoreSettings
from edge2core.core.api.app import CoreServices, create_core_app
from edge2core.core.service import build_core_services
from edge2core.core.train.evaluation import reliability_bins
from edge2core.web.auth.users import Role, UserStore
from edge2core.web.dashboard.context import Dashboard
from edge2core.web.dashboard.live import markers
from tests.support.recorded_sites import RecordedSites
from tests.web.test_dashboard_access import sign_in


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[CoreServices, Dashboard, TestClient]]:
    data = tmp_path_factory.mktemp("core")
    services = build_core_services(CoreSettings(data_dir=data), RecordedSites())
    users = UserStore(data / "users.json")
    users.add("lena", Role.LABELLER, "labeller-pass")
    app = create_core_app(services, users)
    with TestClient(app) as client:
        sign_in(client, "lena", "labeller-pass")
        yield services, app.state.dashboard, client


def test_a_new_model_changes_the_models_marker_and_fragment(core) -> None:  # type: ignore[no-untyped-def]
    services, board, client = core
    before = markers(board)
    assert before["datasets"] == () and "No dataset version yet" in client.get(
        "/dashboard/fragments/datasets").text
    version = services.registry.register(b"live model", dataset_version=1, classes=["A", "B"],
                                         metrics={}, params={}).version
    after = markers(board)
    assert after["models"] != before["models"] and after["fleet"] == before["fleet"]
    fragment = client.get("/dashboard/fragments/models")
    assert fragment.status_code == 200 and f'data-version="{version}"' in fragment.text
    assert "<html" not in fragment.text  # a fragment, not a page
    assert client.get("/dashboard/models").text.count('id="models-live"') == 1


def test_fragments_need_a_sign_in(core) -> None:  # type: ignore[no-untyped-def]
    _services, _board, client = core
    with TestClient(client.app) as stranger:
        for path in ("/dashboard/fragments/models", "/dashboard/fragments/datasets"):
            assert stranger.get(path, follow_redirects=False).status_code in (303, 401)


def test_a_model_page_draws_its_reliability_bins_or_says_it_has_none(core) -> None:  # type: ignore[no-untyped-def]
    services, _board, client = core
    old = services.registry.register(b"old model", dataset_version=1, classes=["A", "B"],
                                     metrics={"val": {"top1": 0.5}}, params={}).version
    page = client.get(f"/dashboard/models/{old}").text
    assert 'id="no-reliability"' in page and 'id="reliability"' not in page
    probs = np.array([[0.95, 0.05], [0.92, 0.08], [0.58, 0.42], [0.55, 0.45]])
    bins = reliability_bins(probs, np.array([0, 1, 0, 0]))
    new = services.registry.register(b"new model", dataset_version=1, classes=["A", "B"],
                                     metrics={"val": {"top1": 0.75, "reliability": bins}},
                                     params={}).version
    page = client.get(f"/dashboard/models/{new}").text
    assert 'id="reliability"' in page and page.count('class="bin"') == 2  # two bins hold photos
    assert "0.9–1.0: 2 photos, accuracy 0.50" in page
