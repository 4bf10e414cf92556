"""Radix cache through the engine: outputs equal the cache-off run; cached_tokens are the page-aligned share."""
from __future__ import annotations

import pytest

GREEDY = {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True}


def shared_prompts(n_groups=3, per_group=4, prefix_len=70, tail=9):
    out = []
    for g in range(n_groups):
        prefix = [(37 * g + 11 * i) % 1900 + 50 for i in range(prefix_len)]
        for j in range(per_group):
            out.append(prefix + [(7 * j + 13 * g + k) % 1900 + 50 for k in range(tail + j)])
    return out


CASES = {
    "plain": dict(),
    "chunked": dict(chunked_prefill_size=16, max_prefill_tokens=32),
    "chunked_unmixed": dict(chunked_prefill_size=16, max_prefill_tokens=32, enable_mixed_chunk=False),
    "tiny_pool_evicts": dict(kv_cache_tokens=260, max_running_requests=3),
    "page4_lfu": dict(page_size=4, radix_eviction_policy="lfu", kv_cache_tokens=300),
    "fcfs": dict(schedule_policy="fcfs"),
    "dfs": dict(schedule_policy="dfs-weight"),
}


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    from engine import Engine

    with Engine(model_path=tiny_model_dir, dtype="float32", disable_radix_cache=True, kv_cache_tokens=4096) as e:
        return [o["output_ids"] for o in e.generate(input_ids=shared_prompts(), sampling_params=GREEDY)]


@pytest.mark.parametrize("case", list(CASES))
def test_cache_on_equals_cache_off(case, reference, tiny_model_dir, make_engine):
    eng = make_engine(tiny_model_dir, **CASES[case])
    prompts = shared_prompts()
    # twice: the second round hits whatever the first left in the cache
    for _ in range(2):
        outs = eng.generate(input_ids=prompts, sampling_params=GREEDY)
        assert [o["output_ids"] for o in outs] == reference
    stats = eng.get_stats()
    assert stats["prefix_cache_hits_total"] > 0
    if case == "tiny_pool_evicts":
        assert stats["evicted_tokens_total"] > 0
    if case.startswith("chunked"):  # later prompts prefill in chunks while earlier ones decode
        assert (stats["mixed_steps_total"] > 0) == (case == "chunked")


@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_cached_tokens_is_page_aligned_shared_length(page_size, tiny_model_dir, make_engine):
    eng = make_engine(tiny_model_dir, page_size=page_size)
    base = list(range(100, 190))
    first = eng.generate(input_ids=base, sampling_params=GREEDY)
    assert first["meta_info"]["cached_tokens"] == 0
    shared = 53
    second = eng.generate(input_ids=base[:shared] + [7, 8, 9], sampling_params=GREEDY)
    assert second["meta_info"]["cached_tokens"] == shared - shared % page_size
    again = eng.generate(input_ids=base, sampling_params=GREEDY)
    # the whole prompt is cached but one token is always recomputed (its logits are needed)
    assert again["meta_info"]["cached_tokens"] == (len(base) - 1) - (len(base) - 1) % page_size
    assert again["output_ids"] == first["output_ids"]


def test_stats_counters(tiny_model_dir, make_engine):
    eng = make_engine(tiny_model_dir)
    p = list(range(200, 260))
    eng.generate(input_ids=[p, p + [1]], sampling_params=GREEDY)
    s = eng.get_stats()
    assert s["prefix_cache_queries_total"] == 121
    assert s["prefix_cache_hits_total"] == 60  # in-batch dedup made the second wait one step and hit
    assert 0 < s["token_hit_rate"] < 1




def test_every_decode_attention_in_a_run_matches_the_reference(tiny_model_dir, make_engine, monkeypatch):
    """Requests of very uneven lengths, four over a cached 300-token prefix: the torch backend attends that prefix
    once for the four (a shared-prefix group) and splits the rest into length groups; every decode attention of
    the run equals the per-request reference on the engine's real tables (the tiny model's greedy tokens barely
    depend on distant context, so outputs alone would not show a wrong row or merge); outputs equal cache-off's."""
    from engine import Engine
    from engine.attention import torch_decode, torch_native
    from engine.kernels.gpu.decode_attention import decode_attention_reference

    prefix = [(29 * i) % 1900 + 50 for i in range(300)]
    prompts = [prefix + [(11 * j + k) % 1900 + 50 for k in range(5 + j)] for j in range(4)]
    prompts += [[(13 * j + k) % 1900 + 50 for k in range(20 + j)] for j in range(4)]
    sp = {**GREEDY, "max_new_tokens": 12}
    with Engine(model_path=tiny_model_dir, dtype="float32", disable_radix_cache=True, kv_cache_tokens=4096,
                attention_backend="torch") as e:
        reference = [o["output_ids"] for o in e.generate(input_ids=prompts, sampling_params=sp)]
    split, shared, errors = [], [], []
    real_groups, real_shared = torch_decode.length_groups, torch_decode.shared_prefix_groups
    real_decode = torch_native.TorchNativeBackend._decode

    def spy_groups(*args, **kwargs):
        groups = real_groups(*args, **kwargs)
        split.append(len(groups))
        return groups

    def spy_shared(*args, **kwargs):
        groups = real_shared(*args, **kwargs)
        shared.extend(len(rows) for rows, _ in groups)
        return groups

    def checked_decode(self, q, k_buf, v_buf, fb):
        out = real_decode(self, q, k_buf, v_buf, fb)
        lo = fb.num_extend
        ref = decode_attention_reference(q, k_buf, v_buf, fb.req_to_token, fb.req_pool_indices[lo:],
                                         fb.seq_lens[lo:], fb.sm_scale)
        errors.append((out.view_as(ref) - ref).abs().max().item())
        return out

    monkeypatch.setattr(torch_decode, "length_groups", spy_groups)
    monkeypatch.setattr(torch_decode, "shared_prefix_groups", spy_shared)
    monkeypatch.setattr(torch_native.TorchNativeBackend, "_decode", checked_decode)
    eng = make_engine(tiny_model_dir, attention_backend="torch")
    assert [o["output_ids"] for o in eng.generate(input_ids=prompts, sampling_params=sp)] == reference
    assert split and max(split) >= 2
    assert shared and max(shared) == 4
    assert errors and max(errors) < 1e-4
