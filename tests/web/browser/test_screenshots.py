"""A screenshot of every page at desktop and phone sizes (test-artifacts/web/), for people to
look at, and the checks a machine can make on them: nothing wider than the screen (cut off
or needing a sideways scroll outside the tables meant to scroll), no two text boxes on top
of each other in the page's header and cards."""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import Browser, Page, expect

from tests.web.browser.conftest import DESKTOP, PHONE, PRODUCTS, Stack, sign_in

DASHBOARD_PAGES = ("", "/pipeline", "/datasets?base=1&other=2", "/models", "/models/1?why=store-web",
                   "/labelling", "/catalogue", "/audit")

# Boxes that are expected to overlap or scroll: table cells inside a scrolling wrapper.
OVERFLOW_CHECK = """() => {
  const width = document.documentElement.clientWidth;
  const bad = [];
  for (const el of document.querySelectorAll('body *')) {
    if (el.closest('.scroll') || el.closest('.uplot') || el.closest('datalist')) continue;
    const r = el.getBoundingClientRect();
    if (r.width && r.right > width + 1) bad.push(el.tagName + '.' + el.className + ' ' + Math.round(r.right));
  }
  return bad.slice(0, 5);
}"""

OVERLAP_CHECK = """() => {
  const boxes = [...document.querySelectorAll('h1, h2, dt, dd, label, button, .pill, nav a, p')]
    .filter((el) => !el.closest('.scroll') && el.offsetParent !== null)
    .map((el) => [el, el.getBoundingClientRect()]).filter(([, r]) => r.width && r.height);
  const bad = [];
  for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
    const [a, ra] = boxes[i], [b, rb] = boxes[j];
    if (a.contains(b) || b.contains(a)) continue;
    const x = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left);
    const y = Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top);
    const name = (el) => el.tagName + ':' + el.textContent.trim().slice(0, 20);
    if (x > 2 && y > 2) bad.push(name(a) + ' / ' + name(b));
  }
  return bad.slice(0, 5);
}"""


def shoot(page: Page, artifacts: Path, name: str) -> None:
    page.wait_for_load_state("load")
    charts = page.locator(".chart")
    for i in range(charts.count()):  # drawn once their data arrived
        expect(charts.nth(i).locator(".uplot, :scope:has-text('No reports'), "
                                    ":scope:has-text('Nothing refused')")).not_to_have_count(0)
    page.screenshot(path=artifacts / f"{name}.png", full_page=True)
    assert page.evaluate(OVERFLOW_CHECK) == [], f"{name}: something is wider than the screen"
    assert page.evaluate(OVERLAP_CHECK) == [], f"{name}: text on top of text"


def test_every_page_at_desktop_and_phone_sizes(stack: Stack, browser: Browser, artifacts: Path) -> None:
    for size, viewport in (("desktop", DESKTOP), ("phone", PHONE)):
        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        page.goto(stack.dashboard + "/login")
        shoot(page, artifacts, f"login-{size}")
        context.close()

        context, page = sign_in(browser, stack, "ada", viewport)
        for path in DASHBOARD_PAGES:
            page.goto(stack.dashboard + path)
            name = path.strip("/").split("?")[0].replace("/", "-") or "fleet"
            shoot(page, artifacts, f"dashboard-{name}-{size}")
        context.close()

        context = browser.new_context(viewport=viewport)
        page = context.new_page()
        page.goto(stack.shop)
        expect(page.locator("#connection")).to_have_text("ready", timeout=20_000)
        sku = PRODUCTS[1][1]
        page.set_input_files("#photo-input", str(stack.photo_file("shot.jpg", stack.held_out[sku][1])))
        expect(page.locator("#answer h2, #answer p").first).to_be_visible(timeout=20_000)
        expect(page.locator("#answer")).not_to_contain_text("looking", timeout=20_000)
        shoot(page, artifacts, f"shop-{size}")
        page.goto(stack.edge_ports.url + "/staff")
        page.fill("#search", "APPLE")
        expect(page.locator("#matches li").first).to_be_visible()
        shoot(page, artifacts, f"staff-{size}")
        context.close()
