"""Atomic output directories: everything is written to a temporary sibling and renamed at the end,
so a failed or interrupted compile never leaves a partial OUTDIR (and never half-replaces an old one)."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .errors import UserError

MARKER = "manifest.json"  # a directory holding this was written by mq-deploy and may be replaced
FORMAT = "mq-deploy/1"  # manifest.json's "format": what this mq-deploy writes and reads


def read_manifest(out_dir: str | Path) -> dict:
    """OUTDIR/manifest.json as a dict; a UserError, one line, when it is missing, not JSON, or of another format than
    this mq-deploy reads."""
    out = Path(out_dir)
    path = out / MARKER
    if not path.is_file():
        raise UserError(f"{out} has no {MARKER}: copy it with the graphs (it says whether the model is quantized and "
                        "what it needs), or pass an `mq-deploy compile` output directory")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{path} is not a manifest of `mq-deploy compile` (a JSON {type(manifest).__name__}, "
                        "not an object)")
    fmt = manifest.get("format")
    if fmt != FORMAT:
        what = f"format {fmt!r}" if fmt is not None else "no \"format\""
        raise UserError(f"{path} has {what}; this mq-deploy reads {FORMAT!r}: compile the checkpoint again with "
                        "this version (`mq-deploy compile`)")
    return manifest


def check_target(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file() and not force:
        raise UserError(f"output directory {out_dir} is not empty and was not written by mq-deploy; "
                        "choose another -o or pass --force to replace it")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: there
        return True
    return True


def remove_leftovers(target: Path) -> list[str]:
    """Remove `.NAME.tmp-PID-*` / `.NAME.old-PID` beside `target` that a killed mq-deploy left (SIGKILL, the OOM
    killer, a power cut: no clean-up ran), i.e. those whose process is gone; the names removed. Another run's live
    temporaries, and names without a pid (earlier versions), are left."""
    parent, name = target.parent, target.name
    gone = []
    for p in list(parent.glob(f".{glob.escape(name)}.tmp-*")) + list(parent.glob(f".{glob.escape(name)}.old-*")):
        m = re.fullmatch(rf"\.{re.escape(name)}\.(?:tmp|old)-(\d+)(?:-.*)?", p.name)
        if m is None or _alive(int(m.group(1))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        gone.append(p.name)
    return gone


def check_writable(path: str | Path, what: str) -> None:
    """`path`'s folder made and written to once (a file tried there and removed), so that an output that cannot be
    written is one line before long work rather than a traceback after it; `what` names it in the message."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.write-check-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {e.strerror or e}") from None


def atomic_write_bytes(path: str | Path, data) -> None:
    """Write to a temporary sibling and rename: readers never see a partial engine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes it private; the result should look like open(..., "wb")
        with os.fdopen(fd, "wb") as fh:
            fh.write(memoryview(data))
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the rename makes it the file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, force: bool = False, warn: Callable[[str], None] = lambda s: None):
    """Yield a temporary directory; on success it replaces `out_dir` (`warn` is told the files of the old one the new
    one does not have, such as engines built from it, which go with it), on failure it is removed."""
    out_dir = Path(out_dir).expanduser()
    check_target(out_dir, force)
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        left = remove_leftovers(parent / out_dir.name)
        if left:
            warn(f"removed what killed runs left beside {out_dir}: {', '.join(sorted(left))}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should look like a mkdir
    except OSError as e:
        blocker = next((a for a in out_dir.absolute().parents if a.exists() and not a.is_dir()), None)
        why = f"{blocker} is a file, not a directory" if blocker is not None else (e.strerror or str(e))
        raise UserError(f"cannot write output directory {out_dir}: {why}") from None
    try:
        yield tmp
        old = None
        gone = sorted(set(os.listdir(out_dir)) - set(os.listdir(tmp))) if out_dir.is_dir() else []
        if gone:
            shown = ", ".join(gone[:6]) + (f" and {len(gone) - 6} more" if len(gone) > 6 else "")
            warn(f"replacing {out_dir} removes {shown}, which this compile did not write (engines and files made "
                 "from the old graphs: build them again)")
        if out_dir.exists():
            old = parent / f".{out_dir.name}.old-{os.getpid()}"
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def missing_file(out_dir: str | Path, manifest: dict, name: str, what: str = "") -> UserError:
    """The error for OUTDIR/name missing: if manifest.json lists it, the compile wrote it and it was not copied along;
    otherwise the OUTDIR comes from a compile (of another version) that did not write it. `what`: what the file is."""
    out = Path(out_dir)
    about = f" ({what})" if what else ""
    if name in (manifest.get("files") or {}):
        return UserError(f"{out} has no {name}{about}, which its manifest.json lists: copy it from the directory "
                         "`mq-deploy compile` wrote (with the other files its manifest lists)")
    return UserError(f"{out} has no {name}{about}, and its manifest.json does not list it: compile the checkpoint "
                     f"again with this mq-deploy (`mq-deploy compile ... -o {out}`)")
