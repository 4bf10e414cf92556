"""IncrementalDetokenizer against a real byte-level BPE tokenizer trained here, plus the stop-string helpers.

The central property: the deltas of any chunking of any id sequence, plus finish(), equal
tokenizer.decode(ids) cut at the first stop string.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.detokenize import IncrementalDetokenizer, find_stop_in_tail, partial_stop_len

CORPUS = [
    "héllo wörld 日本語 😀",
    "The quick brown fox jumps over the lazy dog. Hello world, hello tokens!",
    "naïve café résumé — «quotes» über Straße ß, ça va? ñandú",
    "日本語のテキストです。絵文字 😀🎉 も使えます。中文字符和한국어 텍스트",
    "def main():\n    print('hello')  # 42 + 7 = 49\n",
    "Ünïcödé ëvërÿwhërë: ☃ ★ → ∑ ∞ ≠ 🙂🚀",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_end|>"]
# Characters outside CORPUS: BPE leaves them as byte tokens, each decoding alone to U+FFFD.
UNSEEN = "猫 🐍 🦀"
NON_ASCII = "é日😀ß€猫🐍🦀"


def gpt2_byte_chars() -> list[str]:
    """The printable character the byte-level pre-tokenizer uses for each byte 0..255 (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIAL_TOKENS, show_progress=False)
    bpe.train_from_iterator(CORPUS * 8, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe)


@pytest.fixture(scope="module")
def byte_ids(tokenizer) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(gpt2_byte_chars())
    assert len(set(ids)) == 256
    return ids


def bytes_as_ids(text: str, byte_ids: list[int]) -> list[int]:
    """One token per UTF-8 byte: every multi-byte character is split across tokens."""
    return [byte_ids[b] for b in text.encode()]


def stream(tokenizer, chunks, **kwargs) -> tuple[list[str], str, IncrementalDetokenizer]:
    detok = IncrementalDetokenizer(tokenizer, **kwargs)
    deltas = [detok.add(chunk) for chunk in chunks]
    return deltas, detok.finish(), detok


def naive_cut(text: str, stops: list[str], no_stop_trim: bool) -> tuple[str, str | None]:
    """Reference: scan end positions; at the first where a stop string ends (the longest if several), cut."""
    for end in range(1, len(text) + 1):
        ending = [s for s in stops if text[:end].endswith(s)]
        if ending:
            stop = max(ending, key=len)
            return (text[:end] if no_stop_trim else text[:end - len(stop)]), stop
    return text, None


def test_fixture_splits_characters_across_tokens(tokenizer):
    ids = tokenizer.encode(UNSEEN)
    assert all("\ufffd" in tokenizer.decode([i]) for i in ids)
    assert tokenizer.decode(ids) == UNSEEN
    assert len(tokenizer) > 300


def test_one_token_at_a_time_equals_decode(tokenizer):
    text = CORPUS[3] + " " + UNSEEN + " " + CORPUS[1]
    ids = tokenizer.encode(text)
    deltas, tail, detok = stream(tokenizer, [[i] for i in ids])
    assert "".join(deltas) + tail == text == detok.text
    assert not any("\ufffd" in d for d in deltas)  # split characters are released whole


def test_split_character_is_held_until_complete(tokenizer, byte_ids):
    deltas, tail, _ = stream(tokenizer, [[i] for i in bytes_as_ids("a日😀", byte_ids)])
    assert deltas == ["a", "", "", "日", "", "", "", "😀"] and tail == ""


def test_finish_flushes_an_incomplete_character_as_decode_does(tokenizer, byte_ids):
    ids = bytes_as_ids("ab", byte_ids) + bytes_as_ids("日", byte_ids)[:2]
    deltas, tail, detok = stream(tokenizer, [ids])
    assert deltas == [""]  # the whole window ends mid-character
    assert tail == tokenizer.decode(ids) == "ab\ufffd"
    assert detok.text == "ab\ufffd"


def test_decode_windows_stay_small(tokenizer):
    class CountingTokenizer:
        def __init__(self) -> None:
            self.longest = 0

        def decode(self, ids, skip_special_tokens=True):
            self.longest = max(self.longest, len(ids))
            return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    counting = CountingTokenizer()
    ids = tokenizer.encode(" ".join(CORPUS) * 3)
    deltas, tail, _ = stream(counting, [ids[i:i + 2] for i in range(0, len(ids), 2)])
    assert "".join(deltas) + tail == tokenizer.decode(ids)
    assert len(ids) > 200 and counting.longest <= 8


@pytest.mark.parametrize("skip", [True, False])
def test_special_tokens(tokenizer, skip):
    ids = tokenizer.encode("hello") + tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS) + tokenizer.encode(" world")
    deltas, tail, _ = stream(tokenizer, [[i] for i in ids], skip_special_tokens=skip)
    expected = "hello world" if skip else "hello<|endoftext|><|im_end|> world"
    assert "".join(deltas) + tail == expected


