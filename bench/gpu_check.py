"""GPU check: do the attention backends agree, and how close do their kernels come to the machine's floors?

    python -m bench.gpu_check [--model bench|PATH] [--dtype bfloat16] [--backends torch,triton,triton+fused,flashinfer]
                              [--heads 32] [--kv-heads 8] [--head-dim 128] [--iters 20]

1. Agreement. One ModelRunner per backend on the same checkpoint (the `bench` tiny preset by default) runs the
   same steps in lockstep: every prompt prefilled in two chunks (the second extends a cached prefix), then greedy
   decode steps fed with the torch backend's tokens. Each step's logits are compared with torch's
   (max |diff| / max |ref| <= tol) and so are the argmaxes; a different argmax counts as a failure only when
   torch's own margin between the two tokens exceeds the tolerance (otherwise it is a near-tie). `triton+fused`
   also routes RMSNorm and rotary through the Triton kernels. Then every backend's Engine generates greedy
   tokens end to end; identical outputs are counted (informational: bf16 near-ties may diverge).
2. Kernel timing. Each backend's per-layer `forward` (KV store + attention) on synthetic batches with a
   `--heads/--kv-heads/--head-dim` attention shape, timed with CUDA events: decode batch 1/32/128 x context
   1k/4k, extend 1x2048 and 8x512. Floors: KV bytes read / device copy bandwidth, and attention FLOPs (causal,
   QK^T and PV) / matmul FLOP/s, both measured in the same run; the table prints the achieved fractions.
Without CUDA it prints that and exits 0. Exit status 1 when a backend disagrees or fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from types import SimpleNamespace

import torch

from bench.common.model_paths import resolve_model
from engine.attention.base import ForwardBatch
from engine.attention.registry import create_backend
from engine.config import ServerArgs
from engine.memory import KVPool
from engine.models.loader import DTYPES
from engine.forward_mode import ForwardMode
from engine.scheduler.batch import ScheduledBatch, TableWrite

TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2, "float16": 2e-2}


def attention_flops(prefix_lens: list[int], extend_lens: list[int], num_heads: int, head_dim: int) -> int:
    """FLOPs of causal attention: new token i of a request sees prefix + i + 1 keys, 4 * H * D FLOPs per key."""
    keys = sum(e * p + e * (e + 1) // 2 for p, e in zip(prefix_lens, extend_lens))
    return 4 * num_heads * head_dim * keys


def kv_bytes(seq_lens: list[int], num_kv_heads: int, head_dim: int, elem_size: int) -> int:
    """Bytes of K and V one layer reads when every key of every request is read once."""
    return 2 * sum(seq_lens) * num_kv_heads * head_dim * elem_size


@dataclasses.dataclass
class Agreement:
    backend: str
    max_rel_err: float
    argmax_mismatches: int  # beyond the tolerance margin
    near_ties: int
    tol: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.max_rel_err <= self.tol and self.argmax_mismatches == 0


def _runner(model_path: str, label: str, dtype: str, device: str, kv_tokens: int, max_reqs: int):
    from engine.model_runner import ModelRunner
    from engine.models.layers import use_triton_kernels

    backend, _, variant = label.partition("+")
    args = ServerArgs(model_path=model_path, device=device, dtype=dtype, attention_backend=backend,
                      kv_cache_tokens=kv_tokens, max_running_requests=max_reqs).validate()
    runner = ModelRunner(args, model_path)
    if variant == "fused":
        use_triton_kernels(runner.model)
    elif variant:
        raise ValueError(f"backends: unknown variant {label!r} (only +fused)")
    return runner


def run_lockstep(runner, prompts: list[list[int]], decode_steps: int,
                 fed_tokens: list[list[int]] | None = None, seed: int = 0):
    """Logits [B, V] after the prefill and after each decode step, and the tokens fed at each decode step.

    Request b owns table row b and a random set of slots (slot 0 stays the padding slot). Each prompt is
    prefilled in two chunks. Decode step t feeds fed_tokens[t], or each request's own greedy token when None.
    """
    batch = len(prompts)
    gen = torch.Generator().manual_seed(seed)
    perm = (torch.randperm(runner.num_slots - 1, generator=gen) + 1).tolist()
    slots, offset = [], 0
    for p in prompts:
        slots.append(perm[offset:offset + len(p) + decode_steps])
        offset += len(p) + decode_steps
    # what ModelRunner.forward reads of a request: its row, and that it asks for no prompt logprobs
    reqs = [SimpleNamespace(req_pool_idx=b, logprob=None, input_logprobs_done=True) for b in range(batch)]

    def step(mode: ForwardMode, new_ids: list[list[int]], prefix_lens: list[int]) -> torch.Tensor:
        ext = [len(ids) for ids in new_ids]
        new_slots = [slots[b][p:p + e] for b, (p, e) in enumerate(zip(prefix_lens, ext))]
        sb = ScheduledBatch(mode=mode, reqs=reqs, input_ids=[t for ids in new_ids for t in ids],
                            prefix_lens=list(prefix_lens), extend_lens=ext,
                            out_cache_loc=[s for ss in new_slots for s in ss],
                            table_writes=[TableWrite(b, p, ss)
                                          for b, (p, ss) in enumerate(zip(prefix_lens, new_slots))],
                            sample=[True] * batch)
        return runner.forward(sb).float().cpu()

    halves = [len(p) // 2 for p in prompts]
    step(ForwardMode.EXTEND, [p[:h] for p, h in zip(prompts, halves)], [0] * batch)
    logits = [step(ForwardMode.EXTEND, [p[h:] for p, h in zip(prompts, halves)], halves)]
    fed = []
    for t in range(decode_steps):
        tokens = fed_tokens[t] if fed_tokens is not None else logits[-1].argmax(-1).tolist()
        fed.append(tokens)
        logits.append(step(ForwardMode.DECODE, [[tok] for tok in tokens], [len(p) + t for p in prompts]))
    return logits, fed


def compare_logits(label: str, ref: list[torch.Tensor], out: list[torch.Tensor], tol: float) -> Agreement:
    rel, mismatches, ties = 0.0, 0, 0
    for r, o in zip(ref, out):
        scale = r.abs().max().clamp_min(1e-30)
        rel = max(rel, ((o - r).abs().max() / scale).item())
        ra, oa = r.argmax(-1), o.argmax(-1)
        for row in torch.nonzero(ra != oa).flatten().tolist():
            margin = (r[row, ra[row]] - r[row, oa[row]]).item()
            if margin > tol * scale.item():
                mismatches += 1
            else:
                ties += 1
    return Agreement(label, rel, mismatches, ties, tol)


def check_agreement(model_path: str, labels: list[str], dtype: str, device: str,
                    prompts: list[list[int]], decode_steps: int = 4) -> list[Agreement]:
    """Lockstep logits of every backend label against the torch backend's (module docstring)."""
    kv_tokens = sum(len(p) + decode_steps for p in prompts) + 8
    reference = _runner(model_path, "torch", dtype, device, kv_tokens, len(prompts))
    ref_logits, fed = run_lockstep(reference, prompts, decode_steps)
    del reference
    rows = []
    for label in labels:
        try:
            runner = _runner(model_path, label, dtype, device, kv_tokens, len(prompts))
            logits, _ = run_lockstep(runner, prompts, decode_steps, fed_tokens=fed)
            rows.append(compare_logits(label, ref_logits, logits, TOLERANCE[dtype]))
        except Exception as e:  # one broken backend must not hide the others' results
            rows.append(Agreement(label, float("nan"), 0, 0, TOLERANCE[dtype], error=f"{type(e).__name__}: {e}"))
    return rows


