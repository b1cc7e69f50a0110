"""Live human handoff in real Chromium: an agent in the console's Inbox (one browser context), a customer
in the widget on a third-party site (another context), a second agent (a third); a real server on a
real port. Screenshots go to $SUPPORTLOOP_ARTIFACTS (default: test-artifacts/)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from bot.server.app import create_app
from feedback import repo
from feedback.models import StaffRole
from tests.support.common import ARTIFACTS, needs_chromium
from tests.support.fakes import FakeGenerator
from tests.support.hostsite import host_site
from tests.support.services import LiveServer

pytestmark = needs_chromium


@pytest.fixture
def fake() -> FakeGenerator:
    return FakeGenerator("The bot answers.")


@pytest.fixture
def bot(settings, store, fake):
    with LiveServer(
        create_app(settings.model_copy(update={"rate_limit": "1000/minute"}), generator=fake, store=store)
    ) as server:
        yield server


@pytest.fixture
def tokens(store) -> dict[str, str]:
    with store.session() as s:
        return {name: repo.create_staff(s, name=name, role=StaffRole.agent)[1] for name in ("bob", "cy")}


@pytest.fixture
def contexts(browser, request):
    opened = []

    def new_page():
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        opened.append(context)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        return page

    yield new_page
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for number, context in enumerate(opened):
        for page in context.pages:
            page.screenshot(path=str(ARTIFACTS / f"inbox-{request.node.name}-{number}.png"))
            assert page.errors == [], page.errors
        context.close()


def _console(page, url: str, token: str):
    page.goto(f"{url}/staff/inbox")
    page.fill("#token", token)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(re.escape(url) + "/staff/inbox"))
    page.get_by_text("Nobody is waiting for a person.").wait_for()
    return page


def _customer_says(page, text: str):
    page.locator("support-chat textarea.input").fill(text)
    page.locator("support-chat textarea.input").press("Enter")


def test_an_agent_takes_over_in_the_inbox_chats_live_and_hands_back(bot, tokens, contexts, fake):
    bob, cy = _console(contexts(), bot.url, tokens["bob"]), _console(contexts(), bot.url, tokens["cy"])
    customer = contexts()
    with host_site(bot.url) as site:
        customer.goto(site)
        customer.locator("support-chat .launcher").click()
        customer.locator("support-chat .panel[data-state=online]").wait_for()
        _customer_says(customer, "Can I bring my dog?")
        customer.locator("support-chat .msg.assistant[data-message-id]").wait_for()
        customer.get_by_role("button", name="Talk to a human").click()
        customer.get_by_text("You are number 1 in the queue.").wait_for()

        request = bob.locator("#inbox .request[data-status=open]")
        request.wait_for()  # appeared without a reload
        expect(bob).to_have_title(re.compile(r"^\(1\) Inbox"))
        expect(request.locator(".age")).to_have_text(re.compile(r"waiting \d+ s"))
        cy.locator("#inbox .request[data-status=open]").wait_for()

        request.get_by_role("button", name="Take over").click()
        customer.get_by_text("bob joined the conversation.").wait_for()
        expect(bob).to_have_title(re.compile(r"^Inbox"))
        cy_request = cy.locator("#inbox .request")
        expect(cy_request.locator(".owner")).to_have_text("taken by bob")
        bob.locator("#chat-log .turn.user", has_text="Can I bring my dog?").wait_for()  # the transcript so far

        _customer_says(customer, "It is a small dog.")
        bob.locator("#chat-log .turn.user", has_text="It is a small dog.").wait_for()
        bob.locator("#reply").press_sequentially("Yes")
        customer.get_by_text("bob is typing…").wait_for()
        bob.locator("#reply").fill("Small dogs are <b>welcome</b>, 10 GBP a night.")
        bob.locator("#reply").press("Enter")
        person = customer.locator("support-chat .msg.agent", has_text="10 GBP a night")
        person.wait_for()
        assert "<b>welcome</b>" in person.text_content() and person.locator("b").count() == 0
        customer.locator("support-chat textarea.input").press_sequentially("Great")
        bob.get_by_text("The customer is typing…").wait_for()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        bob.screenshot(path=str(ARTIFACTS / "inbox-live-chat.png"))
        answered = len(fake.requests)

        bob.get_by_role("button", name="Hand back to the bot").click()
        customer.get_by_text("bob handed you back to the assistant.").wait_for()
        bob.get_by_text("Nobody is waiting for a person.").wait_for()
        customer.locator("support-chat textarea.input").fill("Thanks, and breakfast?")
        customer.locator("support-chat textarea.input").press("Enter")
        expect(customer.locator("support-chat .msg.assistant")).to_have_count(2)
        assert len(fake.requests) == answered + 1  # the bot answers again
        assert fake.requests[-1].messages[-2] == {  # bob's reply is in the bot's context, as an assistant turn
            "role": "assistant",
            "content": "Small dogs are <b>welcome</b>, 10 GBP a night.",
        }


def test_a_second_agent_cannot_take_a_taken_conversation(bot, store, tokens, contexts):
    bob, cy = _console(contexts(), bot.url, tokens["bob"]), _console(contexts(), bot.url, tokens["cy"])
    with store.session() as s:
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="")
    from feedback import handoffs

    with store.session() as s:
        handoffs.request_handoff(s, conversation_id=conversation.id, note="please")
    for page in (bob, cy):  # the same page, seen at the same moment by both
        page.reload()
        page.locator("#inbox .request[data-status=open]").wait_for()
    bob.get_by_role("button", name="Take over").click()
    bob.locator("#live-chat").wait_for()
    cy.get_by_role("button", name="Take over").click()  # cy's list was not refreshed yet, or the click raced
    expect(cy.locator("#status")).to_have_text(re.compile("Not taken: handoff request \\d+ is taken by bob"))
    expect(cy.locator("#inbox .owner")).to_have_text("taken by bob")
