"""``kernel-guard verify``: is a record whole?  Streams, gaps, chains, ends.

Reads events as the sinks write them (JSON lines) or as collectors deliver
them (a syslog or log prefix before the JSON object is skipped), from files or
stdin, and reports per stream (:mod:`kernel_guard.events.streams`): numbers
missing, events seen twice (by ``event.id``), events whose hash does not match
their content (edited), links that do not match the event before (reordered,
or one removed), a stream that does not open with ``stream-started`` or has
no ``stream-ended`` after its last event, and streams shorter than a
custodian's ``chain-checkpoint`` says they were.  Several files are one record
(a rotated set: pass them all, in any order).

Exit status: 0 only when the record is whole; 1 when something is missing or
changed; 3 when nothing is missing or changed but a stream was *cut short*
(its process died and the custodian wrote its end: events it numbered after
the last one received were lost inside it); 2 on bad input.

Authorship: the supervisor, its witness and the custodian mark their records
(``kernel_guard.recorded_by``), which the custodian never takes from a kernel;
each stream is reported with its author, and a checkpoint counts only when the
custodian wrote it.  It proves what the chain proves: that records were not
changed after the process that wrote them; not that a kernel told the truth
about itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Iterable, Iterator, Optional

from ..events.streams import GENESIS, hash_matches

__all__ = ["FILE_BOUNDARY", "StreamReport", "add_arguments", "read_events", "run", "verify"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``kernel-guard verify [FILE ...] [--format text|json] [--allow-open]``."""
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="JSON-lines files of events (default, or '-': standard input)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="report format")
    parser.add_argument("--allow-open", action="store_true",
                        help="accept streams without stream-ended (kernels still running)")


@dataclass
class StreamReport:
    """What one stream's record shows."""

    stream: str
    pid: Optional[int] = None
    kernel_id: Optional[str] = None
    events: int = 0
    first: int = 0
    last: int = 0
    gaps: list[list[int]] = field(default_factory=list)  # [from, to] inclusive
    altered: list[int] = field(default_factory=list)     # hash does not match content
    broken_links: list[int] = field(default_factory=list)  # prev does not match the event before
    out_of_order: list[int] = field(default_factory=list)  # found after a later number
    started: bool = False
    ended: bool = False
    ended_by: Optional[str] = None
    short_of_checkpoint: Optional[int] = None  # a checkpoint saw this number, the record does not have it
    author: str = "kernel (as it claims)"
    cut_short: Optional[int] = None  # the custodian ended it after this number (its process died)

    def problems(self, allow_open: bool = False) -> list[str]:
        """Each way this stream's record is not whole, in words."""
        out = [f"events {a}-{b} missing" if a != b else f"event {a} missing" for a, b in self.gaps]
        out += [f"event {n} changed after it was written" for n in self.altered]
        out += [f"event {n} does not follow the one before (reordered, or one removed)" for n in self.broken_links]
        out += [f"event {n} comes after a later one in the record (reordered)" for n in self.out_of_order]
        if not self.started:
            out.append("no stream-started: its beginning is missing")
        if not self.ended and not allow_open:
            out.append("no stream-ended: cut short, or still running")
        if self.short_of_checkpoint:
            out.append(f"a checkpoint saw event {self.short_of_checkpoint}, which the record lacks (truncated)")
        return out

    def warnings(self) -> list[str]:
        """What makes a stream cut short rather than changed."""
        if self.cut_short is None:
            return []
        return [f"cut short: its process died and the custodian ended the stream; the last event received was "
                f"number {self.cut_short}, anything it numbered later was lost inside it"]


def read_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """Events from JSON lines; a prefix before the first ``{`` (syslog, a log shipper) is skipped."""
    for line in lines:
        start = line.find("{")
        if start < 0:
            continue
        try:
            event = json.loads(line[start:])
        except ValueError:
            continue
        if isinstance(event, dict) and isinstance(event.get("event"), dict):
            yield event


#: in the events given to :func:`verify`: a new file begins (a rotated set is judged as one
#: record in any order of its files; "reordered" is judged within each file)
FILE_BOUNDARY = None


