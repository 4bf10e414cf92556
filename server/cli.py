"""Command line → validated ServerArgs. Flags are generated from the ServerArgs fields (one source of truth).

Each field `foo_bar` becomes `--foo-bar`; ALIASES adds other names, SGLang's launch flags among them
(`--mem-fraction-static`, `--max-total-tokens`, `--random-seed`, `--tp`), so an SGLang launch line runs unchanged
where pairserve has the feature and exits 2 naming the flag where it has not. Booleans are switches (`--flag`, or
`--flag/--no-flag` for a field that defaults to True). Optional fields (`int | None`) accept their type; tuple
fields take one or more values. A flag left out keeps the dataclass default. Bad values exit with status 2 and
the field's message.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from typing import Any, Sequence

from engine.config import ServerArgs

SKIPPED_FIELDS = frozenset({"extra"})  # free-form dict: not expressible as one flag
# field → extra flag names. SGLang's: mem_fraction_static is the share of memory for static allocations (here the
# KV pool: weights are not sized by a fraction), max_total_tokens the KV pool size in tokens.
ALIASES = types.MappingProxyType({
    "model_path": ("--model",),
    "mem_fraction": ("--mem-fraction-static",),
    "kv_cache_tokens": ("--max-total-tokens",),
    "seed": ("--random-seed",),
    "tp_size": ("--tp",),
    "dp_size": ("--dp",),
})


def _scalar_type(annotation: Any) -> type:
    """The concrete type of `T` or `T | None`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        assert len(args) == 1, f"unsupported flag type {annotation!r}"
        return args[0]
    return annotation


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m server",
        description="pairserve: OpenAI-compatible LLM server (flags mirror engine.config.ServerArgs)")
    hints = typing.get_type_hints(ServerArgs)
    for f in dataclasses.fields(ServerArgs):
        if f.name in SKIPPED_FIELDS:
            continue
        flag = "--" + f.name.replace("_", "-")
        names = (flag, *ALIASES.get(f.name, ()))
        typ = _scalar_type(hints[f.name])
        default = f.default
        if typing.get_origin(typ) is tuple:
            item = typing.get_args(typ)[0]
            parser.add_argument(*names, dest=f.name, type=item, nargs="+", default=None,
                                metavar=item.__name__.upper(), help=f"one or more (default: {default})")
        elif typ is bool:
            action = argparse.BooleanOptionalAction if default else "store_true"
            parser.add_argument(*names, dest=f.name, action=action, default=None,
                                help=f"(default: {default})")
        else:
            parser.add_argument(*names, dest=f.name, type=typ, default=None, metavar=typ.__name__.upper(),
                                help=f"(default: {default})")
    return parser


def parse_server_args(argv: Sequence[str] | None = None) -> ServerArgs:
    """Parse and validate; on a bad value print 'error: <field>: <why>' and exit 2 (argparse's convention)."""
    parser = build_parser()
    ns = parser.parse_args(argv)
    given = {k: v for k, v in vars(ns).items() if v is not None}
    try:
        return ServerArgs(**given).validate()
    except ValueError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
