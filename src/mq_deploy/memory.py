"""Give freed memory back to the operating system between the big steps of a compile.

Graph protos and onnxruntime sessions of a 130m-shape model are ~0.5 GB each; after they are dropped,
glibc keeps the pages (fragmented arenas) and the process's resident size only grows. `release()`
collects garbage and asks glibc to trim its heap (a no-op elsewhere)."""

from __future__ import annotations

import ctypes
import gc
import sys


def release() -> None:
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
