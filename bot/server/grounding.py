"""The grounded prompt: how retrieved passages reach the model (documented in docs/architecture.md).

The passages go into the system prompt, one line each, `title: text` (for an approved correction:
`question: answer`), after an instruction to answer from them. SmolLM2-135M followed that layout where
it copied a note's title instead of its text from numbered blocks in the customer's turn (tried by
hand on DSTC9 questions; `bench/grounding.py` is to measure it). When the knowledge base has passages
but none is relevant enough (below the retriever's threshold), the system prompt asks the model to say
it does not know and offer a person; with no knowledge base and no matching correction, the prompt is
unchanged. The system prompt the model saw is stored with the answer (`grounding`), so training rounds
can use the same prompt. It changes per question, so it is not KV-cached as a shared prefix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bot.runtime.interface import Hit, Retrieval
from feedback.models import GroundingSource, SourceKind

GROUNDED = (
    "{system} Answer from these facts from the company's help centre; if they do not answer the question, "
    "say that you do not know.\n\n{facts}"
)
FACT = "{label}: {text}"
NO_MATCH = (
    "{system} The company's help centre has nothing about this question: say that you do not know and "
    "offer to connect the customer with a person."
)


@dataclass(frozen=True)
class Grounding:
    system: str | None = None  # the system prompt the model sees (None: the configured one, unchanged)
    hits: list[Hit] = field(default_factory=list)

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
    label = hit.question if hit.kind == "correction" and hit.question else hit.title
    return FACT.format(label=label, text=" ".join(hit.text.split()))


def ground(system: str, retrieval: Retrieval) -> Grounding:
    if retrieval.passages:
        facts = "\n".join(_fact(hit) for hit in retrieval.passages)
        return Grounding(GROUNDED.format(system=system, facts=facts).strip(), list(retrieval.passages))
    if retrieval.kb_size:
        return Grounding(NO_MATCH.format(system=system).strip())
    return Grounding()
