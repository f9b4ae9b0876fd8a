"""`edge2core loop ...`: the core's learning loop, over its HTTP API."""

from __future__ import annotations

import json

import typer

from edge2core.core.cli.http import UrlOpt, call

loop_app = typer.Typer(help="The learning loop: what it would do, run it, why a site runs a model.",
                       no_args_is_help=True)


def _show(body: object) -> None:
    typer.echo(json.dumps(body, indent=2, sort_keys=True))


@loop_app.command("decision")
def decision(url: UrlOpt = None) -> None:
    """The trigger that would fire now (a dry run), with what the loop sees."""
    _show(call("GET", url, "/v1/automation/decision"))


@loop_app.command("step")
def step(url: UrlOpt = None) -> None:
    """Run what the state calls for now and wait for the rollout to end."""
    model = call("POST", url, "/v1/automation/step", timeout=3600)["model"]
    typer.echo(f"model {model['version']} is {model['stage']}" if model else
               "nothing to do, or the rollout stopped (see `edge2core catalogue audit`)")


@loop_app.command("retry")
def retry(url: UrlOpt = None) -> None:
    """Let triggers whose rollout was stopped fire again."""
    cleared = call("POST", url, "/v1/automation/retry")["cleared"]
    typer.echo(f"cleared: {', '.join(cleared) or 'nothing'}")


@loop_app.command("sites")
def sites(url: UrlOpt = None) -> None:
    """What each site last reported about its model."""
    _show(call("GET", url, "/v1/sites"))


@loop_app.command("why")
def why(site: str, url: UrlOpt = None) -> None:
    """Why is this model at this site: target, dataset, trigger, gate, rollout."""
    _show(call("GET", url, f"/v1/sites/{site}/why"))
