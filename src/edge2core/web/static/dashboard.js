// The dashboard's behaviour: confirmations, live updates (server-sent events), charts.
"use strict";
(function () {
  const csrf = document.body.dataset.csrf || "";

  // Forms that change something big ask first; the server refuses them unless confirmed.
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) { event.preventDefault(); return; }
      form.querySelector("input[name=confirm]").value = "yes";
    });
  });

  // Live: the server says which part changed; this page fetches what it shows of it.
  if (csrf && window.EventSource) {
    const events = new EventSource("/dashboard/events");
    // A fragment per live view: the element's id, the event that makes it stale.
    const fragment = (id, path) => {
      const el = document.getElementById(id);
      if (el && window.htmx) htmx.ajax("GET", path, { target: el, swap: "innerHTML" });
    };
    events.addEventListener("fleet", () => {
      fragment("fleet", "/dashboard/fragments/fleet");
      document.querySelectorAll("[data-pipeline]").forEach(drawPipeline);
    });
    events.addEventListener("models", () => fragment("models-live", "/dashboard/fragments/models"));
    events.addEventListener("datasets", () => fragment("datasets-live", "/dashboard/fragments/datasets"));
    events.addEventListener("labelling", (e) => {
      const badge = document.getElementById("queue-count");
      if (!badge) return;
      badge.textContent = e.data;
      badge.hidden = e.data === "0";
    });
  }

  // Charts (uPlot), sized to their box so nothing spills over on a phone.
  function width(el) { return Math.max(260, el.clientWidth - 4); }
  const COLOURS = ["#1f6feb", "#1a7f37", "#cf222e", "#8250df", "#9a6700", "#0a7ea4"];

  // Both charts of a site (or the fleet) from one fetch: photos per stage, refusals per reason.
  const STAGES = [["received", "received"], ["prepared", "prepared"], ["refused", "refused"],
                  ["faces_redacted", "faces redacted"], ["duplicates", "duplicates"],
                  ["forwarded", "forwarded = stored"]];

  function drawPipeline(el) {
    const site = el.dataset.pipeline;
    const reasons = el.parentElement.querySelector("[data-refusals]");
    fetch("/dashboard/data/pipeline" + (site ? "?site=" + encodeURIComponent(site) : ""))
      .then((r) => r.json())
      .then((body) => {
        const s = body.series;
        lines(el, s.t, STAGES.map(([key, label]) => [label, s[key]]));
        if (!reasons) return;
        const byReason = body.refused_by_reason;
        const names = Object.keys(byReason).filter((k) => k !== "t");
        if (s.t.length && !names.length) { empty(reasons, "Nothing refused."); return; }
        lines(reasons, byReason.t, names.map((k) => [k.replaceAll("_", " "), byReason[k]]));
      });
  }

  function empty(el, text) { el.innerHTML = ""; el.textContent = text; el.classList.add("muted"); }

  function lines(el, t, series) {
    el.innerHTML = "";
    if (!t.length) { empty(el, "No reports yet."); return; }
    el.classList.remove("muted");
    new uPlot({
      width: width(el), height: 240,
      // At least a minute across: two reports 5 s apart would get sub-second ticks.
      scales: { x: { range: (u, min, max) => [Math.min(min, max - 60), max] } },
      series: [{}, ...series.map(([label], i) => ({ label: label, stroke: COLOURS[i % COLOURS.length], width: 2 }))],
      // Whole photos only on the count axis.
      axes: [{}, { label: "photos / 5 s", size: 60, incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000] }],
    }, [t, ...series.map(([, values]) => values)], el);
  }

  function drawBalance(el) {
    const balance = JSON.parse(document.getElementById("balance-data").textContent);
    if (!balance.labels.length) { el.textContent = "Empty version."; return; }
    const xs = balance.labels.map((_, i) => i);
    const all = balance.train.map((n, i) => n + balance.val[i]);
    const bars = uPlot.paths.bars({ size: [0.7, 60] });
    // Stacked: the whole bar is every photo of the class, its lower part the val split.
    const narrow = width(el) < 500 || balance.labels.length > 8;
    new uPlot({
      width: width(el), height: narrow ? 320 : 280,
      scales: { x: { time: false, range: [-0.5, xs.length - 0.5] } },
      series: [{ label: "class", value: (u, i) => (i == null ? "--" : balance.labels[i]) },
               { label: "all photos", fill: "#1f6feb88", stroke: "#1f6feb", paths: bars, points: { show: false } },
               { label: "of them val", fill: "#1a7f37cc", stroke: "#1a7f37", paths: bars, points: { show: false } }],
      axes: [{ values: (u, ticks) => ticks.map((t) => balance.labels[t] ?? ""), incrs: [1], space: 10,
               rotate: narrow ? -45 : 0, size: narrow ? 90 : 40 },
             { label: "photos", size: 50 }],
    }, [xs, all, balance.val], el);
  }

  window.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-pipeline]").forEach(drawPipeline);
    const balance = document.getElementById("balance");
    if (balance) drawBalance(balance);
  });
})();
