"""A model served raw thinks inside a leading <think>...</think> in its `content`. This
splits such a stream into thinking (Thought) and answer (str), whatever the chunking: a
tag may arrive split across any number of chunks. Only a leading block is thinking (after
whitespace, if any); a <think> later in the answer is the answer's own text."""
from __future__ import annotations

from realtime_llm.providers.base import Thought

OPEN = "<think>"
CLOSE = "</think>"
# Whitespace a model may send before its <think>: past this, its answer has begun (and a
# stream of nothing but spaces is not held in memory waiting for a tag).
MAX_LEADING = 256


class ThinkTagSplitter:
    def __init__(self) -> None:
        # "start": undecided; "thinking"; "after": the newlines models put between thinking
        # and answer are dropped; "answer"
        self._state = "start"
        self._held = ""  # text that may be the start of a tag: held until it is decided

    def feed(self, text: str) -> list[str]:
        """The deltas `text` completes, in order: Thought pieces, then str pieces."""
        if self._state == "after":
            text = text.lstrip("\r\n")
            if text:
                self._state = "answer"
        if self._state == "answer":
            return [text] if text else []
        self._held += text
        out: list[str] = []
        if self._state == "start":
            body = self._held.lstrip()
            if body.startswith(OPEN):
                self._state, self._held = "thinking", body[len(OPEN):]
            elif OPEN.startswith(body) and len(self._held) <= MAX_LEADING:  # "", "<", "<thi": undecided
                return out
            else:
                self._state, held, self._held = "answer", self._held, ""
                return [held]
        end = self._held.find(CLOSE)
        if end >= 0:
            thought, rest = self._held[:end], self._held[end + len(CLOSE):]
            self._state, self._held = "after", ""
            if thought:
                out.append(Thought(thought))
            return out + self.feed(rest)
        keep = _partial_suffix(self._held, CLOSE)  # maybe the start of </think>
        thought, self._held = self._held[:len(self._held) - keep], self._held[len(self._held) - keep:]
        if thought:
            out.append(Thought(thought))
        return out

    def end(self) -> list[str]:
        """What is still held when the stream ends: an unfinished tag is text after all."""
        held, self._held = self._held, ""
        if not held:
            return []
        return [Thought(held)] if self._state == "thinking" else [held]


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that `tag` starts with."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
