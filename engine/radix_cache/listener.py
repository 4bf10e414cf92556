"""The radix tree's change listener: how code outside the tree follows which pages it caches (pure Python).

The tree calls the listener from inside its mutations, after the tree is consistent again, so a listener may
read the nodes it is given (key, parent, path) but must not change the tree. Between them the four calls
describe every change to the set of cached pages:

- on_insert(leaf): a new node now caches leaf.key (whole pages) below leaf.parent.
- on_split(head, tail): the node `tail` was cut in two; `head` (new, tail's new parent) holds its first pages,
  `tail` keeps the rest. The set of cached pages is unchanged: only the node boundaries moved.
- on_remove(node): the childless node `node` was evicted; its pages are gone.
- on_clear(): every node was dropped (reset / flush_cache).

Splits and inserts during match_prefix / insert, and removals during evict, call these one node at a time.
"""
from __future__ import annotations

from typing import Protocol

from engine.radix_cache.node import TreeNode


class CacheListener(Protocol):
    def on_insert(self, leaf: TreeNode) -> None: ...

    def on_split(self, head: TreeNode, tail: TreeNode) -> None: ...

    def on_remove(self, node: TreeNode) -> None: ...

    def on_clear(self) -> None: ...
