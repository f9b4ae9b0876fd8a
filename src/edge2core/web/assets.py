"""Templates and static files shared by the core's dashboard and the sites' pages.

Everything is served from this package (`static/`, `templates/`): vendored npm builds in
`static/vendor/` (rebuilt by `make assets`), our own small CSS and scripts beside them.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
STATIC_PATH = "/static"
TEMPLATES = Jinja2Templates(directory=HERE / "templates")


def money(value: float | None, currency: str = "EUR") -> str:
    """Jinja filter: '1.29 EUR', or an en dash for nothing."""
    return "–" if value is None else f"{value:,.2f} {currency}"


def size(value: float | None) -> str:
    """Jinja filter: bytes for people (kB, MB, GB)."""
    if value is None:
        return "–"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def duration(value: float | None) -> str:
    """Jinja filter: seconds for people (s, min, h)."""
    if value is None:
        return "–"
    if value < 90:
        return f"{value:.0f} s"
    if value < 5400:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


TEMPLATES.env.filters.update(money=money, size=size, duration=duration)


def mount_static(app: FastAPI) -> None:
    """Serve `static/` at /static (no schema entry: these are files, not an API)."""
    app.mount(STATIC_PATH, StaticFiles(directory=STATIC_DIR), name="static")
