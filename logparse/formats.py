"""Log header formats: loghub's `<Field>` syntax → a regex that splits a raw line into header fields and `Content`.

A format is loghub's (logpai/logparser, loghub-2.0) header format string: `<Name>` marks a field, the text between
fields is a REGULAR EXPRESSION (loghub writes `\\[<Time>\\]` and `(\\[<PID>\\])?`), and every run of spaces in it
matches one or more whitespace characters. Each field matches lazily (`.*?`) and the whole line must match, so the
last field (normally `<Content>`) takes the rest of the line. A format must name a `Content` field.

`LOGHUB_FORMATS` holds the loghub benchmark's formats for its 16 systems (the settings every loghub-2.0 parser
ships); `format_for_file` picks one from a file name such as `OpenSSH_2k.log`. `RAW_FORMAT` treats the whole line
as content.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from types import MappingProxyType

CONTENT_FIELD = "Content"
RAW_FORMAT = "<Content>"

LOGHUB_FORMATS: "MappingProxyType[str, str]" = MappingProxyType({
    "HDFS": r"<Date> <Time> <Pid> <Level> <Component>: <Content>",
    "Hadoop": r"<Date> <Time> <Level> \[<Process>\] <Component>: <Content>",
    "Spark": r"<Date> <Time> <Level> <Component>: <Content>",
    "Zookeeper": r"<Date> <Time> - <Level>  \[<Node>:<Component>@<Id>\] - <Content>",
    "BGL": r"<Label> <Timestamp> <Date> <Node> <Time> <NodeRepeat> <Type> <Component> <Level> <Content>",
    "HPC": r"<LogId> <Node> <Component> <State> <Time> <Flag> <Content>",
    "Thunderbird": r"<Label> <Timestamp> <Date> <User> <Month> <Day> <Time> <Location> <Component>(\[<PID>\])?: "
                   r"<Content>",
    "Windows": r"<Date> <Time>, <Level>                  <Component>    <Content>",
    "Linux": r"<Month> <Date> <Time> <Level> <Component>(\[<PID>\])?: <Content>",
    "Android": r"<Date> <Time>  <Pid>  <Tid> <Level> <Component>: <Content>",
    "HealthApp": r"<Time>\|<Component>\|<Pid>\|<Content>",
    "Apache": r"\[<Time>\] \[<Level>\] <Content>",
    "Proxifier": r"\[<Time>\] <Program> - <Content>",
    "OpenSSH": r"<Date> <Day> <Time> <Component> sshd\[<Pid>\]: <Content>",
    "OpenStack": r"<Logrecord> <Date> <Time> <Pid> <Level> <Component> \[<ADDR>\] <Content>",
    "Mac": r"<Month>  <Date> <Time> <User> <Component>\[<PID>\]( \(<Address>\))?: <Content>",
})

_FIELD_RE = re.compile(r"<([A-Za-z_][A-Za-z0-9_]*)>")


@dataclass(frozen=True)
class HeaderFormat:
    """A compiled header format: `split(line)` → {field: value} (Content included) or None if the line does not
    match."""

    spec: str
    fields: tuple[str, ...]
    regex: re.Pattern

    def split(self, line: str) -> dict[str, str] | None:
        m = self.regex.match(line)
        if m is None or m.group(CONTENT_FIELD) is None:  # (an alternation in the format can skip Content)
            return None
        return {name: m.group(name) or "" for name in self.fields}  # an optional field that is absent: ""

    def content(self, line: str) -> str | None:
        parts = self.split(line)
        return None if parts is None else parts[CONTENT_FIELD]


def compile_format(spec: str) -> HeaderFormat:
    """Compile a `<Field>` format. ValueError (naming `format`) if it names no Content field, repeats a field, or
    its text between fields is not a valid regular expression."""
    if not isinstance(spec, str) or not spec:
        raise ValueError("format: must be a non-empty string")
    parts = _FIELD_RE.split(spec)  # even indices: literal regex text; odd: field names
    fields = tuple(parts[1::2])
    if CONTENT_FIELD not in fields:
        raise ValueError(f"format: {spec!r} has no <{CONTENT_FIELD}> field")
    if len(set(fields)) != len(fields):
        raise ValueError(f"format: {spec!r} names a field twice")
    pattern = []
    for i, part in enumerate(parts):
        if i % 2:
            pattern.append(f"(?P<{part}>.*?)")
        else:
            pattern.append(re.sub(" +", r"\\s+", part))
    try:
        regex = re.compile("^" + "".join(pattern) + "$", re.DOTALL)
    except re.error as e:
        raise ValueError(f"format: {spec!r} is not a valid pattern between its fields ({e})") from None
    return HeaderFormat(spec, fields, regex)


def system_for_file(path: str) -> str | None:
    """The loghub system a file name names (`OpenSSH_2k.log`, `HDFS.log`, `logs/hdfs_v1.log`), or None.

    Matches the name's leading word (up to the first `_`, `.` or `-`) against the 16 systems, ignoring case."""
    stem = re.split(r"[_.\-]", os.path.basename(path), maxsplit=1)[0].lower()
    for system in LOGHUB_FORMATS:
        if system.lower() == stem:
            return system
    return None


def resolve_format(spec: str, path: str) -> HeaderFormat:
    """`--format` → HeaderFormat: `raw`, `loghub` (by the file name; ValueError if it names no loghub system), or a
    `<Field>` format string."""
    if spec == "raw":
        return compile_format(RAW_FORMAT)
    if spec == "loghub":
        system = system_for_file(path)
        if system is None:
            raise ValueError(f"format: 'loghub' needs a file named after a loghub system "
                             f"({', '.join(LOGHUB_FORMATS)}), e.g. OpenSSH_2k.log; got {path!r}")
        return compile_format(LOGHUB_FORMATS[system])
    return compile_format(spec)
