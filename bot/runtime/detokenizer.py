"""Token ids to text for one streaming answer."""

from __future__ import annotations

from typing import Any


class Detokenizer:
    """Incremental detokenization: emits text only at UTF-8-complete boundaries, holds back a tail
    that could still become a stop string, and cuts the text at the first stop string."""

    def __init__(self, tokenizer: Any, stops: tuple[str, ...] = ()) -> None:
        self.tokenizer, self.stops = tokenizer, tuple(s for s in stops if s)
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def _held(self, text: str) -> int:
        return max(
            (k for stop in self.stops for k in range(len(stop) - 1, 0, -1) if text.endswith(stop[:k])), default=0
        )

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cuts = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if cuts:
            self.stopped, text = True, text[: min(cuts)]
        elif text.endswith("\ufffd"):
            return ""
        else:
            text = text[: len(text) - self._held(text)]
        return self._advance(text)

    def finish(self) -> str:
        if self.stopped:
            return ""
        return self._advance(self.tokenizer.decode(self.ids, skip_special_tokens=True))

    def _advance(self, text: str) -> str:
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        delta, self.sent = text[len(self.sent) :], text
        return delta
