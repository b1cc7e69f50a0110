// supportloop staff console, the Inbox page: customers who asked for a person, live (the /ws/staff socket),
// the longest-waiting first; take one over, chat with the customer, hand back to the bot or close.
// Helpers come from console.js. Every text from customers and staff is inserted as text, never as HTML.
"use strict";
(() => {
  const { h, api, say, show, failed } = window.supportloopConsole;
  const app = document.getElementById("app");
  const me = { id: Number(app.dataset.staffId), name: app.dataset.staffName, admin: app.dataset.role === "admin" };
  const state = { requests: [], open: null, shown: new Set(), socket: null, retries: 0, typedAt: 0, typingLater: null, typingTimer: null };
  const ui = {
    list: h("ul", { id: "inbox", class: "inbox", "aria-label": "Customers waiting for a person" }),
    chat: h("section", { id: "live-chat", class: "card live", "aria-label": "Conversation", hidden: true }),
  };

  const waited = (seconds) => (seconds < 60 ? `${Math.floor(seconds)} s` : `${Math.floor(seconds / 60)} min ${Math.floor(seconds % 60)} s`);
  const since = (iso) => (Date.now() - new Date(iso).getTime()) / 1000;

  async function refresh() {
    try { state.requests = await api("GET", "/api/handoffs"); } catch (err) { return failed(err); }
    const waiting = state.requests.filter((r) => r.status === "open").length;
    document.title = `${waiting ? `(${waiting}) ` : ""}Inbox · supportloop staff`;
    ui.list.replaceChildren(...(state.requests.length ? state.requests.map(requestView)
      : [h("li", { class: "muted" }, "Nobody is waiting for a person.")]));
    if (state.open && !state.requests.some((r) => r.id === state.open.id && r.agent === me.name)) closeChat("The conversation left your hands.");
  }

  function requestView(r) {
    const mine = r.agent === me.name, taken = r.status === "taken";
    const age = h("span", { class: "age", "data-since": r.created_at }, taken ? `waited ${waited(r.waiting_s)}` : `waiting ${waited(since(r.created_at))}`);
    if (taken) age.removeAttribute("data-since");
    return h("li", { class: `request card${mine ? " mine" : ""}`, "data-handoff": r.id, "data-status": r.status },
      h("div", {}, h("b", {}, `Session ${r.session_id.slice(0, 8)}`), " · ", age,
        taken ? h("span", { class: "badge owner" }, mine ? "yours" : `taken by ${r.agent}`) : h("span", { class: "badge" }, `#${r.position} in queue`)),
      r.note && h("p", { class: "note" }, r.note),
      r.contact_email && h("p", { class: "note", "data-role": "contact" }, "Left an email to write back to: ", h("b", {}, r.contact_email)),
      h("div", { class: "actions" },
        mine ? h("button", { class: "primary", "data-action": "open", onclick: () => openChat(r) }, "Open")
          : h("button", { class: "primary", "data-action": "take", onclick: () => take(r, taken && me.admin) },
            taken && me.admin ? "Reassign to me" : "Take over")));
  }

  async function take(r, reassign) {
    try {
      const taken = await api("POST", `/api/handoffs/${r.id}/take`, reassign ? { reassign: true } : {});
      await refresh();
      openChat(taken);
    } catch (err) { say(`Not taken: ${err.message}`); refresh(); }
  }

  // -- the conversation ---------------------------------------------------------------------------
  async function openChat(r) {
    if (state.open && state.open.session_id !== r.session_id) watch("unwatch", state.open.session_id);
    state.open = r;
    state.shown = new Set();
    const log = h("div", { id: "chat-log", class: "chat-log", role: "log", "aria-live": "polite" });
    const typing = h("p", { id: "customer-typing", class: "muted typing", "aria-live": "polite" });
    const reply = h("textarea", { id: "reply", "aria-label": "Your reply to the customer", maxlength: 4000,
      placeholder: "Write to the customer (Enter sends, Shift+Enter for a new line)", oninput: typed, onkeydown: (event) => {
        if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); send(reply); }
      } });
    ui.chat.replaceChildren(h("h2", {}, `Session ${r.session_id.slice(0, 8)}`), log, typing, reply,
      h("div", { class: "actions" },
        h("button", { class: "primary", "data-action": "send", onclick: () => send(reply) }, "Send"),
        h("button", { "data-action": "hand-back", onclick: () => end(r, "hand-back", "Handed back to the bot.") }, "Hand back to the bot"),
        h("button", { class: "danger", "data-action": "close", onclick: () => end(r, "close", "Conversation closed.") }, "Close conversation")));
    ui.chat.hidden = false;
    watch("watch", r.session_id);
    try {
      const found = await api("GET", `/api/conversations/${encodeURIComponent(r.session_id)}`);
      found.messages.forEach((m) => turn(m.id, m.role, m.text, m.staff_id ? found.names[m.staff_id] : null));
    } catch (err) { say(`Transcript not loaded: ${err.message}`); }
    reply.focus();
  }

  function turn(id, role, text, author) {
    if (id && state.shown.has(id)) return;
    if (id) state.shown.add(id);
    const who = role === "user" ? "Customer" : role === "agent" ? author || "Agent" : "Bot";
    const log = document.getElementById("chat-log");
    log?.append(h("p", { class: `turn ${role}`, "data-message": id || "" }, h("b", {}, who), " ", text));
    if (log) log.scrollTop = log.scrollHeight;
  }

  async function send(box) {
    const text = box.value.trim();
    if (!text || !state.open) return;
    try {
      const sent = await api("POST", `/api/handoffs/${state.open.id}/messages`, { text });
      box.value = "";
      turn(sent.message_id, "agent", text, me.name);
    } catch (err) { say(`Not sent: ${err.message}`); }
  }

  function typed() {  // at most every 1.5 s, the last keystroke included
    if (!state.open || state.typingLater) return;
    const wait = state.typedAt + 1500 - Date.now();
    if (wait > 0) { state.typingLater = setTimeout(() => { state.typingLater = null; typed(); }, wait); return; }
    state.typedAt = Date.now();
    watch("typing", state.open.session_id);
  }

  async function end(r, action, done) {
    try {
      await api("POST", `/api/handoffs/${r.id}/${action}`);
      closeChat(done);
      refresh();
    } catch (err) { say(`Not done: ${err.message}`); }
  }

  function closeChat(message) {
    if (state.open) watch("unwatch", state.open.session_id);
    state.open = null;
    ui.chat.hidden = true;
    ui.chat.replaceChildren();
    say(message);
  }

  // -- the live socket ----------------------------------------------------------------------------
  function watch(type, sessionId) {
    if (state.socket?.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify({ type, session_id: sessionId }));
  }

  function connect() {
    const socket = new WebSocket(location.origin.replace(/^http/, "ws") + "/ws/staff");
    state.socket = socket;
    socket.onopen = () => { state.retries = 0; if (state.open) watch("watch", state.open.session_id); refresh(); };
    socket.onmessage = (event) => live(JSON.parse(event.data));
    socket.onclose = () => {
      if (state.socket !== socket) return;
      setTimeout(connect, Math.min(30000, 500 * 2 ** state.retries++));
    };
  }

  function live(event) {
    const here = state.open && event.session_id === state.open.session_id;
    if (event.type === "inbox") refresh();
    else if (event.type === "customer_message" && here) { turn(event.message_id, "user", event.text); showTyping(""); }
    else if (event.type === "agent_message" && here) turn(event.message_id, "agent", event.text, event.name);
    else if (event.type === "customer_typing" && here) showTyping("The customer is typing…");
    else if (event.type === "error") say(event.message);
  }

  function showTyping(text) {
    const box = document.getElementById("customer-typing");
    if (box) box.textContent = text;
    clearTimeout(state.typingTimer);
    if (text) state.typingTimer = setTimeout(() => showTyping(""), 3000);
  }

  setInterval(() => {  // waiting times tick
    for (const age of ui.list.querySelectorAll("[data-since]")) age.textContent = `waiting ${waited(since(age.dataset.since))}`;
  }, 1000);
  show([h("div", { class: "inbox-page" }, ui.list, ui.chat)]);
  connect();
})();
