"""The widget in real Chromium (Debian's package, driven by Python playwright through
`executable_path`; never a browser download): a host page on another origin embeds the one script tag,
with hostile CSS of its own. Screenshots go to $SUPPORTLOOP_ARTIFACTS (default: test-artifacts/)."""

from __future__ import annotations

import json
import threading

import httpx
import pytest
from sqlmodel import select
from websockets.sync.client import connect

from bot.server.app import create_app
from feedback import handoffs, repo
from feedback.models import Feedback, Reason, StaffRole, Thumb
from tests.support.common import ARTIFACTS, needs_chromium, wait_until
from tests.support.fakes import FakeGenerator, HashEmbedder
from tests.support.grounding import add_page
from tests.support.hostsite import host_site
from tests.support.services import LiveServer, free_port

pytestmark = needs_chromium


@pytest.fixture
def fake() -> FakeGenerator:
    return FakeGenerator(delay=0.02)


@pytest.fixture
def bot(settings, store, fake):
    with LiveServer(create_app(settings, generator=fake, store=store)) as server:
        wait_until(lambda: server.server.started)
        yield server


@pytest.fixture
def page(browser, bot, request):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors
    with host_site(bot.url) as url:
        page.goto(url)
        page.locator("support-chat").wait_for(state="attached")
        yield page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"widget-{request.node.name}.png"))
    context.close()


def _open(page):
    page.locator("support-chat .launcher").click()
    page.locator("support-chat .panel[data-state=online]").wait_for()


def _ask(page, text: str):
    page.locator("support-chat textarea.input").fill(text)
    page.locator("support-chat textarea.input").press("Enter")


def _answers(page):
    return page.locator("support-chat .msg.assistant")


def test_a_customer_on_another_origin_asks_and_sees_the_streamed_answer(page, fake):
    fake.enqueue("Check-in is from 3 pm.\n- bring your ID\n- see https://example.com/help for more")
    events = page.evaluate_handle("""() => { const seen = [];
        for (const name of ["open", "message", "feedback"])
            document.addEventListener("support-chat:" + name, (e) => seen.push(name));
        return seen; }""")
    _open(page)
    _ask(page, "When is check-in?")
    page.locator("support-chat .msg.assistant[data-message-id]").wait_for()
    answer = _answers(page).first
    assert answer.locator("li").all_text_contents() == ["bring your ID", "see https://example.com/help for more"]
    link = answer.locator("a")
    assert (
        link.get_attribute("href") == "https://example.com/help" and link.get_attribute("rel") == "noopener noreferrer"
    )
    assert page.locator("support-chat .msg.user").text_content() == "When is check-in?"
    assert events.json_value() == ["open", "message", "message"]
    assert page.errors == []


def test_a_thumbs_down_with_a_reason_lands_in_the_store(page, store):
    _open(page)
    _ask(page, "Is there parking?")
    page.locator("support-chat .msg.assistant[data-message-id]").wait_for()
    message_id = _answers(page).first.get_attribute("data-message-id")
    page.get_by_role("button", name="Not helpful").click()
    page.locator("support-chat .chip[data-reason=outdated]").click()
    page.locator("support-chat .why textarea").fill("The prices changed last year.")
    page.get_by_role("button", name="Send feedback").click()
    page.get_by_text("Thank you for your feedback.").wait_for()
    with store.session() as s:
        vote = s.exec(select(Feedback).where(Feedback.message_id == message_id)).one()
    assert (vote.thumb, vote.reason, vote.comment) == (Thumb.down, Reason.outdated, "The prices changed last year.")


def test_model_html_stays_inert_text(page, fake):
    hostile = '<img src=x onerror="window.pwned=1"> <script>window.pwned=2</script> <a href="javascript:alert(1)">x</a>'
    fake.enqueue(hostile)
    _open(page)
    _ask(page, "hi")
    page.locator("support-chat .msg.assistant[data-message-id]").wait_for()
    answer = _answers(page).first
    assert answer.text_content() == hostile
    assert answer.locator("img, script, a").count() == 0
    assert page.evaluate("() => window.pwned") is None


def test_the_host_pages_css_does_not_restyle_the_widget(page):
    _open(page)
    style = page.locator("support-chat textarea.input").evaluate(
        "e => { const s = getComputedStyle(e); return [s.color, s.fontFamily]; }"
    )
    assert style[0] != "rgb(255, 0, 0)" and style[1] != "serif"
    assert page.locator("support-chat form button").is_visible()  # the host hides every <button> of its own
    assert not page.locator("#own").is_visible()


