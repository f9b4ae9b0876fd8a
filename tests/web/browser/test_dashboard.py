"""The operations dashboard in a browser: sign-in and roles, CSRF, the fleet, a model's
confusion matrix and reliability diagram, the labelling queue's keyboard flow (correct, new
product, discard) reaching the next dataset version, the Datasets and Models tables updating
in an open page, the pipeline's stage and refusal-reason charts, a site that may not upload
now showing its spool backlog, a promotion changed in the catalogue reaching the shopper's
next answer."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from urllib.parse import unquote_plus

import httpx
from playwright.sync_api import Browser, expect

from edge2core.edge.devices import DeviceRegistry, DeviceRole
from edge2core.roles import start_edge
from tests.support.grocery import photos_of
from tests.support.waiting import wait_until
from tests.web.browser.conftest import PHONE, PRODUCTS, SITE, Stack, shrink, sign_in


def test_the_dashboard_needs_a_sign_in(stack: Stack, browser: Browser) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(stack.dashboard + "/models")
    expect(page).to_have_url(re.compile(r"/dashboard/login\?next=/dashboard/models"))
    page.fill("#name", "ada")
    page.fill("#password", "not her password")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("Wrong name or password")
    # The API refuses the dashboard's data without a session as well.
    assert httpx.get(stack.dashboard + "/data/pipeline").status_code == 401
    context.close()


def test_a_labeller_cannot_promote_and_a_forged_post_is_refused(stack: Stack, browser: Browser) -> None:
    context, page = sign_in(browser, stack, "lena")
    page.goto(stack.dashboard + "/models/1")
    expect(page.locator("#confusion")).to_be_visible()
    # The loop's own evaluation of v1 kept its confidence bins: a reliability diagram.
    expect(page.locator("#reliability")).to_be_visible()
    expect(page.locator("#reliability rect.bin")).not_to_have_count(0)
    expect(page.locator("form[action$='/promote']")).to_have_count(0)  # no button for her
    csrf = page.locator("body").get_attribute("data-csrf")
    answer = page.request.post(stack.dashboard + "/models/1/promote",
                               form={"csrf": csrf or "", "stage": "production", "confirm": "yes"})
    assert answer.status == 403 and answer.json()["error"] == "forbidden"
    context.close()

    context, page = sign_in(browser, stack, "ada")
    # A form posted from elsewhere carries the admin's cookie but not her page's token.
    forged = page.request.post(stack.dashboard + "/catalogue/BANANA-1/promotions",
                               form={"kind": "percent_off", "value": "90", "label": "forged"})
    assert forged.status == 403
    assert "CSRF" in forged.json()["detail"]
    wrong = page.request.post(stack.dashboard + "/datasets/build", form={"csrf": "guessed"})
    assert wrong.status == 403
    with stack.core_api() as api:
        banana = api.get("/v1/catalogue/products/BANANA-1").json()
    assert not banana["promotions"]
    context.close()


def test_the_fleet_shows_the_site_with_its_backlog_and_model(stack: Stack, browser: Browser) -> None:
    context, page = sign_in(browser, stack, "ada")
    card = page.locator(f".site-card[data-site='{SITE}']")
    # Sites report every few seconds; the page updates itself (server-sent events).
    expect(card).to_be_visible(timeout=30_000)
    expect(card.locator(".model-live")).to_contain_text("v1")
    expect(card.locator(".backlog")).to_contain_text("photos")
    expect(card).to_contain_text("online")
    context.close()


def test_a_label_given_with_the_keyboard_reaches_the_next_dataset(stack: Stack, browser: Browser) -> None:
    with stack.core_api() as api:
        first = api.get("/v1/labelling/tasks").json()["items"][0]["sha256"]
        before = max((d["version"] for d in api.get("/v1/datasets").json()), default=0)
    context, page = sign_in(browser, stack, "lena", PHONE)
    page.goto(stack.dashboard + "/labelling")
    expect(page.locator("#photo")).to_have_attribute("src", f"/dashboard/images/{first}")
    page.keyboard.press("/")
    page.keyboard.type(PRODUCTS[0][1])
    page.keyboard.press("Enter")  # correct it to the banana
    expect(page.locator("#status")).to_contain_text(f"corrected to {PRODUCTS[0][1]}")
    with stack.core_api() as api:
        task = api.get(f"/v1/labelling/tasks/{first}").json()
        assert task["status"] == "corrected" and task["sku"] == PRODUCTS[0][1]
        assert task["decided_by"] == "lena"
    context.close()

    context, page = sign_in(browser, stack, "ada")
    page.goto(stack.dashboard + "/datasets")
    page.evaluate("window.notReloaded = true")
    # The page's own form, posted beside the page: the open page shows the new version by
    # itself (server-sent events), without a reload.
    built = page.request.post(stack.dashboard + "/datasets/build",
                              form={"csrf": page.locator("body").get_attribute("data-csrf") or ""})
    assert built.ok and "dataset version" in unquote_plus(built.url)
    with stack.core_api() as api:
        newest = max(d["version"] for d in api.get("/v1/datasets").json())
        assert newest > before
        diff = api.get(f"/v1/datasets/{before}/diff/{newest}").json() if before else None
        stats = api.get(f"/v1/datasets/{newest}").json()["stats"]
    expect(page.locator(f"#versions tr[data-version='{newest}']")).to_be_visible(timeout=30_000)
    assert page.evaluate("window.notReloaded") is True
    assert stats["per_label_origin"].get("human", 0) >= 1
    if diff is not None:
        assert first in diff["added"]
    context.close()


def test_a_promotion_set_in_the_dashboard_shows_in_the_shoppers_next_answer(
        stack: Stack, browser: Browser) -> None:
    sku, price = PRODUCTS[0][1], PRODUCTS[0][3]
    context, page = sign_in(browser, stack, "ada")
    page.goto(stack.dashboard + "/catalogue")
    row = page.locator(f"tr[data-sku='{sku}']")
    form = row.locator("form.promo-form")
    form.locator("select[name=kind]").select_option("percent_off")
    form.locator("input[name=value]").fill("20")
    form.locator("input[name=label]").fill("-20% this week")
    form.locator("button").click()
    expect(page.locator(".notice")).to_contain_text("promotion")
    expect(row).to_contain_text("-20% this week")
    context.close()
    # The catalogue reaches the site within a second or so (KV over the leaf link).
    photo = stack.held_out[sku][0]
    with stack.edge_api() as edge:
        token = {"Authorization": f"Bearer {stack.shopper_token}"}
        wait_until(lambda: (edge.post("/v1/recognize", content=photo, headers=token)
                            .json().get("promotion") or {}).get("label")
                   == "-20% this week", timeout=30, what="the promotion at the edge", every=0.5)

    phone = browser.new_context(viewport=PHONE)
    shop = phone.new_page()
    shop.goto(stack.shop)
    expect(shop.locator("#connection")).to_have_text("ready", timeout=20_000)
    shop.set_input_files("#photo-input", str(stack.photo_file("banana-again.jpg", photo)))
    expect(shop.locator("#promotion")).to_contain_text("-20% this week", timeout=20_000)
    expect(shop.locator("#effective-price")).to_contain_text(f"{round(price * 0.8, 2):.2f}")
    phone.close()


def test_the_pipeline_charts_every_stage_and_refusals_by_reason(stack: Stack, browser: Browser) -> None:
    with stack.edge_api() as edge:
        refused = edge.post("/v1/photos", params={"sku": PRODUCTS[0][1], "source": "kiosk"},
                            content=b"not a photo at all",
                            headers={"Authorization": f"Bearer {stack.kiosk_token}"})
    assert refused.status_code >= 400
    context, page = sign_in(browser, stack, "ada")
    reasons: dict = {}

    def refusals_reported() -> bool:
        reasons.update(page.request.get(stack.dashboard + f"/data/pipeline?site={SITE}")
                       .json()["refused_by_reason"])
        return len(reasons) > 1  # `t` and at least one reason
    wait_until(refusals_reported, timeout=30, what="the refusal in the site's report", every=0.5)
    reason = next(k for k in reasons if k != "t")
    page.goto(stack.dashboard + "/pipeline")
    card = page.locator(f"section[data-site='{SITE}']")
    stages = card.locator("[data-pipeline] .u-legend")
    for label in ("received", "prepared", "refused", "faces redacted", "duplicates",
                  "forwarded = stored"):
        expect(stages).to_contain_text(label)
    for chart in (card, page.locator("section:has([data-refusals=''])")):
        expect(chart.locator("[data-refusals] .u-legend")).to_contain_text(reason.replace("_", " "))
    context.close()


def test_new_product_and_discard_from_the_keyboard(stack: Stack, browser: Browser) -> None:
    with stack.core_api() as api:
        pending = api.get("/v1/labelling/tasks").json()["total"]
    if pending < 2:  # the earlier tests labelled most: shoppers ask about more unknown apples
        with stack.edge_api() as edge:
            for i, data in enumerate(shrink(d) for d in photos_of(3, "val", 6)):
                edge.post("/v1/recognize", params={"request_id": f"more-{i}"}, content=data,
                          headers={"Authorization": f"Bearer {stack.shopper_token}"})
        with stack.core_api() as api:
            wait_until(lambda: api.get("/v1/labelling/tasks").json()["total"] >= 2, timeout=60,
                       what="two photos to label", every=0.5)
    context, page = sign_in(browser, stack, "lena")
    page.goto(stack.dashboard + "/labelling")
    tasks = page.evaluate("JSON.parse(document.getElementById('task-data').textContent)")
    first, second = tasks[0]["sha256"], tasks[1]["sha256"]
    page.keyboard.press("n")
    expect(page.locator("#new-form")).to_be_visible()
    expect(page.locator("#new-sku")).to_be_focused()
    page.keyboard.type("APPLE-RD")
    page.keyboard.press("Tab")
    page.keyboard.type("Red Delicious apple")
    page.keyboard.press("Enter")
    expect(page.locator("#status")).to_contain_text("new product APPLE-RD")
    expect(page.locator("#new-form")).to_be_hidden()
    expect(page.locator("#photo")).to_have_attribute("src", f"/dashboard/images/{second}")
    page.keyboard.press("x")
    expect(page.locator("#status")).to_contain_text("discarded")
    with stack.core_api() as api:
        made = api.get(f"/v1/labelling/tasks/{first}").json()
        assert made["status"] == "new_product" and made["sku"] == "APPLE-RD"
        assert made["decided_by"] == "lena"
        thrown = api.get(f"/v1/labelling/tasks/{second}").json()
        assert thrown["status"] == "discarded" and thrown["decided_by"] == "lena"
        product = api.get("/v1/catalogue/products/APPLE-RD").json()
        assert product["name"] == "Red Delicious apple" and product["status"] == "pending-data"
    context.close()


def closed_upload_window() -> str:
    """An upload window twelve hours from now (local time, as the edge reads it)."""
    start = datetime.now().astimezone() + timedelta(hours=12)
    return f'["{start:%H}:00-{start:%H}:30"]'


def test_a_site_that_may_not_upload_now_shows_its_backlog_and_runs_the_model(
        stack: Stack, browser: Browser) -> None:
    """A second site outside its upload window: its photos wait in its spool, and the open
    models page shows it running v1 without a reload."""
    site = "store-night"
    context, page = sign_in(browser, stack, "ada")
    page.goto(stack.dashboard + "/models")
    page.evaluate("window.notReloaded = true")
    runs_at = page.locator("#models tr[data-version='1'] .runs-at")
    expect(runs_at).to_contain_text(SITE)
    expect(runs_at).not_to_contain_text(site)
    data_dir = stack.work / site
    kiosk = DeviceRegistry(data_dir / "devices.json").add("staff-night", DeviceRole.KIOSK)
    edge, ports = start_edge(site, data_dir, stack.core_ports, extra_env={
        "E2C_EDGE_UPLOAD_WINDOWS": closed_upload_window()})
    try:
        edge.wait_healthy(90)
        expect(runs_at).to_contain_text(site, timeout=120_000)
        assert page.evaluate("window.notReloaded") is True
        with httpx.Client(base_url=ports.url, timeout=30) as night:
            for data in photos_of(PRODUCTS[1][0], "val", 3):
                answer = night.post("/v1/photos", params={"sku": PRODUCTS[1][1], "source": "kiosk"},
                                    content=shrink(data), headers={"Authorization": f"Bearer {kiosk}"})
                assert answer.status_code == 201, answer.text
        page.goto(stack.dashboard)
        card = page.locator(f".site-card[data-site='{site}']")
        expect(card.locator(".backlog")).to_contain_text("3 photos", timeout=30_000)
        expect(page.locator(f".site-card[data-site='{SITE}']")).to_contain_text("online")
    finally:
        edge.stop()
        context.close()
