"""Round bookkeeping in the store (SQLite and PostgreSQL): the round lock, what is new since the
previous round, and a round's datasets and gate sets (supersession, regression set)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta

import pytest

from feedback import repo, rounds
from feedback.models import Role, RunOutcome, Thumb, TrainingRun, TrainLock, utcnow
from trainer.datasets import snapshot


def _run(store) -> int:
    with store.session() as s:
        return rounds.start_run(s, config={}).id


def test_the_lock_admits_one_round_and_names_the_holder(any_store):
    first, second = _run(any_store), _run(any_store)
    with any_store.session() as s:
        assert rounds.acquire_lock(s, run_id=first) is None
        holder = rounds.acquire_lock(s, run_id=second)
        assert holder is not None and holder.run_id == first and holder.pid == os.getpid()
        assert rounds.heartbeat(s, run_id=first) and not rounds.heartbeat(s, run_id=second)
        rounds.release_lock(s, run_id=second)  # not the holder: nothing happens
        assert rounds.live_holder(s).run_id == first
        rounds.release_lock(s, run_id=first)
        assert rounds.live_holder(s) is None
        assert rounds.acquire_lock(s, run_id=second) is None


def test_a_dead_holder_is_taken_over_and_its_run_marked_abandoned(any_store):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed, next_run = _run(any_store), _run(any_store)
    with any_store.session() as s:
        s.add(TrainLock(name=rounds.ROUND_LOCK, run_id=killed, host=rounds.HOST, pid=int(dead.stdout)))
        s.commit()
        assert rounds.live_holder(s) is None  # its process is gone
        assert rounds.acquire_lock(s, run_id=next_run) is None
        assert rounds.live_holder(s).run_id == next_run
        run = s.get(TrainingRun, killed, populate_existing=True)
        assert run.outcome == RunOutcome.abandoned and "abandoned" in run.log and run.finished_at


def test_a_holder_on_another_host_is_stale_only_after_its_heartbeat_stops(any_store):
    other, mine = _run(any_store), _run(any_store)
    with any_store.session() as s:
        s.add(TrainLock(name=rounds.ROUND_LOCK, run_id=other, host="elsewhere", pid=1, heartbeat_at=utcnow()))
        s.commit()
        assert rounds.acquire_lock(s, run_id=mine).run_id == other
        lock = s.get(TrainLock, rounds.ROUND_LOCK)
        lock.heartbeat_at = utcnow() - timedelta(minutes=5)
        s.add(lock)
        s.commit()
        assert rounds.acquire_lock(s, run_id=mine) is None


def test_a_requested_run_is_refused_while_a_round_runs(any_store):
    with any_store.session() as s:
        admin, _ = repo.create_staff(s, name="ada")
        queued = rounds.request_run(s, actor=admin, config={"methods": "auto"})
        assert queued.outcome == "queued"
        assert rounds.acquire_lock(s, run_id=queued.id) is None
        with pytest.raises(repo.Conflict, match=f"already running: run {queued.id}"):
            rounds.request_run(s, actor=admin, config={"methods": "auto"})
        assert [a.action for a in repo.list_actions(s)] == ["train.start"]


def _answer(store, question: str, answer: str, system: str = "Be brief.") -> str:
    with store.session() as s:
        conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt=system)
        repo.add_message(s, conversation_id=conversation.id, role=Role.user, text=question)
        return repo.add_message(
            s, conversation_id=conversation.id, role=Role.assistant, text=answer, adapter_version="base"
        ).id


def _correct(store, message_id: str, text: str) -> None:
    with store.session() as s:
        staff = repo.list_staff(s)[0] if repo.list_staff(s) else repo.create_staff(s, name="sam")[0]
        repo.add_correction(s, message_id=message_id, actor=staff, text=text, approve=True)


def _finish_round(store, version: str) -> None:
    """Record a published round (and its active adapter) as of now."""
    with store.session() as s:
        run = rounds.start_run(s, config={})
        rounds.update_run(s, run_id=run.id, snapshot_at=utcnow())
        rounds.finish_run(s, run_id=run.id, outcome=RunOutcome.published, log="", adapter_version=version)
        repo.register_adapter(
            s,
            version=version,
            path=f"/a/{version}",
            base_model="m",
            parent=None,
            dataset_hash=None,
            metrics={},
            activate=True,
        )


def test_a_newer_correction_of_the_same_question_supersedes_the_older(any_store):
    old = _answer(any_store, "When is check-in?", "At noon.")
    _correct(any_store, old, "Check-in is at 2pm.")
    kept = _answer(any_store, "Is parking free?", "Yes.")
    _correct(any_store, kept, "No, parking costs £5 a day.")
    liked = _answer(any_store, "Do you have wifi?", "Yes, free wifi everywhere.")
    with any_store.session() as s:
        repo.set_feedback(s, message_id=liked, thumb=Thumb.up)
    _finish_round(any_store, "v1")
    first = snapshot(any_store)
    assert first.previous is not None and first.parent == "v1" and first.new == []
    assert sorted(i.reference for i in first.regression) == [
        "Check-in is at 2pm.",
        "No, parking costs £5 a day.",
        "Yes, free wifi everywhere.",
    ]
    again = _answer(any_store, "when is  check-in?", "At 2pm.")  # the same question, asked again
    _correct(any_store, again, "Check-in is from 3pm.")
    data = snapshot(any_store)
    assert [i.reference for i in data.new] == ["Check-in is from 3pm."]
    assert sorted(i.reference for i in data.regression) == ["No, parking costs £5 a day.", "Yes, free wifi everywhere."]
    sft = [r["completion"][0]["content"] for r in data.datasets["sft"]]
    assert sorted(sft) == ["Check-in is from 3pm.", "No, parking costs £5 a day."]  # the thumb is from before
    with any_store.session() as s:
        assert rounds.new_feedback_count(s, since=rounds.last_trained_snapshot(s)) == 1


def test_feedback_after_the_snapshot_waits_for_the_next_round(any_store):
    message = _answer(any_store, "Is there a pool?", "Yes.")
    _correct(any_store, message, "No, there is no pool.")
    data = snapshot(any_store)
    with any_store.session() as s:
        repo.set_feedback(s, message_id=_answer(any_store, "Gym?", "Yes, a gym."), thumb=Thumb.up)
    assert data.sizes == {"sft": 1, "dpo": 1, "kto": 1} and json.dumps(data.datasets["sft"]).count("pool") == 2
    assert data.snapshot_at <= utcnow()
