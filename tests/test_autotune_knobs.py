"""The autotune search space: encode/decode round trips, log scaling, ranges, Latin hypercubes."""
from __future__ import annotations

import math

import numpy as np
import pytest

from autotune.knobs import LIVE_KNOBS, SearchSpace, latin_hypercube
from engine.config import ServerArgs
from engine.knobs import apply_knobs


@pytest.fixture
def space():
    return SearchSpace()


def test_space_covers_every_live_knob(space):
    assert space.names == tuple(LIVE_KNOBS)
    assert len(space) == len(LIVE_KNOBS)


def test_decode_encode_round_trips_on_random_points(space):
    rng = np.random.default_rng(0)
    for u in rng.random((300, len(space))):
        cfg = space.decode(u)
        again = space.decode(space.encode(cfg))
        for name in space.names:
            if isinstance(cfg[name], float):
                assert math.isclose(again[name], cfg[name], rel_tol=1e-9), name
            else:
                assert again[name] == cfg[name], name
        apply_knobs(ServerArgs(), cfg, max_running_cap=16)  # every decoded point is a valid live config


def test_encode_decode_round_trips_on_grid_values(space):
    dim = space.dims[space.names.index("max_running_requests")]
    for v in range(1, 17):
        assert dim.decode(dim.encode(v)) == v
    policy = space.dims[space.names.index("schedule_policy")]
    for choice in policy.knob.choices:
        assert policy.decode(policy.encode(choice)) == choice
    assert policy.decode(0.0) == policy.knob.choices[0] and policy.decode(1.0) == policy.knob.choices[-1]


def test_log_scaled_knobs_are_uniform_in_log_space(space):
    dim = space.dims[space.names.index("chunked_prefill_size")]
    assert dim.knob.log_scale
    mid = dim.decode(0.5)
    assert abs(mid - math.sqrt(dim.low * dim.high)) <= 1  # geometric, not arithmetic, midpoint
    assert dim.decode(0.0) == dim.low and dim.decode(1.0) == dim.high
    lin = space.dims[space.names.index("schedule_conservativeness")]
    assert not lin.knob.log_scale
    assert math.isclose(lin.decode(0.5), (lin.low + lin.high) / 2)


def test_default_config_is_clipped_into_the_ranges(space):
    cfg = space.default_config()
    assert cfg["max_running_requests"] == 16  # engine default 64, searched range tops out at 16
    assert cfg["schedule_policy"] == ServerArgs().schedule_policy
    assert np.all((space.encode(cfg) >= 0) & (space.encode(cfg) <= 1))


def test_bad_inputs_name_the_field(space):
    with pytest.raises(ValueError, match="max_running_requests"):
        space.encode({**space.default_config(), "max_running_requests": 500})
    with pytest.raises(ValueError, match="schedule_policy"):
        space.encode({**space.default_config(), "schedule_policy": "random"})
    with pytest.raises(ValueError, match="pair_policy"):
        space.encode({k: v for k, v in space.default_config().items() if k != "pair_policy"})
    with pytest.raises(ValueError, match="page_size"):
        SearchSpace(names=("page_size",))
    with pytest.raises(ValueError, match="chunked_prefill_size"):
        SearchSpace(ranges={"chunked_prefill_size": (16, 100)})  # below the engine's own minimum
    with pytest.raises(ValueError, match="u:"):
        space.decode(np.zeros(3))


def test_narrowed_subspace(space):
    sub = SearchSpace(names=("max_running_requests", "pair_policy"), ranges={"max_running_requests": (2, 8)})
    assert sub.names == ("max_running_requests", "pair_policy")
    assert sub.decode(np.array([0.0, 0.99])) == {"max_running_requests": 2, "pair_policy": "native"}


def test_latin_hypercube_has_one_point_per_stratum():
    pts = latin_hypercube(10, 4, np.random.default_rng(1))
    assert pts.shape == (10, 4) and pts.min() >= 0 and pts.max() < 1
    for j in range(4):
        assert sorted(np.floor(pts[:, j] * 10).astype(int)) == list(range(10))
    with pytest.raises(ValueError):
        latin_hypercube(0, 3, np.random.default_rng(0))
