"""Ctrl-C and SIGTERM for the CLI, including while TensorRT calls back into Python.

`mq-deploy` turns SIGINT into KeyboardInterrupt and SIGTERM into `Terminated` (a KeyboardInterrupt), so that one
clean-up serves both (`cli.main`). One case needs care: TensorRT calls mq-deploy's logger (`trt.py`,
`_stderr_logger`) from C++ for every message, also on the main thread (parsing, deserializing, running an engine).
Python runs a signal handler at the next bytecode of the main thread, which can be the first line of that callback,
before any `try` in it; TensorRT's bindings then print the exception and drop it, and the Ctrl-C is lost. So the
handler looks at the Python stack it interrupts: inside such a callback (code registered with `defer_in`) it keeps
the exception in `PENDING` instead, and `raise_pending()` raises it once TensorRT has returned (after the TensorRT
calls that log on the main thread, and at the end of the command at the latest). `deferred()` holds both signals
back for a few system calls that must not be cut in half (the swap of an OUTDIR).
"""
from __future__ import annotations

import contextlib
import signal
import threading

from .errors import Terminated

PENDING: list = []  # a KeyboardInterrupt / Terminated kept while TensorRT was calling back (raise_pending)
_DEFER: set = set()  # code objects of callbacks that C++ calls (a signal there is kept, not raised)


def defer_in(fn):
    """Register `fn` (a function TensorRT calls from C++) so that a signal landing in it is kept for later."""
    _DEFER.add(getattr(fn, "__code__", None))
    return fn


def _inside_callback(frame) -> bool:
    while frame is not None:
        if frame.f_code in _DEFER:
            return True
        frame = frame.f_back
    return False


def _handler(signum, frame):
    exc = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second SIGTERM does not cut the clean-up short
    if _inside_callback(frame):
        if not PENDING:
            PENDING.append(exc)
        return
    raise exc


def raise_pending() -> None:
    """Raise the Ctrl-C / SIGTERM that arrived while TensorRT was calling back, if one did."""
    if PENDING:
        exc = PENDING[0]
        PENDING.clear()
        raise exc


class installed:
    """`with installed():` SIGINT and SIGTERM handled by `_handler` in the main thread, the previous handlers back
    afterwards. A signal the process inherited as ignored (`trap '' TERM`, a background job's SIGINT) stays ignored,
    and a handler set outside Python (getsignal None) is left alone."""

    def __enter__(self):
        self.prev = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                h = signal.getsignal(s)
                if h is not None and h is not signal.SIG_IGN:
                    self.prev[s] = h
                    signal.signal(s, _handler)
        PENDING.clear()
        return self

    def __exit__(self, *exc):
        for s, h in self.prev.items():
            signal.signal(s, h)
        return False


@contextlib.contextmanager
def deferred():
    """Ctrl-C and SIGTERM held back (in the main thread) until the block is done, then delivered to the handlers they
    were meant for: for the few system calls that swap an output into place, which must not stop half-way."""
    sigs = (signal.SIGINT, signal.SIGTERM)
    prev = {s: signal.getsignal(s) for s in sigs} if threading.current_thread() is threading.main_thread() else {}
    if any(h is None for h in prev.values()):  # a handler from outside Python: not ours to swap
        prev = {}
    got = []
    for s in prev:
        signal.signal(s, lambda n, f: got.append(n))
    try:
        yield
    finally:
        for s, h in prev.items():
            signal.signal(s, h)
        for n in got:
            signal.raise_signal(n)
