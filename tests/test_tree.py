"""The tree of versions, worked on in memory (store/tree.py)."""
from __future__ import annotations

from realtime_llm.store.tree import Tree

# 1 ─ 2 ┬ 3 ─ 4     3 and 5: two versions of the second question (5 an edit of 3);
#       └ 5 ┬ 6     6 and 7: two versions of its answer (7 regenerated);
#           └ 7     8: a second version of the first message.
# 8
SKELETON = [(1, 0), (2, 1), (3, 2), (4, 3), (5, 2), (6, 5), (7, 5), (8, 0)]


def test_path_siblings_and_newest_leaf() -> None:
    tree = Tree(SKELETON)
    assert tree.path(4) == [1, 2, 3, 4] and tree.path(7) == [1, 2, 5, 7] and tree.path(8) == [8]
    assert tree.path(0) == [] and tree.path(99) == []
    assert tree.siblings(3) == tree.siblings(5) == [3, 5]
    assert tree.siblings(6) == [6, 7] and tree.siblings(1) == [1, 8] and tree.siblings(4) == [4]
    assert tree.newest_leaf(2) == 7 and tree.newest_leaf(3) == 4 and tree.newest_leaf(4) == 4
    assert tree.newest_leaf(1) == 7 and 8 in tree and 9 not in tree
