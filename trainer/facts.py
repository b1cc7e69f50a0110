"""Fact score: the share of a reference answer's key facts that an answer states.

Key facts of a reference are its numbers (times, prices, counts; number words count as digits), its
content words (not stop words; a plural matches its singular), and its polarity (yes/no: whether it
negates). An answer that says "No, there is no parking" to a reference "Yes, free parking is
available" shares the word "parking" but gets the polarity wrong. Used by the evaluation gate and by
`bench/learn.py`."""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

_TOKEN = re.compile(r"\d+(?:[:.]\d+)?|[a-z]+")
_NEGATION = re.compile(r"\b(?:no|not|never|cannot|none|nor|nothing|without|unfortunately)\b|n't\b")
_NUMBER_WORDS = {
    w: str(i)
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}
_STOP = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "all",
        "also",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "him",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yes",
        "no",
        "not",
        "nor",
        "never",
        "cannot",
        "none",
        "nothing",
        "without",
        "unfortunately",
        "please",
        "thank",
        "thanks",
        "sure",
        "let",
        "know",
        "may",
        "might",
        "must",
        "shall",
        "get",
        "got",
        "also",
        "really",
        "well",
        "yeah",
        "okay",
        "ok",
        "t",
        "s",
        "d",
        "ll",
        "ve",
        "re",
        "m",
    ]
)


def _normal(text: str) -> str:
    return text.lower().replace("\u2019", "'").replace("\u2018", "'")


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


@dataclass(frozen=True)
class Facts:
    numbers: frozenset[str]
    words: frozenset[str]
    negative: bool

    @property
    def count(self) -> int:
        return len(self.numbers) + len(self.words) + 1  # + 1: the polarity


def facts(text: str) -> Facts:
    text = _normal(text)
    numbers, words = set(), set()
    for token in _TOKEN.findall(text):
        token = _NUMBER_WORDS.get(token, token)
        if token[0].isdigit():
            numbers.add(token.rstrip("0").rstrip(".") if "." in token else token)
        elif token not in _STOP and len(token) > 2:
            words.add(_stem(token))
    return Facts(frozenset(numbers), frozenset(words), bool(_NEGATION.search(text)))


def fact_score(answer: str, reference: str) -> float:
    """Share of `reference`'s key facts present in `answer`, in [0, 1]."""
    if not answer.strip():
        return 0.0
    want, got = facts(reference), facts(answer)
    found = len(want.numbers & got.numbers) + len(want.words & got.words) + (want.negative == got.negative)
    return found / want.count


def mean_fact_score(answers: list[str], references: list[str]) -> float:
    if not references:
        return 0.0
    return statistics.fmean(fact_score(a, r) for a, r in zip(answers, references, strict=True))
