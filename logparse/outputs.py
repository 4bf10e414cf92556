"""loghub-2.0's parser outputs, written atomically (a temp file in the same folder, then rename).

- `<name>_structured.csv`: LineId, the header fields of the format, Content, EventId, EventTemplate; one row per
  parsed line, in LineId order (after Ctrl-C: the lines resolved so far).
- `<name>_templates.csv`: EventId, EventTemplate, Occurrences; most frequent first, ties by template.
- `summary.json`: see `summary()`.
`<name>` is the input file's name (`HDFS_2k.log` → `HDFS_2k.log_structured.csv`, as loghub-2.0 names them), `stdin`
for `-`. EventId is the first 8 hex digits of the template's MD5, as loghub-2.0's parsers write it.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import tempfile
from typing import Sequence

from logparse.logfile import LogLine
from logparse.metrics import evaluate


def event_id(template: str) -> str:
    return hashlib.md5(template.encode("utf-8")).hexdigest()[:8]


def output_name(path: str) -> str:
    return "stdin" if path == "-" else os.path.basename(path)


def _atomic_write(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_outputs(out_dir: str, name: str, lines: Sequence[LogLine], templates: dict[int, str],
                  header_fields: Sequence[str], summary: dict) -> dict[str, str]:
    """Write the three files for the lines that have a template; returns their paths by kind."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"structured": os.path.join(out_dir, f"{name}_structured.csv"),
             "templates": os.path.join(out_dir, f"{name}_templates.csv"),
             "summary": os.path.join(out_dir, "summary.json")}
    done = [ln for ln in lines if ln.line_id in templates]
    counts: dict[str, int] = {}
    for ln in done:
        counts[templates[ln.line_id]] = counts.get(templates[ln.line_id], 0) + 1

    def structured(f) -> None:
        w = csv.writer(f)
        w.writerow(["LineId", *header_fields, "Content", "EventId", "EventTemplate"])
        for ln in done:
            t = templates[ln.line_id]
            w.writerow([ln.line_id, *(ln.fields.get(k, "") for k in header_fields), ln.content, event_id(t), t])

    def template_table(f) -> None:
        w = csv.writer(f)
        w.writerow(["EventId", "EventTemplate", "Occurrences"])
        for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            w.writerow([event_id(t), t, n])

    _atomic_write(paths["structured"], structured)
    _atomic_write(paths["templates"], template_table)
    _atomic_write(paths["summary"], lambda f: f.write(json.dumps(summary, indent=2) + "\n"))
    return paths


def accuracy(lines: Sequence[LogLine], templates: dict[int, str], truth) -> dict:
    """GA / PA / FGA / FTA over the parsed lines that have a ground truth (+ how many were scored)."""
    preds, trues = [], []
    for ln in lines:
        if ln.line_id not in templates:
            continue
        t = truth.template_for(ln.line_id, ln.content)
        if t is not None:
            preds.append(templates[ln.line_id])
            trues.append(t)
    if not trues:
        return {"GA": None, "PA": None, "FGA": None, "FTA": None, "scored_lines": 0}
    return {**evaluate(preds, trues), "scored_lines": len(trues)}
