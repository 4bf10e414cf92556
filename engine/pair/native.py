"""Native PAIR: refine an ICL request against what the radix tree holds right now.

1. Match the request's head (instruction) in the tree. If it is cached, search below its node, through
   example-segment edges only, for the cached path of examples whose templates the request can supply that saves
   the most prefill (Σ over the path of min(cached block, the request's own block) tokens; ties → the path that
   lengthens the prompt least, then the hotter one). Exhaustive over at most k! paths, pruned by the tree's
   actual branching.
2. Emit that path first: an edge whose example id the request has is used as is; otherwise a request example
   with the same template is *substituted* by the cached one (its tokens from the example registry).
3. Order the rest canonically — most popular template first, ties in the request's own (kNN) order — so
   requests with overlapping example sets converge on shared paths even before anything is cached. (Ties broken
   by a stable example id instead made requests lacking one early example share only the head; the request's
   order, as InferLog's table keeps it, measured 0.2-3.5 points better on the Loghub streams.)
Never changes the multiset of templates. Optional guard: the request's last (most similar) example stays last.
Pure Python; the tree is engine.radix_cache.RadixCache.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

from engine.pair.render import IclExample, IclPrompt

# A cached example may stand in for the request's own one of the same template only while its block is at most
# this many times as long: HDFS "BLOCK* ask ... to delete <block list>" inputs run from 250 to 2,300 tokens, and
# swapping in a long one grew prompts 3.6x (more attention and KV per step than the prefill it saved).
MAX_SUBSTITUTE_GROWTH = 2


@dataclass(frozen=True)
class NativeRefinement:
    examples: list[IclExample]
    order: list[int]  # examples[i] stands for the request's examples[order[i]] (same template)
    substituted: int
    cached_examples: int  # length of the cached path used


class ExampleRegistry:
    """Bounded LRU map example id → IclExample, so a cached example's tokens can stand in for another's."""

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._items: OrderedDict[str, IclExample] = OrderedDict()
        self.template_counts: Counter[str] = Counter()

    def add(self, ex: IclExample) -> None:
        self._items[ex.id] = ex
        self._items.move_to_end(ex.id)
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def count_use(self, examples) -> None:
        for ex in examples:
            self.template_counts[ex.output] += 1

    def get(self, example_id: str) -> IclExample | None:
        return self._items.get(example_id)


class _Pending:
    """A trie of example-id paths refined but not yet prefilled: 'cached soon', searched beside the tree."""

    __slots__ = ("children", "count")

    def __init__(self):
        self.children: dict[str, _Pending] = {}
        self.count = 0


class NativePolicy:
    def __init__(self, registry: ExampleRegistry, keep_last: bool = False):
        self.registry = registry
        self.keep_last = keep_last
        self._pending: dict[tuple[int, ...], _Pending] = {}  # head ids → trie of pending example paths
        self._pending_by_rid: dict[str, tuple[tuple[int, ...], list[str]]] = {}

    def add_pending(self, rid: str, prompt: IclPrompt, examples: list[IclExample]) -> None:
        node = self._pending.setdefault(prompt.head_ids, _Pending())
        ids = [ex.id for ex in examples]
        for eid in ids:
            node = node.children.setdefault(eid, _Pending())
            node.count += 1
        self._pending_by_rid[rid] = (prompt.head_ids, ids)

    def drop_pending(self, rid: str) -> None:
        """The request's prompt is in the tree now (or it left): stop counting it as pending."""
        entry = self._pending_by_rid.pop(rid, None)
        if entry is None:
            return
        head, ids = entry
        node = self._pending[head]
        for eid in ids:
            child = node.children[eid]
            child.count -= 1
            if child.count == 0:
                del node.children[eid]
                break
            node = child
        if not self._pending[head].children:
            del self._pending[head]

    def refine(self, tree, prompt: IclPrompt) -> NativeRefinement:
        exs = list(prompt.examples)
        pinned = len(exs) - 1 if self.keep_last and len(exs) > 1 else None
        free_idx = [i for i in range(len(exs)) if i != pinned]
        path = self._deepest_path(tree, prompt, exs, free_idx)
        used: set[int] = set()
        out: list[IclExample] = []
        order: list[int] = []
        substituted = 0
        for edge_ex in path:
            same = [i for i in free_idx if i not in used and exs[i].output == edge_ex.output]
            exact = [i for i in same if exs[i].id == edge_ex.id]
            i = (exact or same)[0]
            used.add(i)
            order.append(i)
            out.append(edge_ex)
            substituted += exs[i].id != edge_ex.id
        counts = self.registry.template_counts
        rest = sorted((i for i in free_idx if i not in used), key=lambda i: (-counts[exs[i].output], i))
        if pinned is not None:
            rest.append(pinned)
        for i in rest:
            order.append(i)
            out.append(exs[i])
        for ex in out:
            self.registry.add(ex)
        self.registry.count_use(out)
        return NativeRefinement(out, order, substituted, len(path))

    def _deepest_path(self, tree, prompt: IclPrompt, exs: list[IclExample], free_idx: list[int]):
        """Deepest path through the tree's example edges and the pending trie together (tokens; ties: hotter)."""
        head = list(prompt.head_ids)
        start = None
        if tree is not None:
            m = tree.match_prefix(head)
            if m.matched_len > 0 and m.matched_len >= len(head) - len(head) % tree.page_size:
                start = m.last_node
        pending = self._pending.get(prompt.head_ids)
        if start is None and pending is None:
            return []
        need = Counter(exs[i].output for i in free_idx)
        own_len = {exs[i].id: len(exs[i].ids) for i in free_idx}
        own_tpl_len: dict[str, int] = {}
        for i in free_idx:
            own_tpl_len[exs[i].output] = max(own_tpl_len.get(exs[i].output, 0), len(exs[i].ids))
        best: tuple[tuple[int, int, int], list[IclExample]] = ((0, 0, 0), [])

        def walk(node, pnode, saved: int, grown: int, hot: int, remaining: Counter, path: list[IclExample]) -> None:
            nonlocal best
            if (saved, -grown, hot) > best[0]:
                best = ((saved, -grown, hot), list(path))
            steps: dict[str, list] = {}
            if node is not None:
                for edge in tree.segment_successors(node):
                    steps[edge.segment_id] = [edge.end_node, None, edge.num_tokens, edge.hit_count]
            if pnode is not None:
                for eid, child in pnode.children.items():
                    ex = self.registry.get(eid)
                    step = steps.setdefault(eid, [None, None, len(ex.ids) if ex else 0, 0])
                    step[1] = child
                    step[3] += child.count
            for eid, (end_node, pchild, n_tokens, hits) in steps.items():
                ex = self.registry.get(eid)
                if ex is None or remaining[ex.output] <= 0:
                    continue
                own = own_len.get(eid, own_tpl_len[ex.output])
                if n_tokens > MAX_SUBSTITUTE_GROWTH * own:
                    continue  # a much longer cached input would add more context than the prefill it saves
                remaining[ex.output] -= 1
                path.append(ex)
                walk(end_node, pchild, saved + min(n_tokens, own), grown + max(0, n_tokens - own), hot + hits,
                     remaining, path)
                path.pop()
                remaining[ex.output] += 1

        walk(start, pending, 0, 0, 0, need, [])
        return best[1]
