"""`edge2core models ...` (the registry of a running core, over its HTTP API) and
`edge2core eval` (score an image list with a shipped ONNX artefact, no PyTorch needed).

Register in cli.py with::

    from edge2core.core.cli.models import eval_command, models_app
    app.add_typer(models_app, name="models")
    app.command("eval")(eval_command)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from edge2core.core.cli.http import JsonOpt, UrlOpt, admin_headers, call, core_trust, core_url

models_app = typer.Typer(help="The model registry: list, show, compare, promote, roll back.",
                         no_args_is_help=True)



def _call(method: str, url: str | None, path: str, **kw: Any) -> Any:
    """Exit code 2 means the gate blocked it (409); other refusals exit 1."""
    return call(method, url, path, refused_exit=lambda status: 2 if status == 409 else 1, **kw)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


@models_app.command("list")
def list_models(url: UrlOpt = None, as_json: JsonOpt = False) -> None:
    """Every model version with its stage, data and headline metrics."""
    models = _call("GET", url, "/v1/models")
    if as_json:
        typer.echo(json.dumps(models, indent=2))
        return
    table = Table(title="models")
    for col in ("version", "stage", "path", "dataset", "classes", "val top-1", "int8 top-1", "backbone", "created"):
        table.add_column(col)
    for m in models:
        val = (m.get("metrics") or {}).get("val") or {}
        int8 = ((m.get("metrics") or {}).get("shipped") or {}).get("int8") or {}
        table.add_row(str(m["version"]), m["stage"], str(m["params"].get("path", "-")),
                      str(m["dataset_version"]), str(len(m["classes"])), _fmt(val.get("top1")),
                      _fmt(int8.get("top1")), str((m.get("lineage") or {}).get("backbone", "-")),
                      str(m["created_at"])[:19])
    Console().print(table)


@models_app.command("show")
def show(version: int, url: UrlOpt = None) -> None:
    """One model version: lineage, artefacts, metrics (JSON)."""
    model = _call("GET", url, f"/v1/models/{version}")
    val = (model.get("metrics") or {}).get("val") or {}
    val.pop("confusion", None)
    typer.echo(json.dumps(model, indent=2, default=str))


@models_app.command("compare")
def compare(
    baseline: int, candidate: int, url: UrlOpt = None,
    evaluate: Annotated[bool, typer.Option(help="Run the gate on the frozen evaluation set.")] = True,
) -> None:
    """CANDIDATE against BASELINE: metrics side by side and the gate's verdict."""
    typer.echo(json.dumps(_call("GET", url, f"/v1/models/{candidate}/compare/{baseline}",
                                params={"evaluate": evaluate}, timeout=600), indent=2))


@models_app.command("promote")
def promote(
    version: int,
    stage: Annotated[str, typer.Option(help="production, canary or candidate.")] = "production",
    force: Annotated[bool, typer.Option("--force", help="Override a failed gate (needs --reason).")] = False,
    reason: Annotated[str, typer.Option(help="Why (kept in the model's history).")] = "",
    site: Annotated[list[str] | None, typer.Option(
        "--site", help="A canary's site (repeat for several); needed with --stage canary.")] = None,
    url: UrlOpt = None,
) -> None:
    """Promote a version; the promotion gate is enforced unless --force with a --reason.
    Exit code 2 when the gate blocks it."""
    model = _call("POST", url, f"/v1/models/{version}/promote",
                  json={"stage": stage, "force": force, "reason": reason, "sites": site or []},
                  timeout=600)
    where = f" on {', '.join(model['canary_sites'])}" if model.get("canary_sites") else ""
    typer.echo(f"model {model['version']} is now {model['stage']}{where}")


@models_app.command("rollback")
def rollback(
    reason: Annotated[str, typer.Option(help="Why (required; kept in the history).")],
    to: Annotated[int | None, typer.Option(help="Version to restore (default: the previous production).")] = None,
    url: UrlOpt = None,
) -> None:
    """Retire the production model and restore the previous one (no gate)."""
    model = _call("POST", url, "/v1/models/rollback", json={"reason": reason, "to": to})
    typer.echo(f"model {model['version']} is production again")


@models_app.command("retire")
def retire(version: int, reason: Annotated[str, typer.Option()] = "", url: UrlOpt = None) -> None:
    """Withdraw a non-production version."""
    model = _call("POST", url, f"/v1/models/{version}/retire", json={"reason": reason})
    typer.echo(f"model {model['version']} is {model['stage']}")


@models_app.command("verify")
def verify(version: int, url: UrlOpt = None) -> None:
    """Check a version's Ed25519 signature and its artefacts' hashes at the core."""
    typer.echo(json.dumps(_call("GET", url, f"/v1/models/{version}/verify"), indent=2))


@models_app.command("rerun")
def rerun(
    version: int, url: UrlOpt = None,
    register: Annotated[bool, typer.Option(help="Register the rerun as a candidate.")] = False,
) -> None:
    """Repeat a version's training run from its record and compare the metrics."""
    out = _call("POST", url, f"/v1/models/{version}/rerun", params={"register": register}, timeout=3600)
    typer.echo(json.dumps(out, indent=2))
    if not out.get("same"):
        raise typer.Exit(1)


