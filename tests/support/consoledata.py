"""Store contents for the staff console's tests: staff with their tokens, and conversations whose
answers land in the review queue in a known order (real customer questions from the DSTC9 FAQ)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta

from feedback import handoffs, repo
from feedback.models import Message, Reason, Role, StaffRole, Thumb, utcnow
from tests.support.common import FAQ

WRONG = "Check-in starts at midnight."  # the thumbed-down answer agents correct in the tests


@dataclass
class Seeded:
    tokens: dict[str, str] = field(default_factory=dict)  # staff name -> bearer token
    answers: dict[str, Message] = field(default_factory=dict)  # "down", "handoff", "recent" -> the answer


def faq_pairs(count: int) -> list[tuple[str, str]]:
    with open(FAQ, encoding="utf-8") as lines:
        return [(r["question"], r["answer"]) for r in map(json.loads, [next(lines) for _ in range(count)])]


def seed_console(store) -> Seeded:
    """An admin (ada) and an agent (bob); a thumbed-down answer with a reason and comment, one whose
    customer asked for a human, and a recent answer without feedback."""
    seeded = Seeded()
    with store.session() as s:
        for name, role in (("ada", StaffRole.admin), ("bob", StaffRole.agent)):
            seeded.tokens[name] = repo.create_staff(s, name=name, role=role)[1]
        (q2, a2), (q3, a3) = faq_pairs(3)[1:]
        seeded.answers["down"] = _exchange(s, "When can I check in?", WRONG, "base")
        repo.set_feedback(
            s,
            message_id=seeded.answers["down"].id,
            thumb=Thumb.down,
            reason=Reason.wrong,
            comment="It's 3pm, your site says so.",
        )
        seeded.answers["handoff"] = _exchange(s, q2, a2, "base")
        handoffs.request_handoff(s, conversation_id=seeded.answers["handoff"].conversation_id, note="I want a person")
        seeded.answers["recent"] = _exchange(s, q3, a3, "base")
    return seeded


def _exchange(s, question: str, answer: str, version: str) -> Message:
    conversation = repo.get_or_create_conversation(s, conversation_id=None, system_prompt="Be brief.")
    repo.add_message(s, conversation_id=conversation.id, role=Role.user, text=question)
    return repo.add_message(
        s, conversation_id=conversation.id, role=Role.assistant, text=answer, adapter_version=version
    )


def seed_votes(store, versions: dict[str, list[str]], hours: int = 6) -> None:
    """Answers by each version over the last `hours` hours with the given thumbs per hour ("up"/"down"
    strings), so the thumbs-up-rate chart has a line per version."""
    pairs = faq_pairs(hours)
    with store.session() as s:
        for version, thumbs in versions.items():
            for hour in range(hours):
                for thumb in thumbs:
                    message = _exchange(s, *pairs[hour], version)
                    message.created_at = utcnow() - timedelta(hours=hours - hour)
                    s.add(message)
                    s.commit()
                    repo.set_feedback(s, message_id=message.id, thumb=Thumb(thumb))
