"""Token ids -> text deltas for one generated sequence: waits out incomplete UTF-8 characters, holds back text
that might be the beginning of a stop string, and cuts at the first stop string. Shared by the engine and the
continuous-batching scheduler so both stream the same text."""
from __future__ import annotations

from typing import Sequence

from lmforge.tokenizer import Tokenizer


class TextStream:
    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.tokens: list[int] = []
        self.emitted = ""  # text already handed out
        self.hold = max((len(s) for s in self.stop), default=0)

    def feed(self, token: int) -> tuple[str, bool]:
        """Add one token; -> (new text safe to emit, whether a stop string was reached)."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the next token
            return "", False
        cuts = [i for i in (text.find(s) for s in self.stop) if i != -1]
        if cuts:
            cut = max(min(cuts), len(self.emitted))
            delta = text[len(self.emitted):cut]
            self.emitted = text[:cut]
            return delta, True
        safe = len(text) - self.hold + 1 if self.hold else len(text)
        if safe > len(self.emitted):
            delta = text[len(self.emitted):safe]
            self.emitted = text[:safe]
            return delta, False
        return "", False

    def flush(self) -> str:
        """The text held back, at the end of generation (no stop string came)."""
        text = self.tokenizer.decode(self.tokens)
        delta = text[len(self.emitted):]
        self.emitted = text
        return delta
