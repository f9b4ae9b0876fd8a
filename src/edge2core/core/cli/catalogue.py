"""`edge2core catalogue ...`: the product catalogue of a running core, over its HTTP API
(so every change reaches the audit log and the edge sites).

    edge2core catalogue list [--status active]
    edge2core catalogue add SKU-0100 --name Kombucha --price 3.49 --image kombucha.jpg
    edge2core catalogue change SKU-0100 --price 2.99
    edge2core catalogue retire SKU-0100 --reason "delisted"
    edge2core catalogue import ../shared/datasets/grocery
    edge2core catalogue promote SKU-0007 --id easter --kind percent_off --value 20 \\
        --starts 2026-04-01T00:00:00Z --ends 2026-04-08T00:00:00Z --label "-20% Easter"
    edge2core catalogue audit --sku SKU-0007

Exit codes: 0 done, 1 the core is unreachable or failed, 2 the core refused the request
(unknown SKU, duplicate, invalid value).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from edge2core.core.cli.http import JsonOpt, UrlOpt, call

catalogue_app = typer.Typer(
    help="The product catalogue: list, add, change, retire, import, promote.",
    no_args_is_help=True,
)

ByOpt = Annotated[str | None, typer.Option("--by", help="Who makes the change (audit log).")]


def _by(by: str | None) -> dict[str, str]:
    return {"by": by} if by else {}


def _upload_image(url: str | None, path: Path) -> str:
    if not path.is_file():
        typer.echo(f"no image file {path}", err=True)
        raise typer.Exit(2)
    return call("POST", url, "/v1/products/images", content=path.read_bytes(),
                 headers={"Content-Type": "application/octet-stream"})["key"]


def _time(value: str | None) -> str | None:
    """ISO 8601; a time without a zone is taken as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        typer.echo(f"not an ISO 8601 time: {value!r}", err=True)
        raise typer.Exit(2) from exc
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()


def _print(product: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(product, indent=2))
    else:
        typer.echo(f"{product['sku']} {product['name']!r} {product['price']:.2f} "
                   f"{product['currency']} [{product['status']}]")


