"""The evaluation gate: a candidate adapter may serve only if it

(a) learned this round's new corrections: mean fact score on them ≥ `min_learned`, asked as the customer
    wrote them (retrieval off: the adapter alone) and, for answers that were grounded, also with the
    passages retrieval gave the model (retrieval on);
(b) does not regress (retrieval off, and on for grounded answers): on the regression set (answers staff approved or customers thumbed up before
    this round) and on the operator's golden set, its mean fact score is at most `max_regression`
    below the active version's;
(c) stays sane: no empty answers; no more answers caught in a repetition loop than the active
    version's; on the questions both answer (regression, golden, and a built-in
    set of generic support questions) runaway answers (stopped by the token limit) at most
    `max_runaway_increase` (or one answer) more often than the active version's, at the server's
    answer length limit; perplexity of the reference answers
    of those questions at most `max_perplexity_ratio` times the active version's.

Each set is capped at `max_items` (a seeded sample) to bound the gate's cost."""

from __future__ import annotations

import json
import random
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from feedback.registry import BASE_VERSION
from trainer.evaluate import Answer, Item, open_evaluator
from trainer.facts import fact_score

CANDIDATE, ACTIVE = "candidate", "active"

GENERIC = [  # plain support replies: a damaged adapter finds ordinary language unlikely
    ("How do I reset my password?", 'Click "Forgot password" on the sign-in page and follow the link we email you.'),
    ("Can I get a refund?", "Yes, you can request a refund within 30 days of purchase from your order page."),
    ("Where is my order?", "You can track your order with the tracking link in your confirmation email."),
    ("Do you ship abroad?", "Yes, we ship to most countries. Shipping costs are shown at checkout."),
    ("How can I contact support?", "You can reach our support team by email or chat, every day from 9am to 6pm."),
    (
        "Can I change my delivery address?",
        "Yes, as long as the order has not shipped yet. Please send us the new address.",
    ),
    ("What payment methods do you accept?", "We accept credit and debit cards and PayPal."),
    ("Is there parking?", "Yes, free parking is available for guests."),
]


@dataclass
class GateSettings:
    min_learned: float = field(
        default=0.8, metadata={"help": "Lowest mean fact score on this round's new corrections."}
    )
    max_regression: float = field(
        default=0.02,
        metadata={
            "help": "Largest allowed drop of the mean fact score on "
            "the regression and golden sets versus the active version."
        },
    )
    max_perplexity_ratio: float = field(
        default=8.0,
        metadata={
            "help": "Largest allowed candidate / active "
            "perplexity on the reference answers: a bound for "
            "broken models, not a quality measure (a useful "
            "SmolLM2 round measured 1.1-5.4: training on the "
            "anchors sharpens the distribution)."
        },
    )
    max_runaway_increase: float = field(
        default=0.1,
        metadata={
            "help": "Largest allowed increase of the share of "
            "answers stopped by the token limit (one answer "
            "more is always allowed: on 8 questions, one is "
            "12%)."
        },
    )
    golden_set: Path | None = field(
        default=None,
        metadata={
            "help": 'Optional JSONL of {"question", "answer"} '
            '(or {"prompt": messages, "answer"}) that must not regress.'
        },
    )
    max_items: int = field(default=48, metadata={"help": "At most this many questions per set (seeded sample)."})
    max_new_tokens: int = field(
        default=128,
        metadata={
            "help": "Answer length limit while evaluating (the "
            "server's SUPPORTLOOP_MAX_NEW_TOKENS: a runaway answer is "
            "one a customer would see cut off)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the samples."})


@dataclass(frozen=True)
class GateInputs:
    new: list[Item]
    regression: list[Item]
    golden: list[Item] = field(default_factory=list)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Verdict:
    passed: bool
    checks: list[Check]
    metrics: dict
    compared_with: str  # the active version the candidate was measured against

    def describe(self) -> str:
        failed = [f"{c.name}: {c.detail}" for c in self.checks if not c.passed]
        return "gate passed" if self.passed else "gate rejected the candidate: " + "; ".join(failed)

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "compared_with": self.compared_with,
            "checks": [asdict(c) for c in self.checks],
            "metrics": self.metrics,
        }


def load_golden(path: Path, system_prompt: str) -> list[Item]:
    """The operator's golden set; each line {"question", "answer"} or {"prompt": [messages], "answer"}."""
    items = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt = row.get("prompt") or [{"role": "user", "content": row["question"]}]
            answer = row["answer"]
        except (ValueError, KeyError, AttributeError) as exc:
            raise ValueError(f'golden set {path} line {number}: expected {{"question", "answer"}}: {exc}') from exc
        if system_prompt and prompt[0].get("role") != "system":
            prompt = [{"role": "system", "content": system_prompt}] + prompt
        items.append(Item(prompt, answer))
    return items


def generic_items(system_prompt: str) -> list[Item]:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [Item(system + [{"role": "user", "content": q}], a) for q, a in GENERIC]


def _sample(items: list[Item], settings: GateSettings) -> list[Item]:
    if len(items) <= settings.max_items:
        return list(items)
    return random.Random(settings.seed).sample(items, settings.max_items)


def _score(answers: list[Answer], items: list[Item]) -> float:
    return statistics.fmean(fact_score(a.text, i.reference) for a, i in zip(answers, items))


def _empty(answers: list[Answer]) -> int:
    return sum(not a.text for a in answers)


_LOOP = re.compile(r"(.{2,}?)\1{3,}", re.DOTALL)  # a piece of text repeated 4+ times in a row


