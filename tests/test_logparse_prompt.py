"""InferLog's 4-message layout: exact text for a tiny query, and the per-segment pieces add up to it."""
import pytest

from logparse.prompt import (
    ACK,
    EXAMPLES_HEADER,
    INSTRUCTION,
    query_text,
    render_example_block,
    render_messages,
    to_icl,
)
from logparse.selection import ParseQuery

QUERY = ParseQuery(
    query="Connection closed by 10.0.0.9",
    template="Connection closed by <*>",
    examples=(
        ("session opened for user bob", "session opened for user <*>"),
        ("Connection closed by 10.0.0.1", "Connection closed by <*>"),
    ),
    line=7,
    is_candidate=False,
)


def test_to_icl_fields():
    icl = to_icl(QUERY, refine="table")
    assert icl == {
        "instruction": INSTRUCTION,
        "examples": [
            {"input": "session opened for user bob", "output": "session opened for user <*>"},
            {"input": "Connection closed by 10.0.0.1", "output": "Connection closed by <*>"},
        ],
        "query": "Connection closed by 10.0.0.9",
        "refine": "table",
    }
    with pytest.raises(ValueError, match="refine"):
        to_icl(QUERY, refine="bogus")


def test_render_messages_exact_text():
    messages = render_messages(to_icl(QUERY))
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == INSTRUCTION
    assert messages[1]["content"] == (
        EXAMPLES_HEADER
        + "Log message: `session opened for user bob`\n"
        + "Log template: `session opened for user <*>`\n"
        + "Log message: `Connection closed by 10.0.0.1`\n"
        + "Log template: `Connection closed by <*>`\n"
    )
    assert messages[2]["content"] == ACK
    assert messages[3]["content"] == "Log message: `Connection closed by 10.0.0.9`"
    assert INSTRUCTION.count("`<*>`") == 1 and "backticks" in INSTRUCTION


def test_pieces_concatenate_to_messages():
    icl = to_icl(QUERY)
    blocks = [render_example_block(ex) for ex in icl["examples"]]
    assert all(b.endswith("\n") and b.count("\n") == 2 for b in blocks)
    messages = render_messages(icl)
    assert messages[1]["content"] == EXAMPLES_HEADER + "".join(blocks)
    assert messages[3]["content"] == query_text(icl["query"])


def test_example_block_accepts_attribute_objects_and_zero_examples():
    class Ex:
        input = "a 1"
        output = "a <*>"

    assert render_example_block(Ex()) == render_example_block({"input": "a 1", "output": "a <*>"})
    icl = {"instruction": "I", "examples": [], "query": "q"}
    assert render_messages(icl)[1]["content"] == EXAMPLES_HEADER


def test_icl_validation_rejects_missing_fields():
    from engine.pair.render import validate_icl

    with pytest.raises(ValueError, match="query"):
        validate_icl({"instruction": "I", "examples": [{"input": "x", "output": "y"}]})
    with pytest.raises(ValueError, match="output"):
        validate_icl({"instruction": "I", "examples": [{"input": "x"}], "query": "q"})
