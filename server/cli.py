"""Command line → validated ServerArgs. Flags are generated from the ServerArgs fields (one source of truth).

Each field `foo_bar` becomes `--foo-bar`; `model_path` is also `--model`. Booleans are switches (`--flag`, or
`--flag/--no-flag` for a field that defaults to True). Optional fields (`int | None`) accept their type; a
flag left out keeps the dataclass default. Bad values exit with status 2 and the field's message.
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
ALIASES = types.MappingProxyType({"model_path": ("--model",), "tp_size": ("--tp",)})
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")  # what both logging and uvicorn accept


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
        if typ is bool:
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
        args = ServerArgs(**given).validate()
        if args.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"log_level: must be one of {LOG_LEVELS} (got {args.log_level!r})")
        return args
    except ValueError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
