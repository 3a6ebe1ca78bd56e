"""Audit mode's notice: one line on the cell's stderr when the policy would have refused."""

from __future__ import annotations

import io
import sys
from typing import Iterator

import pytest

from kernel_guard import notice

MARK = "kernel_guard (audit mode)"


@pytest.fixture(autouse=True)
def _disarmed() -> Iterator[None]:
    notice.cell_ended()
    yield
    notice.cell_ended()


def test_nothing_is_written_outside_a_cell(capsys: pytest.CaptureFixture[str]) -> None:
    """Before the first cell (the launcher's start-up) and between cells, the notice stays silent."""
    notice.would_refuse("starting a program (os.system: id)")
    notice.cell_started()
    notice.cell_ended()
    notice.would_refuse("starting a program (os.system: id)")
    assert capsys.readouterr().err == ""


def test_one_notice_per_cell(capsys: pytest.CaptureFixture[str]) -> None:
    """The first refusable call of a cell writes one line; later ones, none; the next cell, one again."""
    for _ in range(2):
        notice.cell_started()
        notice.would_refuse("starting a program (os.system: id)")
        notice.would_refuse("changing $PATH")
        notice.cell_ended()
    lines = capsys.readouterr().err.splitlines()
    assert lines == [notice.TEMPLATE.format(what="starting a program (os.system: id)")] * 2


def test_a_write_that_raises_audit_events_does_not_reenter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream whose write itself meets the policy (as in an audit hook) gets one line, and a failing stream none."""
    class Reentrant(io.StringIO):
        def write(self, text: str) -> int:
            notice.would_refuse("again")
            return super().write(text)

    stream = Reentrant()
    monkeypatch.setattr(sys, "stderr", stream)
    notice.cell_started()
    notice.would_refuse("first")
    assert stream.getvalue().count(MARK) == 1

    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError("closed")

    monkeypatch.setattr(sys, "stderr", Broken())
    notice.cell_started()
    notice.would_refuse("first")  # must not raise into the audited call


def test_audit_mode_kernel_shows_the_notice_once_per_cell(make_kernel) -> None:
    """In an audit-mode kernel a cell with two refusable calls succeeds with one notice; a clean cell has none."""
    kernel = make_kernel(env={"KERNEL_GUARD_MODE": "audit"})
    clean = kernel.execute("print(1 + 1)")
    assert clean.status == "ok" and MARK not in clean.stderr + clean.stdout
    audited = kernel.execute("import os\nprint(os.system('true'), os.system('true'))")
    assert audited.status == "ok", audited.error_text
    assert audited.stdout.strip() == "0 0"
    assert audited.stderr.count(MARK) == 1, audited.stderr
    assert "starting a program (os.system: true)" in audited.stderr
    shell = kernel.execute("!true\n!true")  # the IPython layer's route, then the audit hook's
    assert shell.status == "ok", shell.error_text
    assert shell.stderr.count(MARK) == 1 and "`!true`" in shell.stderr, shell.stderr
    assert MARK not in kernel.execute("x = 2").stderr
    assert MARK not in kernel.stderr()  # nothing in the server's log, before or between cells


def test_enforce_mode_kernel_shows_no_notice(guarded) -> None:
    """In enforce mode the refusal itself is the message: no notice beside it."""
    result = guarded.execute("import os\nos.system('true')")
    assert result.status == "error" and MARK not in result.stderr + result.error_text
