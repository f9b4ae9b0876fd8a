"""The pages an edge site serves, in a browser: the shopper app recognises a real photo over
MQTT/WebSockets with a guest identity; the staff page sends labelled photos to the core."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from playwright.sync_api import Browser, expect

from tests.support.waiting import wait_until
from tests.web.browser.conftest import PHONE, PRODUCTS, Stack

NEW_SKU = "NEW-APPLE-1"


def test_the_shopper_app_recognises_a_real_photo_and_shows_its_price(
        stack: Stack, browser: Browser, artifacts: Path) -> None:
    _fine, sku, name, price = PRODUCTS[1]
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    page.goto(stack.shop)
    html = page.content()
    assert stack.kiosk_token not in html and "Bearer" not in html  # no secret in the page
    expect(page.locator("#connection")).to_have_text("ready", timeout=20_000)
    photo = stack.photo_file("juice.jpg", stack.held_out[sku][0])
    page.set_input_files("#photo-input", str(photo))
    expect(page.locator("#product-name")).to_have_text(name, timeout=20_000)
    expect(page.locator("#effective-price")).to_contain_text(f"{price:.2f}")
    page.screenshot(path=artifacts / "shop-answer-phone.png", full_page=True)
    # A photo the model is unsure of: said kindly, and the photo will help.
    page.set_input_files("#photo-input", str(stack.photo_file("unsure.jpg", stack.unsure[0])))
    expect(page.locator("#answer")).to_contain_text("could not tell", timeout=20_000)
    expect(page.locator("#answer")).to_contain_text("helps us learn")
    page.screenshot(path=artifacts / "shop-not-recognised-phone.png", full_page=True)
    context.close()


def test_the_staff_page_sends_labelled_photos_that_reach_the_core_under_that_sku(
        stack: Stack, browser: Browser, artifacts: Path) -> None:
    context = browser.new_context(viewport=PHONE)
    page = context.new_page()
    page.goto(stack.edge_ports.url + "/staff")
    page.fill("#code", stack.kiosk_token)
    page.locator("#code").dispatch_event("change")
    page.fill("#search", NEW_SKU)
    page.click("#new-sku")
    expect(page.locator("#chosen")).to_contain_text(NEW_SKU)
    files = [str(stack.photo_file(f"new-{i}.jpg", data)) for i, data in enumerate(stack.other[:3])]
    page.set_input_files("#photos", files)
    expect(page.locator("#count")).to_have_text("3", timeout=30_000)
    # A refusal is said plainly: a wrong code.
    page.fill("#code", "not-a-code")
    page.locator("#code").dispatch_event("change")
    page.set_input_files("#photos", files[:1])
    expect(page.locator("#results li").first).to_contain_text("wrong staff code")
    page.screenshot(path=artifacts / "staff-after-photos-phone.png", full_page=True)
    context.close()

    db = stack.work / "core" / "core.db"

    def at_core() -> int:
        with sqlite3.connect(db) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM images WHERE sku = ? AND source = 'kiosk'",
                                    (NEW_SKU,)).fetchone()[0])

    wait_until(lambda: at_core() >= 3, timeout=60, what="the staff photos at the core", every=0.5)