def engine_outputs(model_path: str, backend: str, dtype: str, device: str, prompts: list[list[int]]):
    from engine import Engine

    with Engine(model_path=model_path, attention_backend=backend, dtype=dtype, device=device,
                kv_cache_tokens=8192, chunked_prefill_size=64) as eng:
        outs = eng.generate(input_ids=prompts, sampling_params={"max_new_tokens": 16, "temperature": 0,
                                                                "ignore_eos": True})
    return [o["output_ids"] for o in outs]


def _synthetic_batch(mode, prefix_lens, extend_lens, pool, backend, heads, head_dim, device):
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    batch, max_len = len(seq_lens), max(seq_lens)
    # Request b's positions sit at consecutive slots from 1 + b * max_len (a freshly filled pool).
    table = (1 + torch.arange(batch)[:, None] * max_len + torch.arange(max_len)[None, :]).to(torch.int32)
    positions = torch.cat([torch.arange(p, p + e) for p, e in zip(prefix_lens, extend_lens)])
    owner = torch.repeat_interleave(torch.arange(batch), torch.tensor(extend_lens))
    starts = torch.cumsum(torch.tensor([0] + extend_lens[:-1]), 0)

    def dev(t: torch.Tensor) -> torch.Tensor:
        return t.to(device)

    return ForwardBatch(
        mode=mode, batch_size=batch, req_pool_indices=dev(torch.arange(batch)), seq_lens=dev(torch.tensor(seq_lens)),
        prefix_lens=dev(torch.tensor(prefix_lens)), extend_lens=dev(torch.tensor(extend_lens)),
        extend_start_loc=dev(starts), positions=dev(positions), out_cache_loc=dev(table[owner, positions].long()),
        last_token_index=dev(starts + torch.tensor(extend_lens) - 1), req_to_token=dev(table), kv_pool=pool,
        attn_backend=backend, sm_scale=head_dim ** -0.5, seq_lens_list=seq_lens, prefix_lens_list=list(prefix_lens),
        extend_lens_list=list(extend_lens))


def _time_ms(fn, iters: int) -> float:
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / iters