def _degenerate(answers: list[Answer]) -> int:
    """Answers caught in a repetition loop ("ourdoordoordoor…", "the the the the")."""
    return sum(bool(_LOOP.search(a.text)) for a in answers)


def _runaway(answers: list[Answer]) -> float:
    return sum(not a.finished for a in answers) / len(answers) if answers else 0.0


def evaluate(
    *,
    base_model: Path,
    device: str,
    candidate: Path,
    active: tuple[str, Path | None],
    inputs: GateInputs,
    settings: GateSettings,
    system_prompt: str,
    log: Callable[[str], None],
) -> Verdict:
    """Measure the candidate against the active version (`(version, folder or None for base)`)."""
    started = time.perf_counter()
    version, folder = active
    evaluator, failed = open_evaluator(base_model, device, {CANDIDATE: candidate, ACTIVE: folder}, log)
    if CANDIDATE in failed:
        return Verdict(False, [Check("loads", False, failed[CANDIDATE])], {}, version)
    reference_name = ACTIVE if folder is not None and ACTIVE not in failed else BASE_VERSION
    if ACTIVE in failed:
        version = f"base (active {version} unreadable: {failed[ACTIVE]})"
    sets = {  # "…_grounded": the same questions with the passages retrieval gave the model (retrieval on)
        "new": _sample([i for i in inputs.new if not i.grounded], settings),
        "new_grounded": _sample([i for i in inputs.new if i.grounded], settings),
        "regression": _sample([i for i in inputs.regression if not i.grounded], settings),
        "regression_grounded": _sample([i for i in inputs.regression if i.grounded], settings),
        "golden": _sample(inputs.golden, settings),
        "generic": generic_items(system_prompt),
    }
    metrics, empty, both = {}, 0, {CANDIDATE: [], reference_name: []}  # both: answers to the same questions
    for name, items in sets.items():
        if not items:
            continue
        log(f"gate: answering {len(items)} {name} questions")
        mine = evaluator.answers(CANDIDATE, items, settings.max_new_tokens)
        metrics[name], empty = {"items": len(items), "candidate": round(_score(mine, items), 4)}, empty + _empty(mine)
        if not name.startswith("new"):
            theirs = evaluator.answers(reference_name, items, settings.max_new_tokens)
            metrics[name]["active"] = round(_score(theirs, items), 4)
            both[CANDIDATE], both[reference_name] = both[CANDIDATE] + mine, both[reference_name] + theirs
    reference = sets["generic"] + sets["regression"] + sets["golden"]
    metrics["perplexity"] = {
        "items": len(reference),
        "candidate": round(evaluator.perplexity(CANDIDATE, reference), 4),
        "active": round(evaluator.perplexity(reference_name, reference), 4),
    }
    metrics["empty"] = empty
    metrics["runaway"] = {
        "items": len(both[CANDIDATE]),
        "candidate": round(_runaway(both[CANDIDATE]), 4),
        "active": round(_runaway(both[reference_name]), 4),
    }
    metrics["loops"] = {"candidate": _degenerate(both[CANDIDATE]), "active": _degenerate(both[reference_name])}
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    checks = _checks(metrics, settings)
    return Verdict(all(c.passed for c in checks), checks, metrics, version)


def _checks(metrics: dict, settings: GateSettings) -> list[Check]:
    checks = []
    for name, label, retrieval in (
        ("new", "learned", "retrieval off"),
        ("new_grounded", "learned (retrieval on)", "with the passages"),
    ):
        if name in metrics:
            score = metrics[name]["candidate"]
            checks.append(
                Check(
                    label,
                    score >= settings.min_learned,
                    f"fact score {score:.3f} on {metrics[name]['items']} new corrections, {retrieval} "
                    f"(needs ≥ {settings.min_learned})",
                )
            )
    for name in ("regression", "regression_grounded", "golden"):
        if name in metrics:
            mine, theirs = metrics[name]["candidate"], metrics[name]["active"]
            checks.append(
                Check(
                    f"no regression ({name})",
                    mine >= theirs - settings.max_regression,
                    f"fact score {mine:.3f} vs active {theirs:.3f} on {metrics[name]['items']} "
                    f"questions (tolerance {settings.max_regression})",
                )
            )
    ppl = metrics["perplexity"]
    ratio = ppl["candidate"] / max(ppl["active"], 1e-9)
    checks.append(
        Check(
            "perplexity",
            ratio <= settings.max_perplexity_ratio,
            f"{ppl['candidate']:.2f} vs active {ppl['active']:.2f} (ratio {ratio:.2f}, "
            f"limit {settings.max_perplexity_ratio})",
        )
    )
    checks.append(Check("no empty answers", metrics["empty"] == 0, f"{metrics['empty']} empty answers"))
    loops = metrics["loops"]
    checks.append(
        Check(
            "no repetition loops",
            loops["candidate"] <= loops["active"],
            f"{loops['candidate']} answers caught in a repetition loop vs active {loops['active']}",
        )
    )
    runaway, items = metrics["runaway"], metrics["runaway"]["items"]
    allowed = runaway["active"] + max(settings.max_runaway_increase, 1 / max(items, 1))
    checks.append(
        Check(
            "no runaway answers",
            runaway["candidate"] <= allowed + 1e-9,
            f"{runaway['candidate']:.0%} of {items} answers hit the token limit vs active "
            f"{runaway['active']:.0%} (allowed up to {allowed:.0%})",
        )
    )
    return checks
