/* supportloop chat widget: the <support-chat> custom element and its loader. No dependencies.
 *
 * Embed:  <script src="https://HOST/widget.js" data-server="https://HOST" data-title="Help" async></script>
 * The loader adds one <support-chat> to the page with the script's data-* attributes (server defaults to
 * the script's origin; data-title becomes chat-title); data-embed="false" only defines the element.
 * Theming: attributes chat-title, accent, font, position (right|left), launcher-icon, theme (auto|light|dark),
 * and CSS custom properties --sc-*.
 * UI strings: the `strings` property or a JSON `strings` attribute (data-strings on the script).
 * Events (bubbling, composed): support-chat:open, support-chat:message, support-chat:feedback.
 */
(() => {
  "use strict";
  const STRINGS = {
    title: "Support", open: "Chat with us", close: "Close chat", placeholder: "Type your question…", send: "Send",
    connecting: "Connecting…", online: "Online", offline: "You are offline; we will reconnect and send your messages.",
    typing: "The assistant is typing…", helpful: "Helpful", unhelpful: "Not helpful", why: "What was wrong?",
    wrong: "Wrong", outdated: "Outdated", unsafe: "Unsafe", other: "Other", reasonUnhelpful: "Unhelpful",
    comment: "Anything to add? (optional)", submit: "Send feedback", thanks: "Thank you for your feedback.",
    sources: "Sources", human: "Talk to a human",
    queued: "waiting to send", failed: "Something went wrong. Please try again.",
    waiting: "A person will join shortly.", position: "You are number {n} in the queue.",
    joined: "{name} joined the conversation.", agentTyping: "{name} is typing…",
    handedBack: "{name} handed you back to the assistant.", agentClosed: "{name} closed the conversation.",
    leaveEmail: "Leave your email and we will write back.", email: "Your email", emailSend: "Send",
    emailDone: "Thanks, we will write to {name}.",
  };
  const REASONS = ["wrong", "unhelpful", "outdated", "unsafe", "other"];
  const STORE = "supportloop-session:";
  const CSS = `
:host{all:initial;--a:var(--sc-accent,#2457d6);--bg:var(--sc-bg,#fff);--fg:var(--sc-fg,#1d2230);--mu:var(--sc-muted,#667085);
--bd:var(--sc-border,#d9dce3);--ub:var(--sc-user-bg,var(--a));--uf:var(--sc-user-fg,#fff);--ab:var(--sc-bot-bg,#f1f3f7);
position:fixed;bottom:20px;right:20px;z-index:2147483000}
.panel,.launcher{font:15px/1.45 var(--sc-font,system-ui,-apple-system,"Segoe UI",sans-serif);color:var(--fg)}
:host([position=left]){right:auto;left:20px}
:host([theme=dark]){--bg:var(--sc-bg,#181b22);--fg:var(--sc-fg,#e8eaf0);--mu:var(--sc-muted,#9aa3b5);--bd:var(--sc-border,#353a46);--ab:var(--sc-bot-bg,#262a34)}
@media (prefers-color-scheme:dark){:host(:not([theme=light])){--bg:var(--sc-bg,#181b22);--fg:var(--sc-fg,#e8eaf0);--mu:var(--sc-muted,#9aa3b5);--bd:var(--sc-border,#353a46);--ab:var(--sc-bot-bg,#262a34)}}
*{box-sizing:border-box;font:inherit;color:inherit}
button{cursor:pointer;border:0;background:none;padding:0}
button:focus-visible,textarea:focus-visible{outline:2px solid var(--a);outline-offset:2px}
.launcher{width:56px;height:56px;border-radius:50%;background:var(--a);color:#fff;font-size:26px;box-shadow:0 4px 14px #0003;display:grid;place-items:center}
.launcher svg{width:28px;height:28px}.launcher img{width:32px;height:32px;border-radius:50%}.votes svg{width:14px;height:14px;vertical-align:-2px}
.panel{position:absolute;bottom:70px;right:0;width:min(380px,calc(100vw - 40px));height:min(580px,calc(100vh - 110px));background:var(--bg);
border:1px solid var(--bd);border-radius:14px;box-shadow:0 12px 40px #0003;display:flex;flex-direction:column;overflow:hidden}
:host([position=left]) .panel{right:auto;left:0}
.panel[hidden]{display:none}
header{display:flex;align-items:center;gap:8px;padding:12px 14px;background:var(--a);color:#fff}
header h2{margin:0;font-size:16px;font-weight:600;flex:1}
.state{font-size:12px;opacity:.9}
header button{color:#fff;font-size:20px;width:28px;height:28px;border-radius:6px}
.log{flex:1;overflow-y:auto;padding:12px;display:flex;flex-direction:column;gap:8px}
.msg{max-width:85%;padding:8px 11px;border-radius:12px;white-space:pre-wrap;overflow-wrap:anywhere}
.user{align-self:flex-end;background:var(--ub);color:var(--uf)}
.assistant{align-self:flex-start;background:var(--ab)}
.assistant ul,.assistant ol{margin:4px 0;padding-left:20px;white-space:normal}
.assistant a{color:var(--a)}
.note{align-self:center;font-size:12px;color:var(--mu);text-align:center}
.queued{opacity:.65}
.votes{display:flex;gap:6px;margin-top:4px;flex-wrap:wrap;align-items:center}
.votes button,.chip{border:1px solid var(--bd);border-radius:999px;padding:2px 9px;font-size:13px;background:var(--bg)}
.votes button[aria-pressed=true],.chip[aria-pressed=true]{border-color:var(--a);background:var(--a);color:#fff}
.why{display:flex;flex-direction:column;gap:6px;margin-top:6px}
.why textarea{border:1px solid var(--bd);border-radius:8px;padding:6px;background:var(--bg);min-height:44px;resize:vertical}
.submit{align-self:flex-start;background:var(--a);color:#fff;border-radius:8px;padding:4px 10px;font-size:13px}
.typing{font-size:12px;color:var(--mu);padding:0 14px 4px;min-height:18px}
form{display:flex;gap:8px;padding:10px;border-top:1px solid var(--bd)}
textarea.input{flex:1;border:1px solid var(--bd);border-radius:10px;padding:8px;resize:none;height:40px;background:var(--bg)}
form button{background:var(--a);color:#fff;border-radius:10px;padding:0 14px}
.sources{align-self:flex-start;max-width:85%;margin:-4px 0 0;padding:0 0 0 4px;list-style:none;font-size:12px;color:var(--mu)}
.sources a{color:var(--a)}
.agent{align-self:flex-start;background:var(--bg);border:1px solid var(--a)}
.who{display:block;font-size:11px;font-weight:600;color:var(--a)}
.contact{display:flex;gap:6px;align-self:stretch}
.contact input{flex:1;border:1px solid var(--bd);border-radius:8px;padding:6px;background:var(--bg)}
.contact button{background:var(--a);color:#fff;border-radius:8px;padding:0 10px}
.human{font-size:12px;color:var(--mu);text-decoration:underline;padding:0 14px 8px;align-self:flex-start}
@media (max-width:480px){.panel{position:fixed;inset:0;width:100vw;height:100vh;border-radius:0;border:0}}`;

  const el = (tag, attrs = {}, ...kids) => {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) k === "text" ? (node.textContent = v) : node.setAttribute(k, v);
    node.append(...kids);
    return node;
  };

  const ICONS = {  // Material icons (Apache-2.0): no emoji font is needed on the visitor's machine
    chat: "M20 2H4c-1.1 0-2 .9-2 2v18l4-4h14c1.1 0 2-.9 2-2V4c0-1.1-.9-2-2-2z",
    up: "M1 21h4V9H1v12zm22-11c0-1.1-.9-2-2-2h-6.31l.95-4.57.03-.32c0-.41-.17-.79-.44-1.06L14.17 1 7.59 7.59C7.22 7.95 7 8.45 7 9v10c0 1.1.9 2 2 2h9c.83 0 1.54-.5 1.84-1.22l3.02-7.05c.09-.23.14-.47.14-.73v-2z",
  };
  function icon(name, flip = false) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    if (flip) svg.setAttribute("transform", "rotate(180)");
    const path = document.createElementNS(ns, "path");
    path.setAttribute("d", ICONS[name]);
    path.setAttribute("fill", "currentColor");
    svg.append(path);
    return svg;
  }

  /** Model and user text as DOM: line breaks, "- " / "1. " lists, http(s) links; never HTML. */
  function format(text) {
    const out = document.createDocumentFragment();
    let list = null;
    text.split("\n").forEach((line, i, lines) => {
      const item = line.match(/^\s*(?:[-*•]|(\d+)[.)])\s+(.*)$/);
      if (item) {
        const kind = item[1] ? "ol" : "ul";
        if (!list || list.tagName.toLowerCase() !== kind) out.append(list = el(kind));
        list.append(linkify(el("li"), item[2]));
        return;
      }
      list = null;
      linkify(out, line);
      if (i < lines.length - 1) out.append(el("br"));
    });
    return out;
  }

  function linkify(parent, text) {
    let last = 0;
    for (const match of text.matchAll(/https?:\/\/[^\s<>"')\]]+/g)) {
      let url;
      try { url = new URL(match[0]); } catch { continue; }
      if (url.protocol !== "http:" && url.protocol !== "https:") continue;
      parent.append(text.slice(last, match.index),
        el("a", { href: url.href, target: "_blank", rel: "noopener noreferrer", text: match[0] }));
      last = match.index + match[0].length;
    }
    parent.append(text.slice(last));
    return parent;
  }

  class SupportChat extends HTMLElement {
    static observedAttributes = ["chat-title", "launcher-icon", "accent", "font", "strings"];
    #root = this.attachShadow({ mode: "open" });
    #ui = {};
    #ws = null;
    #live = false;
    #retries = 0;
    #timer = 0;
    #outbox = [];
    #answer = null;
    #busy = false;
    #ready = false; // a session frame arrived on the current connection
    #warned = false;
    #agent = null; // the name of the person handling the conversation, while one does
    #typedAt = 0;
    #typingLater = null;
    #contact = null; // the "leave your email" form, while shown
    #waiting = null; // the "a person will join shortly" note, updated as the queue moves
    #strings = {};

    static define(name = "support-chat") {
      if (!customElements.get(name)) customElements.define(name, this);
      return this;
    }

    get strings() { return { ...STRINGS, ...this.#strings }; }
    set strings(value) { this.#strings = { ...value }; if (this.#ui.log) this.#render(); }
    get server() { return (this.getAttribute("server") || location.origin).replace(/\/+$/, ""); }
    // The session's id and secret (the secret comes once, with a new session; reading the transcript,
    // voting, asking for a person and resuming need it). Kept for this tab, per server.
    get #saved() {
      try {
        const saved = JSON.parse(sessionStorage.getItem(STORE + this.server));
        return saved && typeof saved === "object" ? saved : {};
      } catch { return {}; }
    }
    get sessionId() { return this.#saved.id || null; }
    #keep(id, token) { sessionStorage.setItem(STORE + this.server, JSON.stringify({ id, token })); }
    #headers(json = true) {
      const headers = { "X-Session-Token": this.#saved.token || "" };
      if (json) headers["Content-Type"] = "application/json";
      return headers;
    }

    connectedCallback() {
      if (!this.#ui.log) this.#render();
      this.#live = true;
      this.#connect();
      if (this.sessionId) this.#restore(this.sessionId);
    }

    disconnectedCallback() {
      this.#live = false;
      clearTimeout(this.#timer);
      this.#ws?.close();
      this.#ws = null;
    }

    attributeChangedCallback(name, _old, value) {
      if (name === "strings") { try { this.#strings = JSON.parse(value || "{}"); } catch { this.#strings = {}; } }
      if (name === "accent" && value) this.style.setProperty("--sc-accent", value);
      if (name === "font" && value) this.style.setProperty("--sc-font", value);
      if (this.#ui.log) this.#labels();
    }

    open(show = true) {
      this.#ui.panel.hidden = !show;
      this.#ui.launcher.setAttribute("aria-expanded", String(show));
      if (show) {
        this.#ui.input.focus();
        this.#emit("open", { open: true });
      } else this.#ui.launcher.focus();
    }

    #render() {
      const s = this.strings;
      const ui = this.#ui;
      ui.launcher = el("button", { class: "launcher", "aria-expanded": "false", "aria-controls": "panel" });
      ui.title = el("h2", { id: "title" });
      ui.state = el("span", { class: "state", role: "status" });
      ui.close = el("button", { "aria-label": s.close, text: "×" });
      ui.log = el("div", { class: "log", role: "log", "aria-live": "polite", "aria-relevant": "additions" });
      ui.typing = el("div", { class: "typing", "aria-live": "polite" });
      ui.input = el("textarea", { class: "input", rows: "1", "aria-label": s.placeholder });
      ui.send = el("button", { type: "submit", text: s.send });
      ui.human = el("button", { class: "human", type: "button", text: s.human });
      ui.form = el("form", {}, ui.input, ui.send);
      ui.panel = el("div", { class: "panel", id: "panel", role: "dialog", "aria-labelledby": "title", hidden: "" },
        el("header", {}, ui.title, ui.state, ui.close), ui.log, ui.typing, ui.human, ui.form);
      this.#root.replaceChildren(el("style", { text: CSS }), ui.panel, ui.launcher);
      ui.launcher.addEventListener("click", () => this.open(ui.panel.hidden));
      ui.close.addEventListener("click", () => this.open(false));
      ui.panel.addEventListener("keydown", (e) => e.key === "Escape" && this.open(false));
      ui.form.addEventListener("submit", (e) => { e.preventDefault(); this.#submit(); });
      ui.input.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); this.#submit(); }
      });
      ui.human.addEventListener("click", () => this.#handoff());
      ui.input.addEventListener("input", () => this.#typed());
      this.#labels();
      this.#setState(this.#ws ? "online" : "connecting");
    }

    #labels() {
      const s = this.strings;
      const title = this.getAttribute("chat-title") || s.title;
      this.#ui.title.textContent = title;
      const custom = this.getAttribute("launcher-icon");
      this.#ui.launcher.replaceChildren(!custom ? icon("chat") : /^https?:\/\//.test(custom)
        ? el("img", { src: custom, alt: "" }) : custom);
      this.#ui.launcher.setAttribute("aria-label", s.open);
      this.#ui.input.placeholder = s.placeholder;
    }

    #setState(state) {
      this.#ui.state.textContent = this.strings[state];
      this.#ui.panel.dataset.state = state;
    }

    #emit(name, detail) {
      this.dispatchEvent(new CustomEvent(`support-chat:${name}`, { detail, bubbles: true, composed: true }));
    }

    #warn(...args) {
      if (!this.#warned) console.warn("support-chat:", ...args);
      this.#warned = true;
    }

    // ---- connection ---------------------------------------------------------------------------------
    #connect() {
      if (!this.#live) return;
      const ws = new WebSocket(this.server.replace(/^http/, "ws") + "/ws/chat");
      this.#ws = ws;
      ws.onopen = () => ws.send(JSON.stringify({
        type: "hello", protocol: 2, session_id: this.sessionId, session_token: this.#saved.token || null,
      }));
      ws.onmessage = (e) => this.#frame(e.data);
      ws.onclose = () => {
        if (this.#ws !== ws) return;
        this.#ws = null;
        this.#ready = false;
        this.#answerEnded();
        if (!this.#live) return;
        this.#setState("offline");
        const delay = Math.min(30000, 500 * 2 ** this.#retries++) * (0.75 + Math.random() / 2);
        this.#timer = setTimeout(() => this.#connect(), delay);
      };
    }

    #frame(raw) {
      let frame;
      try { frame = JSON.parse(raw); } catch { return this.#warn("ignored a malformed frame"); }
      const handler = {
        session: () => this.#session(frame), token: () => this.#token(frame),
        done: () => this.#done(frame), error: () => this.#error(frame),
        received: () => { this.#answerEnded(); this.#flush(); },
        handoff: () => this.#handoffState(frame), agent_joined: () => this.#agentJoined(frame),
        agent_message: () => this.#agentMessage(frame), agent_left: () => this.#agentLeft(frame),
        agent_typing: () => { this.#ui.typing.textContent = this.#fill("agentTyping", frame.name); },
      }[frame && frame.type];
      if (!handler) return this.#warn("ignored an unknown frame", frame && frame.type);
      handler();
    }

    #session(frame) {
      if (typeof frame.session_id !== "string") return this.#warn("ignored a session frame without an id");
      if (typeof frame.session_token === "string") this.#keep(frame.session_id, frame.session_token);
      else if (frame.session_id !== this.sessionId) this.#keep(frame.session_id, null);  // a server without secrets
      this.#ready = true;
      this.#retries = 0;
      this.#setState("online");
      this.#flush();
    }

    #token(frame) {
      if (typeof frame.text !== "string") return this.#warn("ignored a token frame without text");
      if (!this.#answer) this.#answer = this.#bubble("assistant", "");
      this.#answer.textContent += frame.text;
      this.#ui.typing.textContent = "";
      this.#scroll();
    }

    #done(frame) {
      const bubble = this.#answer || this.#bubble("assistant", "");
      const text = bubble.textContent;
      bubble.replaceChildren(format(text));
      if (typeof frame.message_id === "string") {
        bubble.dataset.messageId = frame.message_id;
        bubble.dataset.version = frame.adapter_version || "";
        bubble.after(this.#votes(frame.message_id));
      }
      this.#sources(bubble, frame.sources);
      this.#emit("message", { role: "assistant", text, messageId: frame.message_id, version: frame.adapter_version });
      this.#answerEnded();
      this.#flush();
    }

    #error(frame) {
      if (frame.code === "unknown_session") return; // a new session follows; the transcript stays on screen
      this.#note(typeof frame.message === "string" ? frame.message : this.strings.failed);
      this.#answerEnded();
      this.#flush();
    }

    // ---- a person handling the conversation (protocol 2) ------------------------------------------------
    #fill(key, name, n) {
      return this.strings[key].replace("{name}", String(name || "")).replace("{n}", String(n ?? ""));
    }

    #handoffState(frame) {
      if (frame.status === "taken") return this.#agentJoined({ name: frame.agent });
      if (frame.available === false) return this.#offline(String(frame.message || ""));
      const position = Number.isInteger(frame.position) ? " " + this.#fill("position", "", frame.position) : "";
      if (this.#waiting?.isConnected) this.#waiting.textContent = this.strings.waiting + position;  // the queue moved
      else this.#waiting = this.#note(this.strings.waiting + position);
    }

    #agentJoined(frame) {
      if (this.#agent === String(frame.name || "")) return;
      this.#agent = String(frame.name || "");
      this.#waiting = null;
      this.#note(this.#fill("joined", this.#agent));
    }

    /** Nobody can come now: say why, and offer to leave an email (the request stays in the queue). */
    #offline(message) {
      if (this.#contact?.isConnected) return;
      const s = this.strings;
      const input = el("input", { type: "email", required: "", maxlength: "254", autocomplete: "email", "aria-label": s.email, placeholder: s.email });
      const form = el("form", { class: "contact" }, input, el("button", { type: "submit", text: s.emailSend }));
      form.addEventListener("submit", async (e) => {
        e.preventDefault();
        try {
          const reply = await fetch(`${this.server}/api/sessions/${encodeURIComponent(this.sessionId)}/contact`, {
            method: "POST", headers: this.#headers(), body: JSON.stringify({ email: input.value.trim() }),
          });
          if (!reply.ok) throw new Error(this.strings.failed);
          form.replaceWith(el("div", { class: "note", role: "status", text: this.#fill("emailDone", (await reply.json()).email) }));
        } catch (exc) { this.#note(exc.message || this.strings.failed); }
      });
      this.#note(`${message} ${s.leaveEmail}`.trim());
      this.#contact = form;
      this.#ui.log.append(form);
      this.#scroll();
    }

    #agentMessage(frame) {
      if (typeof frame.text !== "string") return this.#warn("ignored an agent message without text");
      this.#agent = String(frame.name || this.#agent || "");
      this.#personBubble(frame.text, this.#agent);
      this.#ui.typing.textContent = "";
      this.#emit("message", { role: "agent", text: frame.text, messageId: frame.message_id, name: this.#agent });
    }

    #agentLeft(frame) {
      this.#agent = null;
      this.#ui.typing.textContent = "";
      this.#note(this.#fill(frame.reason === "closed" ? "agentClosed" : "handedBack", frame.name));
    }

    /** A person's message: their name and the text, always as text (never HTML), and no votes. */
    #personBubble(text, name) {
      const bubble = el("div", { class: "msg agent" }, el("span", { class: "who", text: String(name || "") }), text);
      this.#ui.log.append(bubble);
      this.#scroll();
      return bubble;
    }

    /** Tell the person that the customer is typing: at most every 1.5 s, the last keystroke included. */
    #typed() {
      if (!this.#agent || this.#typingLater) return;
      const wait = this.#typedAt + 1500 - Date.now();
      if (wait > 0) { this.#typingLater = setTimeout(() => { this.#typingLater = null; this.#typed(); }, wait); return; }
      this.#typedAt = Date.now();
      if (this.#ws?.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify({ type: "typing" }));
    }

    #answerEnded() {
      this.#answer = null;
      this.#busy = false;
      this.#ui.typing.textContent = "";
    }

    // ---- sending ------------------------------------------------------------------------------------
    #submit() {
      const text = this.#ui.input.value.trim();
      if (!text) return;
      this.#ui.input.value = "";
      const bubble = this.#bubble("user", text);
      bubble.classList.add("queued");
      bubble.title = this.strings.queued;
      this.#outbox.push({ text, bubble });
      this.#emit("message", { role: "user", text });
      this.#flush();
    }

    #flush() {
      if (this.#busy || !this.#ready || !this.#outbox.length || this.#ws?.readyState !== WebSocket.OPEN) return;
      const { text, bubble } = this.#outbox.shift();
      this.#busy = true;
      this.#ws.send(JSON.stringify({ type: "user_message", text }));
      bubble.classList.remove("queued");
      bubble.removeAttribute("title");
      this.#ui.typing.textContent = this.#agent ? "" : this.strings.typing;
    }

    // ---- transcript -------------------------------------------------------------------------------
    #bubble(role, text) {
      const bubble = el("div", { class: `msg ${role}` });
      bubble.append(role === "assistant" ? format(text) : text);
      this.#ui.log.append(bubble);
      this.#scroll();
      return bubble;
    }

    /** The pages an answer came from, under it: titles as text, links only to http(s) addresses. */
    #sources(bubble, sources) {
      if (!Array.isArray(sources) || !sources.length) return;
      const list = el("ul", { class: "sources", "aria-label": this.strings.sources });
      for (const source of sources) {
        const title = String((source && source.title) || "");
        let url = null;
        try { url = source.url ? new URL(String(source.url)) : null; } catch { url = null; }
        const item = el("li");
        if (url && (url.protocol === "http:" || url.protocol === "https:")) {
          item.append(el("a", { href: url.href, target: "_blank", rel: "noopener noreferrer", text: title || url.href }));
        } else item.append(title);
        list.append(item);
      }
      bubble.after(list);  // between the answer and its votes
    }

    #note(text) {
      const note = el("div", { class: "note", role: "status", text });
      this.#ui.log.append(note);
      this.#scroll();
      return note;
    }

    #scroll() { this.#ui.log.scrollTop = this.#ui.log.scrollHeight; }

    async #restore(id) {
      if (this.#ui.log.childElementCount) return;
      try {
        const reply = await fetch(`${this.server}/api/sessions/${encodeURIComponent(id)}`, { headers: this.#headers(false) });
        if (!reply.ok) return;
        for (const m of (await reply.json()).messages || []) {
          if (m.role === "agent") { this.#personBubble(String(m.text || ""), m.author); continue; }
          const bubble = this.#bubble(m.role === "user" ? "user" : "assistant", String(m.text || ""));
          if (m.role === "assistant" && m.id) bubble.after(this.#votes(m.id, m.feedback && m.feedback.thumb));
          if (m.role === "assistant") this.#sources(bubble, m.sources);
        }
      } catch { /* offline: the transcript comes back with the connection */ }
    }

    // ---- feedback -----------------------------------------------------------------------------------
    #votes(messageId, given) {
      const s = this.strings;
      const up = el("button", { "aria-label": s.helpful, "aria-pressed": String(given === "up") }, icon("up"));
      const down = el("button", { "aria-label": s.unhelpful, "aria-pressed": String(given === "down") }, icon("up", true));
      const row = el("div", { class: "votes" }, up, down);
      up.addEventListener("click", () => this.#vote(row, messageId, { thumb: "up" }, up, down));
      down.addEventListener("click", () => {
        this.#vote(row, messageId, { thumb: "down" }, down, up);
        if (!row.querySelector(".why")) row.append(this.#why(row, messageId));
      });
      return row;
    }

    #why(row, messageId) {
      const s = this.strings;
      const label = { ...s, unhelpful: s.reasonUnhelpful };
      let reason = null;
      const chips = REASONS.map((r) => el("button", { class: "chip", "aria-pressed": "false", "data-reason": r, text: label[r] }));
      const comment = el("textarea", { "aria-label": s.comment, placeholder: s.comment, maxlength: "2000" });
      const submit = el("button", { class: "submit", text: s.submit });
      const box = el("div", { class: "why", role: "group", "aria-label": s.why }, el("span", { text: s.why }),
        el("div", { class: "votes" }, ...chips), comment, submit);
      chips.forEach((chip) => chip.addEventListener("click", () => {
        reason = chip.dataset.reason;
        chips.forEach((c) => c.setAttribute("aria-pressed", String(c === chip)));
      }));
      submit.addEventListener("click", async () => {
        const body = { thumb: "down", reason, comment: comment.value.trim() || null };
        if (await this.#vote(row, messageId, body)) box.replaceWith(el("span", { class: "note", text: s.thanks }));
      });
      return box;
    }

    async #vote(row, messageId, body, pressed, other) {
      pressed?.setAttribute("aria-pressed", "true");
      other?.setAttribute("aria-pressed", "false");
      try {
        const reply = await fetch(`${this.server}/api/messages/${encodeURIComponent(messageId)}/feedback`, {
          method: "POST", headers: this.#headers(), body: JSON.stringify(body),
        });
        if (!reply.ok) throw new Error((await reply.json()).detail || reply.statusText);
        this.#emit("feedback", { messageId, ...body });
        return true;
      } catch (exc) {
        this.#note(`${this.strings.failed} ${exc.message || ""}`.trim());
        return false;
      }
    }

    async #handoff() {
      const id = this.sessionId;
      if (!id) return this.#note(this.strings.failed);
      try {
        const reply = await fetch(`${this.server}/api/sessions/${encodeURIComponent(id)}/handoff`, {
          method: "POST", headers: this.#headers(), body: "{}",
        });
        if (!reply.ok) return this.#note(this.strings.failed);
        const asked = await reply.json();
        if (asked.status === "taken" || this.#ws?.readyState === WebSocket.OPEN) return;  // the socket says it
        const position = Number.isInteger(asked.position) ? " " + this.#fill("position", "", asked.position) : "";
        this.#note(this.strings.waiting + position);
      } catch { this.#note(this.strings.failed); }
    }
  }

  SupportChat.define();
  window.SupportChat = SupportChat;

  // ---- the loader: one <support-chat> per embedding script ----------------------------------------------
  const script = document.currentScript;
  if (!script || !script.src || script.dataset.embed === "false") return;
  const mount = () => {
    const chat = document.createElement("support-chat");
    chat.setAttribute("server", script.dataset.server || new URL(script.src, location.href).origin);
    for (const [key, value] of Object.entries(script.dataset)) {
      const name = key === "title" ? "chat-title" : key.replace(/[A-Z]/g, (c) => "-" + c.toLowerCase());
      if (key !== "server" && key !== "embed") chat.setAttribute(name, value);
    }
    document.body.append(chat);
  };
  document.body ? mount() : document.addEventListener("DOMContentLoaded", mount);
})();
