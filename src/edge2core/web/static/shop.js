// The shopper app: a guest identity from the site, MQTT over WebSockets (MQTT.js), one
// photo per question, the answer with price and promotion.
"use strict";
(async function () {
  const cfg = document.body.dataset;
  const connection = document.getElementById("connection");
  const input = document.getElementById("photo-input");
  const result = document.getElementById("result");
  const preview = document.getElementById("preview");
  const answerEl = document.getElementById("answer");
  const pending = new Map();
  input.disabled = true;

  const pass = await (await fetch("/shop/guest-pass", { method: "POST" })).json();
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const client = mqtt.connect(scheme + "://" + location.hostname + ":" + cfg.wsPort + "/mqtt", {
    clientId: pass.device, username: pass.device, password: pass.password,
    protocolVersion: 4, clean: true, reconnectPeriod: 2000, connectTimeout: 10000,
  });
  client.on("connect", () => {
    client.subscribe([pass.answer_topics, pass.error_topic], { qos: 0 }, () => {
      connection.textContent = "ready";
      input.disabled = false;
    });
  });
  client.on("reconnect", () => { connection.textContent = "reconnecting…"; });
  client.on("error", (err) => { connection.textContent = "cannot reach the store: " + err.message; });

  function money(value, currency) { return value == null ? "" : value.toFixed(2) + " " + (currency || ""); }

  function render(a) {
    answerEl.innerHTML = "";
    const p = (cls, text) => { const el = document.createElement("p"); if (cls) el.className = cls; el.textContent = text; answerEl.appendChild(el); return el; };
    if (!a.recognised) {
      p("", "Sorry, we could not tell which product this is.");
      p("muted", "Thank you: your photo helps us learn it. Try another angle, or ask a member of staff.");
      return;
    }
    const name = document.createElement("h2");
    name.id = "product-name";
    name.textContent = a.name;
    answerEl.appendChild(name);
    const price = p("", "");
    const main = document.createElement("span");
    main.className = "price";
    main.id = "effective-price";
    main.textContent = money(a.effective_price != null ? a.effective_price : a.price, a.currency);
    price.appendChild(main);
    if (a.promotion && a.effective_price != null && a.effective_price < a.price) {
      const was = document.createElement("span");
      was.className = "was";
      was.textContent = money(a.price, a.currency);
      price.appendChild(was);
    }
    if (a.promotion) p("promotion", "🏷 " + (a.promotion.label || a.promotion.kind)).id = "promotion";
    p("muted", "confidence " + Math.round(a.confidence * 100) + "% · model v" + a.model_version);
  }

  client.on("message", (topic, payload) => {
    let body;
    try { body = JSON.parse(new TextDecoder().decode(payload)); } catch (e) { return; }
    if (topic.endsWith("/error")) {
      if (body.request_id && !pending.has(body.request_id)) return;
      pending.delete(body.request_id);
      answerEl.innerHTML = "";
      const el = document.createElement("p");
      el.className = "error";
      el.textContent = "Could not answer: " + e2cPhotos.say(body.reason, body.detail);
      answerEl.appendChild(el);
      return;
    }
    const id = topic.split("/").pop();
    if (!pending.delete(id)) return;
    render(body);
  });

  input.addEventListener("change", async () => {
    const file = input.files && input.files[0];
    if (!file) return;
    result.hidden = false;
    preview.src = URL.createObjectURL(file);
    answerEl.innerHTML = '<p class="muted">looking…</p>';
    const image = await e2cPhotos.shrink(file, 1024, 0.85);
    if (image.length > Number(cfg.maxBytes)) { answerEl.textContent = "This photo is too large."; return; }
    const requestId = "r" + Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
    const header = new TextEncoder().encode(JSON.stringify({ request_id: requestId }) + "\n");
    const message = new Uint8Array(header.length + image.length);
    message.set(header, 0);
    message.set(image, header.length);
    pending.set(requestId, Date.now());
    client.publish(pass.recognize_topic, message, { qos: 0 });
    input.value = "";
  });
})();
