"""The handoff lifecycle in the store: waiting → taken (one owner) → handed back or closed; agent
messages; the draft correction an agent's replies feed. Real SQLite file and real PostgreSQL."""

from __future__ import annotations

import pytest

from feedback import export, handoffs, repo
from feedback.models import CorrectionStatus, HandoffOutcome, HandoffStatus, Role, StaffRole, Thumb


@pytest.fixture
def people(any_store):
    with any_store.session() as s:
        ada, _ = repo.create_staff(s, name="ada", role=StaffRole.admin)
        bob, _ = repo.create_staff(s, name="bob", role=StaffRole.agent)
        cy, _ = repo.create_staff(s, name="cy", role=StaffRole.agent)
    return {"ada": ada, "bob": bob, "cy": cy}


def _asked(store, question="Is there parking?", answer="Yes, always.") -> tuple[str, str]:
    with store.session() as s:
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="Be brief.")
        repo.add_message(s, conversation_id=conversation.id, role=Role.user, text=question)
        bot = repo.add_message(s, conversation_id=conversation.id, role=Role.assistant, text=answer)
        handoff = handoffs.request_handoff(s, conversation_id=conversation.id, note="a person please")
        return conversation.id, handoff.id, bot.id


def test_one_owner_a_second_agent_is_told_who_has_it_and_an_admin_may_reassign(any_store, people):
    _, handoff_id, _ = _asked(any_store)
    with any_store.session() as s:
        assert handoffs.take(s, handoff_id=handoff_id, actor=people["bob"]).status == HandoffStatus.taken
        with pytest.raises(repo.Conflict, match="taken by bob"):
            handoffs.take(s, handoff_id=handoff_id, actor=people["cy"])
        with pytest.raises(repo.Conflict, match="taken by bob"):
            handoffs.agent_reply(s, handoff_id=handoff_id, actor=people["cy"], text="Hi, I am Cy")
        with pytest.raises(repo.Conflict, match="taken by bob"):
            handoffs.take(s, handoff_id=handoff_id, actor=people["ada"])  # an admin must ask to reassign
        assert (
            handoffs.take(s, handoff_id=handoff_id, actor=people["ada"], reassign=True).assigned_to == people["ada"].id
        )
        assert [a.action for a in repo.list_actions(s)].count("handoff.take") == 2


def test_a_closed_request_cannot_be_taken_or_answered(any_store, people):
    _, handoff_id, _ = _asked(any_store)
    with any_store.session() as s:
        closed = handoffs.end(s, handoff_id=handoff_id, actor=people["cy"], outcome=HandoffOutcome.closed)
        assert (closed.status, closed.outcome) == (HandoffStatus.closed, HandoffOutcome.closed)
        with pytest.raises(repo.Conflict, match="closed"):
            handoffs.take(s, handoff_id=handoff_id, actor=people["bob"])
        with pytest.raises(repo.Conflict, match="closed"):
            handoffs.agent_reply(s, handoff_id=handoff_id, actor=people["bob"], text="Hello?")
        with pytest.raises(repo.NotFound):
            handoffs.take(s, handoff_id=999, actor=people["bob"])


def test_waiting_requests_are_listed_oldest_first_with_their_place_in_the_queue(any_store, people):
    first, second = _asked(any_store)[1], _asked(any_store)[1]
    with any_store.session() as s:
        assert [h.id for h in handoffs.list_handoffs(s)] == [first, second]
        assert [handoffs.position(s, h) for h in handoffs.list_handoffs(s)] == [1, 2]
        handoffs.take(s, handoff_id=first, actor=people["bob"])
        assert handoffs.position(s, handoffs.get_handoff(s, handoff_id=second)) == 1
        state = handoffs.live_state(s, conversation_id=handoffs.get_handoff(s, handoff_id=first).conversation_id)
        assert (state.status, state.agent, state.position) == (HandoffStatus.taken, "bob", None)


def test_agent_replies_become_one_draft_correction_of_the_rejected_turn_never_approved(any_store, people):
    conversation_id, handoff_id, bot_turn = _asked(any_store)
    with any_store.session() as s:
        handoffs.take(s, handoff_id=handoff_id, actor=people["bob"])
        message, draft = handoffs.agent_reply(
            s, handoff_id=handoff_id, actor=people["bob"], text="Parking is 10 GBP a day."
        )
        assert (message.role, message.staff_id) == (Role.agent, people["bob"].id)
        _, again = handoffs.agent_reply(s, handoff_id=handoff_id, actor=people["bob"], text="Book it at the desk.")
        assert again.id == draft.id  # one draft per rejected turn, following the agent's replies
        stored = repo.list_corrections(s, message_id=bot_turn)
        assert [(c.status, c.origin, c.text) for c in stored] == [
            (CorrectionStatus.draft, "handoff", "Parking is 10 GBP a day.\n\nBook it at the desk.")
        ]
        assert export.correction_records(s) == []  # a draft is never trained on
        repo.edit_correction(s, correction_id=draft.id, actor=people["ada"], text="Parking costs 10 GBP a day.",
                             revision=1, approve=True)  # fmt: skip
        handoffs.agent_reply(s, handoff_id=handoff_id, actor=people["bob"], text="Anything else?")
        assert repo.list_corrections(s, message_id=bot_turn)[0].text == "Parking costs 10 GBP a day."  # staff's now
        trained = export.correction_records(s)
        assert [r["completion"][0]["content"] for r in trained] == ["Parking costs 10 GBP a day."]
        handed = handoffs.end(s, handoff_id=handoff_id, actor=people["bob"], outcome=HandoffOutcome.handed_back)
        assert (
            handed.outcome == HandoffOutcome.handed_back
            and handoffs.live_state(s, conversation_id=conversation_id) is None
        )


def test_a_thumbed_down_answer_is_the_rejected_turn_when_the_request_named_none(any_store, people):
    with any_store.session() as s:
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="")
        handoff = handoffs.request_handoff(s, conversation_id=conversation.id)  # before any answer
        repo.add_message(s, conversation_id=conversation.id, role=Role.user, text="Breakfast?")
        bot = repo.add_message(
            s, conversation_id=conversation.id, role=Role.assistant, text="No.", adapter_version="base"
        )
        repo.record_votes(s, [repo.Vote(bot.id, Thumb.down, None, None)])
        handoffs.take(s, handoff_id=handoff.id, actor=people["bob"])
        _, draft = handoffs.agent_reply(s, handoff_id=handoff.id, actor=people["bob"], text="Breakfast is 7 to 10.")
        assert draft is not None and draft.message_id == bot.id


def test_agent_messages_read_as_the_assistant_s_turns_in_training_prompts():
    assert Role.agent.chat_role == "assistant" and Role.user.chat_role == "user"