def test_stop_string_across_tokens_cuts_and_ends_the_stream(tokenizer):
    ids = tokenizer.encode("Hello world. The end. More text after")
    detok = IncrementalDetokenizer(tokenizer, stop=["The end"])
    out = "".join(detok.add([i]) for i in ids)
    assert out == "Hello world. " and detok.stopped_by == "The end"
    assert detok.add(tokenizer.encode(" again")) == "" and detok.finish() == ""
    assert detok.text == "Hello world. "


def test_no_stop_trim_keeps_the_stop(tokenizer):
    ids = tokenizer.encode("Hello world. The end. More")
    deltas, tail, detok = stream(tokenizer, [[i] for i in ids], stop=("The end",), no_stop_trim=True)
    assert "".join(deltas) + tail == "Hello world. The end" and detok.stopped_by == "The end"


def test_partial_stop_is_held_then_released(tokenizer, byte_ids):
    detok = IncrementalDetokenizer(tokenizer, stop=["###"])
    assert detok.add(bytes_as_ids("a#", byte_ids)) == "a"
    assert detok.add(bytes_as_ids("b", byte_ids)) == "#b"  # "#b" cannot start "###"
    assert detok.add(bytes_as_ids("##", byte_ids)) == ""
    assert detok.finish() == "##"  # at the end a partial stop is ordinary text
    assert detok.text == "a#b##" and detok.stopped_by is None


def test_add_after_finish_is_an_error(tokenizer):
    detok = IncrementalDetokenizer(tokenizer)
    detok.finish()
    with pytest.raises(RuntimeError):
        detok.add([5])


def test_empty_stop_string_is_rejected(tokenizer):
    with pytest.raises(ValueError, match="^stop:"):
        IncrementalDetokenizer(tokenizer, stop=["x", ""])


def test_find_stop_in_tail():
    assert find_stop_in_tail("no stop here", ["STOP", "\n\n"]) is None
    assert find_stop_in_tail("line\n\nnext STOP", ["STOP", "\n\n"]) == "\n\n"
    # The first stop to complete wins, even if another started earlier.
    assert find_stop_in_tail("xyz_long", ["xyz_long", "z"]) == "z"
    assert find_stop_in_tail("abc", ["bc", "abc"]) == "abc"  # same end: the longer
    assert find_stop_in_tail("anything", []) is None


def test_partial_stop_len():
    assert partial_stop_len("abc##", ["###"]) == 2
    assert partial_stop_len("abc", ["###"]) == 0
    assert partial_stop_len("ab", ["b", "abx"]) == 2  # a full stop is not a partial one
    assert partial_stop_len("", ["x"]) == 0


@st.composite
def id_sequences(draw, vocab_size: int, byte_ids: list[int], tokenizer) -> list[int]:
    """Random ids, split multi-byte characters, and real encodings, concatenated."""
    ids: list[int] = []
    for kind in draw(st.lists(st.sampled_from(["random", "bytes", "encoded"]), max_size=6)):
        if kind == "random":
            ids += draw(st.lists(st.integers(0, vocab_size - 1), max_size=8))
        else:
            text = draw(st.text(alphabet="ab #\n" + NON_ASCII, max_size=8))
            ids += bytes_as_ids(text, byte_ids) if kind == "bytes" else tokenizer.encode(text)
    return ids


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_stream_equals_decode_cut_at_first_stop(tokenizer, byte_ids, data):
    ids = data.draw(id_sequences(len(tokenizer), byte_ids, tokenizer))
    skip = data.draw(st.booleans())
    reference = tokenizer.decode(ids, skip_special_tokens=skip)
    stops = []
    for _ in range(data.draw(st.integers(0, 3))):
        if reference and data.draw(st.booleans()):
            start = data.draw(st.integers(0, len(reference) - 1))
            stops.append(reference[start:data.draw(st.integers(start + 1, min(len(reference), start + 6)))])
        else:
            stops.append(data.draw(st.text(alphabet="ab #\ufffd" + NON_ASCII, min_size=1, max_size=3)))
    no_stop_trim = data.draw(st.booleans())
    cuts = sorted(data.draw(st.lists(st.integers(0, len(ids)), max_size=8)))
    chunks = [ids[a:b] for a, b in zip([0, *cuts], [*cuts, len(ids)])]  # may hold empty chunks

    deltas, tail, detok = stream(tokenizer, chunks, skip_special_tokens=skip, stop=stops,
                                 no_stop_trim=no_stop_trim)
    expected, expected_stop = naive_cut(reference, stops, no_stop_trim)
    assert "".join(deltas) + tail == expected == detok.text
    assert detok.stopped_by == expected_stop
