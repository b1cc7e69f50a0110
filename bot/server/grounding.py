"""Grounded answers: what the bot does with what retrieval found (documented in docs/architecture.md).

Four outcomes, decided per customer message:

- **quote**: the best hit is an approved correction (above the memory threshold), or a knowledge-base
  passage that answers one question (an FAQ row, or a section under a question heading) whose similarity
  is at least `quote_min_score`. The reply is that answer, word for word: staff wrote or approved it,
  and a 135M model asked to repeat it paraphrases it wrong about a quarter of the time (measured by
  `bench/grounding.py`). This is what "custom answers" / FAQ matching do in other support bots.
- **grounded**: passages were found, none to quote. The model answers with the passages' text in the
  customer's turn (`GROUNDED`): facts first, then the question. On 40 DSTC9 questions SmolLM2-135M's
  fact score was 0.59 with the facts in the system prompt, 0.66 with three passages in the customer's
  turn, 0.75 with one, and 0.78 with one without its title (also 17 tokens shorter): hence the layout
  and the default of one passage for the default model.
- **no answer**: the knowledge base has passages but none is similar enough (below `kb_min_score`) and no
  correction matched: the reply is the configured no-answer text, which offers a person. The model is not
  asked, so it cannot invent a policy.
- **unchanged**: no knowledge base and no matching correction: the model answers as before.

The customer's turn as the model saw it (grounded), or the quoted answer's source, is stored with the
answer (`message.grounding` holds the grounded turn) so that training rounds use the same prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.runtime.interface import Hit, Retrieval
from feedback.models import GroundingSource, SourceKind

GROUNDED = "Facts:\n{facts}\n\nAnswer using the facts. Question: {question}"  # one passage's text a line


@dataclass(frozen=True)
class Policy:
    quote_min_score: float = 0.8  # a question-and-answer passage this similar is quoted (above 1: never)
    no_answer: str = ""  # the reply when the knowledge base has nothing relevant ("": let the model answer)


@dataclass(frozen=True)
class Grounding:
    prompt: str | None = None  # the customer's turn as the model sees it (None: unchanged)
    hits: list[Hit] = field(default_factory=list)
    answer: str | None = None  # a reply given without the model: a quoted answer or the no-answer text

    @property
    def outcome(self) -> str:
        if self.answer is not None:
            return "quote" if self.hits else "no_answer"
        return "grounded" if self.prompt is not None else "unchanged"

    def sources(self) -> list[dict[str, str]]:
        """What clients are shown: title, url and kind of each passage, best first."""
        return [{"title": hit.title, "url": hit.url, "kind": hit.kind} for hit in self.hits]

    def rows(self) -> list[GroundingSource]:
        return [
            GroundingSource(message_id="", rank=0, kind=SourceKind(hit.kind), title=hit.title[:512],
                            url=hit.url[:1024], score=hit.score, chunk_id=hit.chunk_id,
                            correction_id=hit.correction_id)
            for hit in self.hits
        ]  # fmt: skip


def _fact(hit: Hit) -> str:
    return " ".join(hit.text.split())


def _quotable(hit: Hit, policy: Policy) -> bool:
    return bool(hit.answer) and (hit.kind == "correction" or hit.score >= policy.quote_min_score)


def ground(question: str, retrieval: Retrieval, policy: Policy) -> Grounding:
    if retrieval.passages:
        best = retrieval.passages[0]
        if _quotable(best, policy):
            return Grounding(None, [best], best.answer)
        facts = "\n".join(_fact(hit) for hit in retrieval.passages)
        return Grounding(GROUNDED.format(facts=facts, question=question), list(retrieval.passages))
    if retrieval.kb_size and policy.no_answer:
        return Grounding(answer=policy.no_answer)
    return Grounding()
