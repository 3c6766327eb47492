"""Progress of a TensorRT engine build (`mq-deploy build`), and Ctrl-C during it.

An engine build takes minutes on a Jetson and says nothing at TensorRT's WARNING log level, so `build` shows
TensorRT's own build phases (its IProgressMonitor): a line when a top-level phase starts and when it ends (with its
time); in between, on a terminal, one line redrawn in place with the innermost running phase and its completed steps,
and in a log (not a terminal) that line at most every `LOG_INTERVAL_S` seconds.

What TensorRT (10.3 and later) does with the monitor, from its headers and Python bindings:
- `phase_start(name, parent, num_steps)`: parent is None for a top-level phase; `step_complete(name, step)` with
  step in [0, num_steps), returning False cancels the build; `phase_finish(name)` also after a cancel.
- The callbacks may come from several of TensorRT's threads (the monitor must be thread-safe), and
  `build_serialized_network` releases the GIL.
- An exception out of a callback is printed by the bindings (`[ERROR] Exception caught in step_complete()`) and
  lost; from step_complete it also cancels the build.

Hence `run_build`: the build runs in a worker thread while the main thread waits, so that Ctrl-C (which Python
delivers to the main thread only) is seen at once whatever thread TensorRT calls back from. The first Ctrl-C asks
TensorRT to stop at its next step (step_complete returns False) and the build then ends in KeyboardInterrupt; a
second one, or the first where there is no monitor to cancel through, exits the process at once. Nothing has been
written then: the engine is written after the build returns. The callbacks keep their own exceptions: a failure
to show progress stops the display and is reported after the build, and never cancels it.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable, Optional, TextIO

from .errors import Terminated

LOG_INTERVAL_S = 30.0  # in a log: the running phase's line at most this often
TTY_INTERVAL_S = 0.1  # on a terminal: redraws at most this often
WAIT_S = 0.2  # the main thread's wait between looks for Ctrl-C
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
    (`monitor_class`'s subclass of TensorRT's IProgressMonitor hands its calls here). `stream` None: nothing is
    shown, the monitor only cancels."""

    def __init__(self, stream: Optional[TextIO], tty: Optional[bool] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.stream, self.clock = stream, clock
        self.tty = bool(getattr(stream, "isatty", lambda: False)()) if tty is None else tty
        self.phases: dict[str, dict] = {}  # running phases in start order: parent, steps, num_steps, start
        self.cancelled = False  # Ctrl-C: TensorRT is asked to stop at its next step
        self.display_error: Optional[BaseException] = None  # what stopped the display
        self._lock = threading.RLock()  # TensorRT may call (and log) from several threads
        self._last = None  # when the running line was last written
        self._drawn = 0  # characters of the running line now on the terminal
        self.monitor = None  # the TensorRT object that calls this one (`attach`)

    # -- IProgressMonitor ----------------------------------------------------------------------
    def phase_start(self, phase_name, parent_phase, num_steps):
        self._guard(self._start, phase_name, parent_phase, num_steps)

    def step_complete(self, phase_name, step):
        self._guard(self._step, phase_name, step)
        return not self.cancelled

    def phase_finish(self, phase_name):
        self._guard(self._finish, phase_name)

    def cancel(self):
        self.cancelled = True

    # -- what they do ---------------------------------------------------------------------------
    def _guard(self, fn, *args):
        with self._lock:
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 (TensorRT's bindings would print it and drop it)
                if self.display_error is None:
                    self.display_error = e
                self.stream = None  # stop showing; the build goes on

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
            p["steps"] = int(step) + 1  # TensorRT counts steps from 0: step k done is k + 1 of num_steps
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
            how = "cancelled after" if self.cancelled else "done in"
            self._line(f"{PREFIX}{name}: {how} {seconds_text(self.clock() - p['start'])}")
        else:
            self._running(force=self.tty)

    def _path(self) -> str:
        """The innermost running phase and its ancestors: `Building engine > Tactic selection 12/40 (1 min 05 s)`."""
        if not self.phases:
            return ""
        name = next(reversed(self.phases))
        chain = []
        while name in self.phases:
            chain.append(name)
            name = self.phases[name]["parent"]
        inner, top = self.phases[chain[0]], self.phases[chain[-1]]
        steps = f" {inner['steps']}/{inner['num_steps']}" if inner["num_steps"] > 0 else ""
        return f"{PREFIX}{' > '.join(reversed(chain))}{steps} ({seconds_text(self.clock() - top['start'])})"

    def _running(self, force: bool = False):
        if self.stream is None:
            return
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
        if self.stream is None:
            return
        self._clear()
        self.stream.write(text + "\n")
        self.stream.flush()

    def _clear(self):
        if self.stream is not None and self.tty and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
        self._drawn = 0

    def close(self):
        """Clear the running line (the build returned)."""
        self._guard(self._clear)


_ACTIVE: list = []  # [the BuildProgress of the build now running], whose running line a log line goes over


def log_line(text: str) -> None:
    """A line of TensorRT's log on stderr: over the running progress line where one is drawn (it is drawn again at
    the next step), whichever thread TensorRT logs from."""
    progress = _ACTIVE[0] if _ACTIVE else None
    if progress is not None:
        with progress._lock:
            if progress.stream is not None:
                try:
                    progress._clear()
                    progress.stream.write(text + "\n")
                    progress.stream.flush()
                    return
                except Exception:  # noqa: BLE001 (the display's stream failed: stderr below)
                    progress.stream = None
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


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
    """A monitor on the builder config, showing the build on `stream` (None: shown nowhere, but Ctrl-C still
    cancels through it); None where this TensorRT has no IProgressMonitor."""
    cls = monitor_class(trt)
    if cls is None:
        return None
    progress = BuildProgress(stream)
    progress.monitor = cls(progress)
    config.progress_monitor = progress.monitor  # (the property keeps the monitor alive as long as the config)
    _ACTIVE[:] = [progress]  # (until run_build returns)
    return progress


def _hard_exit(code: int):  # the second Ctrl-C (tests replace it)
    os._exit(code)


def run_build(build: Callable[[], object], progress: Optional[BuildProgress],
              warn: Callable[[str], None] = lambda s: None):
    """`build()` (TensorRT's build_serialized_network) in a worker thread, the main thread waiting for Ctrl-C (see
    the module's docstring); its result, or KeyboardInterrupt when the build was cancelled. `warn`: told when the
    progress display failed."""
    out: dict = {}
    finished = threading.Event()

    def work():
        try:
            out["engine"] = build()
        except BaseException as e:  # noqa: BLE001 (raised again in the main thread)
            out["error"] = e
        finally:
            finished.set()

    # (the builder takes the thread's current CUDA device: the default one, as in the main thread of this process.
    # The main thread waits on an Event, not Thread.join: a KeyboardInterrupt inside join(timeout) makes Python 3.11
    # mark the still-running thread as stopped.)
    worker = threading.Thread(target=work, name="tensorrt-build", daemon=True)
    started, stop = False, None
    try:
        while True:
            try:
                if not started:
                    started = True
                    worker.start()
                while not finished.wait(WAIT_S):
                    pass
                break
            except KeyboardInterrupt as e:  # (or Terminated, SIGTERM's: raised again as it came)
                stop = stop or e
                if progress is None or progress.cancelled:
                    term = isinstance(e, Terminated)
                    sys.stderr.write(f"\nmq-deploy: {'terminated' if term else 'interrupted'} (the TensorRT build did "
                                     "not stop; nothing was written)\n")
                    sys.stderr.flush()
                    _hard_exit(143 if term else 130)
                    raise
                progress.cancel()
                why = "terminated; " if isinstance(e, Terminated) else ""
                sys.stderr.write(f"\nmq-deploy: cancelling the TensorRT build at its next step ({why}Ctrl-C again to "
                                 "quit at once)\n")
                sys.stderr.flush()
    finally:
        _ACTIVE[:] = []  # (also when a second Ctrl-C leaves)
    if progress is not None:
        progress.close()
        if progress.display_error is not None:
            warn(f"the build's progress display stopped: {progress.display_error!r}")
    if "error" in out:
        raise out["error"]
    if progress is not None and progress.cancelled:
        raise stop or KeyboardInterrupt()
    return out.get("engine")
