"""One entry point for PAIR in the scheduler: pick the policy a request asked for and apply it, per tenant.

Runs when the scheduler first considers a waiting ICL request (admission time), so it sees the freshest
tree, including prompts of running requests (inserted after their prefill).

Tenant scoping: every tenant has its own example registry, InferLog table and native pending trie. A request
is only ever given examples that its own tenant sent: the table remembers only its tenant's lists, and native
substitution can only take an example out of its tenant's registry (a cached tree edge whose example the
tenant never sent is skipped, even when the KV prefix itself is shared across tenants).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from engine.pair.native import ExampleRegistry, NativePolicy
from engine.pair.render import IclExample, IclPrompt
from engine.pair.table import Example, TablePolicy

ANONYMOUS_TENANT = "anonymous"  # requests that carry no API key (and in-process calls that name no tenant)


def audit_hash(ex: IclExample) -> str:
    """What a client gets in meta_info.icl_examples for one example of its final prompt: the first 16 hex
    digits of sha256(input + "\\n" + output), so it can check it was only given examples it sent."""
    return hashlib.sha256(f"{ex.input}\n{ex.output}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RefineResult:
    examples: list[IclExample]
    order: list[int]
    substituted: int


class TenantPair:
    """One tenant's PAIR state: registry of the examples it sent, its InferLog table, its native policy."""

    def __init__(self, table_capacity: int, keep_last: bool):
        self.registry = ExampleRegistry()
        self.table = TablePolicy(table_capacity)
        self.native = NativePolicy(self.registry, keep_last=keep_last)


class PairRefiner:
    def __init__(self, table_capacity: int = 200, keep_last: bool = False):
        self.table_capacity = table_capacity
        self.keep_last = keep_last
        self._tenants: dict[str, TenantPair] = {}
        self._pending_tenant: dict[str, str] = {}  # rid → tenant, while its native result counts as pending

    def scope(self, tenant: str) -> TenantPair:
        """`tenant`'s PAIR state (made on first use)."""
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = TenantPair(self.table_capacity, self.keep_last)
        return state

    @property
    def tenants(self) -> list[str]:
        return list(self._tenants)

    def prefilled(self, rid: str) -> None:
        tenant = self._pending_tenant.pop(rid, None)
        if tenant is not None:
            self._tenants[tenant].native.drop_pending(rid)

    def set_table_capacity(self, capacity: int) -> None:
        self.table_capacity = capacity
        for state in self._tenants.values():
            state.table.capacity = capacity

    def refine(self, tree, prompt: IclPrompt, rid: str | None = None, default: str = "none",
               tenant: str = ANONYMOUS_TENANT) -> RefineResult:
        """Refine `prompt` by its own policy, or `default` when it names none, within `tenant`'s state; with
        `rid`, a native result counts as 'cached soon' (for that tenant) until `prefilled(rid)`. `tree` is what
        native walks: the radix cache, or a view of it restricted to the tenant's namespace."""
        state = self.scope(tenant)
        exs = list(prompt.examples)
        policy = prompt.refine or default
        if policy == "native":
            r = state.native.refine(tree, prompt)
            if rid is not None:
                state.native.add_pending(rid, prompt, r.examples)
                self._pending_tenant[rid] = tenant
            return RefineResult(r.examples, r.order, r.substituted)
        for ex in exs:
            state.registry.add(ex)
        if policy == "table":
            r = state.table.refine([Example(e.input, e.output, e.id) for e in exs])
            chosen = [state.registry.get(e.id) for e in r.examples]
            # A remembered example whose tokens fell out of the registry cannot be sent; keep the request's own.
            chosen = [c if c is not None else exs[i] for c, i in zip(chosen, r.order)]
            return RefineResult(chosen, list(r.order), sum(c.id != exs[i].id for c, i in zip(chosen, r.order)))
        return RefineResult(exs, list(range(len(exs))), 0)
