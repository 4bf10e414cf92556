"""Ground truth for `--ground-truth CSV` and the oracle (`--model oracle:CSV`): a loghub structured CSV's templates,
looked up per parsed line.

A line's ground truth is the CSV row with its LineId when that row's Content equals the line's content (the normal
case: the CSV was made from this file with this header format); otherwise the template of the first row with that
Content; otherwise none. Contents compare with all whitespace removed: the Loghub-2k CSVs went through pandas and
the corrections (HealthApp keeps a leading space, and one corrected Content gained spaces the raw line lacks).
"""
from __future__ import annotations

from typing import Iterable


def _key(content: str) -> str:
    return "".join(content.split())

from logparse.demos import Labelled, read_labelled_csv
from logparse.logfile import LogLine


class GroundTruth:
    def __init__(self, rows: Iterable[Labelled]):
        self.rows = list(rows)
        self.by_line: dict[int, Labelled] = {}
        self.by_content: dict[str, str] = {}
        for row in self.rows:
            if row.line_id is not None:
                self.by_line.setdefault(row.line_id, row)
            self.by_content.setdefault(_key(row.content), row.template)

    @classmethod
    def from_csv(cls, path: str) -> "GroundTruth":
        return cls(read_labelled_csv(path))

    def template_for(self, line_id: int, content: str) -> str | None:
        row = self.by_line.get(line_id)
        key = _key(content)
        if row is not None and _key(row.content) == key:
            return row.template
        return self.by_content.get(key)

    def labels(self, lines: Iterable[LogLine]) -> dict[int, str]:
        """{LineId: template} for the lines that have a ground truth."""
        out = {}
        for ln in lines:
            t = self.template_for(ln.line_id, ln.content)
            if t is not None:
                out[ln.line_id] = t
        return out
