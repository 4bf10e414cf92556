"""Attention backends on CPU: FlashInfer metadata and wiring (through a stand-in module), torch vs triton under the
Triton interpreter, and bench.gpu_check's CPU-side pieces."""
from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from types import SimpleNamespace

import pytest
import torch

from engine.attention.base import ForwardBatch
from engine.attention.registry import create_backend
from engine.attention.flashinfer_backend import FlashInferBackend, paged_kv_metadata, qo_indptr
from engine.attention.torch_native import TorchNativeBackend
from engine.attention.triton_backend import TritonAttentionBackend
from engine.kernels.gpu.decode_attention import decode_attention_reference
from engine.kernels.gpu.extend_attention import extend_attention_reference
from engine.memory import KVPool
from engine.forward_mode import ForwardMode

HEADS, KV_HEADS, HEAD_DIM, LAYERS = 4, 2, 32, 2
PREFIX_LENS, EXTEND_LENS = [0, 5, 17], [6, 3, 9]


def _i32(values):
    return torch.tensor(values, dtype=torch.int32)


def test_paged_kv_metadata_page_size_one():
    table = torch.zeros(4, 6, dtype=torch.int32)
    table[0, :3] = _i32([5, 9, 2])
    table[2, :2] = _i32([11, 3])
    meta = paged_kv_metadata(table, torch.tensor([2, 0]), torch.tensor([2, 3]), [2, 3], page_size=1)
    assert meta.kv_indptr.tolist() == [0, 2, 5]
    assert meta.kv_indices.tolist() == [11, 3, 5, 9, 2]
    assert meta.kv_last_page_len.tolist() == [1, 1]
    assert {meta.kv_indptr.dtype, meta.kv_indices.dtype, meta.kv_last_page_len.dtype} == {torch.int32}


def test_paged_kv_metadata_page_size_four():
    table = torch.zeros(4, 12, dtype=torch.int32)
    table[1, :6] = _i32([8, 9, 10, 11, 20, 21])  # pages 2, 5
    table[0, :4] = _i32([4, 5, 6, 7])  # page 1, full
    table[3, :9] = _i32([12, 13, 14, 15, 28, 29, 30, 31, 36])  # pages 3, 7, 9
    meta = paged_kv_metadata(table, torch.tensor([1, 0, 3]), torch.tensor([6, 4, 9]), [6, 4, 9], page_size=4)
    assert meta.kv_indptr.tolist() == [0, 2, 3, 6]
    assert meta.kv_indices.tolist() == [2, 5, 1, 3, 7, 9]
    assert meta.kv_last_page_len.tolist() == [2, 4, 1]


def test_qo_indptr_and_bad_page_size():
    assert qo_indptr(torch.tensor([3, 1, 5])).tolist() == [0, 3, 4, 9]
    with pytest.raises(ValueError, match="page_size"):
        paged_kv_metadata(torch.zeros(1, 1, dtype=torch.int32), torch.tensor([0]), torch.tensor([1]), [1], 0)


def test_flashinfer_on_cpu_is_rejected():
    with pytest.raises(ValueError, match="CUDA"):
        create_backend("flashinfer", HEADS, KV_HEADS, HEAD_DIM, "cpu")


