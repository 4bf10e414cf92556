"""Tokenizer, TF-IDF, DPP pool, kNN order and the InferLog stream order."""
import os

import numpy as np
import pytest

from logparse.loghub import load_system
from logparse.selection import TfidfEmbedder, build_stream, dpp_select, embed_logs, knn, tokenize

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "loghub")


def _unit(rows):
    arr = np.asarray(rows, dtype=np.float64)
    return arr / np.linalg.norm(arr, axis=1, keepdims=True)


def test_tokenize_masks_numbers_and_ids():
    assert tokenize("PacketResponder 1 for block blk_-6952 terminating") == [
        "packetresponder", "<num>", "for", "block", "blk", "<num>", "terminating"
    ]
    assert tokenize("Token{9f4ef63 u0 ABC}") == ["token", "<id>", "<id>", "abc"]
    assert tokenize("  ...  ") == []


def test_tfidf_rows_are_unit_and_same_template_lines_match():
    texts = ["open file 12 ok", "open file 99 ok", "close socket 7", "???"]
    emb = TfidfEmbedder().fit(texts).transform(texts)
    assert emb.shape[0] == 4
    np.testing.assert_allclose(np.linalg.norm(emb[:3], axis=1), 1.0)
    assert not emb[3].any()  # no tokens -> zero vector
    np.testing.assert_allclose(emb[0], emb[1])  # differ only in a number
    assert emb[0] @ emb[2] > 0  # they share the <num> token
    other = TfidfEmbedder().fit(texts).transform(["close socket now"])
    assert emb[0] @ other[0] == pytest.approx(0.0, abs=1e-12)  # no shared token


def test_tfidf_idf_downweights_common_tokens():
    texts = ["alpha common", "beta common", "gamma common"]
    emb_model = TfidfEmbedder().fit(texts)
    idf = dict(zip(emb_model.vocab, emb_model.idf))
    assert idf["common"] < idf["alpha"] == idf["beta"]


def test_dpp_prefers_diverse_items_over_duplicates():
    # Three directions, each present three times (rows 0-2, 3-5, 6-8), plus a near copy of direction 0.
    base = np.eye(3)
    rows = [base[0]] * 3 + [base[1]] * 3 + [base[2]] * 3 + [[1.0, 0.05, 0.0]]
    emb = _unit(rows)
    picked = dpp_select(emb, 3)
    assert len(set(picked)) == 3
    groups = {0: {0, 1, 2, 9}, 1: {3, 4, 5}, 2: {6, 7, 8}}
    assert {g for i in picked for g, members in groups.items() if i in members} == {0, 1, 2}


def test_dpp_fills_beyond_rank_with_distinct_indices():
    emb = _unit([[1, 0], [1, 0], [0, 1], [0, 1], [1, 1]])
    picked = dpp_select(emb, 5)
    assert sorted(picked) == [0, 1, 2, 3, 4]
    assert set(picked[:2]) in ({0, 2}, {0, 3}, {1, 2}, {1, 3})  # the two orthogonal directions come first
    with pytest.raises(ValueError, match="k"):
        dpp_select(emb, 6)
    assert dpp_select(emb, 0) == []


def test_knn_most_similar_last_and_self_excluded():
    cands = _unit([[1, 0, 0], [0.9, 0.1, 0], [0.5, 0.5, 0], [0, 0, 1], [0.99, 0.01, 0]])
    query = cands[0]
    assert knn(query, cands, k=3) == [1, 4, 0]  # ascending similarity: 0.99.., 0.999.., 1.0
    assert knn(query, cands, k=3, exclude=[0]) == [2, 1, 4]
    assert knn(query, cands, k=10, exclude=[0]) == [3, 2, 1, 4]  # fewer than k available


def test_build_stream_orders_noncandidates_first():
    data = load_system(FIXTURES, "Spark")  # 40 lines -> pool of 4
    stream = build_stream(data, pool_frac=0.1, k=3)
    assert sorted(q.line for q in stream) == list(range(40))
    flags = [q.is_candidate for q in stream]
    assert flags == [False] * 36 + [True] * 4
    non_cand = [q.line for q in stream if not q.is_candidate]
    assert non_cand == sorted(non_cand)
    pool = {q.line for q in stream if q.is_candidate}
    pool_texts = {(data.contents[i], data.templates[i]) for i in pool}
    emb = embed_logs(data.contents)
    for q in stream:
        assert q.query == data.contents[q.line] and q.template == data.templates[q.line]
        assert set(q.examples) <= pool_texts
        assert len(q.examples) == 3  # a candidate sees the 3 others, a non-candidate the 3 nearest of 4
        if q.is_candidate:
            own = (data.contents[q.line], data.templates[q.line])
            twins = [i for i in pool if i != q.line and data.contents[i] == own[0]]
            assert q.examples.count(own) == len(twins)  # its own line never serves as its example
        # most similar last: similarity to the query is non-decreasing along the list
        sims = [max(emb[q.line] @ emb[i] for i in pool if data.contents[i] == ex[0]) for ex in q.examples]
        assert sims == sorted(sims)


def test_build_stream_rejects_bad_fraction():
    data = load_system(FIXTURES, "HDFS")
    with pytest.raises(ValueError, match="pool_frac"):
        build_stream(data, pool_frac=0.0)
