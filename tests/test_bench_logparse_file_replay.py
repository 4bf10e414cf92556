"""bench.logparse_file.replay on the Loghub fixtures: the replayed hit rate against a reference computed directly
(an ample pool and no PAIR: each prompt hits its longest common prefix with any earlier prompt, less its last
token), and the PAIR orders' rows are well formed."""
from __future__ import annotations

import json
import os

from bench.logparse_file.replay import main, trace_of
from engine.models.loader import load_tokenizer
from engine.pair.render import SegmentEncoder
from logparse.cli import oracle_calls

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "loghub")


def lcp(a, b) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_ample_pool_without_pair_hits_the_longest_earlier_prefix(tiny_model_dir):
    rows = main(["--data", FIXTURES, "--systems", "Hadoop", "--engine-model", tiny_model_dir, "--kv-prompts", "1000",
                 "--inflight", "0", "--refine", "none"])
    log = os.path.join(FIXTURES, "Hadoop", "Hadoop_2k.log")
    tok = load_tokenizer(tiny_model_dir)
    for order in ("arrival", "prefix"):
        calls = oracle_calls([log, "--model", f"oracle:{log}_structured_corrected.csv", "--order", order,
                              "--refine", "none"])
        trace = trace_of(calls, tok, SegmentEncoder(tok), "none")
        ids = [r.token_ids for r in trace]
        hits = sum(max((min(lcp(x, y), len(x) - 1) for y in ids[:i]), default=0) for i, x in enumerate(ids))
        assert rows[0][f"{order}_cached_tokens"] == hits
        assert rows[0][f"{order}_prompt_tokens"] == sum(map(len, ids))


def test_pair_rows_and_json(tmp_path, tiny_model_dir):
    out = str(tmp_path / "r.json")
    rows = main(["--data", FIXTURES, "--systems", "Spark,Proxifier", "--engine-model", tiny_model_dir, "--json", out])
    assert [r["system"] for r in rows] == ["Spark", "Proxifier"]
    for r in rows:
        assert 0 < r["arrival_hit_rate"] <= 1 and 0 < r["prefix_hit_rate"] <= 1 and r["kv_cache_tokens"] >= 256
    with open(out) as f:
        assert json.load(f)["rows"] == json.loads(json.dumps(rows))
