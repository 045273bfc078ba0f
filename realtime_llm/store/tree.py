"""A conversation's messages as a tree of versions (DESIGN.md, Branches), worked on in
memory from its skeleton: (message_id, parent_id) pairs in id order.

Each message follows its parent (0: none); an edit or a regenerated answer is a sibling of
what it replaces. A child always has a higher id than its parent, since ids only grow.
"""
from __future__ import annotations

from typing import Iterable


class Tree:
    def __init__(self, skeleton: Iterable[tuple[int, int]]) -> None:
        self.parent: dict[int, int] = {}
        self.children: dict[int, list[int]] = {}  # oldest first; 0's are the first messages
        for message_id, parent_id in skeleton:
            self.parent[message_id] = parent_id
            self.children.setdefault(parent_id, []).append(message_id)

    def __contains__(self, message_id: int) -> bool:
        return message_id in self.parent

    def path(self, leaf: int) -> list[int]:
        """The branch ending at `leaf`, first message first ([] for 0 or an unknown id)."""
        path = []
        while leaf in self.parent:
            path.append(leaf)
            leaf = self.parent[leaf]
        return path[::-1]

    def siblings(self, message_id: int) -> list[int]:
        """Its parent's children, itself included, oldest first."""
        return self.children.get(self.parent[message_id], [message_id])

    def newest_leaf(self, message_id: int) -> int:
        """Where the branch through `message_id` ends: below it, the newest child at each step."""
        while self.children.get(message_id):
            message_id = self.children[message_id][-1]
        return message_id
