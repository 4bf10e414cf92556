"""Kernel tests run the Triton kernels on CPU through the Triton interpreter.

TRITON_INTERPRET must be set before any `@triton.jit` decorator runs, i.e. before engine.kernels.* modules
are imported; pytest imports this conftest before the test modules of this directory.

Shared helpers reach the test modules as fixtures (`gen`, `make_pool`, `rel_err`), not by importing this
file, whose module name would clash with other conftest.py files.
"""
import os

os.environ["TRITON_INTERPRET"] = "1"

import functools  # noqa: E402
import zlib  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the test id: fresh inputs per case, reproducible across runs."""
    return torch.Generator().manual_seed(zlib.crc32(request.node.nodeid.encode()))


def rand(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=gen).to(dtype)


@dataclass
class PagedPool:
    k_buf: torch.Tensor  # [num_slots, num_kv_heads, head_dim]; slots no request uses hold NaN
    v_buf: torch.Tensor
    req_to_token: torch.Tensor  # int32 [max_reqs, max_context]
    req_pool_indices: torch.Tensor  # int64 [batch]
    poison_slot: int  # a NaN slot; table entries past each request's length point at it


def build_paged_pool(gen: torch.Generator, seq_lens: list[int], page_size: int, num_kv_heads: int,
                     head_dim: int, dtype: torch.dtype) -> PagedPool:
    """A pool whose pages are handed out in random order, to requests on random table rows.

    Every slot a request does not own holds NaN, and so do the table entries past a request's length (they
    name a NaN slot): a kernel reading a wrong slot or position shows up as NaN or as a numeric mismatch.
    """
    batch = len(seq_lens)
    pages_per_req = [-(-n // page_size) for n in seq_lens]
    num_pages = sum(pages_per_req) + 2  # spare pages stay unowned and poisoned
    num_slots = num_pages * page_size
    page_order = torch.randperm(num_pages, generator=gen)
    poison_slot = int(page_order[-1]) * page_size

    max_reqs = batch + 3
    max_context = max(seq_lens) + 5
    req_rows = torch.randperm(max_reqs, generator=gen)[:batch]
    req_to_token = torch.full((max_reqs, max_context), poison_slot, dtype=torch.int32)
    owned = torch.zeros(num_slots, dtype=torch.bool)
    next_page = 0
    for b, seq_len in enumerate(seq_lens):
        pages = page_order[next_page:next_page + pages_per_req[b]]
        next_page += pages_per_req[b]
        positions = torch.arange(seq_len)
        slots = pages[positions // page_size] * page_size + positions % page_size
        req_to_token[req_rows[b], :seq_len] = slots.to(torch.int32)
        owned[slots] = True

    k_buf = rand(gen, num_slots, num_kv_heads, head_dim, dtype=dtype)
    v_buf = rand(gen, num_slots, num_kv_heads, head_dim, dtype=dtype)
    k_buf[~owned] = float("nan")
    v_buf[~owned] = float("nan")
    return PagedPool(k_buf, v_buf, req_to_token, req_rows.to(torch.int64), poison_slot)


def max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|: error relative to the output's scale (elementwise ratios blow up at 0)."""
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30)).item()


@pytest.fixture
def make_pool(gen):
    """build_paged_pool bound to this test's generator."""
    return functools.partial(build_paged_pool, gen)


@pytest.fixture
def rel_err():
    return max_rel_err
