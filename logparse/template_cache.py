"""LILAC-style adaptive parsing cache: the templates found so far, matched against each line before any LLM call.

Structure. A prefix tree over template tokens (the template split on whitespace); a token holding `<*>` (`<*>`,
`blk_<*>`, `<*>:<*>`) is a WILDCARD edge (all wildcard tokens of a node share one), any other token a CONSTANT
edge. A node where templates end holds them.

Matching (`match(content)`). The content is split on whitespace and walked down the tree depth first: a constant
edge consumes one equal token; a wildcard edge consumes one or more tokens (a variable such as a date may span
several). Every template reached with all tokens consumed is a CANDIDATE, and a candidate HITS only if it is
verified: its regex (constant text escaped, whitespace runs as `\\s+`, each `<*>` as a lazy `.*?`) matches the
whole whitespace-normalised content. Among verified candidates the most specific wins: most constant characters,
then fewest wildcards, then the earliest inserted. Visited (node, position) pairs are memoised, so a walk costs at
most nodes × tokens steps. A hit costs no LLM call.

Variables and whitespace. A variable may span several words (a date, `Sun Dec 04`), but letting every `<*>` do
so lets a general template swallow the lines of a longer one (`... rhost=<*>` would take `... rhost=<*> user=<*>`'s
lines). So each template learns it from the line the LLM answered it for (`insert(template, source)`): if its
`<*>`s match that line word by word (each within one whitespace-free run), they match only whitespace-free text
(`\\S*?`) from then on; otherwise (or with no source) any text (`.*?`). The
same template answered later for a line whose variable holds whitespace widens it.

Insertion (`insert(template, source)`). Templates come from the LLM after post-processing (logparse.postprocess). A template
with no constant letter or digit (`<*>`, `<*> <*>`) would match nearly every line, so it is never cached (the line
keeps it, later lines go to the model). The same template (whitespace-normalised) is stored once.

Refresh (optional: `refresh_every` > 0). Every `refresh_every`-th hit of a template is a PROBE: the caller sends that
line to the LLM anyway and reports the answer with `review(entry, answer)`:
- split: the answer is strictly more specific than the cached template (the cached regex matches the answer read as
  text) → the answer is inserted; being more specific it wins the lines it matches from now on, and `review`
  returns it so the caller can re-label the lines already given the general template that the new one matches;
- merge: the answer is strictly more general (its regex matches the cached template as text) → the cached
  template is replaced by the answer: `review` returns the answer, and the caller re-labels the old one's lines;
- otherwise nothing changes (a different template for that line: left to the next probe).
Everything is deterministic: no clocks, no randomness, ties broken by insertion order.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

PLACEHOLDER = "<*>"
_WILDCARD = PLACEHOLDER  # the edge key of every wildcard token


def _normalize(text: str) -> str:
    return " ".join(text.split())


def template_regex(template: str, spaced_variables: bool = True) -> re.Pattern:
    """The whole-line regex of a template (applied to whitespace-normalised text): each `<*>` matches any text
    (`spaced_variables`) or a run of non-whitespace characters only."""
    parts = [re.sub(r"\\ ", r"\\s+", re.escape(p)) for p in _normalize(template).split(PLACEHOLDER)]
    return re.compile(("(.*?)" if spaced_variables else r"(\S*?)").join(parts), re.DOTALL)


@dataclass
class CachedTemplate:
    """One cached template. `hits` counts cache hits (not the LLM answer that inserted it)."""

    index: int  # insertion order, the final tie-break
    template: str
    regex: re.Pattern
    constant_chars: int
    wildcards: int
    hits: int = 0
    replaced_by: "CachedTemplate | None" = None  # set when a merge retired this entry

    def matches(self, normalized_content: str) -> bool:
        return self.regex.fullmatch(normalized_content) is not None


@dataclass
class _Node:
    children: dict[str, "_Node"] = field(default_factory=dict)
    entries: list[CachedTemplate] = field(default_factory=list)  # templates ending here (wildcard tokens share edges)


def _is_cacheable(template: str) -> bool:
    return any(ch.isalnum() for ch in template.replace(PLACEHOLDER, ""))


class TemplateCache:
    """Prefix tree of templates; see the module docstring. Not thread-safe (the parser calls it from one thread)."""

    def __init__(self, refresh_every: int = 0):
        if refresh_every < 0:
            raise ValueError(f"refresh_every: must be >= 0, got {refresh_every}")
        self.refresh_every = refresh_every
        self._root = _Node()
        self._by_text: dict[str, CachedTemplate] = {}
        self.entries: list[CachedTemplate] = []  # live entries, in insertion order
        self.splits = 0
        self.merges = 0

    def __len__(self) -> int:
        return len(self.entries)

    # --- insertion --------------------------------------------------------------------------------------------
    def insert(self, template: str, source: str | None = None) -> CachedTemplate | None:
        """Cache a template (idempotent); None if it is not cacheable (no constant letter or digit). `source` is the
        line the template was answered for: if its variables hold no whitespace there, they never will (see the
        module docstring)."""
        text = _normalize(template)
        if not _is_cacheable(text):
            return None
        found = self._by_text.get(text)
        if found is not None:
            if source is not None and not found.matches(_normalize(source)):
                found.regex = template_regex(text)  # this line's variable holds whitespace: widen it
            return found
        tokens = text.split(" ")
        strict = template_regex(text, spaced_variables=False)
        spaced = source is None or strict.fullmatch(_normalize(source)) is None
        entry = CachedTemplate(
            index=len(self._by_text), template=text, regex=template_regex(text) if spaced else strict,
            constant_chars=len(text.replace(PLACEHOLDER, "").replace(" ", "")), wildcards=text.count(PLACEHOLDER))
        node = self._root
        for tok in tokens:
            node = node.children.setdefault(_WILDCARD if PLACEHOLDER in tok else tok, _Node())
        node.entries.append(entry)
        self._by_text[text] = entry
        self.entries.append(entry)
        return entry

    def _remove(self, entry: CachedTemplate) -> None:
        node = self._root
        for tok in entry.template.split(" "):
            node = node.children[_WILDCARD if PLACEHOLDER in tok else tok]
        node.entries.remove(entry)
        self.entries.remove(entry)
        # _by_text keeps it so the text maps to its replacement's lineage, never re-inserted as new
        self._by_text[entry.template] = entry.replaced_by or entry

    # --- matching ---------------------------------------------------------------------------------------------
    def candidates(self, content: str) -> list[CachedTemplate]:
        """Templates whose token structure fits the content (before regex verification), in insertion order."""
        tokens = content.split()
        found: dict[int, CachedTemplate] = {}
        seen: set[tuple[int, int]] = set()
        stack = [(self._root, 0)]
        while stack:
            node, pos = stack.pop()
            key = (id(node), pos)
            if key in seen:
                continue
            seen.add(key)
            if pos == len(tokens):
                for entry in node.entries:
                    found[entry.index] = entry
                continue
            child = node.children.get(tokens[pos])
            if child is not None:
                stack.append((child, pos + 1))
            wild = node.children.get(_WILDCARD)
            if wild is not None:
                # a wildcard token takes 1..all remaining tokens
                stack.extend((wild, end) for end in range(pos + 1, len(tokens) + 1))
        return [found[i] for i in sorted(found)]

    def match(self, content: str) -> CachedTemplate | None:
        """The most specific verified template for this content, or None (a miss). Counts the hit."""
        normalized = _normalize(content)
        best = None
        for entry in self.candidates(normalized):
            if not entry.matches(normalized):
                continue
            if best is None or (entry.constant_chars, -entry.wildcards) > (best.constant_chars, -best.wildcards):
                best = entry
        if best is not None:
            best.hits += 1
        return best

    def wants_probe(self, entry: CachedTemplate) -> bool:
        """True when this hit (already counted by `match`) should also go to the LLM (refresh on)."""
        return self.refresh_every > 0 and entry.hits % self.refresh_every == 0

    # --- refresh ----------------------------------------------------------------------------------------------
    def review(self, entry: CachedTemplate, answer: str) -> CachedTemplate | None:
        """Apply the split / merge rule to a probe's LLM answer; the new entry when it changed the cache."""
        text = _normalize(answer)
        if text == entry.template or not _is_cacheable(text) or entry.replaced_by is not None:
            return None
        if entry.regex.fullmatch(text) is not None and not template_regex(text).fullmatch(entry.template):
            new = self.insert(text)  # split: strictly more specific
            if new is not None and new is not entry:
                self.splits += 1
                return new
            return None
        if template_regex(text).fullmatch(entry.template) is not None:
            new = self.insert(text)  # merge: strictly more general, replaces the cached one
            if new is None or new is entry:
                return None
            entry.replaced_by = new
            new.hits += entry.hits
            self._remove(entry)
            self.merges += 1
            return new
        return None
