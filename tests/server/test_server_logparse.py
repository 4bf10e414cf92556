"""`python -m logparse --url`: the icl calls go to a running server (Bearer key), the same outputs as in process;
a wrong key or an unreachable server is one error line, exit 2."""
from __future__ import annotations

import csv
import json
import os

from logparse import cli

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "loghub", "Proxifier")
LOG = os.path.join(FIXTURES, "Proxifier_2k.log")
GT = LOG + "_structured_corrected.csv"


def test_url_mode_parses_through_the_server(server, tmp_path):
    out = tmp_path / "o"
    rc = cli.run([LOG, "--url", server.url, "--api-key", server.api_key, "--ground-truth", GT,
                  "--limit", "8", "--max-new-tokens", "4", "--concurrency", "2", "--out", str(out), "--no-progress"])
    assert rc == 0
    with open(out / "summary.json") as f:
        s = json.load(f)
    assert s["lines"] == 8 and s["llm_calls"] >= 1 and s["prompt_tokens"] > 0 and s["url"]
    with open(out / "Proxifier_2k.log_structured.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 8


def test_url_mode_errors_are_one_line(server, tmp_path, capsys):
    for url, key, why in ((server.url, "wrong", "401"), ("http://127.0.0.1:9", server.api_key, "cannot reach")):
        rc = cli.run([LOG, "--url", url, "--api-key", key, "--ground-truth", GT, "--limit", "3", "--out",
                      str(tmp_path / "o"), "--no-progress", "--concurrency", "1"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and why in err[0], err