@catalogue_app.command("list")
def list_products(
    status: Annotated[str | None, typer.Option(help="active, pending-data or retired.")] = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every product (by SKU), with its price and the promotions it has."""
    products = call("GET", url, "/v1/products", params={"status": status} if status else None)
    if as_json:
        typer.echo(json.dumps(products, indent=2))
        return
    from edge2core.common.products import Product, priced

    table = Table(title=f"catalogue ({len(products)} products)")
    for col in ("sku", "name", "coarse", "price", "now", "status", "promotions", "image"):
        table.add_column(col)
    for raw in products:
        product = Product.model_validate(raw)
        promotion, price_now = priced(product)
        table.add_row(product.sku, product.name, product.coarse,
                      f"{product.price:.2f} {product.currency}",
                      f"{price_now:.2f}" + (f" ({promotion.id})" if promotion else ""),
                      product.status.value, str(len(product.promotions)),
                      "yes" if product.image_key else "-")
    Console().print(table)


@catalogue_app.command("show")
def show(sku: str, url: UrlOpt = None) -> None:
    """One product as JSON."""
    _print(call("GET", url, f"/v1/products/{sku}"), True)


@catalogue_app.command("add")
def add(
    sku: str,
    name: Annotated[str, typer.Option(help="What the shopper reads.")],
    price: Annotated[float, typer.Option(help="List price.")],
    currency: Annotated[str, typer.Option(help="ISO 4217 code.")] = "EUR",
    coarse: Annotated[str, typer.Option(help="Coarse category, e.g. Apple.")] = "",
    description: Annotated[str, typer.Option(help="Product description.")] = "",
    status: Annotated[str, typer.Option(help="active or pending-data.")] = "active",
    image: Annotated[Path | None, typer.Option(help="Catalogue image (JPEG, PNG, WebP).")] = None,
    by: ByOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a new product (exit 2 if the SKU exists)."""
    body: dict[str, Any] = {"sku": sku, "name": name, "price": price, "currency": currency,
                            "coarse": coarse, "description": description, "status": status}
    if image is not None:
        body["image_key"] = _upload_image(url, image)
    _print(call("POST", url, "/v1/products", json=body, params=_by(by)), as_json)


@catalogue_app.command("change")
def change(
    sku: str,
    name: Annotated[str | None, typer.Option()] = None,
    price: Annotated[float | None, typer.Option()] = None,
    currency: Annotated[str | None, typer.Option()] = None,
    coarse: Annotated[str | None, typer.Option()] = None,
    description: Annotated[str | None, typer.Option()] = None,
    status: Annotated[str | None, typer.Option(help="active, pending-data or retired.")] = None,
    image: Annotated[Path | None, typer.Option(help="A new catalogue image.")] = None,
    by: ByOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change some fields of a product; the others stay."""
    body = {k: v for k, v in {"name": name, "price": price, "currency": currency,
                              "coarse": coarse, "description": description,
                              "status": status}.items() if v is not None}
    if image is not None:
        body["image_key"] = _upload_image(url, image)
    if not body:
        typer.echo("nothing to change: give at least one option", err=True)
        raise typer.Exit(2)
    _print(call("PATCH", url, f"/v1/products/{sku}", json=body, params=_by(by)), as_json)


@catalogue_app.command("retire")
def retire(
    sku: str,
    reason: Annotated[str, typer.Option(help="Why it is no longer sold (audit log).")],
    by: ByOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Stop selling a product: edge sites stop answering it as soon as they hear of it."""
    _print(call("POST", url, f"/v1/products/{sku}/retire", json={"reason": reason},
                 params=_by(by)), as_json)


@catalogue_app.command("promote")
def promote(
    sku: str,
    promotion_id: Annotated[str, typer.Option("--id", help="The promotion's id (unique per product).")],
    kind: Annotated[str, typer.Option(help="percent_off, price_override or multi_buy.")] = "percent_off",
    value: Annotated[float | None, typer.Option(help="Percent off, or the promotional price.")] = None,
    label: Annotated[str, typer.Option(help='What the shopper reads, e.g. "3 for 2".')] = "",
    starts: Annotated[str | None, typer.Option(help="ISO 8601 start (default now; no zone = UTC).")] = None,
    ends: Annotated[str | None, typer.Option(help="ISO 8601 end, exclusive (default open).")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="Withdraw promotion --id instead.")] = False,
    by: ByOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Add or replace a promotion of a product (or withdraw it with --remove)."""
    if remove:
        product = call("DELETE", url, f"/v1/products/{sku}/promotions/{promotion_id}",
                        params=_by(by))
    else:
        body = {"id": promotion_id, "kind": kind, "value": value, "label": label,
                "starts_at": _time(starts) or datetime.now(UTC).isoformat(),
                "ends_at": _time(ends)}
        product = call("POST", url, f"/v1/products/{sku}/promotions", json=body, params=_by(by))
    _print(product, as_json)


@catalogue_app.command("import")
def import_grocery(
    root: Annotated[Path, typer.Argument(help="A folder laid out like the grocery dataset.")],
    class_id: Annotated[list[int] | None, typer.Option("--class-id", help="Only these classes (repeat).")] = None,
    currency: Annotated[str, typer.Option(help="Currency of the generated prices.")] = "EUR",
    by: ByOpt = None,
    url: UrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Products from classes.csv with descriptions and iconic images. New SKUs get a
    deterministic price (the dataset has none); a re-import updates names, categories,
    descriptions and images only, and changes nothing when nothing changed."""
    from edge2core.core.catalogue.grocery import read_grocery

    try:
        entries = read_grocery(root, class_ids=set(class_id) if class_id else None,
                               currency=currency)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    products, stored = [], 0
    for entry in entries:
        record = entry.product.model_dump(mode="json", exclude={"updated_at"})
        if entry.image_path is not None:
            image = call("POST", url, "/v1/products/images", content=entry.image_path.read_bytes(),
                          headers={"Content-Type": "application/octet-stream"})
            record["image_key"] = image["key"]
            stored += image["created"]
        products.append(record)
    report = call("POST", url, "/v1/products/import", params=_by(by), timeout=300,
                   json={"products": products, "source": str(root.resolve())})
    report["images_stored"] = stored
    report["missing_images"] = [e.product.sku for e in entries if e.image_path is None]
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"{len(entries)} products read: {len(report['added'])} added, "
               f"{len(report['changed'])} changed, {report['unchanged']} unchanged; "
               f"{stored} new images, {len(report['missing_images'])} without an image")


@catalogue_app.command("audit")
def audit(
    sku: Annotated[str | None, typer.Option(help="Only this subject (a SKU).")] = None,
    kind: Annotated[str, typer.Option(help="Kind prefix.")] = "catalogue.",
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    url: UrlOpt = None,
) -> None:
    """Recent catalogue changes from the audit log (JSON lines)."""
    params: dict[str, Any] = {"kind_prefix": kind, "limit": limit}
    if sku:
        params["subject"] = sku
    for event in call("GET", url, "/v1/audit", params=params):
        typer.echo(json.dumps(event))
