"""A round's snapshot of the store: the training datasets for each method, and the gate's question sets.

- SFT: every approved correction to date (the newest one per question) plus answers thumbed up since
  the previous round. One record per question: a newer correction of the same question (same
  conversation before the answer) supersedes an older one, and a correction beats a thumbs-up.
- DPO: every approved correction against the answer it corrects.
- KTO: thumbs since the previous round, plus approved corrections as desirable examples.
- Gate: `new` = corrections approved since the previous round; `regression` = approved corrections and
  thumbed-up answers from before it, minus the questions superseded since.

"The previous round" is the round that trained the active adapter, so a rejected round's feedback is
tried again next time. Everything is read as of `snapshot_at`: feedback arriving during the round
waits for the next one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

from feedback import repo
from feedback.export import GROUNDED, correction_records, thumbs_up_records
from feedback.export import records as export_records
from feedback.models import utcnow
from feedback.pii import Scrubber
from feedback.registry import BASE_VERSION
from feedback.rounds import active_snapshot
from trainer.evaluate import Item


@dataclass(frozen=True)
class RoundData:
    snapshot_at: datetime
    previous: datetime | None  # snapshot of the round that trained the active adapter
    parent: str  # the active version
    parent_path: str | None
    datasets: dict[str, list[dict]]
    new: list[Item]
    regression: list[Item]

    @property
    def sizes(self) -> dict[str, int]:
        return {m: len(d) for m, d in self.datasets.items()}


def question_key(record: dict) -> str:
    """The identity of a question: the conversation before the answer, whitespace and case folded."""
    return json.dumps([[m["role"], " ".join(m["content"].lower().split())] for m in record["prompt"]])


def unique_questions(*groups: list[dict]) -> list[dict]:
    """One record per question: a later record (or group) replaces an earlier one."""
    by_key: dict[str, dict] = {}
    for group in groups:
        for record in group:
            by_key.pop(question_key(record), None)
            by_key[question_key(record)] = record
    return list(by_key.values())


def _items(records: list[dict]) -> list[Item]:
    return [Item(r["prompt"], r["completion"][0]["content"], bool(r.get(GROUNDED))) for r in records]


def snapshot(store, scrubber: Scrubber | None = None) -> RoundData:
    now, scrubber = utcnow(), scrubber or Scrubber()
    with store.session() as session:
        previous = active_snapshot(session)
        active = repo.active_adapter(session)
        window = dict(until=now, scrubber=scrubber)
        corrections = correction_records(session, **window)
        new_corrections = correction_records(session, since=previous, **window) if previous else corrections
        thumbs_new = thumbs_up_records(session, since=previous, **window)
        old = (
            []
            if previous is None
            else unique_questions(
                thumbs_up_records(session, until=previous, scrubber=scrubber),
                correction_records(session, until=previous, scrubber=scrubber),
            )
        )
        dpo = export_records(session, "dpo", **window)
        kto = export_records(session, "kto", since=previous, **window)
    corrected = {question_key(r) for r in corrections}
    sft = unique_questions([r for r in thumbs_new if question_key(r) not in corrected], corrections)
    changed = {question_key(r) for r in new_corrections + thumbs_new}
    regression = [r for r in old if question_key(r) not in changed]
    return RoundData(
        now,
        previous,
        active.version if active else BASE_VERSION,
        active.path if active else None,
        {"sft": sft, "dpo": dpo, "kto": kto},
        _items(unique_questions(new_corrections)),
        _items(regression),
    )
