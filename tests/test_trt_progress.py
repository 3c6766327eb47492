"""`mq-deploy build`'s view of TensorRT's build phases (mq_deploy.trt_progress): what a terminal and a log show, and
how Ctrl-C and errors in the callbacks (which TensorRT calls from noexcept C++) end the build."""

import io

import pytest

from mq_deploy import trt_progress as tp


class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self._tty = tty

    def isatty(self):
        return self._tty


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def _build(p, clock, steps=5, dt=10.0):
    """Building engine (2 steps) with Tactic selection (`steps` steps, dt seconds each) inside its first step."""
    p.phase_start("Building engine", None, 2)
    p.phase_start("Tactic selection", "Building engine", steps)
    for i in range(1, steps + 1):
        clock.t += dt
        assert p.step_complete("Tactic selection", i) is True
    p.phase_finish("Tactic selection")
    assert p.step_complete("Building engine", 1) is True
    clock.t += 5.0
    assert p.step_complete("Building engine", 2) is True
    p.phase_finish("Building engine")


def test_log_lines_at_most_every_interval():
    out, clock = _Stream(False), _Clock()
    p = tp.BuildProgress(out, clock=clock)
    assert not p.tty
    _build(p, clock, steps=7, dt=10.0)
    tp.finish(p)
    lines = out.getvalue().splitlines()
    # 70 s of tactic selection: the running line after 30 s and 60 s (not every step), then the end with its time
    assert lines == ["TensorRT: Building engine",
                     "TensorRT: Building engine > Tactic selection 3/7 (30.0 s)",
                     "TensorRT: Building engine > Tactic selection 6/7 (1 min 00 s)",
                     "TensorRT: Building engine: done in 1 min 15 s"], lines
    # a short build: the phase lines only
    out, clock = _Stream(False), _Clock()
    p = tp.BuildProgress(out, clock=clock)
    _build(p, clock, steps=3, dt=1.0)
    assert out.getvalue().splitlines() == ["TensorRT: Building engine", "TensorRT: Building engine: done in 8.0 s"]


def test_terminal_line_redrawn_and_cleared():
    out, clock = _Stream(True), _Clock()
    p = tp.BuildProgress(out, clock=clock)
    assert p.tty
    _build(p, clock, steps=3, dt=0.04)  # steps closer than TTY_INTERVAL_S are not all drawn
    tp.finish(p)
    text = out.getvalue()
    w = len("TensorRT: Building engine > Tactic selection 3/3 (0.1 s)")
    assert text.split("\r") == [
        "TensorRT: Building engine\n",  # stays
        "TensorRT: Building engine 0/2 (0.0 s)",  # the running line, redrawn in place
        "TensorRT: Building engine > Tactic selection 0/3 (0.0 s)",
        "TensorRT: Building engine > Tactic selection 3/3 (0.1 s)",  # 1/3 and 2/3 came within 0.1 s: not drawn
        "TensorRT: Building engine 0/2 (0.1 s)".ljust(w),  # spaces over the longer line before it
        "TensorRT: Building engine 2/2 (5.1 s)",
        " " * len("TensorRT: Building engine 2/2 (5.1 s)"),  # cleared before the line that stays
        "TensorRT: Building engine: done in 5.1 s\n"], repr(text)
    assert p._drawn == 0
    # a line longer than the terminal is cut
    narrow = _Stream(True)
    narrow.fileno = lambda: (_ for _ in ()).throw(OSError())  # no terminal size: 100 columns
    q = tp.BuildProgress(narrow, clock=clock)
    q.phase_start("x" * 300, None, 0)
    stays, running = narrow.getvalue().split("\r")
    assert stays == f"TensorRT: {'x' * 300}\n"  # a line that stays is whole (the terminal wraps it)
    assert len(running) == 99 and running.endswith("x...")  # the running line fits the terminal's 100 columns


def test_ctrl_c_and_errors_cancel_the_build():
    class Interrupting(str):
        def __str__(self):
            raise KeyboardInterrupt

    p = tp.BuildProgress(_Stream(False), clock=_Clock())
    p.phase_start("Building engine", None, 3)
    assert p.step_complete("Building engine", 1) is True
    assert p.step_complete(Interrupting("Building engine"), 2) is False  # Ctrl-C inside the callback: cancel
    assert p.step_complete("Building engine", 3) is False  # and every later step too
    with pytest.raises(KeyboardInterrupt):
        tp.finish(p)

    class Broken(_Stream):
        def write(self, s):
            raise OSError(32, "Broken pipe")

    p = tp.BuildProgress(Broken(False), clock=_Clock())
    p.phase_start("Building engine", None, 1)  # the write fails inside TensorRT's call: kept, nothing raised
    assert p.step_complete("Building engine", 1) is False
    with pytest.raises(OSError, match="Broken pipe"):
        tp.finish(p)
    tp.finish(None)  # no monitor (-q, or a TensorRT without IProgressMonitor)


def test_phases_out_of_order():
    """A parent ending before its children takes them along; an unknown parent makes a top-level phase; steps of
    unknown phases are ignored."""
    out, clock = _Stream(False), _Clock()
    p = tp.BuildProgress(out, clock=clock)
    p.phase_start("A", None, 1)
    p.phase_start("B", "A", 1)
    p.phase_start("C", "B", 4)
    p.phase_finish("A")
    assert p.phases == {}
    p.phase_start("D", "nobody", 0)
    assert p.step_complete("E", 1) is True
    clock.t += 31
    assert p.step_complete("D", 1) is True
    p.phase_finish("D")
    p.phase_finish("D")
    assert out.getvalue().splitlines() == ["TensorRT: A", "TensorRT: A: done in 0.0 s", "TensorRT: D",
                                           "TensorRT: D (31.0 s)", "TensorRT: D: done in 31.0 s"]
    assert p.error is None and not p.cancelled


def test_seconds_text():
    assert [tp.seconds_text(s) for s in (0.04, 59.94, 60, 125.4, 3599.6, 3725)] == [
        "0.0 s", "59.9 s", "1 min 00 s", "2 min 05 s", "1 h 00 min", "1 h 02 min"]