def test_a_phone_gets_the_full_screen_panel(page):
    page.set_viewport_size({"width": 375, "height": 667})
    _open(page)
    box = page.locator("support-chat .panel").bounding_box()
    assert (box["x"], box["y"], box["width"], box["height"]) == (0, 0, 375, 667)
    assert page.locator("support-chat .panel").get_attribute("role") == "dialog"
    assert page.locator("support-chat .log").get_attribute("aria-live") == "polite"


def test_the_widget_reconnects_after_a_server_restart_and_keeps_the_transcript(browser, settings, store, fake):
    port = free_port()
    context = browser.new_context()
    page = context.new_page()
    with LiveServer(create_app(settings, generator=fake, store=store), port=port) as bot, host_site(bot.url) as url:
        page.goto(url)
        _open(page)
        _ask(page, "first question")
        page.locator("support-chat .msg.assistant[data-message-id]").wait_for()
        kept = page.evaluate(f"() => sessionStorage.getItem('supportloop-session:{bot.url}')")
        session = json.loads(kept)["id"]
        assert len(json.loads(kept)["token"]) >= 43  # the session's secret, kept with its id
    page.locator("support-chat .panel[data-state=offline]").wait_for()
    _ask(page, "asked while offline")  # queued until the server is back
    with LiveServer(create_app(settings, generator=FakeGenerator(), store=store), port=port):  # a new process's
        wait_until(lambda: _answers(page).count() == 2, timeout=40)
        assert page.locator("support-chat .msg.user").all_text_contents() == ["first question", "asked while offline"]
        assert page.evaluate(f"() => sessionStorage.getItem('supportloop-session:http://127.0.0.1:{port}')") == kept
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "widget-reconnected.png"))
    context.close()
    from feedback import repo

    with store.session() as s:  # both questions went to the same session
        assert [m.text for m in repo.list_messages(s, conversation_id=session) if m.role.value == "user"] == [
            "first question",
            "asked while offline",
        ]


def test_another_customer_s_session_id_in_the_widget_s_storage_opens_nothing(page, bot, fake, store):
    fake.enqueue("Your order ships Monday.", "An answer for you.")
    other = httpx.post(f"{bot.url}/api/chat", json={"message": "Where is my order 5531?"}).json()
    key = f"supportloop-session:{bot.url}"
    page.evaluate(  # another customer's id, without their secret (seen in a log or a shared link)
        "([key, id]) => sessionStorage.setItem(key, JSON.stringify({ id, token: 'guess' }))",
        [key, other["session_id"]],
    )
    page.reload()
    _open(page)
    _ask(page, "Hello")
    page.locator("support-chat .msg.assistant[data-message-id]").wait_for()  # answered, whole
    assert page.locator("support-chat .msg").all_text_contents()[-1].startswith("An answer for you.")
    assert "5531" not in page.locator("support-chat .log").text_content()  # nothing of the other session
    kept = json.loads(page.evaluate("(key) => sessionStorage.getItem(key)", key))
    assert kept["id"] != other["session_id"] and kept["token"] != "guess"  # a session of its own, with its secret
    down = page.locator("support-chat .votes button[aria-label='Not helpful']")
    down.first.click()  # the widget votes with its own secret
    wait_until(lambda: _votes(store) == 1)


def _votes(store) -> int:
    with store.session() as s:
        return len(s.exec(select(Feedback)).all())


def test_an_unreachable_server_shows_offline_without_flooding_the_console(browser):
    context = browser.new_context()
    page = context.new_page()
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    with host_site(f"http://127.0.0.1:{free_port()}", own_copy=True) as url:  # nothing listens there
        page.goto(url)
        page.locator("support-chat .launcher").click()
        page.locator("support-chat .panel[data-state=offline]").wait_for()
        assert "offline" in page.locator("support-chat .state").text_content()
        page.wait_for_timeout(4000)
        assert len(errors) <= 6, errors  # backoff: a handful of failed attempts, not a flood
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "widget-offline.png"))
    context.close()


def test_oversized_input_shows_the_servers_reason(page, settings):
    _open(page)
    _ask(page, "x" * (settings.max_message_chars + 1))
    note = page.locator("support-chat .note").first
    note.wait_for()
    assert f"the limit is {settings.max_message_chars}" in note.text_content()


def test_malformed_frames_from_the_server_are_ignored_with_one_warning(browser):
    import json

    from websockets.sync.server import serve

    def chat(ws):
        ws.recv()  # hello
        for junk in ("not json", '{"type": "surprise"}', '{"type": "token"}', "[1, 2]"):
            ws.send(junk)
        ws.send(json.dumps({"type": "session", "session_id": "s1"}))
        ws.recv()  # the customer's message
        ws.send(json.dumps({"type": "token", "text": "still fine"}))
        ws.send(json.dumps({"type": "done", "message_id": "m1", "adapter_version": "base"}))
        ws.recv()  # until the page goes

    port = free_port()
    with serve(chat, "127.0.0.1", port) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        context = browser.new_context()
        page = context.new_page()
        logged = []
        page.on("console", lambda m: logged.append((m.type, m.text)))
        with host_site(f"http://127.0.0.1:{port}", own_copy=True) as url:
            page.goto(url)
            _open(page)
            _ask(page, "hello?")
            page.locator("support-chat .msg.assistant[data-message-id=m1]").wait_for()
            assert _answers(page).first.text_content() == "still fine"
        context.close()
        server.shutdown()
    assert [kind for kind, _ in logged if kind in ("warning", "error")] == ["warning"], logged


