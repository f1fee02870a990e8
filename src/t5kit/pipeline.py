"""The text pipeline: text in, text out over a model and a tokenizer.

(Being assembled for #16: ``Generator`` moves here from ``t5kit.generate``.)
"""

from __future__ import annotations

from collections.abc import Callable


class TextStream:
    """Incremental detokenization: the text each new token adds, never a half character (the one copy:
    ``Generator.stream`` and the server's streaming both use it).

    SentencePiece marks a word start with "▁" and its decoder joins pieces with context (leading spaces,
    byte fallback), so a piece cannot be decoded alone: each step decodes the whole output so far and
    emits what was appended; a tail that is still an incomplete UTF-8 character (decoded as U+FFFD) waits.
    """

    def __init__(self, decode: Callable[[list[int]], str]):
        self.decode = decode
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token_id: int) -> str:
        """Add one generated token; return the text it completes ("" while a character is incomplete)."""
        self.ids.append(token_id)
        text = self.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece

    def finish(self) -> str:
        """The text still held back once generation has ended (an incomplete tail, decoded as it is)."""
        text = self.decode(self.ids)
        if not text.startswith(self.sent) or len(text) <= len(self.sent):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece
