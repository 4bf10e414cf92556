"""Reader for the Loghub-2k benchmark (logpai/logparser `data/loghub_2k_corrected/` layout).

Each system lives in `<data_dir>/<System>/` and holds `<System>_2k.log_structured_corrected.csv`:
columns `LineId`, the system's own header fields, then `Content` (the message body a parser sees),
`EventId` and `EventTemplate` (ground truth, variables written as `<*>`). Only the last three columns are
used; the header fields differ per system and are ignored.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass

# The 12 systems shipped in the shared data set, in the order papers usually list them.
LOGHUB_SYSTEMS: tuple[str, ...] = (
    "Android",
    "Apache",
    "BGL",
    "HDFS",
    "HPC",
    "Hadoop",
    "HealthApp",
    "Linux",
    "OpenStack",
    "Proxifier",
    "Spark",
    "Zookeeper",
)

STRUCTURED_SUFFIX = "_2k.log_structured_corrected.csv"
TEMPLATES_SUFFIX = "_2k.log_templates_corrected.csv"
_REQUIRED_COLUMNS = ("Content", "EventId", "EventTemplate")


@dataclass(frozen=True)
class LogDataset:
    """One system's labelled logs; the three lists are parallel (index = line index, 0-based)."""

    system: str
    contents: list[str]
    templates: list[str]
    event_ids: list[str]

    def __post_init__(self) -> None:
        assert len(self.contents) == len(self.templates) == len(self.event_ids)

    def __len__(self) -> int:
        return len(self.contents)

    def head(self, n_lines: int) -> "LogDataset":
        """The first `n_lines` lines as a new dataset (for quick runs)."""
        if n_lines < 0:
            raise ValueError(f"n_lines must be >= 0, got {n_lines}")
        return LogDataset(
            self.system, self.contents[:n_lines], self.templates[:n_lines], self.event_ids[:n_lines]
        )


def structured_path(data_dir: str, system: str) -> str:
    return os.path.join(data_dir, system, system + STRUCTURED_SUFFIX)


def templates_path(data_dir: str, system: str) -> str:
    return os.path.join(data_dir, system, system + TEMPLATES_SUFFIX)


def list_systems(data_dir: str) -> list[str]:
    """Systems under `data_dir` that have a structured CSV, sorted by name."""
    if not os.path.isdir(data_dir):
        raise ValueError(f"data_dir is not a directory: {data_dir!r}")
    found = []
    for name in sorted(os.listdir(data_dir)):
        if os.path.isfile(structured_path(data_dir, name)):
            found.append(name)
    return found


def load_system(data_dir: str, system: str) -> LogDataset:
    """Read `<data_dir>/<system>/<system>_2k.log_structured_corrected.csv` in file order.

    Raises ValueError (naming `system`) if the file is missing or lacks a required column.
    """
    path = structured_path(data_dir, system)
    if not os.path.isfile(path):
        raise ValueError(f"system {system!r}: no structured CSV at {path!r}")
    contents: list[str] = []
    templates: list[str] = []
    event_ids: list[str] = []
    # newline="" lets the csv module handle quoted fields itself, as its docs require.
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"system {system!r}: {path!r} lacks columns {missing}")
        for row in reader:
            contents.append(row["Content"])
            templates.append(row["EventTemplate"])
            event_ids.append(row["EventId"])
    return LogDataset(system, contents, templates, event_ids)


def load_template_table(data_dir: str, system: str) -> dict[str, str]:
    """EventId -> EventTemplate from `<system>_2k.log_templates_corrected.csv`."""
    path = templates_path(data_dir, system)
    if not os.path.isfile(path):
        raise ValueError(f"system {system!r}: no templates CSV at {path!r}")
    with open(path, newline="", encoding="utf-8") as f:
        return {row["EventId"]: row["EventTemplate"] for row in csv.DictReader(f)}