def test_theming_strings_and_keyboard(browser, bot):
    context = browser.new_context(color_scheme="dark")
    page = context.new_page()
    page.goto(bot.url + "/")  # the demo page: the widget embedded like on a customer's site
    page.locator("support-chat").wait_for(state="attached")
    page.evaluate("""() => { const chat = document.querySelector("support-chat");
        chat.setAttribute("accent", "rgb(10, 120, 60)"); chat.setAttribute("position", "left");
        chat.setAttribute("launcher-icon", "?"); chat.strings = {send: "Envoyer", title: "Aide"}; }""")
    launcher = page.locator("support-chat .launcher")
    assert launcher.text_content() == "?" and launcher.bounding_box()["x"] < 100  # bottom left
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # the launcher, from the keyboard
    panel = page.locator("support-chat .panel")
    panel.wait_for()
    assert (
        page.locator("support-chat header").evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(10, 120, 60)"
    )
    assert panel.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(24, 27, 34)"  # dark mode
    assert page.locator("support-chat form button").text_content() == "Envoyer"
    assert page.evaluate("() => document.activeElement.shadowRoot.activeElement.className") == "input"
    page.keyboard.press("Escape")
    assert panel.is_hidden() and launcher.get_attribute("aria-expanded") == "false"
    assert page.evaluate("() => document.activeElement.shadowRoot.activeElement.className") == "launcher"
    page.screenshot(path=str(ARTIFACTS / "widget-themed.png"))
    context.close()


def test_talk_to_a_human_is_stored_and_a_removed_widget_disconnects(page, store, bot):

    _open(page)
    _ask(page, "I need a person")
    page.locator("support-chat .msg.assistant[data-message-id]").wait_for()
    page.get_by_role("button", name="Talk to a human").click()  # no staff console is connected
    page.get_by_text("Nobody from our team is online right now. Leave your email and we will write back.").wait_for()
    email = page.locator("support-chat form.contact input[type=email]")
    email.fill("jo@example.com")
    email.press("Enter")
    page.get_by_text("Thanks, we will write to jo@example.com.").wait_for()
    page.screenshot(path=str(ARTIFACTS / "widget-offline.png"))
    with store.session() as s:
        assert [h.contact_email for h in handoffs.list_handoffs(s)] == ["jo@example.com"]
    sockets = lambda: [c for c in bot.server.server_state.connections if "websocket" in type(c).__name__.lower()]  # noqa: E731
    assert len(sockets()) == 1
    page.evaluate("() => document.querySelector('support-chat').remove()")
    wait_until(lambda: not sockets(), timeout=10)  # removed from the page: it hung up and does not come back
    page.wait_for_timeout(1500)
    assert not sockets()


def test_a_person_takes_over_chats_as_text_and_hands_back_to_the_bot(page, store, bot, fake):
    with store.session() as s:
        token = repo.create_staff(s, name="Bob <i>", role=StaffRole.agent)[1]
    staff = {"Authorization": f"Bearer {token}"}
    console = connect(bot.url.replace("http", "ws") + "/ws/staff", additional_headers=staff)  # someone is online
    json.loads(console.recv(timeout=10))
    _open(page)
    _ask(page, "I need a person")
    page.locator("support-chat .msg.assistant[data-message-id]").wait_for()
    page.get_by_role("button", name="Talk to a human").click()
    page.get_by_text("You are number 1 in the queue.").wait_for()
    handoff = httpx.get(f"{bot.url}/api/handoffs", headers=staff).json()[0]
    assert httpx.post(f"{bot.url}/api/handoffs/{handoff['id']}/take", headers=staff).status_code == 200
    page.get_by_text("Bob <i> joined the conversation.").wait_for()
    _ask(page, "Hello?")
    conversation = f"{bot.url}/api/conversations/{handoff['session_id']}"
    wait_until(lambda: len(httpx.get(conversation, headers=staff).json()["messages"]) == 3)
    answered = len(fake.requests)
    hostile = '<img src=x onerror="window.pwned=1"> call us'
    sent = httpx.post(f"{bot.url}/api/handoffs/{handoff['id']}/messages", json={"text": hostile}, headers=staff)
    assert sent.status_code == 201
    person = page.locator("support-chat .msg.agent")
    person.wait_for()
    assert person.locator(".who").text_content() == "Bob <i>"
    assert person.text_content() == "Bob <i>" + hostile  # shown as text: no element made from it
    assert person.locator("img").count() == 0 and page.evaluate("() => window.pwned") is None
    assert page.locator("support-chat .msg.agent + .votes").count() == 0  # no thumbs on a person's message
    assert len(fake.requests) == answered  # the bot did not answer "Hello?"
    httpx.post(f"{bot.url}/api/handoffs/{handoff['id']}/hand-back", headers=staff)
    page.get_by_text("Bob <i> handed you back to the assistant.").wait_for()
    _ask(page, "Thanks")
    wait_until(lambda: _answers(page).count() == 2)
    page.screenshot(path=str(ARTIFACTS / "widget-handoff.png"))
    console.close()