def verify(events: Iterable[Optional[dict[str, Any]]]) -> tuple[dict[str, StreamReport], list[str], int]:
    """(reports by stream, event ids seen more than once, events without a stream)."""
    by_stream: dict[str, dict[int, dict[str, Any]]] = {}
    highest: dict[str, int] = {}
    late: dict[str, list[int]] = {}
    seen: set[str] = set()
    duplicates: list[str] = []
    unnumbered = 0
    checkpoints: dict[str, tuple[int, str]] = {}
    superseded: dict[str, dict[str, Any]] = {}  # a custodian's end that the process's own events outrank
    for event in events:
        if event is FILE_BOUNDARY:
            highest = {}
            continue
        guard = _part(event, "kernel_guard")
        event_id = event["event"].get("id")
        if not isinstance(event_id, str):
            event_id = repr(event_id)  # a forged or damaged id is still one id, and hashable
        if event_id in seen:
            duplicates.append(event_id)
            continue
        seen.add(event_id)
        stream, number = guard.get("stream"), event["event"].get("sequence")
        if not isinstance(stream, str) or not isinstance(number, int):
            unnumbered += 1
            continue
        numbered = by_stream.setdefault(stream, {})
        if number in numbered and _keeps_place(numbered[number], event):
            superseded.setdefault(stream, event)
            continue
        if number in numbered:
            superseded.setdefault(stream, numbered[number])
        numbered[number] = event
        if number < highest.get(stream, 0):
            late.setdefault(stream, []).append(number)
        highest[stream] = max(number, highest.get(stream, 0))
        if event["event"].get("action") == "chain-checkpoint" and guard.get("recorded_by") == "custodian":
            for name, head in _part(guard, "heads").items():
                if isinstance(head, dict) and isinstance(head.get("sequence"), int):
                    if head["sequence"] >= checkpoints.get(name, (0, ""))[0]:
                        checkpoints[name] = (head["sequence"], str(head.get("hash")))
    reports = {name: _check_stream(name, numbered, checkpoints.get(name)) for name, numbered in by_stream.items()}
    for name, numbers in late.items():
        reports[name].out_of_order = numbers
    for name, end in superseded.items():
        _own_sinks_continued(reports[name], end)
    for name, (number, _) in checkpoints.items():
        if name not in reports:  # a whole stream gone
            reports[name] = StreamReport(name, gaps=[[1, number]], short_of_checkpoint=number)
    return reports, duplicates, unnumbered


def _part(obj: dict[str, Any], name: str) -> dict[str, Any]:
    """``obj[name]`` when it is an object, else an empty one: a damaged or forged line
    is judged (its hash does not match), it does not stop the report."""
    part = obj.get(name)
    return part if isinstance(part, dict) else {}


def _custodian_end(event: dict[str, Any]) -> bool:
    guard = _part(event, "kernel_guard")
    return event["event"].get("action") == "stream-ended" and guard.get("recorded_by") == "custodian"


def _keeps_place(held: dict[str, Any], other: dict[str, Any]) -> bool:
    """Of two events with one stream and number, whether ``held`` stays: the process's own
    event outranks an end the custodian wrote because it saw no more (while it was
    stalled, the kernel went on in its own sinks); otherwise the one read last."""
    return _custodian_end(other) and not _custodian_end(held)


def _own_sinks_continued(report: "StreamReport", end: dict[str, Any]) -> None:
    """The stream went on past the custodian's end, in the kernel's own sinks: judged on
    the events; if its process wrote no end there either, it is still cut short."""
    if _custodian_end(end) and not report.ended:
        report.ended, report.ended_by, report.cut_short = True, "custodian", report.last


