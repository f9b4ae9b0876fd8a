// The staff capture page: pick or type a product, take photos, each sent as a labelled
// capture to this site's door; a running count and a clear word for every refusal.
"use strict";
(function () {
  const identity = document.body.dataset.identity === "on";
  const code = document.getElementById("code");
  const search = document.getElementById("search");
  const matches = document.getElementById("matches");
  const chosenEl = document.getElementById("chosen");
  const photos = document.getElementById("photos");
  const countEl = document.getElementById("count");
  const countSku = document.getElementById("count-sku");
  const results = document.getElementById("results");
  const SKU = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
  let chosen = null;
  let kept = 0;

  if (code) {
    code.value = sessionStorage.getItem("e2c-staff-code") || "";
    code.addEventListener("change", () => sessionStorage.setItem("e2c-staff-code", code.value));
  }

  function choose(sku, label) {
    chosen = sku;
    chosenEl.textContent = label;
    countSku.textContent = sku;
    kept = 0;
    countEl.textContent = "0";
    photos.disabled = false;
    matches.innerHTML = "";
  }

  let timer = null;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const q = search.value.trim();
      matches.innerHTML = "";
      if (!q) return;
      const found = await (await fetch("/staff/products?q=" + encodeURIComponent(q))).json();
      found.forEach((p) => {
        const li = document.createElement("li");
        const b = document.createElement("button");
        b.type = "button"; b.className = "secondary";
        b.textContent = p.name + " · " + p.sku;
        b.addEventListener("click", () => choose(p.sku, p.name + " (" + p.sku + ")"));
        li.appendChild(b);
        matches.appendChild(li);
      });
      if (SKU.test(q) && !found.some((p) => p.sku === q)) {
        const li = document.createElement("li");
        const b = document.createElement("button");
        b.type = "button"; b.className = "secondary"; b.id = "new-sku";
        b.textContent = "New product with SKU " + q;
        b.addEventListener("click", () => choose(q, q + " (new)"));
        li.appendChild(b);
        matches.appendChild(li);
      }
    }, 150);
  });

  function note(text, ok) {
    const li = document.createElement("li");
    li.textContent = text;
    li.className = ok ? "" : "error";
    results.prepend(li);
  }

  async function send(file) {
    const image = await e2cPhotos.shrink(file, 2048, 0.9);
    const query = new URLSearchParams({ source: "kiosk", sku: chosen });
    const headers = { "Content-Type": "image/jpeg" };
    if (identity) headers.Authorization = "Bearer " + (code ? code.value.trim() : "");
    else query.set("device", "staff-page");
    const response = await fetch("/v1/photos?" + query, { method: "POST", headers, body: image });
    const body = await response.json().catch(() => ({}));
    if (response.status === 201) { kept += 1; countEl.textContent = String(kept); note(file.name + ": kept", true); }
    else if (response.ok && body.duplicate) note(file.name + ": " + e2cPhotos.say("duplicate"), false);
    else note(file.name + ": " + e2cPhotos.say(body.error, body.detail), false);
  }

  photos.addEventListener("change", async () => {
    for (const file of Array.from(photos.files || [])) {
      try { await send(file); } catch (err) { note(file.name + ": not sent (" + err + ")", false); }
    }
    photos.value = "";
  });
})();
