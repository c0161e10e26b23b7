// ferrolabel dashboard (docs/dashboard.md): plain JavaScript, no libraries, no build step.
// Every number shown comes from the server's JSON API; charts are inline SVG drawn here.
// Values from the server are put into the page with textContent only, never as HTML.
"use strict";

(function () {
  const SVGNS = "http://www.w3.org/2000/svg";
  const TOKEN_KEY = "ferrolabel.token";
  const UNKNOWN = "(unknown)";
  const PALETTE = ["#2f6fdf", "#e8730c", "#1a9e59", "#b42318", "#7a4fd6", "#0f8fa8", "#c2418e", "#6d6d2f"];
  const REVISIONS_LIMIT = 1000;
  const AUDIT_LIMIT = 50;

  const state = { auth: false, token: sessionStorage.getItem(TOKEN_KEY), user: null, timer: null };

  // ---- helpers ------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("data-")) e.setAttribute(k, String(v));
      else e[k] = v;
    }
    for (const c of children) {
      e.append(c instanceof Node ? c : document.createTextNode(c === undefined || c === null ? "" : String(c)));
    }
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }

  /** A number cell: `data-field` names it, `data-value` holds the exact number. */
  function numCell(field, value, digits) {
    const shown = value === undefined || value === null ? "–" : fmt(value, digits);
    return el("td", { class: "num", "data-field": field, "data-value": value === undefined ? null : value }, shown);
  }

  function fmt(x, digits) {
    if (typeof x !== "number") return String(x);
    if (digits === undefined) return String(x);
    return String(Number(x.toFixed(digits)));
  }

  function when(seconds) {
    if (!seconds) return "–";
    return new Date(seconds * 1000).toISOString().replace("T", " ").slice(0, 19);
  }

  function fill(tbodyParent, rows, emptyText, columns) {
    const body = tbodyParent.tBodies[0];
    body.replaceChildren(...rows);
    if (!rows.length) body.append(el("tr", { class: "empty" }, el("td", { colSpan: columns }, emptyText)));
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  class HttpError extends Error {
    constructor(status, detail) {
      super(`${status}: ${detail}`);
      this.status = status;
      this.detail = detail;
    }
  }

  /** A call to the server with the bearer token (when logged in); JSON answers are parsed. */
  async function api(path, options) {
    const opts = Object.assign({ headers: {} }, options || {});
    if (state.token) opts.headers.Authorization = "Bearer " + state.token;
    const res = await fetch(path, opts);
    if (res.status === 401 && state.auth) {
      logout("Your session has ended: log in again.");
      throw new HttpError(401, "not logged in");
    }
    if (!res.ok) {
      let detail = res.statusText;
      try {
        detail = (await res.json()).detail || detail;
      } catch (e) {
        /* not JSON */
      }
      throw new HttpError(res.status, detail);
    }
    const type = res.headers.get("content-type") || "";
    return type.includes("json") ? res.json() : res.blob();
  }

  /** `api`, but a 404 gives `fallback` instead of an error. */
  async function apiOr404(path, fallback) {
    try {
      return await api(path);
    } catch (e) {
      if (e instanceof HttpError && e.status === 404) return fallback;
      throw e;
    }
  }

  // ---- authentication ---------------------------------------------------------------------

  async function detectAuth() {
    const res = await fetch("/auth/");
    if (res.status === 404) return false;
    if (!res.ok) throw new HttpError(res.status, "GET /auth/");
    return Boolean((await res.json()).enabled);
  }

  async function login(event) {
    event.preventDefault();
    const err = $("login-error");
    err.hidden = true;
    const body = new URLSearchParams({
      grant_type: "password",
      username: $("login-username").value,
      password: $("login-password").value,
    });
    const res = await fetch("/auth/token", { method: "POST", body });
    if (!res.ok) {
      let detail = res.statusText;
      try {
        detail = (await res.json()).detail || detail;
      } catch (e) {
        /* not JSON */
      }
      err.textContent = detail;
      err.hidden = false;
      return;
    }
    const token = await res.json();
    state.token = token.access_token;
    sessionStorage.setItem(TOKEN_KEY, state.token);
    $("login-password").value = "";
    await start();
  }

  function logout(message) {
    state.token = null;
    state.user = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("main").hidden = true;
    $("whoami").hidden = true;
    $("login").hidden = false;
    $("audit-section").hidden = true;
    document.body.dataset.state = "login";
    showError(message || "");
  }

  // ---- the panels -------------------------------------------------------------------------

  /** The annotator of an image: who uploaded it (info `user`), else the client's id. */
  function imageAnnotator(info) {
    return info.user || info.client_id || UNKNOWN;
  }

  /** The annotator of a label: the author of its newest revision, else its info. */
  function labelAnnotator(id, tag, info, latestAuthor) {
    return latestAuthor.get(id + "\u0000" + tag) || info.user || info.client_id || UNKNOWN;
  }

  function countInto(map, key, field) {
    if (!map.has(key)) map.set(key, { images: 0, labels: 0, revisions: 0, events: [] });
    map.get(key)[field] += 1;
    return map.get(key);
  }

  function renderDatastore(ds, stats, revisions) {
    const latestAuthor = new Map();
    for (const r of revisions) {
      const key = r.image + "\u0000" + r.tag;
      if (!latestAuthor.has(key) && r.author) latestAuthor.set(key, r.author);
    }
    const tags = new Map();
    const people = new Map();
    const labelsList = [];
    let images = 0;
    let labels = 0;
    for (const [id, obj] of Object.entries(ds.objects || {})) {
      images += 1;
      const iinfo = (obj.image && obj.image.info) || {};
      countInto(people, imageAnnotator(iinfo), "images").events.push(iinfo.ts || 0);
      for (const [tag, entry] of Object.entries(obj.labels || {})) {
        labels += 1;
        const info = entry.info || {};
        if (!tags.has(tag)) tags.set(tag, { labels: 0, last: 0, events: [] });
        const t = tags.get(tag);
        t.labels += 1;
        t.last = Math.max(t.last, info.ts || 0);
        t.events.push(info.ts || 0);
        countInto(people, labelAnnotator(id, tag, info, latestAuthor), "labels").events.push(info.ts || 0);
        labelsList.push({ id, tag });
      }
    }
    for (const r of revisions) countInto(people, r.author || UNKNOWN, "revisions");

    $("stat-images").textContent = images;
    $("stat-labels").textContent = labels;
    $("stat-completed").textContent = stats.completed;
    $("stat-revisions").textContent = revisions.length + (revisions.length >= REVISIONS_LIMIT ? "+" : "");

    const tagNames = [...tags.keys()].sort();
    fill(
      $("by-tag"),
      tagNames.map((tag) =>
        el("tr", { "data-tag": tag }, el("td", {}, tag), numCell("labels", tags.get(tag).labels), el("td", {}, when(tags.get(tag).last)))
      ),
      "no labels yet",
      3
    );
    const names = [...people.keys()].sort();
    fill(
      $("by-annotator"),
      names.map((name) => {
        const p = people.get(name);
        return el("tr", { "data-annotator": name }, el("td", {}, name), numCell("images", p.images), numCell("labels", p.labels), numCell("revisions", p.revisions));
      }),
      "nobody yet",
      4
    );
    chart($("chart-tags"), tagNames.map((t) => ({ name: t, times: tags.get(t).events })));
    chart($("chart-annotators"), names.map((n) => ({ name: n, times: people.get(n).events })));
    return labelsList;
  }

  /** A step chart of cumulative counts over time, one line per series. */
  function chart(box, series) {
    series = series.filter((s) => s.times.length);
    box.replaceChildren();
    if (!series.length) {
      box.append(el("p", { class: "muted" }, "nothing yet"));
      return;
    }
    const W = 560, H = 200, L = 40, R = 12, T = 10, B = 28;
    const all = series.flatMap((s) => s.times);
    let t0 = Math.min(...all), t1 = Math.max(...all);
    if (t1 - t0 < 3600) {
      t0 -= 1800;
      t1 += 1800;
    }
    const ymax = Math.max(...series.map((s) => s.times.length));
    const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
    const y = (n) => H - B - (n / ymax) * (H - T - B);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
    root.append(svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    root.append(svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    root.append(svg("text", { x: L - 6, y: y(ymax) + 4, "text-anchor": "end" }, ymax));
    root.append(svg("text", { x: L - 6, y: H - B + 4, "text-anchor": "end" }, 0));
    root.append(svg("text", { x: L, y: H - 8 }, when(t0).slice(0, 16)));
    root.append(svg("text", { x: W - R, y: H - 8, "text-anchor": "end" }, when(t1).slice(0, 16)));
    const legend = el("div", { class: "legend" });
    series.forEach((s, i) => {
      const color = PALETTE[i % PALETTE.length];
      const times = [...s.times].sort((a, b) => a - b);
      let d = `M${x(t0).toFixed(1)},${y(0).toFixed(1)}`;
      times.forEach((t, k) => {
        d += ` H${x(t).toFixed(1)} V${y(k + 1).toFixed(1)}`;
      });
      d += ` H${x(t1).toFixed(1)}`;
      const path = svg("path", { class: "series", d, stroke: color, "data-series": s.name, "data-total": times.length });
      path.append(svg("title", {}, `${s.name}: ${times.length}`));
      root.append(path);
      const swatch = el("i");
      swatch.style.background = color;
      legend.append(el("span", {}, swatch, `${s.name} (${times.length})`));
    });
    box.append(root, legend);
  }

  function renderRevisions(revisions) {
    $("revisions-note").textContent = `(newest ${Math.min(revisions.length, 20)} of ${revisions.length}${revisions.length >= REVISIONS_LIMIT ? "+" : ""})`;
    fill(
      $("revisions"),
      revisions.slice(0, 20).map((r) =>
        el(
          "tr",
          { "data-image": r.image, "data-tag": r.tag, "data-rev": r.rev },
          el("td", {}, when(r.ts)),
          el("td", {}, r.image),
          el("td", {}, r.tag),
          numCell("rev", r.rev),
          numCell("parent_rev", r.parent_rev),
          el("td", { "data-field": "author" }, r.author || UNKNOWN),
          el("td", { title: r.sha256 }, el("code", {}, r.sha256.slice(0, 12)))
        )
      ),
      "no revisions yet",
      7
    );
  }

  function renderTasks(tasks) {
    const counts = new Map();
    for (const t of tasks) counts.set(t.state, (counts.get(t.state) || 0) + 1);
    const p = $("tasks-counts");
    p.replaceChildren(el("span", {}, "total "), el("b", { id: "tasks-total", "data-value": tasks.length }, tasks.length));
    for (const s of [...counts.keys()].sort()) {
      p.append(" · " + s + " ", el("b", { "data-state": s, "data-value": counts.get(s) }, counts.get(s)));
    }
    // periodic tasks (session and token sweeps) always wait for their next run: not counted
    const active = tasks.filter((t) => t.kind !== "periodic" && (t.state === "queued" || t.state === "running")).length;
    $("stat-tasks-active").textContent = active;
    fill(
      $("tasks"),
      tasks.map((t) => {
        const prog = t.progress ? `${t.progress.done}/${t.progress.total}${t.progress.current ? " · " + t.progress.current : ""}` : "";
        return el(
          "tr",
          { "data-task": t.id, "data-state": t.state },
          el("td", { title: t.id }, t.id.length > 24 ? t.id.slice(0, 8) + "…" : t.id),
          el("td", { "data-field": "kind" }, t.kind),
          el("td", { "data-field": "state", class: "state-" + t.state }, t.state),
          el("td", {}, prog),
          el("td", {}, t.owner || ""),
          numCell("position", t.position),
          el("td", {}, t.created_ts || "")
        );
      }),
      "no tasks",
      7
    );
  }

  function renderModel(info) {
    $("app-name").textContent = info.name;
    $("app-version").textContent = info.version;
    const models = Object.entries(info.models || {});
    fill(
      $("models"),
      models.map(([name, m]) =>
        el(
          "tr",
          { "data-model": name },
          el("td", {}, name),
          el("td", { "data-field": "type" }, m.type || ""),
          el("td", { "data-field": "version" }, m.version || "–"),
          el("td", { "data-field": "weights" }, m.weights_available === undefined ? "–" : m.weights_available ? "loaded" : "missing"),
          numCell("labels", Object.keys(m.labels || {}).length)
        )
      ),
      "no models",
      5
    );
  }

  async function renderTraining(info) {
    const stats = Object.entries(info.train_stats || {});
    fill(
      $("train-stats"),
      stats.map(([name, s]) =>
        el(
          "tr",
          { "data-model": name },
          el("td", {}, name),
          numCell("epoch", s.epoch),
          numCell("total_epochs", s.total_epochs),
          numCell("best_metric", s.best_metric, 4),
          numCell("best_epoch", s.best_metric_epoch !== undefined ? s.best_metric_epoch : s.eval && s.eval.best_metric_epoch),
          el("td", { "data-field": "total_time" }, s.total_time === undefined ? "–" : s.total_time)
        )
      ),
      "no trainers",
      6
    );
    const task = await apiOr404("/train/", null);
    $("train-task-status").textContent = task && !Array.isArray(task) ? `${task.status} (${task.id.slice(0, 8)}…, ${task.start_ts || ""})` : "none";
    const box = $("train-curve");
    const curve = await apiOr404("/train/curve", null);
    const old = box.querySelector("img");
    if (old) URL.revokeObjectURL(old.src);
    if (curve) {
      // the server draws the curve; it is shown as an image (fetched with the token)
      box.replaceChildren(el("img", { id: "train-curve-img", alt: "training curve", src: URL.createObjectURL(curve) }));
    } else {
      box.replaceChildren(el("p", { id: "train-curve-none", class: "muted" }, "No training curve yet: start a training first."));
    }
  }

  async function renderReport(labelsList) {
    const select = $("report-select");
    const keep = select.value;
    select.replaceChildren(...labelsList.map((l) => el("option", { value: l.id + "|" + l.tag }, `${l.id} (${l.tag})`)));
    if (labelsList.some((l) => l.id + "|" + l.tag === keep)) select.value = keep;
    await loadReport();
  }

  async function loadReport() {
    const value = $("report-select").value;
    const table = $("report");
    if (!value) {
      $("report-voxel").textContent = "";
      fill(table, [], "no labels yet", 7);
      return;
    }
    const [id, tag] = value.split("|");
    table.dataset.label = id;
    table.dataset.tag = tag;
    const q = new URLSearchParams({ label: id, tag });
    let report;
    try {
      report = await api("/datastore/label/report?" + q);
    } catch (e) {
      if (!(e instanceof HttpError) || e.status === 401) throw e;
      fill(table, [], `no report: ${e.detail}`, 7);
      return;
    }
    $("report-voxel").textContent = `voxel ${fmt(report.voxel_volume_ml * 1000, 3)} mm³`;
    const rows = Object.entries(report.structures || {}).map(([name, s]) =>
      el(
        "tr",
        { "data-structure": name },
        el("td", {}, name),
        numCell("label", s.label),
        numCell("voxels", s.voxels),
        numCell("volume_ml", s.volume_ml, 2),
        numCell("mean_hu", s.mean_hu, 1),
        numCell("std_hu", s.std_hu, 1),
        el("td", {}, s.touches_border ? "yes" : "no")
      )
    );
    fill(table, rows, "the label is empty", 7);
  }

  function isAdmin() {
    return !state.auth || (state.user && (state.user.roles || []).includes("monailabel-admin"));
  }

  async function renderAudit() {
    const section = $("audit-section");
    if (!isAdmin()) {
      section.hidden = true;
      return;
    }
    let rows;
    try {
      rows = await api("/audit/?limit=" + AUDIT_LIMIT);
    } catch (e) {
      if (e instanceof HttpError && e.status === 403) {
        section.hidden = true;
        return;
      }
      throw e;
    }
    section.hidden = false;
    $("audit-note").textContent = `(newest ${rows.length})`;
    fill(
      $("audit"),
      rows.map((r) =>
        el(
          "tr",
          { "data-id": r.id, class: r.status >= 400 ? "error" : "" },
          el("td", {}, when(r.ts_ms / 1000)),
          el("td", { "data-field": "username" }, r.username || "(no token)"),
          el("td", { "data-field": "action" }, r.action),
          el("td", { "data-field": "image" }, r.image_id || ""),
          el("td", { "data-field": "tag" }, r.tag || ""),
          numCell("status", r.status)
        )
      ),
      "empty",
      6
    );
  }

  // ---- loading ----------------------------------------------------------------------------

  async function refresh() {
    document.body.dataset.state = "loading";
    try {
      const [info, ds, stats, revisions, tasks] = await Promise.all([
        api("/info/"),
        api("/datastore/?output=all"),
        api("/datastore/?output=stats"),
        api("/datastore/revisions?limit=" + REVISIONS_LIMIT),
        api("/tasks/"),
      ]);
      const labelsList = renderDatastore(ds, stats, revisions);
      renderRevisions(revisions);
      renderTasks(tasks);
      renderModel(info);
      await renderTraining(info);
      await renderReport(labelsList);
      await renderAudit();
      showError("");
      $("updated").textContent = "updated " + new Date().toLocaleTimeString();
      document.body.dataset.state = "ready";
    } catch (e) {
      if (e instanceof HttpError && e.status === 401) return;
      showError("Could not load the dashboard: " + e.message);
      document.body.dataset.state = "error";
    }
  }

  async function start() {
    showError("");
    if (state.auth) {
      if (!state.token) {
        logout();
        return;
      }
      try {
        state.user = await api("/auth/token/valid");
      } catch (e) {
        return; // api() has shown the login form
      }
      $("user-name").textContent = state.user.username;
      $("user-roles").textContent = (state.user.roles || []).map((r) => r.replace("monailabel-", "")).join(", ");
      $("whoami").hidden = false;
    }
    $("login").hidden = true;
    $("main").hidden = false;
    await refresh();
  }

  async function boot() {
    $("login-form").addEventListener("submit", (e) => login(e).catch((err) => showError(err.message)));
    $("logout").addEventListener("click", () => logout());
    $("refresh").addEventListener("click", () => refresh());
    $("report-select").addEventListener("change", () => {
      document.body.dataset.state = "loading";
      loadReport()
        .then(() => (document.body.dataset.state = "ready"))
        .catch((e) => showError(e.message));
    });
    $("auto-refresh").addEventListener("change", (e) => {
      clearInterval(state.timer);
      state.timer = e.target.checked ? setInterval(refresh, 30000) : null;
    });
    try {
      state.auth = await detectAuth();
    } catch (e) {
      showError("Cannot reach the server: " + e.message);
      document.body.dataset.state = "error";
      return;
    }
    document.body.dataset.auth = state.auth ? "on" : "off";
    await start();
  }

  boot();
})();