# --- a random step over a real KV pool ----------------------------------------------------------------------------
def _table(gen, seq_lens, page_size, num_slots):
    """Rows [3, 0, 2] of a 5-row table; pages handed out in random order, slots page-aligned; slot page 0 unused."""
    rows = [3, 0, 2][:len(seq_lens)]
    pages = (torch.randperm(num_slots // page_size - 1, generator=gen) + 1).tolist()
    table = torch.zeros(5, max(seq_lens) + 3, dtype=torch.int32)
    for row, n in zip(rows, seq_lens):
        positions = torch.arange(n)
        mine = torch.tensor([pages.pop() for _ in range(-(-n // page_size))])
        table[row, :n] = (mine[positions // page_size] * page_size + positions % page_size).to(torch.int32)
    return torch.tensor(rows), table


def _forward_batch(mode, prefix_lens, extend_lens, rows, table, pool) -> ForwardBatch:
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    positions = torch.cat([torch.arange(p, p + e) for p, e in zip(prefix_lens, extend_lens)])
    owner = torch.repeat_interleave(rows, torch.tensor(extend_lens))
    ext = torch.tensor(extend_lens)
    starts = torch.cumsum(ext, 0) - ext
    return ForwardBatch(
        mode=mode, batch_size=len(seq_lens), req_pool_indices=rows, seq_lens=torch.tensor(seq_lens),
        prefix_lens=torch.tensor(prefix_lens), extend_lens=ext, extend_start_loc=starts, positions=positions,
        out_cache_loc=table[owner, positions].long(), last_token_index=starts + ext - 1, req_to_token=table,
        kv_pool=pool, attn_backend=None, sm_scale=HEAD_DIM ** -0.5, seq_lens_list=seq_lens,
        prefix_lens_list=list(prefix_lens), extend_lens_list=list(extend_lens))


def _pools(gen, num_slots, dtype, copies):
    first = KVPool(num_slots, LAYERS, KV_HEADS, HEAD_DIM, dtype, "cpu")
    for buf in first.k + first.v:
        buf.copy_(torch.randn(buf.shape, generator=gen))
    pools = [first]
    for _ in range(copies - 1):
        pool = KVPool(num_slots, LAYERS, KV_HEADS, HEAD_DIM, dtype, "cpu")
        for dst, src in zip(pool.k + pool.v, first.k + first.v):
            dst.copy_(src)
        pools.append(pool)
    return pools


def _rel_err(out, ref):
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max()).item()


def _run_steps(backends, pools, gen, dtype, page_size, check):
    """An extend step (with cached prefixes) then a decode step through every backend on its own pool copy,
    all layers, the same q/k/v; `check(outputs, fb)` sees the outputs of one layer."""
    final_lens = [p + e + 1 for p, e in zip(PREFIX_LENS, EXTEND_LENS)]
    rows, table = _table(gen, final_lens, page_size, pools[0].num_slots)
    decode_prefix = [p + e for p, e in zip(PREFIX_LENS, EXTEND_LENS)]
    for mode, prefix_lens, extend_lens in ((ForwardMode.EXTEND, PREFIX_LENS, EXTEND_LENS),
                                           (ForwardMode.DECODE, decode_prefix, [1] * len(decode_prefix))):
        fbs = [dataclasses.replace(_forward_batch(mode, prefix_lens, extend_lens, rows, table, pool), attn_backend=b)
               for b, pool in zip(backends, pools)]
        for backend, fb in zip(backends, fbs):
            backend.init_forward(fb)
        num_tokens = sum(extend_lens)
        for layer in range(LAYERS):
            q = torch.randn(num_tokens, HEADS, HEAD_DIM, generator=gen).to(dtype)
            k = torch.randn(num_tokens, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
            v = torch.randn(num_tokens, KV_HEADS, HEAD_DIM, generator=gen).to(dtype)
            outs = [backend.forward(q, k, v, layer, fb) for backend, fb in zip(backends, fbs)]
            for fb in fbs:
                k_buf, _ = fb.kv_pool.get_kv(layer)
                assert torch.equal(k_buf[fb.out_cache_loc], k)  # each backend stored the new keys first
            check(outs, q, layer, fbs[0])


@pytest.mark.parametrize("page_size", [1, 4])
def test_torch_and_triton_backends_agree(page_size):
    gen = torch.Generator().manual_seed(11 + page_size)
    backends = [TorchNativeBackend(), TritonAttentionBackend(HEADS, KV_HEADS, HEAD_DIM, "cpu", min_tokens_per_split=8)]
    pools = _pools(gen, 64 * page_size, torch.float32, copies=2)

    def check(outs, q, layer, fb):
        assert outs[0].shape == outs[1].shape == (q.shape[0], HEADS * HEAD_DIM)
        assert not outs[1].isnan().any()
        assert _rel_err(outs[1], outs[0]) < 1e-4

    _run_steps(backends, pools, gen, torch.float32, page_size, check)
    assert backends[1]._meta.num_kv_splits == 4  # cdiv(27, 8): decode spread over several splits


@pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_cpu_and_torch_backends_agree(dtype, tol):
    """The cpu backend: its extend is the torch backend's, its decode the compiled kernel's."""
    from engine.attention.cpu_backend import CpuBackend, KernelDecodePlan

    gen = torch.Generator().manual_seed(5)
    cpu = create_backend("cpu", HEADS, KV_HEADS, HEAD_DIM, "cpu")
    assert isinstance(cpu, CpuBackend)
    backends = [TorchNativeBackend(), cpu]
    pools = _pools(gen, 64, dtype, copies=2)
    seen = []

    def check(outs, q, layer, fb):
        seen.append(isinstance(cpu._decode_meta, KernelDecodePlan))
        assert outs[0].shape == outs[1].shape == (q.shape[0], HEADS * HEAD_DIM)
        assert _rel_err(outs[1], outs[0]) <= tol

    _run_steps(backends, pools, gen, dtype, 1, check)
    assert seen == [False] * LAYERS + [True] * LAYERS  # the extend step has no decode part; the decode step used the kernel


def test_auto_backend_on_cpu_needs_a_compiler_for_the_kernel(tmp_path, monkeypatch):
    from engine.attention.cpu_backend import CpuBackend

    if shutil.which(os.environ.get("CC", "cc")) is not None:
        assert isinstance(create_backend("auto", HEADS, KV_HEADS, HEAD_DIM, "cpu"), CpuBackend)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # nothing built there yet
    monkeypatch.setenv("CC", "false")
    backend = create_backend("auto", HEADS, KV_HEADS, HEAD_DIM, "cpu")
    assert type(backend) is TorchNativeBackend
    with pytest.raises(ValueError, match="attention_backend: cpu: no working C compiler"):
        create_backend("cpu", HEADS, KV_HEADS, HEAD_DIM, "cpu")


# --- FlashInferBackend through a stand-in for the flashinfer module ----------------------------------------------
def _paged_attention(q, paged_kv, qo, kv_indptr, kv_indices, last_page_len, page_size, sm_scale):
    """FlashInfer's documented semantics: CSR page table over NHD pages, causal mask aligned bottom-right."""
    k_pages, v_pages = paged_kv  # [num_pages, page_size, KVH, D]
    assert k_pages.shape[1] == page_size and k_pages.shape[2:] == (KV_HEADS, HEAD_DIM)
    out = torch.empty_like(q)
    group = q.shape[1] // k_pages.shape[2]
    for b in range(last_page_len.shape[0]):
        pages = kv_indices[kv_indptr[b]:kv_indptr[b + 1]].long()
        kv_len = (len(pages) - 1) * page_size + int(last_page_len[b])
        k = k_pages[pages].flatten(0, 1)[:kv_len].float().repeat_interleave(group, 1)  # [kv_len, H, D]
        v = v_pages[pages].flatten(0, 1)[:kv_len].float().repeat_interleave(group, 1)
        qb = q[qo[b]:qo[b + 1]].float()  # [qo_len, H, D]
        scores = torch.einsum("qhd,khd->hqk", qb, k) * sm_scale
        visible = torch.arange(kv_len)[None, :] <= torch.arange(qb.shape[0])[:, None] + kv_len - qb.shape[0]
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        out[qo[b]:qo[b + 1]] = torch.einsum("hqk,khd->qhd", probs, v).to(q.dtype)
    return out


class _FakeWrapper:
    PLAN_KEYWORDS = {"causal", "sm_scale", "q_data_type", "kv_data_type"}  # names in FlashInfer's plan()

    def __init__(self, float_workspace_buffer, kv_layout="NHD", use_tensor_cores=False):
        assert kv_layout == "NHD" and float_workspace_buffer.dtype == torch.uint8
        self.plan_call = None

    def plan(self, *args, **kwargs):
        assert set(kwargs) <= self.PLAN_KEYWORDS
        assert all(t.dtype == torch.int32 for t in args if isinstance(t, torch.Tensor))
        self.plan_call = (args, kwargs)


class _FakePrefill(_FakeWrapper):
    def run(self, q, paged_kv):
        (qo, indptr, indices, last, heads, kv_heads, head_dim, page_size), kw = self.plan_call
        assert kw["causal"] and (heads, kv_heads, head_dim) == (HEADS, KV_HEADS, HEAD_DIM)
        return _paged_attention(q, paged_kv, qo, indptr, indices, last, page_size, kw["sm_scale"])


class _FakeDecode(_FakeWrapper):
    def run(self, q, paged_kv):
        (indptr, indices, last, heads, kv_heads, head_dim, page_size), kw = self.plan_call
        qo = torch.arange(last.shape[0] + 1)
        return _paged_attention(q, paged_kv, qo, indptr, indices, last, page_size, kw["sm_scale"])


@pytest.fixture
def fake_flashinfer(monkeypatch):
    module = SimpleNamespace(BatchPrefillWithPagedKVCacheWrapper=_FakePrefill,
                             BatchDecodeWithPagedKVCacheWrapper=_FakeDecode)
    monkeypatch.setitem(sys.modules, "flashinfer", module)


@pytest.mark.parametrize("page_size", [1, 4])
def test_flashinfer_backend_plans_and_runs_the_right_attention(fake_flashinfer, page_size):
    gen = torch.Generator().manual_seed(page_size)
    backend = FlashInferBackend(HEADS, KV_HEADS, HEAD_DIM, "cpu", page_size=page_size, workspace_bytes=1024)
    pools = _pools(gen, 64 * page_size, torch.bfloat16, copies=1)

    def check(outs, q, layer, fb):
        k_buf, v_buf = fb.kv_pool.get_kv(layer)
        if fb.mode is ForwardMode.DECODE:
            ref = decode_attention_reference(q, k_buf, v_buf, fb.req_to_token, fb.req_pool_indices, fb.seq_lens,
                                             fb.sm_scale)
        else:
            ref = extend_attention_reference(q, k_buf, v_buf, fb.req_to_token, fb.req_pool_indices, fb.prefix_lens,
                                             fb.extend_lens, fb.extend_start_loc, fb.sm_scale)
        assert outs[0].dtype == torch.bfloat16
        assert _rel_err(outs[0], ref.view(q.shape[0], -1)) < 1e-2  # one bf16 rounding of the output

    _run_steps([backend], pools, gen, torch.bfloat16, page_size, check)


def test_flashinfer_backend_rejects_misuse(fake_flashinfer):
    gen = torch.Generator().manual_seed(0)
    backend = FlashInferBackend(HEADS, KV_HEADS, HEAD_DIM, "cpu", workspace_bytes=1024)
    rows, table = _table(gen, [4], 1, 16)
    fp32_fb = _forward_batch(ForwardMode.EXTEND, [0], [4], rows, table, _pools(gen, 16, torch.float32, 1)[0])
    with pytest.raises(ValueError, match="dtype"):
        backend.init_forward(fp32_fb)
    fb = dataclasses.replace(fp32_fb, kv_pool=_pools(gen, 16, torch.bfloat16, 1)[0])
    q = torch.randn(4, HEADS, HEAD_DIM).bfloat16()
    k = torch.randn(4, KV_HEADS, HEAD_DIM).bfloat16()
    with pytest.raises(ValueError, match="init_forward"):
        backend.forward(q, k, k, 0, fb)
    with pytest.raises(ValueError, match="num_heads"):
        FlashInferBackend(6, 4, HEAD_DIM, "cpu")


# --- bench.gpu_check on CPU ------------------------------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine main() runs the whole GPU check")
def test_gpu_check_without_cuda_says_so_and_exits_zero(capsys):
    from bench.gpu_check import main

    assert main([]) == 0
    assert "no CUDA device" in capsys.readouterr().out


def test_gpu_check_floor_arithmetic():
    from bench.gpu_check import attention_flops, kv_bytes

    # decode: one query over 10 keys; extend: 3 new tokens after a prefix of 2 see 3 + 4 + 5 keys
    assert attention_flops([9], [1], num_heads=2, head_dim=4) == 4 * 2 * 4 * 10
    assert attention_flops([2, 0], [3, 2], num_heads=1, head_dim=1) == 4 * ((3 + 4 + 5) + (1 + 2))
    assert kv_bytes([10, 6], num_kv_heads=2, head_dim=8, elem_size=2) == 2 * 16 * 2 * 8 * 2


def test_gpu_check_compare_logits_tells_ties_from_mismatches():
    from bench.gpu_check import compare_logits

    ref = [torch.tensor([[1.0, 0.99, 0.0], [1.0, 0.0, 0.5]])]
    tie = compare_logits("x", ref, [torch.tensor([[0.99, 1.0, 0.0], [1.0, 0.0, 0.5]])], tol=0.05)
    assert (tie.argmax_mismatches, tie.near_ties, tie.ok) == (0, 1, True)
    wrong = compare_logits("x", ref, [torch.tensor([[1.0, 0.99, 0.0], [0.5, 0.0, 1.0]])], tol=0.05)
    assert wrong.argmax_mismatches == 1 and not wrong.ok


def test_gpu_check_lockstep_agreement_runs_on_cpu(tiny_model_dir):
    """The GPU check's agreement pass, on the tiny model under the interpreter: triton (and its fused
    norm/rotary layers) against torch over chunked prefill with a cached prefix and decode steps."""
    from bench.gpu_check import check_agreement

    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(10, 1000, (n,), generator=gen).tolist() for n in (9, 22)]
    rows = check_agreement(tiny_model_dir, ["triton", "triton+fused"], "float32", "cpu", prompts, decode_steps=3)
    assert [r.backend for r in rows] == ["triton", "triton+fused"]
    for r in rows:
        assert r.error is None and r.ok, r
        assert r.max_rel_err < 1e-4