def test_a_reloaded_page_shows_the_sessions_transcript_and_votes(page):
    _open(page)
    _ask(page, "Do you have a gym?")
    page.locator("support-chat .msg.assistant[data-message-id]").wait_for()
    page.get_by_role("button", name="Helpful", exact=True).click()
    page.wait_for_timeout(300)
    page.reload()
    _open(page)
    page.locator("support-chat .msg.assistant").wait_for()
    assert page.locator("support-chat .msg").all_text_contents() == ["Do you have a gym?", "Happy to help."]
    assert page.get_by_role("button", name="Helpful", exact=True).get_attribute("aria-pressed") == "true"


HOSTILE_TITLE = '<img src=x onerror="window.pwned=1"> Ashley Hotel'


def test_an_answer_shows_its_sources_as_text_links_and_again_after_a_reload(browser, settings, store, fake, tmp_path):
    embedder = HashEmbedder()
    page_text = f"# {HOSTILE_TITLE}\n\n## Parking\n\nFree parking behind the hotel.\n"
    add_page(store, embedder, tmp_path, "ashley.md", page_text, url="https://help.example.com/ashley")
    fake.enqueue("Yes, free parking behind the hotel.")
    grounded = settings.model_copy(update={"kb_min_score": 0.1})
    context = browser.new_context()
    page = context.new_page()
    with (
        LiveServer(create_app(grounded, generator=fake, store=store, embedder=embedder)) as bot,
        host_site(bot.url) as url,
    ):
        page.goto(url)
        _open(page)
        _ask(page, "Where is the parking at the hotel?")
        page.locator("support-chat .msg.assistant[data-message-id]").wait_for()
        for _ in range(2):  # as streamed, then as restored from the transcript after a reload
            link = page.locator("support-chat ul.sources a")
            assert link.text_content() == f"{HOSTILE_TITLE} › Parking"  # the title is text, not markup
            assert link.get_attribute("href") == "https://help.example.com/ashley"
            assert link.get_attribute("rel") == "noopener noreferrer"
            assert page.locator("support-chat ul.sources img").count() == 0
            page.reload()
            _open(page)
            page.locator("support-chat ul.sources").wait_for()
    assert page.evaluate("() => window.pwned") is None
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "widget-sources.png"))
    context.close()


@pytest.mark.integration
def test_the_widget_chats_with_the_real_model(browser, tmp_path):
    """Real SmolLM2 behind the widget: the answer streams in (several token frames) and can be rated."""
    from bot.runtime.base_model import pull_default_model
    from bot.server.settings import Settings

    cache = Settings().model_cache
    pull_default_model(cache, progress=False)
    settings = Settings(data_dir=tmp_path / "data", model_cache=cache, max_new_tokens=32)
    with LiveServer(create_app(settings)) as bot, host_site(bot.url) as url:
        context = browser.new_context()
        page = context.new_page()
        page.goto(url)
        page.locator("support-chat .launcher").click()
        page.locator("support-chat .panel[data-state=online]").wait_for(timeout=300_000)
        page.evaluate("""() => { window.sizes = []; const chat = document.querySelector("support-chat");
            new MutationObserver(() => { const a = chat.shadowRoot.querySelector(".msg.assistant");
                if (a) window.sizes.push(a.textContent.length); })
              .observe(chat.shadowRoot, {subtree: true, childList: true, characterData: true}); }""")
        _ask(page, "What time is check-in at A and B Guest House?")
        page.locator("support-chat .msg.assistant[data-message-id]").wait_for(timeout=120_000)
        assert len(set(page.evaluate("() => window.sizes"))) > 3  # it grew token by token
        assert _answers(page).first.text_content().strip()
        assert _answers(page).first.get_attribute("data-version") == "base"
        page.screenshot(path=str(ARTIFACTS / "widget-real-model.png"))
        context.close()
