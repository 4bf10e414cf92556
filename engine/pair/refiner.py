"""One entry point for PAIR in the scheduler: pick the policy a request asked for and apply it.

Runs when the scheduler first considers a waiting ICL request (admission time), so it sees the freshest
tree, including prompts of running requests (inserted after their prefill).
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.pair.native import ExampleRegistry, NativePolicy
from engine.pair.render import IclExample, IclPrompt
from engine.pair.table import Example, TablePolicy


@dataclass(frozen=True)
class RefineResult:
    examples: list[IclExample]
    order: list[int]
    substituted: int


class PairRefiner:
    def __init__(self, table_capacity: int = 200, keep_last: bool = False):
        self.registry = ExampleRegistry()
        self.table = TablePolicy(table_capacity)
        self.native = NativePolicy(self.registry, keep_last=keep_last)

    def prefilled(self, rid: str) -> None:
        self.native.drop_pending(rid)

    def set_table_capacity(self, capacity: int) -> None:
        self.table.capacity = capacity

    def refine(self, tree, prompt: IclPrompt, rid: str | None = None, default: str = "none") -> RefineResult:
        """Refine `prompt` by its own policy, or `default` when it names none; with `rid`, a native result
        counts as 'cached soon' until `prefilled(rid)`."""
        exs = list(prompt.examples)
        policy = prompt.refine or default
        if policy == "native":
            r = self.native.refine(tree, prompt)
            if rid is not None:
                self.native.add_pending(rid, prompt, r.examples)
            return RefineResult(r.examples, r.order, r.substituted)
        for ex in exs:
            self.registry.add(ex)
        if policy == "table":
            r = self.table.refine([Example(e.input, e.output, e.id) for e in exs])
            chosen = [self.registry.get(e.id) for e in r.examples]
            # A remembered example whose tokens fell out of the registry cannot be sent; keep the request's own.
            chosen = [c if c is not None else exs[i] for c, i in zip(chosen, r.order)]
            return RefineResult(chosen, list(r.order), sum(c.id != exs[i].id for c, i in zip(chosen, r.order)))
        return RefineResult(exs, list(range(len(exs))), 0)
