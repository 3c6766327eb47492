"""Progress of a TensorRT engine build (`mq-deploy build`), through TensorRT's IProgressMonitor.

An engine build takes minutes on a Jetson and says nothing at TensorRT's WARNING log level, so `build` shows
TensorRT's own build phases: a line when a top-level phase starts and when it ends (with its time); in between, on
a terminal, one line redrawn in place with the innermost running phase and its steps, and in a log (not a
terminal) that line at most every `LOG_INTERVAL_S` seconds. Ctrl-C cancels the build through the monitor (its
step_complete returns False), which TensorRT honours between steps; the caller turns the cancelled build into
KeyboardInterrupt.

TensorRT calls the monitor from C++ functions declared noexcept; its Python bindings catch an exception that
leaves a callback, print it as `[ERROR] Exception caught in step_complete()` and cancel the build, and the exception
itself is lost. So every callback catches everything itself: KeyboardInterrupt cancels the build, any other exception
is kept, cancels the build, and is raised again by `raise_pending` once TensorRT has returned. (A Ctrl-C that lands
in the few instructions before a callback's own handler is the bindings' case: the build is cancelled and
`build_engine` reports it as failed.)
"""
from __future__ import annotations

import os
import time
from typing import Callable, Optional, TextIO

LOG_INTERVAL_S = 30.0  # in a log: the running phase's line at most this often
TTY_INTERVAL_S = 0.1  # on a terminal: redraws at most this often
PREFIX = "TensorRT: "


def seconds_text(s: float) -> str:
    """12.3 s, 4 min 05 s, 1 h 02 min."""
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m} min {sec:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


class BuildProgress:
    """What the monitor shows and decides, apart from TensorRT: IProgressMonitor's methods, in its Python names
    (`monitor_class`'s subclass of TensorRT's IProgressMonitor hands its calls here)."""

    def __init__(self, stream: TextIO, tty: Optional[bool] = None, clock: Callable[[], float] = time.monotonic):
        self.stream, self.clock = stream, clock
        self.tty = bool(getattr(stream, "isatty", lambda: False)()) if tty is None else tty
        self.phases: dict[str, dict] = {}  # running phases in start order: parent, steps, num_steps, start
        self.cancelled = False  # Ctrl-C (or an error in a callback): the build was asked to stop
        self.error: Optional[BaseException] = None
        self._last = None  # when the running line was last written
        self._drawn = 0  # characters of the running line now on the terminal
        self.monitor = None  # the TensorRT object that calls this one (`attach`), kept alive through the build

    # -- IProgressMonitor ----------------------------------------------------------------------
    def phase_start(self, phase_name, parent_phase, num_steps):
        self._guard(self._start, phase_name, parent_phase, num_steps)

    def step_complete(self, phase_name, step):
        self._guard(self._step, phase_name, step)
        return not self.cancelled

    def phase_finish(self, phase_name):
        self._guard(self._finish, phase_name)

    # -- what they do ---------------------------------------------------------------------------
    def _guard(self, fn, *args):
        try:
            fn(*args)
        except KeyboardInterrupt:
            self.cancelled = True
        except BaseException as e:  # noqa: BLE001 (kept: TensorRT's bindings would print it and drop it)
            self.cancelled = True
            if self.error is None:
                self.error = e

    def _start(self, name, parent, num_steps):
        name = str(name)
        parent = str(parent) if parent is not None and str(parent) in self.phases else None
        self.phases[name] = {"parent": parent, "steps": 0, "num_steps": int(num_steps), "start": self.clock()}
        if parent is None:
            self._line(f"{PREFIX}{name}")
        self._running(force=self.tty)

    def _step(self, name, step):
        p = self.phases.get(str(name))
        if p is not None:
            p["steps"] = int(step)
        self._running()

    def _finish(self, name):
        p = self.phases.pop(str(name), None)
        if p is None:
            return
        # a phase that ends takes its unfinished descendants with it (TensorRT finishes them first); phases are kept
        # in start order, so one pass finds the children of children
        gone = {str(name)}
        for k in list(self.phases):
            if self.phases[k]["parent"] in gone:
                gone.add(k)
                del self.phases[k]
        if p["parent"] is None:
            self._line(f"{PREFIX}{name}: done in {seconds_text(self.clock() - p['start'])}")
        else:
            self._running(force=self.tty)

    def _path(self) -> str:
        """The innermost running phase and its ancestors: `Building engine > Tactic selection 12/40 (1 min 05 s)`."""
        if not self.phases:
            return ""
        name = next(reversed(self.phases))
        chain = []
        while name is not None:
            chain.append(name)
            name = self.phases[name]["parent"]
        inner = self.phases[chain[0]]
        top = self.phases[chain[-1]]
        steps = f" {inner['steps']}/{inner['num_steps']}" if inner["num_steps"] > 0 else ""
        return f"{PREFIX}{' > '.join(reversed(chain))}{steps} ({seconds_text(self.clock() - top['start'])})"

    def _running(self, force: bool = False):
        now = self.clock()
        every = TTY_INTERVAL_S if self.tty else LOG_INTERVAL_S
        if self._last is None:
            self._last = now  # the first line comes an interval after the build starts (short builds stay quiet)
        if not (force or now - self._last >= every):
            return
        self._last = now
        text = self._path()
        if not self.tty:
            if text:
                self.stream.write(text + "\n")
                self.stream.flush()
            return
        width = _columns(self.stream) - 1
        text = text if len(text) <= width else text[:max(0, width - 3)] + "..."
        self.stream.write("\r" + text.ljust(self._drawn))  # spaces over the rest of a longer earlier line
        self.stream.flush()
        self._drawn = len(text)

    def _line(self, text: str):
        """A line that stays (over the running line, if one is drawn)."""
        self.close()
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self):
        """Clear the running line (before a line that stays, and once the build returned)."""
        if self.tty and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0

    def raise_pending(self):
        """After TensorRT returned: an error a callback kept, else KeyboardInterrupt for a cancelled build."""
        if self.error is not None:
            raise self.error
        if self.cancelled:
            raise KeyboardInterrupt


def _columns(stream) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 100


def monitor_class(trt):
    """A subclass of `trt.IProgressMonitor` that hands TensorRT's calls to a BuildProgress, or None where this
    TensorRT has no progress monitor."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):
        def __init__(self, progress: BuildProgress):
            super().__init__()  # pybind11: the C++ side exists only once the base __init__ ran
            self.progress = progress

        def phase_start(self, phase_name, parent_phase, num_steps):
            self.progress.phase_start(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            return self.progress.step_complete(phase_name, step)

        def phase_finish(self, phase_name):
            self.progress.phase_finish(phase_name)

    return Monitor


def attach(trt, config, stream: Optional[TextIO]) -> Optional[BuildProgress]:
    """Show the build's progress on `stream`: a monitor set on the builder config (None: no stream, or a TensorRT
    without IProgressMonitor). Keep what it returns until the build returned (it holds the monitor TensorRT calls)."""
    if stream is None:
        return None
    cls = monitor_class(trt)
    if cls is None:
        return None
    progress = BuildProgress(stream)
    progress.monitor = cls(progress)
    config.progress_monitor = progress.monitor
    return progress


def finish(progress: Optional[BuildProgress]) -> None:
    """After build_serialized_network: clear the running line; raise what a callback kept, or KeyboardInterrupt if
    the build was cancelled."""
    if progress is None:
        return
    progress.close()
    progress.raise_pending()
