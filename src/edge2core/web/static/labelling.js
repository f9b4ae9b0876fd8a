// The labelling queue's keyboard flow: every action has a key, the next photo is preloaded,
// and each decision is posted (with the session's CSRF token) before moving on.
"use strict";
(function () {
  const dataEl = document.getElementById("task-data");
  if (!dataEl) return;
  const tasks = JSON.parse(dataEl.textContent);
  const csrf = document.body.dataset.csrf;
  const photo = document.getElementById("photo");
  const guesses = document.getElementById("guesses");
  const status = document.getElementById("status");
  const remaining = document.getElementById("remaining");
  const skuInput = document.getElementById("sku-input");
  const newForm = document.getElementById("new-form");
  let index = 0;
  let busy = false;
  const preloaded = new Map();

  function imageUrl(task) { return "/dashboard/images/" + task.sha256; }
  function preload(task) {
    if (!task || preloaded.has(task.sha256)) return;
    const img = new Image();
    img.src = imageUrl(task);
    preloaded.set(task.sha256, img);
  }

  function show() {
    const task = tasks[index];
    remaining.textContent = (tasks.length - index) + " waiting";
    if (!task) {
      document.getElementById("labeller").innerHTML =
        '<p class="card" id="done">All done: these labels go into the next dataset version.</p>';
      return;
    }
    photo.src = imageUrl(task);
    document.getElementById("task-meta").textContent =
      task.site + " · " + new Date(task.received_at).toLocaleString() + " · " + task.reason;
    guesses.innerHTML = "";
    task.guesses.slice(0, 5).forEach((g, i) => {
      const li = document.createElement("li");
      li.innerHTML = "<span><kbd></kbd> <strong></strong> <span class='muted'></span></span><span></span>";
      li.querySelector("kbd").textContent = String(i + 1);
      li.querySelector("strong").textContent = g.name;
      li.querySelector(".muted").textContent = g.sku;
      li.lastChild.textContent = Math.round(g.confidence * 100) + "%";
      li.addEventListener("click", () => choose(i));
      guesses.appendChild(li);
    });
    preload(tasks[index + 1]);
    preload(tasks[index + 2]);
  }

  async function decide(body, label) {
    const task = tasks[index];
    if (!task || busy) return;
    busy = true;
    status.textContent = "saving…";
    try {
      const response = await fetch("/dashboard/labelling/" + task.sha256, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify(body),
      });
      const answer = await response.json();
      if (!response.ok) { status.textContent = "not saved: " + (answer.detail || answer.error); return; }
      status.textContent = label + " ✓";
      index += 1;
      show();
    } catch (err) {
      status.textContent = "not saved: " + err;
    } finally {
      busy = false;
    }
  }

  function choose(i) {
    const task = tasks[index];
    const g = task && task.guesses[i];
    if (!g) return;
    if (i === 0) decide({ action: "confirm" }, "confirmed " + g.sku);
    else decide({ action: "correct", sku: g.sku }, "corrected to " + g.sku);
  }

  document.getElementById("correct-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const sku = skuInput.value.trim();
    if (!sku) return;
    decide({ action: "correct", sku: sku }, "corrected to " + sku).then(() => { skuInput.value = ""; skuInput.blur(); });
  });
  newForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const sku = document.getElementById("new-sku").value.trim();
    const name = document.getElementById("new-name").value.trim();
    decide({ action: "new-product", sku: sku, name: name }, "new product " + sku).then(() => {
      newForm.hidden = true; newForm.reset();
    });
  });

  document.addEventListener("keydown", (e) => {
    if (e.target instanceof HTMLInputElement || e.metaKey || e.ctrlKey || e.altKey) {
      if (e.key === "Escape") { e.target.blur(); newForm.hidden = true; }
      return;
    }
    if (e.key === "Enter" || e.key === "1") { e.preventDefault(); choose(0); }
    else if (/^[2-5]$/.test(e.key)) { e.preventDefault(); choose(Number(e.key) - 1); }
    else if (e.key === "/") { e.preventDefault(); skuInput.focus(); }
    else if (e.key === "n") { e.preventDefault(); newForm.hidden = false; document.getElementById("new-sku").focus(); }
    else if (e.key === "x") { e.preventDefault(); decide({ action: "discard" }, "discarded"); }
    else if (e.key === "s") { e.preventDefault(); index += 1; status.textContent = "skipped"; show(); }
  });

  show();
})();
