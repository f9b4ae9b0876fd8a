"""Everything in this folder is marked `security` (by folder: no test file sets it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.secure_site import Secure, secure_site
from tests.support.tls import Pki, make_pki

HERE = Path(__file__).resolve().parent


@pytest.hookimpl(tryfirst=True)  # before `-m` selects on markers
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.security)


@pytest.fixture(scope="session")
def session_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One CA for the session; never revoke or renew in it (make_pki for that)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="package")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    """One real core and site with TLS on every link, for every end-to-end test here."""
    yield from secure_site(tmp_path_factory.mktemp("secure"))
