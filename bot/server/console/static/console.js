// supportloop staff console: framework-free, no build step. Pages are rendered by the server as shells;
// this script fills them from the staff and admin JSON APIs with the login cookie and the page's CSRF
// token. Every text that comes from customers, staff or the model is inserted as text (never as HTML).
"use strict";
(() => {
  const app = document.getElementById("app");
  const CSRF = document.querySelector('meta[name="csrf-token"]').content;
  const statusBox = document.getElementById("status");
  const isAdmin = app.dataset.role === "admin";
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2f5bd3", "#c2410c", "#15803d", "#7e22ce", "#b42318", "#0e7490", "#a16207", "#4b5563"];

  // -- small helpers --------------------------------------------------------------------------------
  const h = (tag, attrs = {}, ...kids) => build(document.createElement(tag), attrs, kids);  // an HTML element
  const s = (tag, attrs = {}, ...kids) => build(document.createElementNS(SVG, tag), attrs, kids);  // an SVG one
  function build(el, attrs, kids) {
    setAttrs(el, attrs);
    for (const kid of kids.flat(Infinity)) if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
    return el;
  }
  function setAttrs(el, attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value == null || value === false) continue;
      if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else if (key === "value" || key === "checked") el[key] = value;
      else el.setAttribute(key, value === true ? "" : String(value));
    }
  }
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }
  async function api(method, path, body) {
    const response = await fetch(path, {
      method, credentials: "same-origin",
      headers: { "Accept": "application/json", "Content-Type": "application/json", "X-CSRF-Token": CSRF },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (response.status === 401) {
      location.assign("/staff/login?next=" + encodeURIComponent(location.pathname + location.search));
      throw new ApiError(401, "Your login has ended; log in again.");
    }
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, detail(data.detail) || `${response.status} ${response.statusText}`);
    return data;
  }
  function detail(value) {
    if (typeof value === "string") return value;
    if (Array.isArray(value)) return value.map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.msg}`).join("; ");
    return "";
  }
  function say(text) {
    statusBox.textContent = text;
    clearTimeout(say.timer);
    say.timer = setTimeout(() => { statusBox.textContent = ""; }, 6000);
  }
  function sourcesView(sources) {  // what grounded an answer: links only to http(s) pages, always as text
    if (!sources?.length) return null;
    return h("ul", { class: "sources", "aria-label": "Sources", "data-role": "sources" }, sources.map((x) => h("li", {},
      h("span", { class: "badge" }, x.kind === "correction" ? "staff answer" : "help centre"), " ",
      /^https?:\/\//.test(x.url) ? h("a", { href: x.url, target: "_blank", rel: "noopener noreferrer" }, x.title) : x.title)));
  }
  const when = (iso) => (iso ? new Date(iso).toLocaleString([], { dateStyle: "medium", timeStyle: "short" }) : "—");
  const pct = (rate) => (rate == null ? "—" : `${Math.round(rate * 100)} %`);
  function table(id, headings, rows) {
    return h("table", { id }, h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))), h("tbody", {}, rows));
  }
  function show(content) { app.replaceChildren(...[content].flat().filter((part) => part != null && part !== false)); }
  function failed(err) { show(h("p", { class: "error", role: "alert" }, `Could not load this page: ${err.message}`)); }
  function ask(title, text, { input = null, danger = false } = {}) {  // a modal dialog; resolves to false or the value
    return new Promise((resolve) => {
      const field = input && h("input", { type: "number", min: input.min, max: input.max, step: "any", value: input.value,
        required: true, "aria-label": input.label });
      const dialog = h("dialog", { "aria-labelledby": "dialog-title" },
        h("form", { method: "dialog" }, h("h2", { id: "dialog-title" }, title), h("p", {}, text),
          field && h("label", {}, input.label, " ", field),
          h("div", { class: "actions" }, h("button", { value: "ok", class: danger ? "danger" : "primary" }, "Confirm"),
            h("button", { value: "cancel", formnovalidate: true }, "Cancel"))));
      dialog.addEventListener("close", () => {
        dialog.remove();
        resolve(dialog.returnValue === "ok" && (field ? Number(field.value) : true));
      });
      document.body.append(dialog);
      dialog.showModal();
    });
  }

  // -- charts (inline SVG) --------------------------------------------------------------------------
  function lineChart({ title, series, yMin = 0, yMax = null, formatX = String, formatY = String, xPad = 1, xTicks = null,
    width = 560, height = 230 }) {
    const pad = { left: 46, right: 16, top: 12, bottom: 34 };
    const points = series.flatMap((line) => line.points);
    const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
    const single = Math.min(...xs) === Math.max(...xs);  // one x: centre it in a domain one xPad wide each way
    const x0 = Math.min(...xs) - (single ? xPad : 0), x1 = Math.max(...xs) + (single ? xPad : 0);
    const top = yMax ?? Math.max(...ys) * 1.05, bottom = Math.min(yMin, ...ys);
    const y1 = top === bottom ? bottom + 1 : top;
    const X = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
    const Y = (y) => height - pad.bottom - ((y - bottom) / (y1 - bottom)) * (height - pad.top - pad.bottom);
    const ticks = (a, b) => Array.from({ length: 5 }, (_, i) => a + ((b - a) * i) / 4);
    const xMarks = xTicks ?? [...new Set(ticks(Math.min(...xs), Math.max(...xs)).map(Math.round))];
    const svg = s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": `${title}: ${series.map((l) => `${l.name}, ${l.points.length} points`).join("; ")}` },
      s("title", {}, title),
      ticks(bottom, y1).map((y) => [s("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: Y(y), y2: Y(y) }),
        s("text", { x: pad.left - 6, y: Y(y) + 4, "text-anchor": "end" }, formatY(y))]),
      xMarks.map((x, i) => s("text", { x: X(x), y: height - pad.bottom + 16, "text-anchor": xMarks.length === 1 ? "middle"
        : i === 0 ? "start" : i === xMarks.length - 1 ? "end" : "middle" }, formatX(x))),
      s("line", { class: "axis", x1: pad.left, x2: pad.left, y1: pad.top, y2: height - pad.bottom }),
      s("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: height - pad.bottom, y2: height - pad.bottom }),
      series.map((line) => s("g", { "data-series": line.name },
        line.points.length > 1 && s("polyline", { fill: "none", stroke: line.color, "stroke-width": 2,
          points: line.points.map((p) => `${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`).join(" ") }),
        line.points.map((p) => s("circle", { cx: X(p.x), cy: Y(p.y), r: 3, fill: line.color }, s("title", {}, p.label))))));
    const legend = h("div", { class: "legend" }, series.map((line) =>
      h("span", {}, s("svg", { class: "swatch", width: 10, height: 10, "aria-hidden": "true" },
        s("rect", { width: 10, height: 10, fill: line.color })), line.name)));
    return h("figure", { class: "card" }, h("figcaption", {}, h("b", {}, title)), svg, legend);
  }

  // -- the review queue -----------------------------------------------------------------------------
  const FILTERS = ["reason", "version", "since", "until", "q", "include_reviewed"];
  const queue = { items: [], current: 0, offset: 0, limit: 10, total: 0, names: {}, versions: [] };

  function queueParams() {
    const here = new URLSearchParams(location.search), query = new URLSearchParams();
    for (const key of FILTERS) {
      const value = here.get(key);
      if (!value) continue;
      query.set(key, key === "until" || key === "since" ? dayBound(value, key === "until") : value);
    }
    queue.offset = Math.max(0, Number(here.get("offset")) || 0);
    query.set("offset", queue.offset);
    query.set("limit", queue.limit);
    return query;
  }
  function dayBound(day, end) {  // a date input's day as the UTC instant it starts (or, for "until", ends)
    const start = new Date(`${day}T00:00:00`);
    if (end) start.setDate(start.getDate() + 1);
    return Number.isNaN(start.getTime()) ? day : start.toISOString();
  }

  async function loadQueue() {
    try {
      const page = await api("GET", `/api/review?${queueParams()}`);
      Object.assign(queue, { total: page.total, names: page.names, versions: page.versions, current: 0,
        items: page.items.map((entry) => ({ entry, editing: false, text: null, notice: null, done: null })) });
      renderQueue();
    } catch (err) { failed(err); }
  }

  function filterForm() {
    const here = new URLSearchParams(location.search);
    const field = (label, control) => h("label", {}, label, control);
    const reason = h("select", { name: "reason" }, h("option", { value: "" }, "any"),
      ["wrong", "unhelpful", "outdated", "unsafe", "other"].map((r) => h("option", { value: r }, r)));
    reason.value = here.get("reason") || "";
    const version = h("select", { name: "version" }, h("option", { value: "" }, "any"),
      queue.versions.map((v) => h("option", { value: v }, v)));
    version.value = here.get("version") || "";
    return h("form", { class: "filters card", role: "search", onsubmit: (event) => {
      event.preventDefault();
      const data = new FormData(event.target), next = new URLSearchParams();
      for (const [key, value] of data) if (value) next.set(key, value);
      history.replaceState(null, "", `${location.pathname}?${next}`);
      loadQueue();
    } },
    field("Reason", reason), field("Version", version),
    field("From", h("input", { type: "date", name: "since", value: here.get("since") || "" })),
    field("To", h("input", { type: "date", name: "until", value: here.get("until") || "" })),
    field("Search answers", h("input", { type: "search", name: "q", id: "search", value: here.get("q") || "",
      placeholder: "words in the answer" })),
    h("label", { class: "check" }, h("input", { type: "checkbox", name: "include_reviewed", value: "true",
      checked: here.get("include_reviewed") === "true" }), " include reviewed"),
    h("button", { type: "submit", class: "primary" }, "Filter"));
  }

  function pager() {
    const go = (offset) => {
      const next = new URLSearchParams(location.search);
      next.set("offset", Math.max(0, offset));
      history.replaceState(null, "", `${location.pathname}?${next}`);
      loadQueue();
    };
    const last = Math.min(queue.offset + queue.items.length, queue.total);
    return h("nav", { class: "pager", "aria-label": "Pages" },
      h("button", { onclick: () => go(queue.offset - queue.limit), disabled: queue.offset === 0 }, "← Newer page"),
      h("span", {}, queue.total ? `${queue.offset + 1}–${last} of ${queue.total}` : "Nothing to review"),
      h("button", { onclick: () => go(queue.offset + queue.limit), disabled: last >= queue.total }, "Older page →"));
  }

  const SHORTCUTS = [["j", "next"], ["k", "previous"], ["e", "edit"], ["a", "approve"], ["r", "reject"],
    ["Ctrl+Enter", "approve while editing"], ["Ctrl+S", "save draft"], ["Esc", "cancel edit"], ["/", "search"]];

  function renderQueue() {
    show([filterForm(),
      h("p", { class: "help" }, "Keys: ", SHORTCUTS.map(([key, what], i) => [i ? " · " : "", h("kbd", {}, key), ` ${what}`])),
      pager(), h("div", { id: "queue" }, queue.items.map((item, index) => itemView(item, index))), pager()]);
    if (queue.items.length) select(0, false);
  }

  const KIND = { thumbs_down: "Thumbs down", handoff: "Asked for a human", recent: "Recent answer" };
  const latest = (entry) => entry.corrections.at(-1) || null;
  const openDraft = (entry) => (latest(entry)?.status === "draft" ? latest(entry) : null);
  const name = (id) => queue.names[id] || `staff #${id}`;

  function itemView(item, index) {
    const { entry } = item, draft = openDraft(entry), last = latest(entry);
    const context = entry.context.slice(-4);
    const el = h("article", { class: `card item kind-${entry.kind}${item.done ? " done" : ""}`, tabindex: -1,
      "data-index": index, "data-message": entry.message.id, "aria-label": `${KIND[entry.kind]}: answer ${index + 1}`,
      onclick: () => select(index, false) },
    h("div", { class: "meta" }, h("span", { class: "badge kind" }, KIND[entry.kind]),
      h("span", { class: "badge" }, `version ${entry.message.adapter_version || "—"}`), h("span", {}, when(entry.message.created_at)),
      h("a", { href: `/staff/conversations/${encodeURIComponent(entry.session_id)}` }, "Open conversation")),
    entry.feedback?.thumb === "down" && h("p", { class: "complaint" }, `Customer voted it down: ${entry.feedback.reason || "no reason given"}`,
      entry.feedback.comment ? ` — “${entry.feedback.comment}”` : ""),
    entry.handoff && h("p", { class: "complaint" }, `Customer asked for a human${{ closed: " (closed)", taken: " (an agent has the conversation)" }[entry.handoff.status] || ""}`,
      entry.handoff.note ? `: “${entry.handoff.note}”` : ""),
    h("div", { class: "context", "aria-label": "Conversation before the answer" },
      entry.context.length > context.length && h("p", { class: "muted" }, `… ${entry.context.length - context.length} earlier messages`),
      context.length ? context.map((m) => h("p", { class: "turn" }, h("b", {}, m.role === "user" ? "Customer" : m.role === "agent" ? "Agent" : "Bot"), m.text))
        : h("p", { class: "muted" }, "(the conversation's first answer)")),
    h("h3", { class: "muted" }, "Bot answer"),
    h("div", { class: `answer${last?.status === "approved" ? " original" : ""}`, "data-role": "answer" }, entry.message.text),
    sourcesView(entry.message.sources),
    last && h("p", { class: "corrected-mark" }, correctionLine(last)),
    last && last.status !== "rejected" && h("div", { class: "answer corrected", "data-role": "correction" }, last.text),
    item.editing ? editor(item, draft) : null,
    actions(item, index, draft),
    item.notice && h("p", { class: `notice ${item.notice.kind}`, role: item.notice.kind === "ok" ? "status" : "alert" }, item.notice.text));
    return el;
  }

  function correctionLine(c) {
    if (c.status === "draft") {
      const from = c.origin === "handoff" ? " from handoff (the agent's live replies)" : "";
      return `Draft correction${from} by ${name(c.staff_id)} (revision ${c.revision})`;
    }
    if (c.status === "approved") return `✓ Correction approved by ${name(c.reviewed_by)}`;
    return `Rejected by ${name(c.reviewed_by)}: not used for training`;
  }

  function editor(item, draft) {
    const area = h("textarea", { "aria-label": "Corrected answer", "data-role": "editor",
      value: item.text ?? (draft ? draft.text : item.entry.message.text),
      oninput: (event) => { item.text = event.target.value; } });
    item.text = area.value;
    return h("label", { class: "edit" }, h("span", { class: "muted" }, "Corrected answer"), area);
  }

  function actions(item, index, draft) {
    if (item.done) return h("div", { class: "actions" });
    const act = (mode) => () => save(index, mode);
    return h("div", { class: "actions" },
      !item.editing && h("button", { onclick: () => edit(index), "data-action": "edit" }, "Edit ", h("kbd", {}, "e")),
      item.editing && h("button", { onclick: act("draft"), "data-action": "draft" }, "Save draft ", h("kbd", {}, "Ctrl+S")),
      h("button", { class: "primary", onclick: act("approve"), "data-action": "approve",
        title: item.editing || draft ? "Approve this text as the right answer" : "Approve the answer as it is" },
      item.editing || draft ? "Approve" : "Approve as is", " ", h("kbd", {}, "a")),
      h("button", { class: "danger", onclick: act("reject"), "data-action": "reject",
        title: draft ? "Reject the draft correction" : "Take the answer off the queue without a correction" },
      draft ? "Reject draft" : "Reject", " ", h("kbd", {}, "r")),
      item.editing && h("button", { onclick: () => cancel(index), "data-action": "cancel" }, "Cancel ", h("kbd", {}, "Esc")),
      item.entry.handoff?.status === "open" && h("button", { onclick: () => closeHandoff(index), "data-action": "close-handoff",
        title: "The customer has been helped by a person" }, "Close handoff request"));
  }

  async function closeHandoff(index) {
    const item = queue.items[index];
    try {
      item.entry.handoff = await api("POST", `/api/handoffs/${item.entry.handoff.id}/close`);
      item.notice = { kind: "ok", text: "Handoff request closed." };
    } catch (err) { item.notice = { kind: "failed", text: `Not closed: ${err.message}` }; }
    redraw(index);
  }

  function redraw(index, focusEditor = false) {
    const old = document.querySelector(`#queue [data-index="${index}"]`);
    const fresh = itemView(queue.items[index], index);
    old.replaceWith(fresh);
    fresh.classList.toggle("current", index === queue.current);
    if (focusEditor) fresh.querySelector("textarea")?.focus();
    else if (index === queue.current) fresh.focus({ preventScroll: true });
  }

  function select(index, scroll = true) {
    const items = document.querySelectorAll("#queue .item");
    if (!items.length) return;
    queue.current = Math.max(0, Math.min(index, items.length - 1));
    items.forEach((el, i) => el.classList.toggle("current", i === queue.current));
    const el = items[queue.current];
    if (document.activeElement?.closest?.(".item") !== el) el.focus({ preventScroll: true });
    if (scroll) el.scrollIntoView({ block: "nearest" });
  }

  function edit(index) {
    const item = queue.items[index];
    if (item.done) return;
    queue.current = index;
    item.editing = true;
    redraw(index, true);
  }

  function cancel(index) {
    Object.assign(queue.items[index], { editing: false, text: null });
    redraw(index);
  }

  async function save(index, mode) {
    const item = queue.items[index], { entry } = item;
    if (item.done || item.busy) return;
    const draft = openDraft(entry), text = (item.editing ? item.text : draft?.text ?? entry.message.text).trim();
    if (!text) { item.notice = { kind: "failed", text: "The corrected answer is empty." }; return redraw(index, true); }
    item.busy = true;
    try {
      const saved = await send(entry, draft, text, mode, item.editing);
      const at = entry.corrections.findIndex((c) => c.id === saved.id);
      if (at >= 0) entry.corrections[at] = saved; else entry.corrections.push(saved);
      queue.names[app.dataset.staffId] = app.dataset.staffName;  // the corrections just saved are this member's
      Object.assign(item, { editing: false, text: null, done: mode === "draft" ? null : saved.status,
        notice: { kind: "ok", text: mode === "draft" ? "Draft saved." : `${mode === "approve" ? "Approved" : "Rejected"}: done.` } });
      redraw(index);
      say(item.notice.text);
      if (item.done) select(index + 1);
    } catch (err) {
      item.notice = { kind: err.status === 409 ? "conflict" : "failed",
        text: err.status === 409 ? `Not saved — ${err.message}. Your text is kept here.`
          : `Not saved: ${err.message}` };
      redraw(index, item.editing);
    } finally { item.busy = false; }
  }

  function send(entry, draft, text, mode, edited) {
    const newest = latest(entry), basedOn = newest ? newest.id : 0, message = encodeURIComponent(entry.message.id);
    if (mode === "reject" && draft) return api("POST", `/api/corrections/${draft.id}/reject`, { revision: draft.revision });
    if (mode === "reject") return api("POST", `/api/messages/${message}/corrections`, { text: entry.message.text, reject: true, based_on: basedOn });
    if (!draft) return api("POST", `/api/messages/${message}/corrections`, { text, approve: mode === "approve", based_on: basedOn });
    if (mode === "approve" && (!edited || text === draft.text)) return api("POST", `/api/corrections/${draft.id}/approve`, { revision: draft.revision });
    return api("PATCH", `/api/corrections/${draft.id}`, { text, revision: draft.revision, approve: mode === "approve" });
  }

  function queueKeys(event) {
    const typing = event.target.closest?.("input, textarea, select");
    const mod = event.ctrlKey || event.metaKey, index = queue.current;
    if (!queue.items.length || document.querySelector("dialog[open]")) return;
    if (typing) {
      if (!event.target.matches("[data-role=editor]")) return;
      if (mod && event.key === "Enter") save(index, "approve");
      else if (mod && event.key.toLowerCase() === "s") save(index, "draft");
      else if (event.key === "Escape") cancel(index);
      else return;
      return event.preventDefault();
    }
    if (mod || event.altKey) return;
    const keys = { j: () => select(index + 1), ArrowDown: () => select(index + 1), k: () => select(index - 1),
      ArrowUp: () => select(index - 1), e: () => edit(index), a: () => save(index, "approve"), r: () => save(index, "reject"),
      "/": () => document.getElementById("search").focus() };
    if (!keys[event.key]) return;
    event.preventDefault();
    keys[event.key]();
  }

  // -- one conversation -----------------------------------------------------------------------------
  async function loadConversation() {
    try {
      const convo = await api("GET", `/api/conversations/${encodeURIComponent(app.dataset.conversation)}`);
      const staffName = (id) => convo.names[id] || `staff #${id}`;
      show([h("p", { class: "muted" }, `Session ${convo.id} · `, h("a", { href: "/staff" }, "back to the queue")),
        h("ol", { class: "transcript", "aria-label": "Messages" }, convo.messages.map((m) => turnView(m, staffName))),
        convo.handoffs.length ? h("section", {}, h("h2", {}, "Handoff requests"),
          convo.handoffs.map((x) => h("p", { class: "card" }, `${when(x.created_at)} · ${x.status}`, x.note ? ` — “${x.note}”` : ""))) : null]);
    } catch (err) { failed(err); }
  }

  function turnView(m, staffName) {
    const approved = m.corrections.filter((c) => c.status === "approved").at(-1);
    return h("li", { class: `card turn-${m.role}`, "data-message": m.id },
      h("div", { class: "meta" }, h("b", {}, m.role === "user" ? "Customer" : m.role === "agent" ? "Agent" : "Bot"), h("span", {}, when(m.created_at)),
        m.adapter_version && h("span", { class: "badge" }, `version ${m.adapter_version}`),
        m.feedback && h("span", {}, `voted ${m.feedback.thumb}${m.feedback.reason ? `: ${m.feedback.reason}` : ""}`,
          m.feedback.comment ? ` — “${m.feedback.comment}”` : "")),
      approved ? [h("p", { class: "corrected-mark" }, `✓ Corrected — approved by ${staffName(approved.reviewed_by)} ${when(approved.reviewed_at)}`),
        h("div", { class: "answer corrected", "data-role": "correction" }, approved.text),
        h("details", {}, h("summary", {}, "The bot's original answer"), h("div", { class: "answer original", "data-role": "answer" }, m.text))]
        : h("div", { class: "answer", "data-role": "answer" }, m.text),
      sourcesView(m.sources),
      m.corrections.filter((c) => c !== approved).map((c) => h("p", { class: "muted" },
        `${c.status === "draft" ? "Draft" : c.status === "approved" ? "Earlier approved correction" : "Rejected"} by `
        + `${staffName(c.reviewed_by || c.staff_id)}: `, h("span", { class: "turn" }, c.text))));
  }

  // -- adapters (admin) -----------------------------------------------------------------------------
  const adapters = { following: null, shown: null };  // the round followed now, and the last one shown

  async function loadAdapters() {
    try {
      const [list, votes, runs] = await Promise.all([api("GET", "/api/admin/adapters"), api("GET", "/api/admin/adapters/votes"),
        api("GET", "/api/admin/train?limit=5")]);
      show([servingPanel(list), trainingPanel(runs), h("h2", {}, "Versions"), versionsTable(list),
        h("h2", {}, "Charts"), h("div", { class: "charts", id: "charts" }, rateChart(votes, list), lossCharts(list))]);
      const log = document.querySelector("#run pre.log");
      if (log) log.scrollTop = log.scrollHeight;
      const running = runs.find((r) => !r.finished_at);
      if (running && adapters.following !== running.run_id) follow(running.run_id);
    } catch (err) { failed(err); }
  }

  function servingPanel(list) {
    const c = list.canary;
    return h("section", { class: "card", "aria-label": "Serving" },
      h("p", {}, "Active version: ", h("b", { id: "active-version" }, list.active), ` · this server serves ${list.serving}`),
      c ? h("p", { id: "canary" }, `Canary: ${c.version} answers ${c.percent} % of new sessions since ${when(c.started_at)}. `,
        canaryVerdict(c)) : h("p", { class: "muted" }, "No canary running."),
      h("div", { class: "actions" },
        h("button", { onclick: () => change("Roll back", "Serve the previously active version again?", "/api/admin/adapters/rollback") },
          "Roll back"),
        c && h("button", { onclick: () => change("Stop the canary", `Stop serving ${c.version} to part of the customers?`,
          "/api/admin/adapters/canary/stop") }, "Stop canary")));
  }

  function canaryVerdict(c) {
    const v = c.verdict || {};
    return `Thumbs down so far: canary ${v.canary_down} of ${v.canary_votes} votes, active ${v.active_down} of ${v.active_votes}`
      + (v.p_value != null ? ` (p = ${v.p_value.toFixed(3)})` : ` (judged from ${c.rule?.min_votes ?? 20} votes each)`) + ".";
  }

  async function change(title, text, path, body = {}) {
    if (!(await ask(title, text))) return;
    try {
      await api("POST", path, body);
      say(`${title}: done.`);
    } catch (err) { say(`${title} failed: ${err.message}`); }
    loadAdapters();
  }

  function versionsTable(list) {
    const row = (v) => h("tr", { "data-version": v.version },
      h("td", {}, h("b", {}, v.version), " ", h("span", { class: `badge st-${v.status}` }, v.status),
        v.canary_percent != null && h("span", { class: "badge" }, ` canary ${v.canary_percent} %`)),
      h("td", {}, v.parent || "—"), h("td", {}, when(v.created_at)),
      h("td", {}, Object.entries(v.datasets || {}).map(([m, d]) => `${m} ${d.examples ?? "?"}`).join(" · ") || "—"),
      h("td", {}, gateView(v.metrics?.gate)),
      h("td", {}, v.metrics?.train_loss_final != null ? `loss ${v.metrics.train_loss_final.toFixed(3)}` : "—",
        v.metrics?.examples != null ? ` · ${v.metrics.examples} examples` : ""),
      h("td", {}, `${v.live.messages} answers · ${v.live.thumbs_up} up, ${v.live.thumbs_down} down · ${pct(v.live.thumbs_up_rate)} up`),
      h("td", {}, h("div", { class: "actions" },
        v.status !== "active" && !(v.version === "base" && list.active === "base") && h("button", { onclick: () => promote(v) }, "Promote"),
        v.status !== "active" && v.version !== "base" && h("button", { onclick: () => startCanary(v) }, "Canary…"))));
    return table("versions", ["Version", "Parent", "Created", "Datasets", "Gate", "Training", "Since served", ""],
      list.versions.map(row));
  }

  function gateView(gate) {
    if (!gate) return "—";
    const failedChecks = (gate.checks || []).filter((c) => !c.passed);
    return h("details", {}, h("summary", {}, gate.passed ? "passed" : `failed (${failedChecks.length})`),
      h("ul", {}, (gate.checks || []).map((c) => h("li", {}, `${c.passed ? "✓" : "✗"} ${c.name}: ${c.detail}`))));
  }

  function promote(v) {
    const forced = v.status === "rejected";
    change(`Promote ${v.version}`, forced ? `The evaluation gate rejected ${v.version}. Serve it to every customer anyway? `
      + "This is recorded with your name." : `Serve ${v.version} to every customer from now on?`,
    `/api/admin/adapters/${encodeURIComponent(v.version)}/promote`, { force: forced });
  }

  async function startCanary(v) {
    const percent = await ask(`Canary ${v.version}`, "Share of new sessions it answers; it is rolled back automatically if "
      + "customers like it significantly less.", { input: { label: "Percent", min: 1, max: 100, value: 10 } });
    if (percent === false) return;
    try {
      await api("POST", `/api/admin/adapters/${encodeURIComponent(v.version)}/canary`, { percent, force: v.status === "rejected" });
      say(`Canary ${v.version} at ${percent} %.`);
    } catch (err) { say(`Canary failed: ${err.message}`); }
    loadAdapters();
  }

  function rateChart(votes, list) {
    const order = list.versions.map((v) => v.version).reverse();
    const series = Object.entries(votes.series).sort(([a], [b]) => order.indexOf(a) - order.indexOf(b))
      .map(([version, points], i) => ({ name: version, color: COLORS[i % COLORS.length],
        points: points.map((p) => ({ x: Date.parse(p.t), y: p.up / (p.up + p.down),
          label: `${version} ${when(p.t)}: ${p.up} up, ${p.down} down` })) }));
    if (!series.length) return h("p", { class: "card muted", id: "rate-chart" }, "No votes yet: the thumbs-up-rate chart appears with the first vote.");
    const fmt = votes.bucket === "hour" ? { hour: "2-digit", minute: "2-digit" } : { month: "short", day: "numeric" };
    const times = [...new Set(series.flatMap((line) => line.points.map((p) => p.x)))].sort((a, b) => a - b);
    const step = Math.max(1, Math.ceil(times.length / 6));
    const chart = lineChart({ title: `Thumbs-up rate per ${votes.bucket}`, series, yMax: 1, formatY: (y) => `${Math.round(y * 100)}%`,
      formatX: (x) => new Date(x).toLocaleString([], fmt), xPad: votes.bucket === "hour" ? 3600e3 : 86400e3,
      xTicks: times.filter((_, i) => i % step === 0) });
    chart.id = "rate-chart";
    return chart;
  }

  function lossCharts(list) {
    return list.versions.filter((v) => Object.values(v.metrics?.losses || {}).some((l) => l.length)).map((v) => {
      const series = Object.entries(v.metrics.losses).filter(([, l]) => l.length).map(([method, losses], i) => ({
        name: method, color: COLORS[i % COLORS.length],
        points: losses.map((loss, step) => ({ x: step + 1, y: loss, label: `${method} step ${step + 1}: loss ${loss.toFixed(4)}` })) }));
      const chart = lineChart({ title: `Training loss · ${v.version}`, series, yMin: Infinity, formatY: (y) => y.toFixed(2),
        formatX: (x) => `step ${Math.round(x)}` });
      chart.dataset.lossChart = v.version;
      return chart;
    });
  }

  function trainingPanel(runs) {
    const methods = h("select", { id: "methods", "aria-label": "Methods" },
      [["auto", "auto (from the feedback)"], ["sft", "SFT"], ["dpo", "DPO"], ["kto", "KTO"], ["sft,dpo", "SFT then DPO"]]
        .map(([value, label]) => h("option", { value }, label)));
    return h("section", { class: "card", "aria-label": "Training" }, h("h2", {}, "Training"),
      h("div", { class: "actions" }, methods, h("button", { class: "primary", id: "train", onclick: async () => {
        try {
          const started = await api("POST", "/api/admin/train", { methods: methods.value });
          say(`Round ${started.run_id} started.`);
          loadAdapters();  // lists the new round and follows it
        } catch (err) { say(`Could not start a round: ${err.message}`); }
      } }, "Start a training round")),
      h("div", { id: "run" }, adapters.shown && runView(adapters.shown)), runsTable(runs));
  }

  function runsTable(runs) {
    if (!runs.length) return h("p", { class: "muted" }, "No training rounds yet.");
    return table("runs", ["Round", "Outcome", "Started", "Finished", "Version"], runs.map((r) => h("tr", {},
      h("td", {}, h("button", { onclick: () => follow(r.run_id) }, `#${r.run_id}`)), h("td", {}, r.outcome),
      h("td", {}, when(r.started_at)), h("td", {}, when(r.finished_at)), h("td", {}, r.adapter_version || "—"))));
  }

  async function follow(runId) {  // the round's progress and log, live, until it finishes
    adapters.following = runId;
    while (adapters.following === runId) {
      let run;
      try { run = await api("GET", `/api/admin/train/${runId}`); } catch (err) { say(`Round ${runId}: ${err.message}`); return; }
      const box = document.getElementById("run");
      if (!box) return;
      adapters.shown = run;
      box.replaceChildren(runView(run));
      const log = box.querySelector("pre");
      log.scrollTop = log.scrollHeight;
      if (run.finished_at) {
        adapters.following = null;
        say(`Round ${runId} finished: ${run.outcome}${run.adapter_version ? ` (${run.adapter_version})` : ""}.`);
        return loadAdapters();
      }
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  function runView(run) {
    const p = run.progress || {};
    return h("div", { class: "card", "data-run": run.run_id, "data-outcome": run.outcome },
      h("p", {}, h("b", {}, `Round ${run.run_id}: ${run.outcome}`), ` · phase ${p.phase || "—"}`,
        p.steps ? [` · step ${p.step} of ${p.steps} `, h("progress", { max: p.steps, value: p.step })] : "",
        run.adapter_version ? ` · version ${run.adapter_version}` : "",
        run.gate ? ` · gate ${run.gate.passed ? "passed" : "failed"}` : ""),
      h("pre", { class: "log", "aria-label": "Round log", tabindex: 0 }, run.log.join("\n") || "(no output yet)"));
  }

  // -- knowledge base (admin) ----------------------------------------------------------------------
  const KB_TYPES = ".md,.markdown,.html,.htm,.txt,.csv,.jsonl";
  const OUTCOME = { quote: "quoted word for word", grounded: "the model answers from these passages",
    no_answer: "the bot says it does not know and offers a person", unchanged: "the model answers alone (nothing to search)" };

  async function loadKnowledge() {
    try {
      const sources = await api("GET", "/api/admin/knowledge");
      show([uploadForm(), h("h2", {}, "Sources"), sources.length ? sourcesTable(sources)
        : h("p", { class: "muted" }, "No knowledge base yet: upload help-centre pages or an FAQ file."),
      h("h2", {}, "What would be retrieved"), kbSearchForm(), h("div", { id: "kb-results" })]);
    } catch (err) { failed(err); }
  }

  async function upload(path, form) {  // multipart: the browser sets the boundary; the CSRF token as for JSON
    const response = await fetch(path, { method: "POST", credentials: "same-origin", body: form,
      headers: { "Accept": "application/json", "X-CSRF-Token": CSRF } });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new ApiError(response.status, detail(data.detail) || `${response.status} ${response.statusText}`);
    return data;
  }

  function uploadForm() {
    return h("form", { class: "card filters", "aria-label": "Upload to the knowledge base", onsubmit: async (event) => {
      event.preventDefault();
      const button = event.target.querySelector("button");
      button.disabled = true;
      say("Uploading and embedding…");
      try {
        const added = await upload("/api/admin/knowledge", new FormData(event.target));
        await loadKnowledge();
        say(`${added.source}: ${added.added} added, ${added.replaced} replaced, ${added.unchanged} unchanged (${added.passages} passages).`);
      } catch (err) { button.disabled = false; say(`Nothing was added: ${err.message}`); }
    } },
    h("label", {}, "Source", h("input", { name: "source", required: true, maxlength: 200, value: "help-centre" })),
    h("label", {}, "Files", h("input", { name: "files", type: "file", multiple: true, required: true, accept: KB_TYPES })),
    h("button", { type: "submit", class: "primary" }, "Upload"));
  }

  function sourcesTable(sources) {
    return table("kb-sources", ["Source", "Documents", "Passages", "Updated", ""], sources.map((x) =>
      h("tr", { "data-source": x.source }, h("td", {}, x.source), h("td", {}, x.documents), h("td", {}, x.passages),
        h("td", {}, when(x.updated_at)), h("td", {}, h("button", { class: "danger", onclick: async () => {
          if (!await ask(`Remove ${x.source}?`, `Its ${x.documents} documents stop grounding answers at once.`, { danger: true })) return;
          try { await api("DELETE", `/api/admin/knowledge/${encodeURIComponent(x.source)}`); say(`${x.source} removed.`); }
          catch (err) { say(`Not removed: ${err.message}`); }
          loadKnowledge();
        } }, "Remove")))));
  }

  function kbSearchForm() {
    return h("form", { class: "card filters", role: "search", onsubmit: async (event) => {
      event.preventDefault();
      const q = new FormData(event.target).get("q");
      const out = document.getElementById("kb-results");
      try {
        const found = await api("GET", `/api/admin/knowledge/search?${new URLSearchParams({ q })}`);
        out.replaceChildren(h("p", { "data-role": "outcome" }, h("b", {}, "The bot would: "), OUTCOME[found.outcome]),
          table("kb-hits", ["Score", "Passage", "Text"], found.hits.map((x) => h("tr", {
            class: x.score >= found.kb_min_score ? "" : "muted" }, h("td", {}, x.score.toFixed(3)),
          h("td", {}, x.title, x.quotable ? h("small", { class: "badge" }, "Q&A") : ""), h("td", {}, x.text)))));
      } catch (err) { out.replaceChildren(h("p", { class: "error", role: "alert" }, err.message)); }
    } },
    h("label", {}, "A customer's question", h("input", { name: "q", required: true, maxlength: 2000, size: 60 })),
    h("button", { type: "submit" }, "Search"));
  }

  // -- team (admin) ---------------------------------------------------------------------------------
  async function loadTeam(created = null) {
    try {
      const [staff, actions] = await Promise.all([api("GET", "/api/staff"), api("GET", "/api/audit?limit=30")]);
      const names = Object.fromEntries(staff.map((m) => [m.id, m.name]));
      show([created && tokenPanel(created), addStaffForm(), h("h2", {}, "Staff"), staffTable(staff),
        h("h2", {}, "Recent actions"), auditTable(actions, names)]);
      if (created) app.querySelector(".token")?.focus();
    } catch (err) { failed(err); }
  }

  function tokenPanel(created) {
    const token = h("output", { class: "token", tabindex: 0, "aria-label": `Token of ${created.name}` }, created.token);
    return h("section", { class: "card", role: "alert" }, h("h2", {}, `Token for ${created.name}`),
      h("p", {}, "Shown only now: copy it and give it to them. Only its hash is stored; a lost token means a new account."),
      token, h("div", { class: "actions" }, h("button", { onclick: async () => {
        try { await navigator.clipboard.writeText(created.token); say("Copied."); } catch { say("Select the token and copy it."); }
      } }, "Copy")));
  }

  function addStaffForm() {
    return h("form", { class: "card filters", "aria-label": "Add a staff member", onsubmit: async (event) => {
      event.preventDefault();
      const data = new FormData(event.target);
      try {
        loadTeam(await api("POST", "/api/staff", { name: data.get("name"), role: data.get("role") }));
      } catch (err) { say(`Not added: ${err.message}`); }
    } },
    h("label", {}, "Name", h("input", { name: "name", required: true, maxlength: 128, autocomplete: "off" })),
    h("label", {}, "Role", h("select", { name: "role" }, h("option", { value: "agent" }, "agent"), h("option", { value: "admin" }, "admin"))),
    h("button", { type: "submit", class: "primary" }, "Add staff member"));
  }

  function staffTable(staff) {
    const update = async (member, body, what) => {
      try { await api("PATCH", `/api/staff/${member.id}`, body); say(`${member.name}: ${what}.`); } catch (err) { say(`Not changed: ${err.message}`); }
      loadTeam();
    };
    return table("staff", ["Name", "Role", "Status", "Since", ""], staff.map((m) => {
      const role = h("select", { "aria-label": `Role of ${m.name}`, onchange: (e) => update(m, { role: e.target.value }, `now ${e.target.value}`) },
        ["agent", "admin"].map((r) => h("option", { value: r }, r)));
      role.value = m.role;
      return h("tr", { "data-staff": m.name }, h("td", {}, m.name), h("td", {}, role), h("td", {}, m.disabled ? "disabled" : "active"),
        h("td", {}, when(m.created_at)), h("td", {}, h("button", { class: m.disabled ? "" : "danger",
          onclick: () => update(m, { disabled: !m.disabled }, m.disabled ? "enabled" : "disabled") }, m.disabled ? "Enable" : "Disable")));
    }));
  }

  function auditTable(actions, names) {
    return table("audit", ["When", "Who", "Action", "Target"], actions.map((a) => h("tr", {}, h("td", {}, when(a.created_at)),
      h("td", {}, names[a.staff_id] || `#${a.staff_id}`), h("td", {}, a.action), h("td", {}, a.target))));
  }

  // -- start ----------------------------------------------------------------------------------------
  window.supportloopConsole = { h, api, say, show, failed, when };  // for the pages' own scripts (inbox.js)
  const pages = { queue: loadQueue, conversation: loadConversation, adapters: loadAdapters, knowledge: loadKnowledge, team: loadTeam };
  const ownScript = { inbox: true };  // pages whose script starts itself
  if (app.dataset.page === "queue") document.addEventListener("keydown", queueKeys);
  if (ownScript[app.dataset.page]) return;
  if (!isAdmin && app.dataset.page !== "queue" && app.dataset.page !== "conversation") failed(new Error("admins only"));
  else pages[app.dataset.page]();
})();
