"""Text overlap scores for comparing an answer with a reference (e.g. a staff correction)."""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"[a-z0-9]+(?:[:.][0-9]+)?")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def overlap_f1(answer: str, reference: str) -> float:
    """Token-level F1 (SQuAD style) between an answer and a reference, in [0, 1]."""
    a, r = Counter(words(answer)), Counter(words(reference))
    common = sum((a & r).values())
    if common == 0:
        return 0.0
    precision, recall = common / sum(a.values()), common / sum(r.values())
    return 2 * precision * recall / (precision + recall)
