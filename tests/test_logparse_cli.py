"""`python -m logparse` end to end on the Loghub fixtures: outputs and summary against the ground truth (oracle),
the template cache against cache-off output, the tiny model through the engine's icl path, --follow, Ctrl-C, and
bad input (one error line, exit 2, never a traceback)."""
from __future__ import annotations

import csv
import json
import os
import threading
import time

import pytest

from logparse import cli
from logparse.backends import Caller
from logparse.outputs import event_id

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "loghub")
SUMMARY_KEYS = ("lines", "llm_calls", "cache_hits", "templates", "wall_seconds", "token_hit_rate")


def paths(system):
    log = os.path.join(FIXTURES, system, f"{system}_2k.log")
    return log, log + "_structured_corrected.csv"


def truth_rows(system):
    with open(paths(system)[1], newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def run_cli(tmp_path, *args):
    out = str(tmp_path)
    rc = cli.run([*args, "--out", out, "--no-progress"])
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    name = os.path.basename(args[0]) if args[0] != "-" else "stdin"
    with open(os.path.join(out, f"{name}_structured.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(os.path.join(out, f"{name}_templates.csv"), newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    return rc, summary, rows, table


@pytest.mark.parametrize("system", ["HDFS", "Android", "Linux", "Zookeeper"])
def test_oracle_with_cache_reproduces_ground_truth_in_both_orders(tmp_path, system):
    log, gt = paths(system)
    truth = truth_rows(system)
    for order in ("prefix", "arrival"):
        rc, s, rows, table = run_cli(tmp_path / order, log, "--model", f"oracle:{gt}", "--order", order)
        assert rc == 0
        assert [r["Content"] for r in rows] == [t["Content"] for t in truth]
        assert [r["EventTemplate"] for r in rows] == [" ".join(t["EventTemplate"].split()) for t in truth]
        assert all(r["EventId"] == event_id(r["EventTemplate"]) for r in rows)
        assert [r["LineId"] for r in rows] == [str(i) for i in range(1, 41)]
        assert s["GA"] == s["PA"] == 1.0 and s["scored_lines"] == 40
        assert all(k in s for k in SUMMARY_KEYS) and s["token_hit_rate"] is None
        assert s["lines"] == 40 == s["llm_calls"] + s["cache_hits"] and s["llm_calls"] < 40
        assert s["templates"] == len(table) == len({t["EventTemplate"] for t in truth})
        assert sum(int(t["Occurrences"]) for t in table) == 40


def test_cache_off_calls_every_line_and_agrees(tmp_path):
    log, gt = paths("HDFS")
    _, on, rows_on, _ = run_cli(tmp_path / "on", log, "--model", f"oracle:{gt}")
    _, off, rows_off, _ = run_cli(tmp_path / "off", log, "--model", f"oracle:{gt}", "--no-cache")
    assert off["llm_calls"] == 40 and off["cache_hits"] == 0 and on["llm_calls"] < 10
    assert rows_on == rows_off


def test_header_fields_and_raw_and_custom_format(tmp_path):
    log, gt = paths("Apache")
    _, s, rows, _ = run_cli(tmp_path / "a", log, "--model", f"oracle:{gt}")
    assert list(rows[0]) == ["LineId", "Time", "Level", "Content", "EventId", "EventTemplate"]
    assert rows[0]["Level"] == "notice"
    _, s, rows2, _ = run_cli(tmp_path / "b", log, "--model", f"oracle:{gt}", "--format",
                             r"\[<When>\] \[<Severity>\] <Content>")
    assert list(rows2[0])[:3] == ["LineId", "When", "Severity"] and s["GA"] == 1.0
    assert [r["EventTemplate"] for r in rows2] == [r["EventTemplate"] for r in rows]


def test_stdin_and_raw_lines(tmp_path, monkeypatch):
    import io
    import sys

    text = b"job 1 started\njob 2 started\n\njob 3 failed: disk\n"
    gt = tmp_path / "gt.csv"
    gt.write_text("LineId,Content,EventTemplate\n1,job 1 started,job <*> started\n2,job 2 started,job <*> started\n"
                  "3,job 3 failed: disk,job <*> failed: <*>\n")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text)))
    rc, s, rows, _ = run_cli(tmp_path / "o", "-", "--model", f"oracle:{gt}")
    assert rc == 0 and [r["EventTemplate"] for r in rows] == ["job <*> started"] * 2 + ["job <*> failed: <*>"]
    assert s["skipped_lines"] == 1 and s["skipped_by_reason"] == {"empty": 1} and s["GA"] == 1.0


def test_ctrl_c_leaves_valid_partial_outputs(tmp_path, monkeypatch):
    log, gt = paths("Android")
    real, calls = Caller.answer, []

    def answer(self, call):
        calls.append(call)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(self, call)

    monkeypatch.setattr(Caller, "answer", answer)
    rc, s, rows, table = run_cli(tmp_path, log, "--model", f"oracle:{gt}", "--order", "arrival")
    assert rc == 130 and s["interrupted"] is True
    assert 4 <= s["lines"] == len(rows) < 40 and s["llm_calls"] == 4
    truth = {t["LineId"]: " ".join(t["EventTemplate"].split()) for t in truth_rows("Android")}
    assert all(r["EventTemplate"] == truth[r["LineId"]] for r in rows)
    assert sum(int(t["Occurrences"]) for t in table) == len(rows)
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp-")]