@models_app.command("train")
def train(
    dataset_version: int,
    path: Annotated[str, typer.Option(help="fast (cached embeddings + head) or full (fine-tune).")] = "fast",
    seed: int = 0,
    param: Annotated[
        list[str] | None, typer.Option(help="KEY=VALUE hyper-parameter (JSON values), repeatable.")] = None,
    url: UrlOpt = None,
) -> None:
    """Start a training run at the core and wait for the registered model."""
    params: dict[str, Any] = {}
    for item in param or []:
        key, _, value = item.partition("=")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    out = _call("POST", url, "/v1/training-runs", timeout=7200,
                json={"dataset_version": dataset_version, "seed": seed, "path": path, "params": params})
    typer.echo(json.dumps({"version": out["model"]["version"], "stage": out["model"]["stage"],
                           "val": {k: v for k, v in (out["model"]["metrics"].get("val") or {}).items()
                                   if not isinstance(v, (dict, list))},
                           "timings_s": out["timings_s"]}, indent=2))


# --------------------------------------------------------------------------- eval

_SKU = re.compile(r"^SKU-(\d+)$")


def read_list(path: Path) -> list[tuple[str, int, int]]:
    """``path, fine_id, coarse_id`` lines (the grocery dataset's format); others skipped."""
    out = []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[1].lstrip("-").isdigit() or not parts[2].lstrip("-").isdigit():
            continue
        out.append((parts[0], int(parts[1]), int(parts[2])))
    return out


def class_ids(classes: list[str], dataset: Path) -> list[int]:
    """Model class names -> the dataset's fine ids: ``SKU-0007`` -> 7 (see
    ``sim.photos.Product.create``); else by class name in the dataset's classes.csv; -1 if
    unknown (never counted right)."""
    by_name: dict[str, int] = {}
    csv_path = dataset / "classes.csv"
    if csv_path.is_file():
        import csv

        with csv_path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                by_name[row["Class Name (str)"]] = int(row["Class ID (int)"])
    out = []
    for name in classes:
        m = _SKU.match(name)
        out.append(int(m.group(1)) if m else by_name.get(name, -1))
    return out


def coarse_ids(dataset: Path, items: list[tuple[str, int, int]]) -> dict[int, int]:
    mapping = {fine: coarse for _p, fine, coarse in items}
    csv_path = dataset / "classes.csv"
    if csv_path.is_file():
        import csv

        with csv_path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                mapping[int(row["Class ID (int)"])] = int(row["Coarse Class ID (int)"])
    return mapping


def score_list(model_bytes: bytes, dataset: Path, items: list[tuple[str, int, int]],
               *, threads: int = 0, batch: int = 32) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    from PIL import Image

    from edge2core.common.images import decode_rgb
    from edge2core.common.preprocess import IMAGE_SIZE, preprocess_batch

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    if "classes" not in meta:
        raise typer.BadParameter("the model carries no 'classes' metadata")
    classes = json.loads(meta["classes"])
    fine_of_class = np.array(class_ids(classes, dataset))
    coarse_of = coarse_ids(dataset, items)
    coarse_of_class = np.array([coarse_of.get(int(f), -1) if f >= 0 else -2 for f in fine_of_class])
    input_name = session.get_inputs()[0].name
    top1 = top5 = coarse1 = 0
    k = min(5, len(classes))
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        images = []
        for rel, _f, _c in chunk:
            with Image.open(dataset / rel.lstrip("/")) as im:
                images.append(decode_rgb(im, reduce_to=IMAGE_SIZE).copy())
        probs = session.run(None, {input_name: preprocess_batch(images)})[0]
        order = np.argsort(-probs, axis=1)[:, :k]
        fine = np.array([f for _p, f, _c in chunk])
        coarse = np.array([c for _p, _f, c in chunk])
        top1 += int((fine_of_class[order[:, 0]] == fine).sum())
        top5 += int((fine_of_class[order] == fine[:, None]).any(axis=1).sum())
        coarse1 += int((coarse_of_class[order[:, 0]] == coarse).sum())
    n = len(items)
    return {"top1": top1 / n if n else None, "top5": top5 / n if n else None,
            "coarse_top1": coarse1 / n if n else None, "n": n}


def eval_command(
    model: Annotated[str, typer.Option("--model", help="A model version at the core, or an ONNX file.")],
    dataset: Annotated[Path, typer.Option("--dataset", help="Folder the list's paths are relative to.")],
    list_file: Annotated[Path, typer.Option("--list", help="Lines of 'path, fine_id, coarse_id'.")],
    kind: Annotated[str, typer.Option(help="Artefact of a version: full (what the edge runs) or int8.")] = "full",
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads (0: all cores).")] = 0,
    url: UrlOpt = None,
) -> None:
    """Score an image list with a shipped ONNX artefact; prints one JSON line
    (top1, top5, coarse_top1, n)."""
    path = Path(model)
    if path.is_file():
        data = path.read_bytes()
    elif model.isdigit():
        import hashlib

        base = core_url(url)
        suffix = "artifact" if kind == "full" else f"artifacts/{kind}"
        try:
            response = httpx.get(f"{base}/v1/models/{int(model)}/{suffix}", timeout=300,
                                 headers=admin_headers(), verify=core_trust()).raise_for_status()
        except httpx.HTTPError as exc:
            typer.echo(f"cannot fetch model {model} from {base}: {exc}", err=True)
            raise typer.Exit(1) from exc
        data = response.content
        expected = response.headers.get("X-E2C-Sha256")
        if expected and hashlib.sha256(data).hexdigest() != expected:
            typer.echo("the downloaded artefact does not match its sha256", err=True)
            raise typer.Exit(1)
    else:
        raise typer.BadParameter(f"{model!r} is neither an ONNX file nor a version number", param_hint="--model")
    items = read_list(list_file)
    if not items:
        raise typer.BadParameter(f"no 'path, fine_id, coarse_id' lines in {list_file}", param_hint="--list")
    typer.echo(json.dumps(score_list(data, dataset, items, threads=threads)))