def measure_floors(dtype: torch.dtype, device: str) -> tuple[float, float]:
    """(copy bandwidth in bytes/s counting read + write, matmul FLOP/s in `dtype`) of this device."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() / (_time_ms(lambda: dst.copy_(src), 10) * 1e-3)
    del src, dst
    n = 8192
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    flops = 2 * n ** 3 / (_time_ms(lambda: torch.matmul(a, b), 10) * 1e-3)
    return bandwidth, flops


def time_kernels(labels, dtype: str, device: str, heads: int, kv_heads: int, head_dim: int, iters: int):
    torch_dtype = DTYPES[dtype]
    bandwidth, flops = measure_floors(torch_dtype, device)
    print(f"\ndevice {torch.cuda.get_device_name(device)}: copy bandwidth {bandwidth / 1e9:.0f} GB/s, "
          f"{dtype} matmul {flops / 1e12:.1f} TFLOP/s; attention H={heads} KVH={kv_heads} D={head_dim}")
    cases = [(f"decode b{b} ctx{c}", ForwardMode.DECODE, [c - 1] * b, [1] * b)
             for b in (1, 32, 128) for c in (1024, 4096)]
    cases += [("extend 1x2048", ForwardMode.EXTEND, [0], [2048]),
              ("extend 8x512", ForwardMode.EXTEND, [0] * 8, [512] * 8)]
    # One pool for every case, sized for the largest (slot layout in _synthetic_batch).
    num_slots = 1 + max(len(p) * max(a + b for a, b in zip(p, e)) for _, _, p, e in cases)
    pool = KVPool(num_slots, 1, kv_heads, head_dim, torch_dtype, device)
    pool.k[0].normal_()
    pool.v[0].normal_()
    print(f"{'backend':<14}{'case':<20}{'us/layer':>10}{'KV MB':>9}{'bw floor us':>13}{'bw frac':>9}"
          f"{'GFLOP':>8}{'flop floor us':>15}{'flop frac':>10}")
    for label in labels:
        backend = create_backend(label.partition("+")[0], heads, kv_heads, head_dim, device)
        for name, mode, prefix_lens, extend_lens in cases:
            fb = _synthetic_batch(mode, prefix_lens, extend_lens, pool, backend, heads, head_dim, device)
            tokens = sum(extend_lens)
            q = torch.randn(tokens, heads, head_dim, device=device, dtype=torch_dtype)
            k = torch.randn(tokens, kv_heads, head_dim, device=device, dtype=torch_dtype)
            backend.init_forward(fb)
            us = 1e3 * _time_ms(lambda: backend.forward(q, k, k, 0, fb), iters)
            nbytes = kv_bytes(fb.seq_lens_list, kv_heads, head_dim, pool.k[0].element_size())
            nflops = attention_flops(prefix_lens, extend_lens, heads, head_dim)
            bw_us, flop_us = 1e6 * nbytes / bandwidth, 1e6 * nflops / flops
            print(f"{label:<14}{name:<20}{us:>10.1f}{nbytes / 1e6:>9.1f}{bw_us:>13.1f}{bw_us / us:>9.2f}"
                  f"{nflops / 1e9:>8.2f}{flop_us:>15.1f}{flop_us / us:>10.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bench", help="'bench' (tiny preset written to a temp dir) or a checkpoint dir")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(TOLERANCE))
    ap.add_argument("--backends", default="torch,triton,triton+fused,flashinfer")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check.")
        return 0
    device = "cuda"
    labels = [b for b in args.backends.split(",") if b]
    if "flashinfer" in labels and importlib.util.find_spec("flashinfer") is None:
        print("gpu_check: flashinfer is not installed (pip install 'pairserve[gpu]'); skipping it")
        labels.remove("flashinfer")
    if "flashinfer" in labels and args.dtype == "float32":
        print("gpu_check: flashinfer has no float32 kernels; skipping it at --dtype float32")
        labels.remove("flashinfer")

    model_path = resolve_model(args.model)
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 1000, (n,), generator=gen).tolist() for n in (37, 120, 301, 64)]
    rows = check_agreement(model_path, labels, args.dtype, device, prompts)
    print(f"\nlockstep agreement with the torch backend ({args.dtype}, {len(prompts)} prompts, 2 chunks + 4 decode)")
    for r in rows:
        status = "ok" if r.ok else "FAIL"
        detail = r.error or (f"max rel logit err {r.max_rel_err:.2e} (tol {r.tol:.0e}), argmax mismatches "
                             f"{r.argmax_mismatches}, near-ties {r.near_ties}")
        print(f"  {r.backend:<14}{status:<6}{detail}")
    ok = all(r.ok for r in rows)

    print("\nengine greedy outputs (16 tokens, chunked prefill 64) identical to the torch backend's:")
    reference = engine_outputs(model_path, "torch", args.dtype, device, prompts)
    for label in labels:
        if "+" in label:
            continue  # the fused layer path is not an engine flag
        try:
            outs = engine_outputs(model_path, label, args.dtype, device, prompts)
            print(f"  {label:<14}{sum(o == r for o, r in zip(outs, reference))}/{len(prompts)} requests")
        except Exception as e:
            ok = False
            print(f"  {label:<14}FAIL {type(e).__name__}: {e}")

    time_kernels([label for label in labels if "+" not in label], args.dtype, device, args.heads, args.kv_heads,
                 args.head_dim, args.iters)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
