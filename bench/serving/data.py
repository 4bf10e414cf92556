"""Request streams for `python -m bench.serving`: random, gsp (generated shared prefix) and loghub (ICL parsing).

Every request is greedy with a fixed output length (the benchmark sends ignore_eos), so every backend does the
same work. A `BenchRequest` carries the prompt in the forms the backends need:
- `input_ids`: the exact token ids (random / gsp prompts are sent as ids to /v1/completions, so the input length
  is exact and no detokenize → retokenize drift can occur; the hf backend always runs these ids);
- `text`: for random `--random-kind words` (text sent as the prompt; prompt_len is its re-tokenized length);
- `icl` + `messages`: a loghub request as pairserve's `icl` object (without `refine`, so the server's
  --pair-policy decides) and as the four chat messages it renders to, for servers without the extension.

random: like SGLang's `--dataset-name random`: input and output lengths are drawn uniformly from
[max(1, int(L * range_ratio)), L] (range_ratio 1.0 = fixed lengths), tokens uniformly from the non-special ids.
gsp: bench.gsp.make_workload (groups sharing a system prompt; shuffled); `system` labels the group.
loghub: bench.logparse.build_requests per system, oracle output length (the ground-truth template's tokens),
systems interleaved round-robin (a multi-tenant log stream); `--num-prompts` is the total.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

DATASETS = ("random", "gsp", "loghub")


@dataclass
class BenchRequest:
    index: int
    prompt_len: int
    output_len: int
    input_ids: list[int] = field(default_factory=list)
    text: str | None = None
    icl: dict | None = None
    messages: list[dict] | None = None
    system: str = ""


def _token_pool(tokenizer) -> np.ndarray:
    """Ids a random prompt may use: the tokenizer's ids minus special tokens."""
    special = set(tokenizer.all_special_ids)
    return np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)


def _lengths(rng: np.random.Generator, n: int, length: int, ratio: float) -> np.ndarray:
    return rng.integers(max(int(length * ratio), 1), length + 1, size=n)


def random_requests(tokenizer, n: int, input_len: int, output_len: int, range_ratio: float, seed: int,
                    kind: str = "ids") -> list[BenchRequest]:
    """SGLang-style random prompts; kind 'ids' (token ids) or 'words' (those ids decoded to text)."""
    if input_len < 1 or output_len < 1:
        raise ValueError("--random-input-len / --random-output-len: must be >= 1")
    if not 0.0 <= range_ratio <= 1.0:
        raise ValueError(f"--random-range-ratio: must be in [0, 1] (got {range_ratio})")
    if kind not in ("ids", "words"):
        raise ValueError(f"--random-kind: must be ids or words (got {kind!r})")
    rng = np.random.default_rng(seed)
    pool = _token_pool(tokenizer)
    in_lens, out_lens = _lengths(rng, n, input_len, range_ratio), _lengths(rng, n, output_len, range_ratio)
    out = []
    for i in range(n):
        ids = pool[rng.integers(0, len(pool), size=int(in_lens[i]))].tolist()
        if kind == "words":
            text = tokenizer.decode(ids)
            ids = tokenizer.encode(text, add_special_tokens=False)
            out.append(BenchRequest(i, len(ids), int(out_lens[i]), ids, text=text))
        else:
            out.append(BenchRequest(i, len(ids), int(out_lens[i]), ids))
    return out


def gsp_requests(tokenizer, groups: int, per_group: int, system_len: int, question_len: int, output_len: int,
                 seed: int) -> list[BenchRequest]:
    """bench.gsp's workload over this tokenizer's ids; each request's `system` is 'group<k>'."""
    from bench.gsp import make_workload

    for flag, v in (("--gsp-num-groups", groups), ("--gsp-prompts-per-group", per_group),
                    ("--gsp-system-prompt-len", system_len), ("--gsp-question-len", question_len),
                    ("--gsp-output-len", output_len)):
        if v < 1:
            raise ValueError(f"{flag}: must be >= 1 (got {v})")
    prompts = make_workload(groups, per_group, system_len, question_len, len(tokenizer), seed)
    group_of: dict[tuple, int] = {}  # make_workload shuffles; recover each prompt's group from its prefix
    out = []
    for i, p in enumerate(prompts):
        g = group_of.setdefault(tuple(p[:system_len]), len(group_of))
        out.append(BenchRequest(i, len(p), output_len, list(p), system=f"group{g}"))
    return out


def loghub_requests(tokenizer, data: str, systems: list[str], n: int) -> list[BenchRequest]:
    """The first ceil(n / len(systems)) requests of each system's InferLog stream, interleaved, cut to n."""
    from bench.logparse.stream import build_requests
    from engine.pair.render import render_icl, validate_icl
    from logparse import render_messages

    per_system = math.ceil(n / len(systems))
    streams = []
    for system in systems:
        icls, sps, _ = build_requests(tokenizer, data, system, per_system, "oracle")
        streams.append([(system, icl, sp) for icl, sp in zip(icls, sps)])
    interleaved = [s[i] for i in range(per_system) for s in streams if i < len(s)][:n]
    out = []
    for i, (system, icl, sp) in enumerate(interleaved):
        icl = {k: v for k, v in icl.items() if k != "refine"}  # the server's --pair-policy decides
        rendered = render_icl(tokenizer, validate_icl(icl))
        ids = rendered.assemble(rendered.examples)[0]  # what the server prefills before any PAIR refinement
        out.append(BenchRequest(i, len(ids), sp["max_new_tokens"], ids, icl=icl, messages=render_messages(icl),
                                system=system))
    return out


def build_dataset(args, tokenizer) -> list[BenchRequest]:
    """Dispatch on args.dataset (argparse namespace of bench.serving); ValueError names the bad flag."""
    if args.num_prompts < 1:
        raise ValueError(f"--num-prompts: must be >= 1 (got {args.num_prompts})")
    if args.dataset == "random":
        return random_requests(tokenizer, args.num_prompts, args.random_input_len, args.random_output_len,
                               args.random_range_ratio, args.seed, args.random_kind)
    if args.dataset == "gsp":
        per_group = math.ceil(args.num_prompts / args.gsp_num_groups) if args.gsp_num_groups > 0 else 0
        reqs = gsp_requests(tokenizer, args.gsp_num_groups, per_group, args.gsp_system_prompt_len,
                            args.gsp_question_len, args.gsp_output_len, args.seed)
        return [BenchRequest(i, r.prompt_len, r.output_len, r.input_ids, system=r.system)
                for i, r in enumerate(reqs[:args.num_prompts])]
    if args.dataset == "loghub":
        from logparse import LOGHUB_SYSTEMS, list_systems

        if not args.data:
            raise ValueError("--data: the loghub dataset needs the Loghub-2k directory")
        available = list_systems(args.data)
        systems = ([s for s in LOGHUB_SYSTEMS if s in available] if args.systems == "all"
                   else [s for s in args.systems.split(",") if s])
        missing = [s for s in systems if s not in available]
        if missing or not systems:
            raise ValueError(f"--systems: {missing or args.systems!r} not found under {args.data}")
        return loghub_requests(tokenizer, args.data, systems, args.num_prompts)
    raise ValueError(f"--dataset: must be one of {DATASETS} (got {args.dataset!r})")