def _check_stream(name: str, numbered: dict[int, dict[str, Any]], head: Optional[tuple[int, str]]) -> StreamReport:
    """Gaps, hashes, links, start, end and the checkpoint of one stream."""
    numbers = sorted(numbered)
    first_event = numbered[numbers[0]]
    report = StreamReport(name, pid=_part(first_event, "process").get("pid"),
                          kernel_id=_part(first_event, "kernel_guard").get("kernel_id"),
                          events=len(numbers), first=numbers[0], last=numbers[-1])
    expected, prev_hash = 1, GENESIS
    for number in numbers:
        if number > expected:
            report.gaps.append([expected, number - 1])
        event = numbered[number]
        chain = _part(_part(event, "kernel_guard"), "chain")
        if not hash_matches(event):
            report.altered.append(number)
        if number == expected and chain.get("prev") != prev_hash:
            report.broken_links.append(number)
        expected, prev_hash = number + 1, chain.get("hash")
    report.started = numbered.get(1, {}).get("event", {}).get("action") == "stream-started"
    last = numbered[numbers[-1]]
    report.ended = last["event"].get("action") == "stream-ended"
    if report.ended:
        by_custodian = _part(last, "kernel_guard").get("recorded_by") == "custodian"
        report.ended_by = "custodian" if by_custodian else "its own process"
        if by_custodian:
            received = _part(last, "kernel_guard").get("last_received")
            report.cut_short = received if isinstance(received, int) else numbers[-1] - 1
    recorded = [_part(e, "kernel_guard").get("recorded_by") for e in numbered.values()]
    authors = {r for r in recorded if isinstance(r, str)} - {"custodian"}
    if len(authors) == 1 and all(isinstance(r, str) and r for r in recorded):
        report.author = authors.pop()
    if head is not None:
        number, digest = head
        got = numbered.get(number)
        if got is None or _part(_part(got, "kernel_guard"), "chain").get("hash") != digest:
            report.short_of_checkpoint = number
    return report


def _inputs(files: list[str]) -> Iterator[Optional[dict[str, Any]]]:
    """The events of each file (or stdin), with a boundary before each file."""
    for name in files or ["-"]:
        yield FILE_BOUNDARY
        if name == "-":
            yield from read_events(sys.stdin)
            continue
        with open(name, encoding="utf-8", errors="replace") as fh:
            yield from read_events(fh)


def run(args: argparse.Namespace, out: IO[str] = sys.stdout) -> int:
    """Print the report; 0 when the record is whole, 1 when not, 2 when a file cannot be read."""
    try:
        reports, duplicates, unnumbered = verify(_inputs(args.files))
    except OSError as exc:
        print(f"kernel-guard verify: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 2
    problems = {name: r.problems(args.allow_open) for name, r in reports.items()}
    changed = bool(duplicates) or any(problems.values()) or not reports
    cut = [name for name, r in reports.items() if r.cut_short is not None]
    whole = not changed and not cut
    if args.format == "json":
        body = {"whole": whole, "cut_short": cut, "duplicates": duplicates, "events_without_stream": unnumbered,
                "streams": [{**vars(r), "problems": problems[n], "warnings": r.warnings()}
                            for n, r in sorted(reports.items())]}
        print(json.dumps(body, indent=2), file=out)
    else:
        print(_text(reports, problems, duplicates, unnumbered, whole), file=out)
    return 1 if changed else 3 if cut else 0


def _text(reports: dict[str, StreamReport], problems: dict[str, list[str]], duplicates: list[str],
          unnumbered: int, whole: bool) -> str:
    lines = []
    for name, report in sorted(reports.items(), key=lambda kv: (kv[1].kernel_id or "", kv[1].pid or 0)):
        where = f"pid {report.pid}" + (f", kernel {report.kernel_id}" if report.kernel_id else "")
        state = "NOT WHOLE" if problems[name] else "CUT SHORT" if report.cut_short is not None else "whole"
        lines.append(f"stream {name} ({where}; written by {report.author}): events {report.first}-{report.last}, "
                     f"{report.events} present: {state}")
        lines += [f"  - {p}" for p in problems[name] + report.warnings()]
    if duplicates:
        lines.append(f"{len(duplicates)} events appear more than once (same event.id)")
    if unnumbered:
        lines.append(f"{unnumbered} events carry no stream (written by an older version, or not by kernel_guard)")
    if not reports:
        lines.append("no kernel_guard events with a stream found")
    cut = sum(r.cut_short is not None for r in reports.values())
    verdict = ("the record is whole" if whole else "the record is NOT whole" if not cut or any(problems.values())
               or duplicates else f"nothing changed, but {cut} cut short (exit status 3)")
    lines.append(f"{len(reports)} streams: " + verdict)
    return "\n".join(lines)
