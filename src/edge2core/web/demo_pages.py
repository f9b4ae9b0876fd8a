"""The demo's people's side: accounts to sign in with, the pages' addresses, and serving
them until Ctrl-C (`edge2core demo --keep-running`)."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from edge2core.web.auth.users import Role, UserStore

DEMO_USERS = (("admin", Role.ADMIN), ("labeller", Role.LABELLER))


def make_demo_users(core_dir: Path) -> dict[str, str]:
    """An admin and a labeller with fresh random passwords, in the core's accounts file
    (the core reads it on each sign-in, so this may run before or after it starts)."""
    users = UserStore(core_dir / "users.json")
    known = {u.name for u in users.list()}
    return {name: users.add(name, role) for name, role in DEMO_USERS if name not in known}


def print_addresses(console: Console, core_url: str, edge_url: str, passwords: dict[str, str],
                    ca: Path | None = None, serving: bool = True) -> None:
    console.print("\n[bold]Open in a browser[/]" + ("" if serving else
                  " (only while the demo runs: add --keep-running to keep them up)"))
    console.print(f"  dashboard    {core_url}/dashboard   "
                  + "  ".join(f"{name} / {pw}" for name, pw in passwords.items()))
    console.print(f"  shopper app  {edge_url}/shop")
    console.print(f"  staff page   {edge_url}/staff   (staff code: a kiosk's secret, "
                  f"`edge2core edge devices add NAME --role kiosk`)")
    if ca is not None:
        console.print(f"  TLS: the run's private CA is {ca}; trust it in the browser, or accept "
                      "the warning for both the page's port and the MQTT/WebSocket port")


def serve_until_interrupted(console: Console) -> None:
    """Block until Ctrl-C, the roles still serving (their processes are ours to stop)."""
    console.print("[bold]Still serving[/] (--keep-running): Ctrl-C stops the core and the site.")
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        console.print("stopping")
