"""Turn a model's answer into a log template comparable with the Loghub-2k ground truth.

`extract_template` = pick the template text out of the answer, normalise placeholder spellings to `<*>`, then
apply the correction rules of LILAC / loghub-2.0's `correct_single_template` that our ground truth already
satisfies. Each rule below was checked against the 12 shared systems (logpai/logparser `loghub_2k_corrected`):
every DEFAULT_RULES rule leaves all 786 distinct ground-truth templates unchanged, so applying it to a prediction can
only turn a wrong spelling into the ground truth's spelling, never the reverse.

DEFAULT_RULES (LILAC's names):
  DS  double space: strip, collapse whitespace runs to one space.
  PS  path-like string: a token (split on whitespace , ! ; : = | " ' [ ] ( ) { }) of the form /a/b... -> <*>.
  BL  boolean: token true / false (any case) -> <*>.
  US  user string: token null / root -> <*>.
  DG  digits: digits-only token -> <*>.
  WV  word with variable: a token (split also on . - + @ # $ % &) containing <*> -> <*>; kept when what is
      left besides <*> is only < and > (our ground truth has `vCores:<*>>`, where the `>` is a literal).
  DV  dot-separated variables: <*>.<*> -> <*> until stable.
  CV  consecutive variables: <*><*> -> <*> until stable.

Left out on purpose, because the ground truth here keeps these forms (template count / line count changed):
  `<*> <*>` -> `<*>` (15 / 647), `<*>:<*>` (12 / 635), `#<*>#` (2 / 244), ` '<*>' ` (2 / 35),
  `<*>@<*>` (3 / 3), `<*>/<*>` (2 / 2). loghub-2.0 applies those to a re-labelled ground truth of its own.
"""
from __future__ import annotations

import re
from types import MappingProxyType
from typing import Callable, Sequence

PLACEHOLDER = "<*>"

# Variable markers a model may write instead of <*>. Deliberately narrow: the logs contain literal
# `<ok>`, `<ABORT code completed>`, `{10020}` and `ComponentInfo{<*>}`, which must survive.
_PLACEHOLDER_VARIANTS = (
    re.compile(r"\{\{[^{}]*\}\}"),  # {{name}}
    re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}"),  # {name}
    re.compile(r"\{\}"),  # {} (SLF4J style)
    re.compile(r"<\s*\*\s*[A-Za-z0-9_]*\s*>"),  # <* >, < *>, <*1>, <*var>
    re.compile(r"<[A-Z][A-Z0-9_]*>"),  # <NUM>, <IP_ADDR>, <VAR>
)
_PATH_DELIMS = r"""(\s|,|!|;|:|=|\||"|'|\[|\]|\(|\)|\{|\})"""
_TOKEN_DELIMS = r"""(\s|,|!|;|:|=|\||"|'|\[|\]|\(|\)|\{|\}|\.|-|\+|@|#|\$|%|&)"""
_PATH_RE = re.compile(r"(/[^/]+)+")
_DIGITS_RE = re.compile(r"\d+")
_WORD_WITH_VAR_RE = re.compile(r"[^\s/]*<\*>[^\s/]*")
_LABEL_RE = re.compile(r"^\s*(log\s+)?template\s*:\s*", re.IGNORECASE)


def normalize_placeholders(text: str) -> str:
    for pattern in _PLACEHOLDER_VARIANTS:
        text = pattern.sub(PLACEHOLDER, text)
    return text


def _map_tokens(template: str, delims: str, fn: Callable[[str], str]) -> str:
    # re.split with a capturing group keeps the delimiters, so joining restores the text around tokens.
    return "".join(fn(tok) for tok in re.split(delims, template))


def _replace_until_stable(template: str, old: str, new: str) -> str:
    while old in template:
        template = template.replace(old, new)
    return template


def _rule_ds(t: str) -> str:
    return re.sub(r"\s+", " ", t.strip())


def _rule_ps(t: str) -> str:
    return _map_tokens(t, _PATH_DELIMS, lambda tok: PLACEHOLDER if _PATH_RE.fullmatch(tok) else tok)


def _rule_bl(t: str) -> str:
    return _map_tokens(t, _TOKEN_DELIMS, lambda tok: PLACEHOLDER if tok.lower() in ("true", "false") else tok)


def _rule_us(t: str) -> str:
    return _map_tokens(t, _TOKEN_DELIMS, lambda tok: PLACEHOLDER if tok.lower() in ("null", "root") else tok)


def _rule_dg(t: str) -> str:
    return _map_tokens(t, _TOKEN_DELIMS, lambda tok: PLACEHOLDER if _DIGITS_RE.fullmatch(tok) else tok)


def _wv_token(tok: str) -> str:
    if tok == "<*>/<*>" or not _WORD_WITH_VAR_RE.fullmatch(tok):
        return tok
    rest = tok.replace(PLACEHOLDER, "")
    if rest and set(rest) <= {"<", ">"}:
        return tok
    return PLACEHOLDER


def _rule_wv(t: str) -> str:
    return _map_tokens(t, _TOKEN_DELIMS, _wv_token)


def _rule_dv(t: str) -> str:
    return _replace_until_stable(t, "<*>.<*>", PLACEHOLDER)


def _rule_cv(t: str) -> str:
    return _replace_until_stable(t, "<*><*>", PLACEHOLDER)


RULES: "MappingProxyType[str, Callable[[str], str]]" = MappingProxyType(
    {"DS": _rule_ds, "PS": _rule_ps, "BL": _rule_bl, "US": _rule_us, "DG": _rule_dg, "WV": _rule_wv,
     "DV": _rule_dv, "CV": _rule_cv}
)
DEFAULT_RULES: tuple[str, ...] = ("DS", "PS", "BL", "US", "DG", "WV", "DV", "CV")


def correct_template(template: str, rules: Sequence[str] = DEFAULT_RULES) -> str:
    """Apply the named correction rules in the given order (see the module docstring)."""
    for name in rules:
        fn = RULES.get(name)
        if fn is None:
            raise ValueError(f"rules: unknown rule {name!r}; known: {sorted(RULES)}")
        template = fn(template)
    return template


def _pick_span(model_output: str) -> str:
    parts = model_output.split("`")
    if len(parts) >= 3:
        # Odd-indexed parts lie between a pair of backticks; spans that hold nothing but placeholders
        # and spaces are echoes of the instruction, not answers.
        spans = [p.strip() for p in parts[1::2]]
        spans = [s for s in spans if s.replace(PLACEHOLDER, "").strip()]
        if spans:
            return max(spans, key=len)  # max keeps the first of equally long spans
    for line in model_output.replace("`", "").splitlines():
        if line.strip():
            return _LABEL_RE.sub("", line)
    return ""


def extract_template(model_output: str, fallback: str | None = None) -> str:
    """The template in `model_output`, corrected with DEFAULT_RULES.

    Takes the longest backtick-delimited span (code fences included); without a usable span, the first
    non-empty line with backticks and a leading "Log template:" label removed. If nothing is left, returns
    `fallback` (e.g. the query log itself, as LILAC does) or "" when it is None.
    """
    template = correct_template(normalize_placeholders(_pick_span(model_output)))
    if not template:
        return "" if fallback is None else fallback
    return template
