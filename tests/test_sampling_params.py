"""SamplingParams: parsing request dicts, range validation, greedy detection.

(That the module imports without torch is checked in test_pure_python_layers.py.)
"""
import math

import pytest

from engine.sampling_params import SamplingParams


def test_none_and_empty_dict_give_defaults():
    assert SamplingParams.from_dict(None) == SamplingParams()
    assert SamplingParams.from_dict({}) == SamplingParams()
    assert SamplingParams().max_new_tokens == 128 and SamplingParams().top_k == -1


def test_from_dict_reads_every_field():
    d = {"max_new_tokens": 7, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "stop": ["\n", "END"],
         "stop_token_ids": [2, 3], "ignore_eos": True, "seed": 11, "skip_special_tokens": False,
         "no_stop_trim": True}
    p = SamplingParams.from_dict(d)
    assert p == SamplingParams(max_new_tokens=7, temperature=0.5, top_p=0.9, top_k=40, min_p=0.05,
                               stop=("\n", "END"), stop_token_ids=(2, 3), ignore_eos=True, seed=11,
                               skip_special_tokens=False, no_stop_trim=True)
    hash(p)  # frozen, with tuples: usable as a key


def test_stop_as_single_string_and_int_temperature():
    p = SamplingParams.from_dict({"stop": "###", "temperature": 1})
    assert p.stop == ("###",)
    assert isinstance(p.temperature, float) and p.temperature == 1.0


def test_null_values_keep_defaults():
    p = SamplingParams.from_dict({"temperature": None, "stop": None, "seed": None, "max_new_tokens": None})
    assert p == SamplingParams()


def test_unknown_key_is_named_first():
    with pytest.raises(ValueError) as info:
        SamplingParams.from_dict({"temperature": 0.1, "foo": 1})
    assert str(info.value).startswith("sampling_params.foo: unknown key")


@pytest.mark.parametrize("key,value", [
    ("temperature", "hot"), ("top_k", 2.5), ("top_k", True), ("max_new_tokens", "10"), ("stop", [1]),
    ("stop", 5), ("stop_token_ids", ["a"]), ("stop_token_ids", 3), ("ignore_eos", 1), ("seed", 1.5),
    ("min_p", [0.1]),
])
def test_type_errors_name_the_key(key, value):
    with pytest.raises(ValueError) as info:
        SamplingParams.from_dict({key: value})
    assert str(info.value).startswith(f"sampling_params.{key}:")


def test_non_dict_is_rejected():
    with pytest.raises(ValueError, match="sampling_params"):
        SamplingParams.from_dict([("temperature", 1.0)])


@pytest.mark.parametrize("field,value", [
    ("max_new_tokens", 0), ("max_new_tokens", -3), ("temperature", -0.1), ("temperature", math.nan),
    ("temperature", math.inf), ("top_p", 0.0), ("top_p", 1.01), ("top_p", math.nan), ("top_k", 0),
    ("top_k", -2), ("min_p", -0.01), ("min_p", 1.5), ("stop", ("ok", "")), ("stop_token_ids", (-1,)),
])
def test_validate_names_the_bad_field(field, value):
    with pytest.raises(ValueError) as info:
        SamplingParams(**{field: value}).validate()
    assert str(info.value).startswith(f"sampling_params.{field}:")


def test_validate_accepts_edges_and_chains():
    p = SamplingParams(temperature=0.0, top_p=1.0, top_k=1, min_p=1.0, max_new_tokens=1)
    assert p.validate() is p
    SamplingParams(top_k=-1, min_p=0.0, top_p=1e-6).validate()


def test_validate_checks_room_left_in_context():
    SamplingParams(max_new_tokens=10).validate(context_len_left=10)
    with pytest.raises(ValueError, match="^sampling_params.max_new_tokens: exceeds the 9 tokens"):
        SamplingParams(max_new_tokens=10).validate(context_len_left=9)


def test_is_greedy():
    assert SamplingParams(temperature=0.0).is_greedy
    assert SamplingParams(temperature=0.7, top_k=1).is_greedy
    assert SamplingParams(temperature=1e-9).is_greedy  # would overflow logits / temperature
    assert not SamplingParams(temperature=0.7).is_greedy
    assert not SamplingParams(top_k=2).is_greedy

