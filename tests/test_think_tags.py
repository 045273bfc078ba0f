"""A leading <think>...</think> in a raw model's content is its thinking, whatever the
chunking: tags split at every position, and what is not a leading block is answer text."""
from __future__ import annotations

import random

import pytest

from realtime_llm.providers import Thought
from realtime_llm.providers.think_tags import ThinkTagSplitter


def split(pieces: list[str]) -> tuple[str, str]:
    splitter = ThinkTagSplitter()
    out = [d for piece in pieces for d in splitter.feed(piece)] + splitter.end()
    return ("".join(d for d in out if isinstance(d, Thought)), "".join(d for d in out if not isinstance(d, Thought)))


TEXT = "  <think>I ponder </thi and <b> more</think>\n\nThe answer <think>is</think> here."


def test_every_chunking_of_a_think_block_gives_the_same_split() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        cuts = sorted(rng.sample(range(1, len(TEXT)), rng.randint(0, 12)))
        pieces = [TEXT[a:b] for a, b in zip([0, *cuts], [*cuts, len(TEXT)], strict=True)]
        assert split(pieces) == ("I ponder </thi and <b> more", "The answer <think>is</think> here."), pieces
    assert split(list(TEXT)) == ("I ponder </thi and <b> more", "The answer <think>is</think> here.")


@pytest.mark.parametrize(("pieces", "expected"), [
    (["Hello"], ("", "Hello")),  # no thinking at all
    (["<thi"], ("", "<thi")),  # a stream that ends inside what looked like a tag
    (["<thin", "g>"], ("", "<thing>")),
    (["<think>never", " closed"], ("never closed", "")),  # stopped while thinking: kept as thinking
    (["<think></think>answer"], ("", "answer")),
    (["x <think>y</think>"], ("", "x <think>y</think>")),  # not leading: the answer's own text
    (["\n", "<think>", "t", "</think>", "\n", "\n", "a"], ("t", "a")),
])
def test_edges(pieces: list[str], expected: tuple[str, str]) -> None:
    assert split(pieces) == expected


def test_leading_whitespace_is_held_only_so_far() -> None:
    """A stream of spaces waiting for a <think> that never comes is not held in memory:
    past a bound it is the answer, and what follows is answer text as it comes."""
    splitter = ThinkTagSplitter()
    assert splitter.feed(" " * 200) == []
    assert "".join(splitter.feed(" " * 100)) == " " * 300
    assert splitter.feed("<think>x</think>") == ["<think>x</think>"]
