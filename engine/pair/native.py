"""Native PAIR: refine an ICL request against what the radix tree holds right now.

1. Match the request's head (instruction) in the tree. If it is cached, search below its node, through
   example-segment edges only, for the deepest cached path of examples whose templates the request can supply
   (exhaustive over at most k! paths, pruned by the tree's actual branching; ties → hotter path).
2. Emit that path first: an edge whose example id the request has is used as is; otherwise a request example
   with the same template is *substituted* by the cached one (its tokens from the example registry).
3. Order the rest canonically — most popular template first, then a stable id — so requests with overlapping
   example sets converge on shared paths even before anything is cached.
Never changes the multiset of templates. Optional guard: the request's last (most similar) example stays last.
Pure Python; the tree is engine.radix_cache.RadixCache.
"""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass

from engine.pair.render import IclExample, IclPrompt


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


class NativePolicy:
    def __init__(self, registry: ExampleRegistry, keep_last: bool = False):
        self.registry = registry
        self.keep_last = keep_last

    def refine(self, tree, prompt: IclPrompt) -> NativeRefinement:
        exs = list(prompt.examples)
        pinned = len(exs) - 1 if self.keep_last and len(exs) > 1 else None
        free_idx = [i for i in range(len(exs)) if i != pinned]
        path = self._deepest_path(tree, prompt, exs, free_idx) if tree is not None else []
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
        rest = sorted((i for i in free_idx if i not in used), key=lambda i: (-counts[exs[i].output], exs[i].id))
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
        head = list(prompt.head_ids)
        m = tree.match_prefix(head)
        if m.matched_len < len(head) - len(head) % tree.page_size or m.matched_len == 0:
            return []
        need = Counter(exs[i].output for i in free_idx)
        best: tuple[tuple[int, int], list[IclExample]] = ((0, 0), [])

        def walk(node, depth: int, hot: int, remaining: Counter, path: list[IclExample]) -> None:
            nonlocal best
            if (depth, hot) > best[0]:
                best = ((depth, hot), list(path))
            for edge in tree.segment_successors(node):
                ex = self.registry.get(edge.segment_id)
                if ex is None or remaining[ex.output] <= 0:
                    continue
                remaining[ex.output] -= 1
                path.append(ex)
                walk(edge.end_node, depth + edge.num_tokens, hot + edge.hit_count, remaining, path)
                path.pop()
                remaining[ex.output] += 1

        walk(m.last_node, 0, 0, need, [])
        return best[1]