def bad(tmp_path, capsys, *args):
    rc = cli.run([*args, "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("logparse: error:"), err
    assert "Traceback" not in err[0]
    return err[0]


def test_bad_input_is_one_clear_error(tmp_path, capsys):
    log, gt = paths("HDFS")
    assert "cannot read" in bad(tmp_path, capsys, str(tmp_path / "missing.log"), "--model", f"oracle:{gt}")
    assert "directory" in bad(tmp_path, capsys, str(tmp_path), "--model", f"oracle:{gt}")
    binary = tmp_path / "blob.log"
    binary.write_bytes(bytes(range(256)) * 40)
    assert "binary" in bad(tmp_path, capsys, str(binary), "--format", "raw", "--model", f"oracle:{gt}")
    latin = tmp_path / "latin.log"
    latin.write_bytes(b"caf\xe9 \xff\xfe\n" * 10)
    assert "binary" in bad(tmp_path, capsys, str(latin), "--format", "raw", "--model", f"oracle:{gt}")
    assert "matches none of the 40 lines" in bad(tmp_path, capsys, log, "--format", "<Level>|<Content>|x",
                                                 "--model", f"oracle:{gt}")
    assert "format" in bad(tmp_path, capsys, log, "--format", "<Date> <Time>", "--model", f"oracle:{gt}")
    assert "lacks column" in bad(tmp_path, capsys, log, "--model", f"oracle:{log}")
    assert "demonstrations" in bad(tmp_path, capsys, log, "--model", "demo")
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert "no lines" in bad(tmp_path, capsys, str(empty), "--model", f"oracle:{gt}")
    other = tmp_path / "other.csv"
    other.write_text("LineId,Content,EventTemplate\n1,nothing alike,nothing alike\n")
    assert "no ground-truth template for line" in bad(tmp_path, capsys, log, "--model", f"oracle:{other}")


def test_oracle_engine_runs_every_call_through_icl(tmp_path, tiny_model_dir):
    log, gt = paths("HDFS")
    _, pure, rows_pure, _ = run_cli(tmp_path / "p", log, "--model", f"oracle:{gt}")
    rc, s, rows, _ = run_cli(tmp_path / "e", log, "--model", f"oracle:{gt}", "--oracle-engine", tiny_model_dir,
                             "--dtype", "float32", "--concurrency", "4")
    assert rc == 0 and rows == rows_pure and s["llm_calls"] == pure["llm_calls"]
    assert s["prompt_tokens"] > 0 and 0 < s["token_hit_rate"] < 1 and s["completion_tokens"] > 0


def test_model_answers_through_the_engine(tmp_path, tiny_model_dir):
    log, gt = paths("Proxifier")
    rc, s, rows, _ = run_cli(tmp_path, log, "--model", tiny_model_dir, "--ground-truth", gt, "--dtype", "float32",
                             "--concurrency", "4", "--max-new-tokens", "8", "--no-cache", "--limit", "12")
    assert rc == 0 and len(rows) == 12 and s["llm_calls"] == 12 and s["prompt_tokens"] > 0
    assert 0 <= s["GA"] <= 1 and s["scored_lines"] == 12


def test_follow_tails_a_growing_file(tmp_path):
    log, gt = paths("HDFS")
    with open(log, "rb") as f:
        data = f.read().splitlines(keepends=True)
    grow = tmp_path / "HDFS_2k.log"
    grow.write_bytes(b"".join(data[:10]) + data[10][:20])  # a partial line waits for its newline
    out = tmp_path / "out"
    result = {}
    t = threading.Thread(target=lambda: result.setdefault("rc", cli.run(
        [str(grow), "--model", f"oracle:{gt}", "--follow", "--follow-timeout", "1.5", "--out", str(out),
         "--no-progress"])))
    t.start()
    time.sleep(0.8)
    with open(grow, "ab") as f:
        f.write(data[10][20:] + b"".join(data[11:]))
    t.join(timeout=30)
    assert result["rc"] == 0
    with open(out / "summary.json") as f:
        s = json.load(f)
    assert s["lines"] == 40 and s["mode"] == "follow" and s["order"] == "arrival"
    with open(out / "HDFS_2k.log_structured.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    truth = truth_rows("HDFS")
    assert [r["Content"] for r in rows] == [t["Content"] for t in truth]
    assert [r["EventTemplate"] for r in rows] == [t["EventTemplate"] for t in truth]


def test_sigterm_also_leaves_partial_outputs(tmp_path):
    import signal
    import subprocess
    import sys

    log, gt = paths("HDFS")
    slow = tmp_path / "HDFS_2k.log"  # a growing file that never ends: --follow runs until the signal
    slow.write_bytes(open(log, "rb").read())
    proc = subprocess.Popen([sys.executable, "-m", "logparse", str(slow), "--model", f"oracle:{gt}", "--follow",
                             "--out", str(tmp_path / "o"), "--no-progress"],
                            cwd=os.path.dirname(os.path.dirname(__file__)), stderr=subprocess.PIPE)
    summary = tmp_path / "o" / "summary.json"
    deadline = time.time() + 60
    while not summary.exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    with open(summary) as f:
        s = json.load(f)
    assert s["interrupted"] is True and s["lines"] == 40 and b"Traceback" not in err
