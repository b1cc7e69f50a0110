"""The staff console in real Chromium against a real server on a real port: agents log in with a token,
review the queue with the keyboard, correct and approve; conflicts, expired logins, CSRF and roles;
admins see charts, promote, start a canary, train a round on the tiny model and manage the team.
Screenshots go to $SUPPORTLOOP_ARTIFACTS (default: test-artifacts/)."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
from playwright.sync_api import expect
from sqlmodel import select

from bot.server.app import create_app
from feedback import handoffs, repo
from feedback.models import CorrectionStatus, GroundingSource, Role, SourceKind, StaffLogin, utcnow
from feedback.rounds import recent_runs
from tests.support.common import ARTIFACTS, needs_chromium
from tests.support.consoledata import WRONG, faq_pairs, seed_console, seed_votes
from tests.support.services import LiveServer

pytestmark = needs_chromium
LAPTOP = {"width": 1366, "height": 768}


@pytest.fixture
def seeded(store):
    return seed_console(store)


@pytest.fixture
def bot(settings, store, fake, tiny_model, seeded):
    update = {"base_model": tiny_model, "rate_limit": "1000/minute", "database_url": store.url}  # rounds use it too
    app = create_app(settings.model_copy(update=update), generator=fake, store=store)
    with LiveServer(app) as server:
        yield server


@pytest.fixture
def open_console(browser, bot, request):
    """`open_console(token, path)`: a fresh browser (laptop screen) logged in through the login form."""
    contexts = []

    def open_console(token: str, path: str = "/staff"):
        context = browser.new_context(viewport=LAPTOP)
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        page.goto(f"{bot.url}{path}")
        page.fill("#token", token)
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(re.escape(bot.url + path.split("?")[0])))
        return page

    yield open_console
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for number, context in enumerate(contexts):
        for page in context.pages:
            page.screenshot(path=str(ARTIFACTS / f"console-{request.node.name}-{number}.png"), full_page=True)
            assert page.errors == [], page.errors
        context.close()


def _item(page, index: int):
    return page.locator(f"#queue .item[data-index='{index}']")


def _corrections(store, message_id: str):
    with store.session() as s:
        return [(c.text, c.status, c.reviewed_by) for c in repo.list_corrections(s, message_id=message_id)]


def _staff_id(store, name: str) -> int:
    with store.session() as s:
        return next(m.id for m in repo.list_staff(s) if m.name == name)


def test_an_agent_corrects_a_thumbs_down_answer_and_sees_it_in_the_conversation(open_console, seeded, store):
    page = open_console(seeded.tokens["bob"])
    first = _item(page, 0)
    first.wait_for()
    assert (
        "kind-thumbs_down" in first.get_attribute("class") and first.locator("[data-role=answer]").inner_text() == WRONG
    )
    assert "wrong" in first.inner_text() and "It's 3pm, your site says so." in first.inner_text()
    assert page.locator(".item.kind-handoff").count() == 1 and page.locator(".item.kind-recent").count() == 1
    assert page.locator("nav a", has_text="Adapters").count() == 0  # an agent sees no admin pages
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # fits a laptop screen
    page.keyboard.press("e")
    editor = first.locator("textarea[data-role=editor]")
    assert editor.evaluate("el => el === document.activeElement") and editor.input_value() == WRONG
    editor.fill("Check-in is from 3 pm; early check-in on request.")
    editor.press("Control+Enter")
    _item(page, 0).locator(".notice.ok").wait_for()
    assert _corrections(store, seeded.answers["down"].id) == [
        ("Check-in is from 3 pm; early check-in on request.", CorrectionStatus.approved, _staff_id(store, "bob"))
    ]
    assert page.locator("#queue .item.current").get_attribute("data-index") == "1"  # on to the next answer
    _item(page, 0).locator("a", has_text="Open conversation").click()
    corrected = page.locator("[data-role=correction]")
    corrected.wait_for()
    assert corrected.inner_text() == "Check-in is from 3 pm; early check-in on request."
    assert "✓ Corrected — approved by bob" in page.locator(".corrected-mark").inner_text()
    assert page.locator("details [data-role=answer]").text_content() == WRONG  # the original, folded away


def test_the_queue_works_from_the_keyboard_drafts_and_rejects(open_console, seeded, store):
    page = open_console(seeded.tokens["bob"])
    _item(page, 0).wait_for()
    page.keyboard.press("j")
    assert "current" in _item(page, 1).get_attribute("class")
    _item(page, 1).get_by_role("button", name="Close handoff request").click()
    _item(page, 1).locator(".notice.ok", has_text="Handoff request closed.").wait_for()
    with store.session() as s:
        assert handoffs.list_handoffs(s) == []  # no open request left
    page.keyboard.press("a")  # approve the handoff answer as it is
    _item(page, 1).locator(".notice.ok", has_text="Approved").wait_for()
    handoff = seeded.answers["handoff"]
    assert _corrections(store, handoff.id) == [(handoff.text, CorrectionStatus.approved, _staff_id(store, "bob"))]
    assert "current" in _item(page, 2).get_attribute("class")
    page.keyboard.press("e")
    _item(page, 2).locator("textarea").fill("A better answer, still a draft.")
    page.keyboard.press("Control+s")
    _item(page, 2).locator(".notice.ok", has_text="Draft saved").wait_for()
    page.reload()
    draft_item = page.locator(f".item[data-message='{seeded.answers['recent'].id}']")
    assert "Draft correction by bob (revision 1)" in draft_item.inner_text()
    draft_item.click()
    page.keyboard.press("r")
    draft_item = page.locator(f".item[data-message='{seeded.answers['recent'].id}']")
    draft_item.locator(".notice.ok", has_text="Rejected").wait_for()
    assert [c[1] for c in _corrections(store, seeded.answers["recent"].id)] == [CorrectionStatus.rejected]
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "search"
    page.select_option("select[name=reason]", "wrong")
    page.locator("form.filters button[type=submit]").click()
    expect(page.locator("#queue .item")).to_have_count(1)
    assert "reason=wrong" in page.url and _item(page, 0).get_attribute("data-message") == seeded.answers["down"].id


def test_a_stale_edit_shows_the_conflict_and_overwrites_nothing(open_console, seeded, store, bot):
    page = open_console(seeded.tokens["bob"])
    _item(page, 0).wait_for()
    page.keyboard.press("e")
    _item(page, 0).locator("textarea").fill("Bob's slower answer.")
    answer = httpx.post(
        f"{bot.url}/api/messages/{seeded.answers['down'].id}/corrections",
        headers={"Authorization": f"Bearer {seeded.tokens['ada']}"},
        json={"text": "Ada's answer.", "approve": True},
    )
    assert answer.status_code == 201
    page.keyboard.press("Control+Enter")
    conflict = _item(page, 0).locator(".notice.conflict")
    conflict.wait_for()
    assert "ada approved a correction of this answer after you opened it; nothing was saved" in conflict.inner_text()
    assert _item(page, 0).locator("textarea").input_value() == "Bob's slower answer."  # the agent's text is kept
    assert _corrections(store, seeded.answers["down"].id) == [
        ("Ada's answer.", CorrectionStatus.approved, _staff_id(store, "ada"))
    ]


def test_agents_cannot_reach_admin_actions_and_forged_requests_change_nothing(open_console, seeded, store, bot):
    page = open_console(seeded.tokens["bob"])
    _item(page, 0).wait_for()
    refused = page.evaluate(
        """async () => {
        const csrf = document.querySelector('meta[name=csrf-token]').content;
        const call = (path, init = {}) => fetch(path, {method: "POST", headers: {"Content-Type": "application/json",
            "X-CSRF-Token": csrf, ...(init.headers || {})}, body: JSON.stringify(init.body || {})}).then(r => r.status);
        return {rollback: await call("/api/admin/adapters/rollback"), train: await call("/api/admin/train"),
                staff: await call("/api/staff", {body: {name: "eve"}}),
                noCsrf: await fetch("/api/messages/%s/corrections", {method: "POST", headers: {"Content-Type":
                    "application/json"}, body: JSON.stringify({text: "forged", approve: true})}).then(r => r.status)};
    }""".replace("%s", str(seeded.answers["down"].id))
    )
    assert refused == {"rollback": 403, "train": 403, "staff": 403, "noCsrf": 403}
    assert _corrections(store, seeded.answers["down"].id) == []
    page.goto(f"{bot.url}/staff/adapters")
    assert page.locator("h1").inner_text() == "Admins only" and page.locator("#versions").count() == 0


def test_a_wrong_token_or_an_expired_login_shows_the_login_page_and_no_data(browser, bot, seeded, store, open_console):
    context = browser.new_context(viewport=LAPTOP)
    page = context.new_page()
    page.goto(f"{bot.url}/staff")
    page.fill("#token", "slt_wrong")
    page.keyboard.press("Enter")
    assert page.locator(".error").inner_text() == "That token does not belong to any staff account."
    assert WRONG not in page.content() and page.locator("#queue").count() == 0
    context.close()
    page = open_console(seeded.tokens["bob"])
    _item(page, 0).wait_for()
    with store.session() as s:
        for login in s.exec(select(StaffLogin)).all():
            login.expires_at = utcnow() - timedelta(seconds=1)
            s.add(login)
        s.commit()
    page.reload()
    assert "/staff/login" in page.url and page.locator("#token").is_visible() and WRONG not in page.content()


def _register(store, tmp_path, version: str, losses: list[float], rejected: bool = False, parent: str | None = None):
    folder = tmp_path / "registry" / version
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    gate = {
        "passed": not rejected,
        "checks": [{"name": "held-out corrections", "passed": not rejected, "detail": "0.61 ≥ 0.40"}],
    }
    with store.session() as s:
        repo.register_adapter(
            s,
            version=version,
            path=str(folder),
            base_model="tiny",
            parent=parent,
            dataset_hash="h",
            metrics={"gate": gate, "losses": {"sft": losses}, "train_loss_final": losses[-1], "examples": 24},
            datasets={"sft": {"hash": "h", "examples": 24}},
            activate=False,
            rejected=rejected,
        )


def test_admins_see_charts_with_data_promote_and_run_a_canary(open_console, seeded, store, tmp_path, fake):
    _register(store, tmp_path, "v1-a", [2.5, 2.1, 1.7, 1.4, 1.2])
    _register(store, tmp_path, "v2-b", [2.0, 1.5, 1.1], parent="v1-a")
    seed_votes(
        store, {"base": ["up", "down", "down"], "v1-a": ["up", "up", "down"], "v2-b": ["up", "up", "up", "down"]}
    )
    page = open_console(seeded.tokens["ada"], "/staff/adapters")
    page.locator("#versions").wait_for()
    rate = page.locator("#rate-chart svg.chart")
    assert sorted(rate.locator("g[data-series]").evaluate_all("gs => gs.map(g => g.dataset.series)")) == [
        "base",
        "v1-a",
        "v2-b",
    ]
    assert rate.locator("g[data-series='v2-b'] circle").count() == 6 and rate.locator("polyline").count() == 3
    loss = page.locator("[data-loss-chart='v1-a'] polyline")
    assert len(loss.get_attribute("points").split()) == 5
    assert page.locator("[data-loss-chart='v2-b'] circle").count() == 3
    row = page.locator("#versions tr[data-version='v2-b']")
    assert "v1-a" in row.inner_text() and "sft 24" in row.inner_text() and "passed" in row.inner_text()
    row.get_by_role("button", name="Promote").click()
    page.locator("dialog[open]").get_by_role("button", name="Confirm").click()
    expect(page.locator("#active-version")).to_have_text("v2-b")
    assert fake.adapters.get("v2-b") is not None
    page.locator("#versions tr[data-version='v1-a']").get_by_role("button", name="Canary…").click()
    page.locator("dialog[open] input").fill("25")
    page.locator("dialog[open] input").press("Enter")
    page.locator("#canary").wait_for()
    assert "v1-a answers 25 % of new sessions" in page.locator("#canary").inner_text()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")  # fits a laptop screen
    page.reload()
    page.locator("#versions").wait_for()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip"  # keyboard users can skip to the content


def test_an_admin_starts_a_round_on_the_tiny_model_and_sees_the_new_version(open_console, seeded, store):
    with store.session() as s:
        ada = repo.staff_by_token(s, token=seeded.tokens["ada"])
    answers = iter([seeded.answers["down"], seeded.answers["handoff"], seeded.answers["recent"]])
    with store.session() as s:
        for (_, answer), message in zip(faq_pairs(3), answers):
            repo.add_correction(s, message_id=message.id, actor=ada, text=answer, approve=True)
    page = open_console(seeded.tokens["ada"], "/staff/adapters")
    page.locator("#versions").wait_for()
    page.select_option("#methods", "sft")
    page.locator("#train").click()
    page.locator("#run [data-run] pre.log").wait_for()
    page.wait_for_selector("#run [data-run][data-outcome=running]", timeout=120_000)
    expect(page.locator("#run pre.log")).to_contain_text(" loss ", timeout=300_000)
    page.screenshot(path=str(ARTIFACTS / "console-training-live.png"), full_page=True)
    page.wait_for_selector("#runs td:text-matches('published|rejected')", timeout=600_000)
    version = page.locator("#versions tbody tr").nth(1).get_attribute("data-version")
    assert version.startswith("v1-")
    with store.session() as s:
        [run] = recent_runs(s)
    assert run.adapter_version == version and run.outcome in ("published", "rejected")
    assert page.locator(f"[data-loss-chart='{version}'] circle").count() >= 2


def test_admins_add_and_disable_staff_and_see_a_new_token_once(open_console, seeded, browser, bot):
    page = open_console(seeded.tokens["ada"], "/staff/team")
    page.locator("#staff").wait_for()
    page.fill("input[name=name]", "cara")
    page.keyboard.press("Enter")
    token = page.locator("output.token")
    token.wait_for()
    new_token = token.inner_text()
    assert new_token.startswith("slt_") and "Shown only now" in page.content()
    assert page.locator("#audit", has_text="staff.create").count() == 1
    cara = open_console(new_token)
    _item(cara, 0).wait_for()
    page.reload()
    assert page.locator("output.token").count() == 0  # shown once
    page.locator("#staff tr[data-staff='cara']").get_by_role("button", name="Disable").click()
    page.locator("#staff tr[data-staff='cara']", has_text="disabled").wait_for()
    cara.reload()
    assert "/staff/login" in cara.url  # a disabled account's login stops at once, and the page says why
    assert cara.locator(".error").inner_text() == "This staff account is disabled; ask an admin."


def test_model_text_is_shown_as_text(open_console, seeded, store):
    with store.session() as s:
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="")
        repo.add_message(s, conversation_id=conversation.id, role=Role.user, text="<b>hi</b>")
        evil = repo.add_message(
            s,
            conversation_id=conversation.id,
            role=Role.assistant,
            adapter_version="base",
            text='<img src=x onerror="window.pwned=1">**bold**',
        )
    page = open_console(seeded.tokens["bob"])
    page.locator(f".item[data-message='{evil.id}'] [data-role=answer]").wait_for()
    assert page.locator(f".item[data-message='{evil.id}'] [data-role=answer]").inner_text() == evil.text
    assert page.locator("#queue img").count() == 0 and page.evaluate("window.pwned") is None


@pytest.mark.integration
def test_the_whole_staff_path_on_the_real_model(browser, tmp_path):
    """Real SmolLM2: a customer asks in the widget and votes the answer down; an agent finds it first in
    the queue, corrects and approves it in the console, and the conversation shows the correction."""
    from bot.runtime.base_model import pull_default_model
    from bot.server.settings import Settings

    cache = Settings().model_cache
    pull_default_model(cache, progress=False)
    settings = Settings(data_dir=tmp_path / "data", model_cache=cache, max_new_tokens=32)
    app = create_app(settings)
    with LiveServer(app) as bot:
        store = app.state.store
        with store.session() as s:
            token = repo.create_staff(s, name="bob")[1]
        customer = browser.new_context(viewport=LAPTOP).new_page()
        customer.goto(bot.url + "/")
        customer.locator("support-chat .launcher").click()
        customer.locator("support-chat textarea.input").fill("What time is check-in at A and B Guest House?")
        customer.locator("support-chat textarea.input").press("Enter")
        answer = customer.locator("support-chat .msg.assistant[data-message-id]")
        answer.wait_for(timeout=120_000)
        message_id, answer_text = answer.get_attribute("data-message-id"), answer.text_content().strip()
        customer.get_by_role("button", name="Not helpful").click()
        customer.locator("support-chat .chip[data-reason=wrong]").click()
        customer.get_by_role("button", name="Send feedback").click()
        customer.get_by_text("Thank you for your feedback.").wait_for()
        agent = browser.new_context(viewport=LAPTOP).new_page()
        agent.goto(bot.url + "/staff")
        agent.fill("#token", token)
        agent.keyboard.press("Enter")
        first = agent.locator("#queue .item[data-index='0']")
        first.wait_for()
        assert first.get_attribute("data-message") == message_id and "kind-thumbs_down" in first.get_attribute("class")
        shown = first.locator("[data-role=answer]").text_content()
        agent.keyboard.press("e")
        first.locator("textarea").fill("Check-in is from 3:30 pm to 9 pm.")
        agent.keyboard.press("Control+Enter")
        first.locator(".notice.ok").wait_for()
        with store.session() as s:
            [correction] = repo.list_corrections(s, message_id=message_id)
            original = repo.get_message(s, message_id=message_id).text
        assert (correction.text, correction.status.value) == ("Check-in is from 3:30 pm to 9 pm.", "approved")
        assert answer_text and shown == original  # the model's text as text, line breaks kept
        first.locator("a", has_text="Open conversation").click()
        agent.locator("[data-role=correction]").wait_for()
        assert agent.locator("[data-role=correction]").inner_text() == "Check-in is from 3:30 pm to 9 pm."
        agent.screenshot(path=str(ARTIFACTS / "console-real-model-conversation.png"), full_page=True)


def test_an_admin_manages_the_knowledge_base_and_agents_cannot(open_console, seeded, store, tmp_path):
    page_file, binary = tmp_path / "ashley.md", tmp_path / "logo.md"
    page_file.write_text("# Ashley Hotel\n\n## What time is check-out at Ashley Hotel?\n\nCheck-out is at 10:30 am.\n")
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    page = open_console(seeded.tokens["ada"], "/staff/knowledge")
    page.get_by_text("No knowledge base yet").wait_for()
    page.set_input_files("input[name=files]", [str(page_file), str(binary)])
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#status")).to_contain_text("Nothing was added: logo.md: not UTF-8 text")
    page.set_input_files("input[name=files]", [str(page_file)])
    page.get_by_role("button", name="Upload").click()
    row = page.locator("#kb-sources tr[data-source=help-centre]")
    expect(row.locator("td").nth(2)).to_have_text("1")  # one passage
    page.fill("input[name=q]", "What time is check-out at Ashley Hotel?")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("[data-role=outcome]")).to_contain_text("quoted word for word")
    expect(page.locator("#kb-hits tbody tr").first).to_contain_text("Check-out is at 10:30 am.")
    row.get_by_role("button", name="Remove").click()
    page.get_by_role("button", name="Confirm").click()
    page.get_by_text("No knowledge base yet").wait_for()
    agent = open_console(seeded.tokens["bob"], "/staff/knowledge")
    assert agent.get_by_role("heading", name="Admins only").is_visible()
    assert agent.get_by_role("link", name="Knowledge").count() == 0


def test_staff_see_what_grounded_an_answer_as_text_links(open_console, seeded, store):
    hostile = '<img src=x onerror="window.pwned=1"> Parking'
    with store.session() as s:
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="")
        repo.add_message(s, conversation_id=conversation.id, role=Role.user, text="Where can I park?")
        answer = repo.add_message(
            s, conversation_id=conversation.id, role=Role.assistant, adapter_version="base", text="Behind the hotel.",
            sources=[GroundingSource(message_id="", rank=0, kind=SourceKind.kb, title=hostile,
                                     url="https://help.example.com/parking", score=0.9),
                     GroundingSource(message_id="", rank=0, kind=SourceKind.correction, title="Answer from our support team",
                                     url="", score=0.8)],
        )  # fmt: skip
    page = open_console(seeded.tokens["bob"])
    sources = page.locator(f".item[data-message='{answer.id}'] [data-role=sources] li")
    expect(sources).to_have_count(2)
    link = sources.first.locator("a")
    assert link.text_content() == hostile and link.get_attribute("href") == "https://help.example.com/parking"
    assert sources.nth(1).locator("a").count() == 0 and "staff answer" in sources.nth(1).text_content()
    page.goto(page.url.split("/staff")[0] + f"/staff/conversations/{conversation.id}")
    expect(page.locator(f"[data-message='{answer.id}'] [data-role=sources] a")).to_have_text(hostile)
    assert page.locator("img").count() == 0 and page.evaluate("window.pwned") is None
