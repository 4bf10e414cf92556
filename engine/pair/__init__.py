"""PAIR: prompt-aware refinement of ICL example lists (reorder / substitute examples to reuse cached KV).

Pure Python (no torch). `table` holds InferLog's LRU-table baseline; the renderer and the live-tree search
sit beside it. Every policy keeps the multiset of example templates of a request unchanged.
"""
from engine.pair.table import DEFAULT_TABLE_CAPACITY, Example, MatchKind, Refinement, TablePolicy

__all__ = ["DEFAULT_TABLE_CAPACITY", "Example", "MatchKind", "Refinement", "TablePolicy"]
