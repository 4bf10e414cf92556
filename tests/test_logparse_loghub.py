"""The Loghub-2k reader, on the 40-line fixtures of all 12 systems."""
import csv
import os

import pytest

from logparse.loghub import LOGHUB_SYSTEMS, list_systems, load_system, load_template_table

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "loghub")


def test_list_systems_finds_all_twelve():
    assert list_systems(FIXTURES) == sorted(LOGHUB_SYSTEMS)
    assert len(LOGHUB_SYSTEMS) == 12


@pytest.mark.parametrize("system", LOGHUB_SYSTEMS)
def test_load_system_reads_content_and_ground_truth(system):
    data = load_system(FIXTURES, system)
    assert data.system == system
    assert len(data) == 40
    assert all(data.contents) and all(data.templates) and all(data.event_ids)
    table = load_template_table(FIXTURES, system)
    if system != "Linux":  # Linux's templates CSV is out of sync with its structured CSV upstream
        assert all(table[e] == t for e, t in zip(data.event_ids, data.templates))


def test_quoted_fields_are_unquoted():
    # Android line 2: Content holds a comma-separated list and doubled quotes inside a quoted CSV field.
    data = load_system(FIXTURES, "Android")
    assert data.contents[1].startswith("acquire lock=233570404, flags=0x1, tag=\"View Lock\"")
    assert data.templates[1] == 'acquire lock=<*>, flags=<*>, tag="<*>", name=<*>, ws=<*>, uid=<*>, pid=<*>'
    assert data.event_ids[1] == "E10"


def test_head_and_bad_inputs(tmp_path):
    data = load_system(FIXTURES, "HDFS")
    assert data.head(3).contents == data.contents[:3]
    with pytest.raises(ValueError, match="system"):
        load_system(FIXTURES, "NoSuchSystem")
    bad = tmp_path / "X"
    bad.mkdir()
    with open(bad / "X_2k.log_structured_corrected.csv", "w", newline="") as f:
        csv.writer(f).writerows([["LineId", "Content", "EventId"], ["1", "hello", "E1"]])
    with pytest.raises(ValueError, match="EventTemplate"):
        load_system(str(tmp_path), "X")
    with pytest.raises(ValueError, match="data_dir"):
        list_systems(str(tmp_path / "missing"))
