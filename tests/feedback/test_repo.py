"""The store on a real SQLite file and on the real local PostgreSQL."""

from __future__ import annotations

import pytest

from feedback import repo
from feedback.export import dataset_hash, sft_records
from feedback.models import AdapterStatus, CorrectionStatus, Role, StaffRole, Thumb
from feedback.tokens import hash_token


def _conversation(session, turns: list[tuple[Role, str]], system: str = "Be brief.") -> list:
    conversation = repo.get_or_create_conversation(session, conversation_id=None, system_prompt=system)
    return [  # the model's answers carry the version that wrote them, as the server stores them
        repo.add_message(session, conversation_id=conversation.id, role=role, text=text,
                         adapter_version="base" if role == Role.assistant else None)
        for role, text in turns
    ]  # fmt: skip


def test_messages_keep_order_and_version(any_store):
    with any_store.session() as s:
        user, answer = _conversation(s, [(Role.user, "Hi"), (Role.assistant, "Hello!")])
        repo.add_message(s, conversation_id=user.conversation_id, role=Role.assistant, text="x", adapter_version="v1-x")
        listed = repo.list_messages(s, conversation_id=user.conversation_id)
    assert [m.seq for m in listed] == [0, 1, 2]
    assert [m.adapter_version for m in listed] == [None, "base", "v1-x"]


def test_resuming_unknown_session_creates_new(any_store):
    with any_store.session() as s:
        first = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="p")
        again = repo.get_or_create_conversation(s, conversation_id=first.id, system_prompt="p")
        other = repo.get_or_create_conversation(s, conversation_id="no-such-id", system_prompt="p")
    assert again.id == first.id
    assert other.id not in (first.id, "no-such-id")


def test_vote_is_replaced_not_duplicated(any_store):
    with any_store.session() as s:
        _, answer = _conversation(s, [(Role.user, "Hi"), (Role.assistant, "Hello!")])
        repo.set_feedback(s, message_id=answer.id, thumb=Thumb.up)
        vote = repo.set_feedback(s, message_id=answer.id, thumb=Thumb.down, reason="wrong", comment="no")
        from sqlmodel import select

        from feedback.models import Feedback

        votes = list(s.exec(select(Feedback).where(Feedback.message_id == answer.id)))
    assert len(votes) == 1 and vote.thumb == Thumb.down and vote.reason == "wrong"


def test_unknown_message_is_not_found(any_store):
    with any_store.session() as s, pytest.raises(repo.NotFound, match="no-such"):
        repo.set_feedback(s, message_id="no-such", thumb=Thumb.up)


def test_staff_token_stored_only_as_hash(any_store):
    with any_store.session() as s:
        staff, token = repo.create_staff(s, name="ana", role=StaffRole.admin)
        assert staff.token_hash == hash_token(token) and token not in staff.token_hash
        assert repo.staff_by_token(s, token=token).name == "ana"
        assert repo.staff_by_token(s, token=token + "x") is None
        staff.disabled = True
        s.add(staff)
        s.commit()
        assert repo.staff_by_token(s, token=token).disabled  # found, and the caller sees it is disabled
        with pytest.raises(repo.Conflict, match="already exists"):
            repo.create_staff(s, name="ana")


def test_sft_export_uses_context_and_latest_approved_correction(any_store):
    with any_store.session() as s:
        staff, _ = repo.create_staff(s, name="bo")
        msgs = _conversation(
            s,
            [
                (Role.user, "Hi"),
                (Role.assistant, "Hello!"),
                (Role.user, "When is check-in?"),
                (Role.assistant, "At noon."),
            ],
        )
        repo.add_correction(s, message_id=msgs[3].id, actor=staff, text="From 3pm.", approve=True)
        repo.add_correction(s, message_id=msgs[3].id, actor=staff, text="From 3:30pm.", approve=True)
        repo.add_correction(s, message_id=msgs[1].id, actor=staff, text="draft only", approve=False)
        records = sft_records(s)
    assert records == [
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "When is check-in?"},
            ],
            "completion": [{"role": "assistant", "content": "From 3:30pm."}],
        }
    ]
    assert dataset_hash(records).startswith("sha256:") and dataset_hash(records) == dataset_hash(list(records))


def test_only_answers_can_be_corrected(any_store):
    with any_store.session() as s:
        staff, _ = repo.create_staff(s, name="cy")
        user, _ = _conversation(s, [(Role.user, "Hi"), (Role.assistant, "Hello!")])
        with pytest.raises(ValueError, match="assistant"):
            repo.add_correction(s, message_id=user.id, actor=staff, text="x", approve=True)
        draft = repo.add_correction(s, message_id=_.id, actor=staff, text="x", approve=False)
    assert draft.status == CorrectionStatus.draft


def test_activating_an_adapter_retires_the_previous(any_store):
    with any_store.session() as s:
        assert repo.active_adapter(s) is None
        for n in (1, 2):
            repo.register_adapter(
                s,
                version=f"v{n}",
                path=f"/a/v{n}",
                base_model="m",
                parent=None,
                dataset_hash=None,
                metrics={"n": n},
                activate=True,
            )
        repo.register_adapter(
            s, version="v3", path="/a/v3", base_model="m", parent="v2", dataset_hash=None, metrics={}, activate=False
        )
        repo.register_adapter(
            s,
            version="v4",
            path="/a/v4",
            base_model="m",
            parent="v2",
            dataset_hash=None,
            metrics={},
            activate=True,
            rejected=True,
        )
        assert repo.active_adapter(s).version == "v2"  # a rejected candidate is never activated
        assert repo.adapter_versions(s) == {"v1", "v2", "v3", "v4"}
        from sqlmodel import select

        from feedback.models import Adapter

        statuses = {a.version: a.status for a in s.exec(select(Adapter))}
    assert statuses == {
        "v1": AdapterStatus.retired,
        "v2": AdapterStatus.active,
        "v3": AdapterStatus.candidate,
        "v4": AdapterStatus.rejected,
    }


def test_votes_in_one_batch_on_the_same_answer_keep_the_last(any_store):
    with any_store.session() as s:
        _, answer = _conversation(s, [(Role.user, "Hi"), (Role.assistant, "Hello!")])
        outcomes = repo.record_votes(
            s, [repo.Vote(answer.id, Thumb.up), repo.Vote("nope", Thumb.up), repo.Vote(answer.id, Thumb.down, "wrong")]
        )
        assert isinstance(outcomes[1], repo.NotFound)
        stored = repo.feedback_by_message(s, conversation_id=answer.conversation_id)[answer.id]
    assert (stored.thumb, stored.reason) == (Thumb.down, "wrong")
