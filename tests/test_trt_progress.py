"""`mq-deploy build`'s view of TensorRT's build phases (mq_deploy.trt_progress): what a terminal and a log show, and
how Ctrl-C, errors and TensorRT's threads are handled (run_build, the monitor's callbacks)."""

import io
import signal
import threading
import time

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
    """Building engine (2 steps) with Tactic selection (`steps` steps, dt seconds each) inside its first step; steps
    counted from 0, as TensorRT does."""
    p.phase_start("Building engine", None, 2)
    p.phase_start("Tactic selection", "Building engine", steps)
    for i in range(steps):
        clock.t += dt
        assert p.step_complete("Tactic selection", i) is True
    p.phase_finish("Tactic selection")
    assert p.step_complete("Building engine", 0) is True
    clock.t += 5.0
    assert p.step_complete("Building engine", 1) is True
    p.phase_finish("Building engine")


def test_log_lines_at_most_every_interval():
    out, clock = _Stream(False), _Clock()
    p = tp.BuildProgress(out, clock=clock)
    assert not p.tty
    _build(p, clock, steps=7, dt=10.0)
    p.close()
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
    # nowhere to show (-q): nothing written, the monitor still cancels
    p = tp.BuildProgress(None, clock=clock)
    _build(p, clock)
    p.cancel()
    assert p.step_complete("x", 0) is False and p.display_error is None


def test_terminal_line_redrawn_and_cleared():
    out, clock = _Stream(True), _Clock()
    p = tp.BuildProgress(out, clock=clock)
    assert p.tty
    _build(p, clock, steps=3, dt=0.04)  # steps closer than TTY_INTERVAL_S are not all drawn
    p.close()
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


def test_display_errors_stop_the_display_not_the_build():
    class Broken(_Stream):
        def write(self, s):
            raise OSError(32, "Broken pipe")

    p = tp.BuildProgress(Broken(False), clock=_Clock())
    p.phase_start("Building engine", None, 1)  # the write fails inside TensorRT's call: kept, nothing raised
    assert p.step_complete("Building engine", 0) is True and not p.cancelled
    p.phase_finish("Building engine")
    assert isinstance(p.display_error, OSError) and p.stream is None
    warned = []
    assert tp.run_build(lambda: b"ENGINE", p, warn=warned.append) == b"ENGINE"
    assert warned == ["the build's progress display stopped: BrokenPipeError(32, 'Broken pipe')"]


def test_phases_out_of_order():
    """A parent ending before its children takes them along; an unknown parent makes a top-level phase; steps of
    unknown phases are ignored; a cancelled build's phases end as cancelled."""
    out, clock = _Stream(False), _Clock()
    p = tp.BuildProgress(out, clock=clock)
    p.phase_start("A", None, 1)
    p.phase_start("B", "A", 1)
    p.phase_start("C", "B", 4)
    p.phase_finish("A")
    assert p.phases == {}
    p.phase_start("D", "nobody", 1)
    assert p.step_complete("E", 0) is True
    clock.t += 31
    assert p.step_complete("D", 0) is True
    p.phase_finish("D")
    p.phase_finish("D")
    p.phase_start("F", None, 2)
    p.cancel()
    assert p.step_complete("F", 0) is False
    p.phase_finish("F")
    assert out.getvalue().splitlines() == ["TensorRT: A", "TensorRT: A: done in 0.0 s", "TensorRT: D",
                                           "TensorRT: D 1/1 (31.0 s)", "TensorRT: D: done in 31.0 s", "TensorRT: F",
                                           "TensorRT: F: cancelled after 0.0 s"]
    assert p.display_error is None


def test_callbacks_from_several_threads():
    """TensorRT may call the monitor from several threads at once: no error, and every phase accounted for."""
    out = _Stream(True)
    p = tp.BuildProgress(out)
    p.phase_start("Building engine", None, 1)

    def worker(k):
        for i in range(200):
            name = f"phase {k}.{i}"
            p.phase_start(name, "Building engine", 3)
            for s in range(3):
                p.step_complete(name, s)
            p.phase_finish(name)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    p.phase_finish("Building engine")
    assert p.display_error is None and p.phases == {} and not p.cancelled
    text = out.getvalue()
    assert text.count("\n") == 2 and text.startswith("TensorRT: Building engine\n")  # the two lines that stay
    assert text.rsplit("\r", 1)[1].startswith("TensorRT: Building engine: done in ")


def test_run_build_ctrl_c(monkeypatch, capsys, signals_as_a_terminal_gives_them):
    """run_build: the build in a worker thread; a Ctrl-C (SIGINT to the process) asks TensorRT to stop at its next
    step and ends in KeyboardInterrupt; a second one, or the first with no monitor, exits at once; the build's own
    error is raised in the caller's thread."""
    p = tp.BuildProgress(None)
    steps = []

    def build(interrupts=1, monitor=p):
        for s in range(50):
            if s == 3:
                for _ in range(interrupts):
                    signal.raise_signal(signal.SIGINT)
                    time.sleep(4 * tp.WAIT_S)
            if monitor is not None and not monitor.step_complete("Building engine", s):
                steps.append(s)
                return None  # TensorRT's cancelled build
        return b"ENGINE"

    with pytest.raises(KeyboardInterrupt):
        tp.run_build(build, p)
    assert steps == [3] and p.cancelled
    assert "cancelling the TensorRT build at its next step" in capsys.readouterr().err
    exits = []

    def hard_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(tp, "_hard_exit", hard_exit)
    for kw, progress in (({"interrupts": 2, "monitor": (q := tp.BuildProgress(None))}, q), ({"monitor": None}, None)):
        with pytest.raises(SystemExit):
            tp.run_build(lambda: build(**kw), progress)
        _wait_for_builds()
        assert "interrupted (the TensorRT build did not stop; nothing was written)" in capsys.readouterr().err
    assert exits == [130, 130]

    def failing():
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError, match="out of memory"):
        tp.run_build(failing, tp.BuildProgress(None))
    assert tp.run_build(lambda: None, None) is None  # a failed build: the caller says so


def test_tensorrt_log_lines_go_over_the_running_line(monkeypatch, capsys):
    out = _Stream(True)
    p = tp.BuildProgress(out, clock=_Clock())
    monkeypatch.setattr(tp, "_ACTIVE", [p])
    p.phase_start("Building engine", None, 2)
    drawn = p._drawn
    assert drawn > 0
    tp.log_line("[TensorRT] WARNING: something")
    assert out.getvalue().endswith("\r" + " " * drawn + "\r[TensorRT] WARNING: something\n") and p._drawn == 0
    monkeypatch.setattr(tp, "_ACTIVE", [])
    tp.log_line("[TensorRT] ERROR: no build running")
    assert capsys.readouterr().err == "[TensorRT] ERROR: no build running\n"


def _wait_for_builds():
    """Let a build abandoned by a (simulated) second Ctrl-C end: it runs on in its thread, as TensorRT's would."""
    for t in threading.enumerate():
        if t.name == "tensorrt-build":
            t.join(10)


def test_seconds_text():
    assert [tp.seconds_text(s) for s in (0.04, 59.94, 60, 125.4, 3599.6, 3725)] == [
        "0.0 s", "59.9 s", "1 min 00 s", "2 min 05 s", "1 h 00 min", "1 h 02 min"]
