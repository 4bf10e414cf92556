"""`python -m logparse FILE`: parse a whole log file (or stdin, or a growing file) into loghub-2.0's outputs.

    python -m logparse FILE|- [--format loghub|raw|'<Date> <Time> <Level>: <Content>'] [--model demo|DIR|oracle:CSV]
        [--url URL [--api-key KEY]] [--out DIR] [--ground-truth CSV] [--examples CSV] [--order prefix|arrival]
        [--follow [--follow-timeout S]] [--no-cache] [--cache-refresh N] [--oracle-engine MODEL] [--refine native]

Docs: docs/logparse.md. Exit status: 0 done, 2 bad input (one `logparse: error:` line, no traceback), 130 Ctrl-C
or SIGTERM (the outputs then hold the lines parsed so far).
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import time

from logparse.backends import Caller, EngineTransport, HttpTransport, LlmCall
from logparse.demos import Demonstrations, dpp_pool, read_labelled_csv
from logparse.formats import resolve_format, system_for_file, CONTENT_FIELD
from logparse.logfile import LineReader, check_some_kept, follow, open_log, read_all
from logparse.order import ORDERS
from logparse.outputs import accuracy, output_name, write_outputs
from logparse.parser import LogParser, ParserOptions
from logparse.prompt import REFINE_MODES
from logparse.template_cache import TemplateCache
from logparse.truth import GroundTruth

ORACLE_PREFIX = "oracle:"


def build_arg_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m logparse", description=__doc__.split("\n")[0])
    ap.add_argument("file", help="log file, or - for stdin")
    ap.add_argument("--format", default=None,
                    help="loghub (the loghub benchmark's format of the system the file is named after), raw (the "
                         "whole line is content), or a header format such as '<Date> <Time> <Level>: <Content>'; "
                         "default: loghub when the file name names a loghub system, else raw")
    ap.add_argument("--model", default="demo", help="demo | checkpoint DIR | oracle:CSV (ground-truth answers)")
    ap.add_argument("--url", default=None, help="a running `python -m server` to send the icl calls to")
    ap.add_argument("--api-key", default=None, help="Bearer key for --url")
    ap.add_argument("--out", default="logparse_out", help="output folder")
    ap.add_argument("--ground-truth", default=None, help="loghub structured CSV: labels the demonstrations and "
                                                          "scores GA / PA / FGA / FTA")
    ap.add_argument("--examples", default=None, help="labelled demonstrations (CSV with Content, EventTemplate)")
    ap.add_argument("--order", default=None, choices=ORDERS,
                    help="prefix (whole-file plan; the default for a file) or arrival (file order; --follow)")
    ap.add_argument("--follow", action="store_true", help="tail a growing file (online mode, arrival order)")
    ap.add_argument("--follow-timeout", type=float, default=0.0,
                    help="--follow: stop after this many seconds without a new line (0: never)")
    ap.add_argument("--no-cache", action="store_true", help="no template cache: every line is an LLM call")
    ap.add_argument("--cache-refresh", type=int, default=0,
                    help="probe every N-th hit of a cached template with an LLM call (split / merge; 0: off)")
    ap.add_argument("--oracle-engine", default=None,
                    help="with --model oracle:CSV: run every call through this model's engine (demo | DIR) with "
                         "the right answer's length, for token hit rate and wall time")
    ap.add_argument("--refine", default="native", choices=REFINE_MODES, help="PAIR refinement of each icl call")
    ap.add_argument("--k", type=int, default=5, help="examples per call")
    ap.add_argument("--pool-frac", type=float, default=0.1, help="DPP candidate pool, as a fraction of the labels")
    ap.add_argument("--concurrency", type=int, default=16, help="LLM calls in flight")
    ap.add_argument("--max-new-tokens", type=int, default=96, help="longest model answer")
    ap.add_argument("--kv-cache-tokens", type=int, default=None, help="in-process engine: KV pool size in tokens")
    ap.add_argument("--dtype", default="auto", help="in-process engine: dtype")
    ap.add_argument("--limit", type=int, default=0, help="parse only the first N lines (0: all)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


class BadInput(ValueError):
    """A user error: printed as one line, exit status 2."""


def _check_args(a) -> None:
    if a.follow and a.file == "-":
        raise BadInput("--follow needs a file, not stdin")
    if a.follow and a.order == "prefix":
        raise BadInput("--follow parses lines as they arrive: --order prefix needs the whole file")
    if a.url and a.model.startswith(ORACLE_PREFIX) and a.oracle_engine:
        raise BadInput("--oracle-engine runs in process; leave out --url")
    if a.oracle_engine and not a.model.startswith(ORACLE_PREFIX):
        raise BadInput("--oracle-engine only goes with --model oracle:CSV")
    if a.limit < 0:
        raise BadInput("--limit: must be >= 0")
    for name in ("k", "concurrency", "max_new_tokens"):
        if getattr(a, name) < 1:
            raise BadInput(f"--{name.replace('_', '-')}: must be >= 1")
    if a.cache_refresh < 0:
        raise BadInput("--cache-refresh: must be >= 0")


def _ground_truth(a) -> GroundTruth | None:
    oracle_csv = a.model[len(ORACLE_PREFIX):] if a.model.startswith(ORACLE_PREFIX) else None
    path = a.ground_truth or oracle_csv
    return GroundTruth.from_csv(path) if path else None


def _demonstrations(a, truth: GroundTruth | None, fit_texts) -> Demonstrations:
    if a.examples:
        pool = read_labelled_csv(a.examples)
        pool = [type(r)(r.content, r.template, None) for r in pool]  # another file's LineIds mean nothing here
    elif truth is not None:
        pool = dpp_pool(truth.rows, a.pool_frac)
    else:
        raise BadInput("the LLM calls need labelled demonstrations: pass --examples CSV (Content, EventTemplate) "
                       "or --ground-truth CSV")
    return Demonstrations(pool, fit_texts, k=a.k)


@contextlib.contextmanager
def _transport(a):
    """The engine (in process), the HTTP client, or None (pure oracle)."""
    oracle = a.model.startswith(ORACLE_PREFIX)
    if a.url:
        yield HttpTransport(a.url, a.api_key)
        return
    model = a.oracle_engine if oracle else a.model
    if model is None:
        yield None
        return
    from engine import Engine  # torch loads only when a model runs in process

    flags = dict(model_path=model, pair_policy=a.refine, max_running_requests=a.concurrency, dtype=a.dtype)
    if a.kv_cache_tokens:
        flags["kv_cache_tokens"] = a.kv_cache_tokens
    with Engine(**flags) as eng:
        yield EngineTransport(eng)


class _Progress:
    def __init__(self, total: int | None, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="line", file=sys.stderr, mininterval=0.5, dynamic_ncols=True)

    def __call__(self, parser: LogParser) -> None:
        if self.bar is None:
            return
        self.bar.update(parser.stats.lines - self.bar.n)
        self.bar.set_postfix(llm_calls=parser.stats.llm_calls, cache_hits=parser.stats.cache_hits, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def summary(a, parser: LogParser, reader: LineReader, lines, truth, wall_s: float, interrupted: bool) -> dict:
    st = parser.stats
    out = {"lines": st.lines, "llm_calls": st.llm_calls, "cache_hits": st.cache_hits,
           "templates": len(parser.template_counts()), "wall_seconds": round(wall_s, 3),
           "token_hit_rate": st.token_hit_rate,
           "lines_per_second": st.lines / wall_s if wall_s > 0 else None,
           "input_lines": reader.raw_lines, "skipped_lines": sum(reader.skipped.values()),
           "skipped_by_reason": dict(reader.skipped), "interrupted": interrupted,
           "mode": "follow" if a.follow else "file", "order": a.order, "model": a.model,
           "oracle_engine": a.oracle_engine, "url": a.url, "refine": a.refine, "template_cache": not a.no_cache,
           "cache_refresh": a.cache_refresh, "probes": st.probes, "cache_splits": parser.cache.splits,
           "cache_merges": parser.cache.merges, "waves": st.waves, "prompt_tokens": st.prompt_tokens,
           "cached_tokens": st.cached_tokens, "completion_tokens": st.completion_tokens}
    if truth is not None:
        out.update(accuracy(lines, parser.templates, truth))
    return out


def run(argv=None) -> int:
    a = build_arg_parser().parse_args(argv)
    try:
        _check_args(a)
        a.order = a.order or ("arrival" if a.follow else "prefix")
        spec = a.format or ("loghub" if a.file != "-" and system_for_file(a.file) else "raw")
        fmt = resolve_format(spec, a.file)
        truth = _ground_truth(a)
        f = open_log(a.file)
    except ValueError as e:
        print(f"logparse: error: {e}", file=sys.stderr)
        return 2
    reader = LineReader(fmt)
    header = [name for name in fmt.fields if name != CONTENT_FIELD]
    with contextlib.closing(f) if f is not sys.stdin.buffer else contextlib.nullcontext():
        try:
            lines = [] if a.follow else read_all(f, reader)
            if a.limit:
                lines = lines[:a.limit]
            demos = _demonstrations(a, truth, [ln.content for ln in lines])
            with _transport(a) as transport:
                caller = Caller(transport, oracle=a.model.startswith(ORACLE_PREFIX), refine=a.refine,
                                max_new_tokens=a.max_new_tokens)
                return _parse(a, caller, demos, truth, reader, lines, f, header)
        except (ValueError, RuntimeError) as e:
            print(f"logparse: error: {e}", file=sys.stderr)
            return 2


def oracle_calls(argv) -> list[LlmCall]:
    """The LLM calls (examples chosen, in submission order, wave after wave) that `run(argv)` makes when the pure
    oracle answers them (`argv` must name `--model oracle:CSV` for a file; `--oracle-engine` is ignored: nothing
    runs). For planning and benchmarks, e.g. sizing a KV pool from the prompts before any engine starts."""
    a = build_arg_parser().parse_args(argv)
    if not a.model.startswith(ORACLE_PREFIX) or a.follow or a.file == "-":
        raise ValueError("oracle_calls: needs --model oracle:CSV and a file")
    truth = _ground_truth(a)
    reader = LineReader(resolve_format(a.format or ("loghub" if system_for_file(a.file) else "raw"), a.file))
    with contextlib.closing(open_log(a.file)) as f:
        lines = read_all(f, reader)
    lines = lines[:a.limit] if a.limit else lines
    calls: list[LlmCall] = []

    class Recorder(Caller):
        def run(self, wave, concurrency):
            calls.extend(wave)
            return super().run(wave, concurrency)

    options = ParserOptions(order=a.order or "prefix", use_cache=not a.no_cache, refine=a.refine)
    LogParser(Recorder(None, oracle=True), _demonstrations(a, truth, [ln.content for ln in lines]),
              TemplateCache(a.cache_refresh), options, truth).parse(lines)
    return calls


def _interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """SIGTERM (`timeout`, `kill`) ends a run like Ctrl-C: partial outputs written, exit status 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parse(a, caller, demos, truth, reader, lines, f, header) -> int:
    parser = LogParser(caller, demos, TemplateCache(a.cache_refresh),
                       ParserOptions(order=a.order, use_cache=not a.no_cache, concurrency=a.concurrency,
                                     refine=a.refine), truth)
    progress = _Progress(None if a.follow else len(lines), not a.no_progress)
    parser.on_progress = progress
    start = time.perf_counter()
    interrupted = False
    name = output_name(a.file)
    try:
        with _sigterm_as_ctrl_c():
            if not a.follow:
                parser.parse(lines)
            else:
                _follow(a, parser, reader, lines, f, header, name, start)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        progress.close()
        s = summary(a, parser, reader, lines, truth, time.perf_counter() - start, interrupted)
        paths = write_outputs(a.out, name, lines, parser.templates, header, s)
    print(f"logparse: {s['lines']} lines, {s['llm_calls']} LLM calls, {s['cache_hits']} cache hits, "
          f"{s['templates']} templates -> {paths['structured']}", file=sys.stderr)
    return 130 if interrupted else 0


def _follow(a, parser, reader, lines, f, header, name, start) -> None:
    last_line_s = time.perf_counter()
    for batch in follow(f, poll_s=0.1):
        now = time.perf_counter()
        if not batch:
            if a.follow_timeout and now - last_line_s > a.follow_timeout:
                break
            continue
        last_line_s = now
        new = [ln for ln in (reader.feed(raw) for raw in batch) if ln is not None]
        lines.extend(new)
        parser.parse(new)
        s = summary(a, parser, reader, lines, None, now - start, False)
        write_outputs(a.out, name, lines, parser.templates, header, s)
    if reader.raw_lines:
        check_some_kept(reader)
