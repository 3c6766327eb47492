"""Atomic output directories: everything is written to a temporary sibling and renamed at the end,
so a failed or interrupted compile never leaves a partial OUTDIR (and never half-replaces an old one)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

from . import signals
from .errors import UserError

MARKER = "manifest.json"  # a directory holding this was written by mq-deploy and may be replaced
FORMAT = "mq-deploy/1"  # manifest.json's "format": what this mq-deploy writes and reads


HASH_LOG_BYTES = 100_000_000  # eval and lint say that they hash an OUTDIR's files from this size on (~0.1 s below)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_GRAPH_SUFFIXES = (".onnx", ".bin", ".data")  # the graphs and their weights (weights.bin, a large graph's .data)


def graph_files(manifest: dict, graphs: Optional[Sequence[str]] = None) -> list[str]:
    """The files manifest.json lists that hold graphs or their weights; with `graphs` (names like "model.onnx"), only
    those and the weights they share (weights.bin) or keep beside them (NAME.data)."""
    names = [n for n in (manifest.get("files") or {}) if n.endswith(_GRAPH_SUFFIXES)]
    if graphs is None:
        return names
    return [n for n in names if n in graphs or not n.endswith(".onnx") and
            (n == "weights.bin" or any(n.startswith(g + ".") for g in graphs))]


def check_files(out_dir: str | Path, manifest: dict, names: Optional[Sequence[str]] = None, hashes: bool = False,
                log: Callable[[str], None] = lambda s: None, log_over: int = 0) -> None:
    """A UserError when a graph or weights file OUTDIR holds (`names`, default graph_files) differs from what the
    compile wrote by its manifest: its size (a copy that stopped), and with `hashes` its sha256 (a corrupted copy).
    Files not there are left to the command that needs them (missing_file); the tokenizer, calib.* and report.html
    are not checked (no graph reads them). `log` says the hashing where it reads at least `log_over` bytes."""
    out = Path(out_dir)
    files = manifest.get("files") or {}
    listed = [(name, files[name]) for name in (graph_files(manifest) if names is None else names)
              if isinstance(files.get(name), dict) and "bytes" in files[name] and (out / name).is_file()]
    again = "copy it again from the directory `mq-deploy compile` wrote"
    for name, info in listed:
        size = (out / name).stat().st_size
        if size != info["bytes"]:
            raise UserError(f"{out / name} has {size} bytes, its manifest.json {info['bytes']}: a partial or changed "
                            f"copy; {again}")
    if hashes:
        refuse_linked_weights(out, [name for name, _ in listed if not name.endswith(".onnx")])  # (before hashing)
        todo = [(name, info) for name, info in listed if info.get("sha256")]
        if todo and sum(i["bytes"] for _, i in todo) >= log_over:  # (none: e.g. a Vim's decode step, nothing to say)
            log(f"checking {', '.join(n for n, _ in todo)} ({sum(i['bytes'] for _, i in todo) / 1e6:.1f} MB) against "
                "manifest.json's sha256")
        for name, info in todo:
            if sha256_file(out / name) != info["sha256"]:
                raise UserError(f"{out / name} differs from the file `mq-deploy compile` wrote (its sha256 is not the "
                                f"one manifest.json lists): a corrupted or changed copy; {again}")


def refuse_linked_weights(folder: Path, names: Sequence[str]) -> None:
    """A UserError when one of a graph's external-data files is a symbolic link: onnx refuses to read those (its rule
    against weights outside the graph's directory), so say it plainly and what to do, before any work."""
    linked = [Path(folder) / n for n in names if (Path(folder) / n).is_symlink()]
    if linked:
        f = linked[0]
        raise UserError(f"{f} is a symbolic link (to {os.readlink(f)}), which onnx does not read external weights "
                        f"through: put the file itself there (e.g. `cp --remove-destination \"$(readlink -f {f})\" {f}`)")


_OBJECTS = ("model", "recipe", "calibration", "quantization", "versions", "io", "self_check", "stateful", "files")


def _json_type(v) -> str:
    return {str: "string", list: "list", dict: "object", bool: "boolean", int: "number",
            float: "number"}.get(type(v), type(v).__name__)


def read_manifest(out_dir: str | Path) -> dict:
    """OUTDIR/manifest.json as a dict; a UserError, one line, when it is missing, not JSON, or of another format than
    this mq-deploy reads, or when a graph or weights file it lists has another size than the compile wrote
    (check_files)."""
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
    shapes = {**{k: dict for k in _OBJECTS}, "plugins": list}
    for key, kind in shapes.items():
        v = manifest.get(key)
        if v is not None and not isinstance(v, kind):
            raise UserError(f"{path}: \"{key}\" is a JSON {_json_type(v)}, not {'an object' if kind is dict else 'a list'}"
                            ": an edited manifest; copy manifest.json again from the directory `mq-deploy compile` "
                            "wrote")
    bad = next((n for n, v in (manifest.get("files") or {}).items() if not isinstance(v, dict)), None)
    if bad is not None:
        raise UserError(f"{path}: files[{json.dumps(bad)}] is not an object: an edited manifest; copy manifest.json "
                        "again from the directory `mq-deploy compile` wrote")
    check_files(out, manifest)
    return manifest


def output_dir(out_dir: str | Path) -> Path:
    """An OUTDIR as the swap at the end of a compile can replace it: `~` expanded, a symbolic link replaced by what it
    points to (the link then names the new OUTDIR); a UserError for an empty path and for the current directory or
    one holding it (a directory cannot be swapped while it is a process's working directory)."""
    if not str(out_dir).strip():
        raise UserError("-o needs a directory path (it is empty)")
    out = Path(out_dir).expanduser()
    for i, part in enumerate(out.parts):  # `a/../b` with no folder a: the swap's rename would fail after the work
        if part == ".." and i > 0 and not Path(*out.parts[:i]).is_dir():
            raise UserError(f"cannot use output directory {out_dir}: {Path(*out.parts[:i])} is not a directory (the "
                            "path goes back out of it with ..)")
    try:
        os.stat(out)  # a loop of symbolic links: ELOOP (resolve() said RuntimeError before Python 3.13, nothing since)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UserError(f"cannot use output directory {out_dir}: {e.strerror}") from None
    try:
        if out.is_symlink():
            out = out.resolve(strict=False)
        real, here = out.resolve(), Path.cwd().resolve()
    except (RuntimeError, OSError) as e:  # (a loop made between the two checks)
        raise UserError(f"cannot use output directory {out_dir}: {e}") from None
    if real == here or real in here.parents:
        raise UserError(f"output directory {out_dir} is the current directory{' (or holds it)' if real != here else ''}"
                        ", which the compile cannot replace: pass a new folder, e.g. -o out")
    return out


def written_by_us(folder: str | Path) -> bool:
    """Whether `folder` holds a manifest.json of `mq-deploy compile` (a JSON object whose "format" is "mq-deploy/…", of
    any version): an OUTDIR that a compile may replace without --force. A manifest.json of anything else is not one."""
    try:
        manifest = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and str(manifest.get("format", "")).startswith("mq-deploy/")


def check_target(out_dir: Path, force: bool) -> None:
    out_dir = output_dir(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output path {out_dir} exists and is not a directory")
    if not out_dir.is_dir():
        return
    try:
        empty = not any(out_dir.iterdir())
    except OSError as e:
        raise UserError(f"cannot read output directory {out_dir}: {e.strerror or e}") from None
    if not empty and not os.access(out_dir, os.W_OK | os.X_OK):  # (the swap could not remove its files)
        if os.statvfs(out_dir).f_flag & os.ST_RDONLY:
            why, fix = "is on a read-only filesystem", "choose another -o"
        elif out_dir.stat().st_uid != os.geteuid():
            why, fix = f"is not writable by you (owner uid {out_dir.stat().st_uid})", "choose another -o"
        else:
            why, fix = "is read-only", f"make it writable (chmod u+w {out_dir}) or choose another -o"
        raise UserError(f"output directory {out_dir} {why}, and the compile replaces it: {fix}")
    if not empty and not written_by_us(out_dir) and not force:
        mine = (out_dir / MARKER).is_file()
        raise UserError(f"output directory {out_dir} is not empty and was not written by mq-deploy"
                        f"{' (its manifest.json is not one of mq-deploy compile, or cannot be read)' if mine else ''}"
                        "; choose another -o or pass --force to replace it")


def external_files(model) -> list[str]:
    """The external-data files a graph's initializers name (none: its weights are inside it)."""
    from onnx.external_data_helper import uses_external_data

    return sorted({e.value for t in model.graph.initializer if uses_external_data(t)
                   for e in t.external_data if e.key == "location"})


def read_onnx(path: str | Path, weights: bool = True, require_weights: bool = True):
    """The ONNX graph at `path` (a UserError when it is missing or unreadable), with its external data (weights.bin
    beside it) when `weights`. A missing external-data file is named, with what to do, before onnx's own error (unless
    not `require_weights`: the graph alone is read)."""
    import onnx

    p = Path(path)
    if not p.is_file():
        raise UserError(f"ONNX file not found: {p}")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - onnx's parse errors have no common class
        raise UserError(f"could not read ONNX file {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    files = external_files(model)
    missing = [f for f in files if not (p.parent / f).is_file()]
    if missing and (weights or require_weights):
        one = len(missing) == 1
        where = ("from the directory `mq-deploy compile` wrote (with the other files its manifest.json lists)"
                 if (p.parent / MARKER).is_file() else "next to the graph")
        raise UserError(f"{p} keeps its weights in {', '.join(missing)} beside it, which {'is' if one else 'are'} "
                        f"missing: copy {'it' if one else 'them'} {where}")
    if weights and files:
        from onnx.external_data_helper import load_external_data_for_model

        refuse_linked_weights(p.parent, files)

        try:
            load_external_data_for_model(model, str(p.parent))
        except Exception as e:  # noqa: BLE001 - a truncated or unreadable weights file
            raise UserError(f"could not read the weights of {p} ({', '.join(files)}): "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return model


def check_external_sizes(model, path: Path) -> None:
    """Every external initializer of the graph at `path` lies within its file beside it (sizes only, nothing is read):
    a truncated weights file is one UserError here, before onnxruntime (which maps the file) would fail on it."""
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    sizes: dict[str, int] = {}
    for t in model.graph.initializer:
        if not uses_external_data(t):
            continue
        info = ExternalDataInfo(t)
        f = path.parent / info.location
        if info.location not in sizes:
            try:
                sizes[info.location] = f.stat().st_size
            except OSError as e:
                raise UserError(f"could not read the weights of {path} ({info.location}): {e.strerror or e}") from None
        end = info.offset + (info.length or 0)
        if end > sizes[info.location]:
            raise UserError(f"could not read the weights of {path} ({info.location}): tensor '{t.name}' lies at bytes "
                            f"{info.offset}-{end} of it, which has {sizes[info.location]} (a truncated or other copy): "
                            "copy it again from the directory `mq-deploy compile` wrote")


def check_inputs_outside(out_dir: str | Path, inputs: dict[str, Optional[str | Path]]) -> None:
    """A UserError when OUTDIR is one of the command's inputs ({what: path}) or a folder holding one: the swap at the
    end would delete what the command read (a checkpoint, the calibration text). Paths that do not exist are left to
    the checks of those inputs."""
    out = output_dir(out_dir).resolve()
    for what, path in inputs.items():
        if path is None or not Path(path).expanduser().exists():
            continue
        p = Path(path).expanduser().resolve()
        if p == out or out in p.parents:
            raise UserError(f"output directory {out_dir} {'is' if p == out else 'holds'} the {what} ({path}), which "
                            "writing it would delete: choose another -o")


LOCK = ".mq-deploy.lock"  # inside a temporary OUTDIR: held (flock) by the run that writes it, for as long as it lives


def _hold(fd: int, wait: bool = False) -> bool:
    """flock `fd` (without waiting unless `wait`): True if we now hold it (no live process does). False also where
    the filesystem has no locks (some FUSE and network mounts): there a temporary is never taken for a leftover."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


def remove_leftovers(target: Path) -> list[str]:
    """Remove the temporaries `.NAME.tmp-*` beside `target` that a killed run left (SIGKILL, the OOM killer, a power
    cut: no clean-up ran); the names removed. A temporary is a killed run's when nobody holds its lock: the kernel
    drops a dead process's flock, whichever host process, container or PID namespace it was, so a live run's (which
    holds it) is never touched. A temporary OUTDIR without a lock file (an earlier version's, or a run in its first
    instant) is left. (A replaced OUTDIR a killed run left, `.NAME.old-*`, is not removed: it may be the only copy of
    the old OUTDIR; see old_leftovers.)"""
    parent, name = target.parent, target.name
    gone = []
    for p in parent.glob(f".{glob.escape(name)}.tmp-*"):
        if p.is_symlink() or not re.fullmatch(rf"\.{re.escape(name)}\.tmp-[0-9]+-[A-Za-z0-9_]+", p.name):
            continue
        lock = p / LOCK if p.is_dir() else p  # a temporary file (engine, compare.json) is its own lock
        try:  # (read-write where it can: NFS emulates flock with fcntl locks, which want a writable descriptor)
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            try:
                fd = os.open(lock, os.O_RDONLY)
            except OSError:
                continue
        try:
            if not _hold(fd):
                continue
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
        finally:
            os.close(fd)
        if not p.exists():
            gone.append(p.name)
    return gone


def old_leftovers(target: Path) -> list[Path]:
    """Replaced OUTDIRs beside `target` that a run killed during its swap or the removal after it left
    (`.NAME.old-PID-XXXXXXXX`, mkdtemp's name, holding an mq-deploy manifest): named, never removed here (with
    `target` missing it is the only copy of the old OUTDIR, and a live run's lasts an instant)."""
    return sorted(p for p in target.parent.glob(f".{glob.escape(target.name)}.old-*")
                  if re.fullmatch(rf"\.{re.escape(target.name)}\.old-[0-9]+-[a-z0-9_]{{8}}", p.name)
                  and not p.is_symlink() and p.is_dir() and written_by_us(p))


def _remove_replaced(old: Path) -> None:
    """Remove an OUTDIR the swap replaced, its manifest.json last: what a kill that nothing can hold back (SIGKILL,
    the OOM killer) leaves of it still has its manifest, so that the next run names it (old_leftovers)."""
    with contextlib.suppress(OSError):  # (as rmtree's ignore_errors: what cannot go is said by the caller)
        for p in old.iterdir():
            if p.name == MARKER:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(p)
    shutil.rmtree(old, ignore_errors=True)


def check_writable(path: str | Path, what: str) -> None:
    """Whether `path` can be written, before long work: a file tried (and removed) in its folder, or in the nearest
    folder above it that exists (nothing is created); a UserError, one line, if not. `what` names it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory")
    folder = path.absolute().parent
    while not folder.exists():
        if folder.is_symlink():  # (its folders could not be made: the work's output would fail after it)
            raise UserError(f"cannot write {what} {path}: {folder} is a symbolic link to nothing (its target is "
                            "missing, or a loop)")
        folder = folder.parent
    if not folder.is_dir():
        raise UserError(f"cannot write {what} {path}: {folder} is a file, not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mq-deploy.write-check-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {e.strerror or e}") from None


def atomic_write_bytes(path: str | Path, data) -> None:
    """Write to a temporary sibling (locked while written: `remove_leftovers`) and rename: readers never see a
    partial engine."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
    try:
        _hold(fd, wait=True)
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes it private; the result should look like open(..., "wb")
        with os.fdopen(fd, "wb") as fh:
            fh.write(memoryview(data))
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the rename makes it the file
            os.replace(tmp, path)  # (still locked: the lock goes with the file descriptor)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_dir(out_dir: str | Path, force: bool = False, warn: Callable[[str], None] = lambda s: None):
    """Yield a temporary directory; on success it replaces `out_dir` (`warn` is told the files of the old one the new
    one does not have, such as engines built from it, which go with it), on failure it is removed. The temporary
    holds a lock for as long as this runs, so that a later run can tell a killed run's leftover from a live one's
    (`remove_leftovers`, which `warn` is told about)."""
    out_dir = output_dir(out_dir)
    check_target(out_dir, force)
    parent = out_dir.resolve().parent
    lock_fd = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        left = remove_leftovers(parent / out_dir.name)
        if left:
            warn(f"removed what killed runs left beside {out_dir}: {', '.join(sorted(left))}")
        for old in old_leftovers(parent / out_dir.name):
            only = "" if out_dir.exists() else f" ({out_dir} is missing: this may be its only copy)"
            warn(f"{old} is an OUTDIR that a killed run replaced{only}; remove it by hand once it is not needed")
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=parent))
        lock_fd = os.open(tmp / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        _hold(lock_fd, wait=True)  # (a new file: nobody else holds it)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should look like a mkdir
    except OSError as e:
        blocker = next((a for a in out_dir.absolute().parents if a.exists() and not a.is_dir()), None)
        why = f"{blocker} is a file, not a directory" if blocker is not None else (e.strerror or str(e))
        raise UserError(f"cannot write output directory {out_dir}: {why}") from None
    try:
        yield tmp
        gone = sorted(set(os.listdir(out_dir)) - set(os.listdir(tmp)) - {LOCK}) if out_dir.is_dir() else []
        if gone:
            shown = ", ".join(gone[:6]) + (f" and {len(gone) - 6} more" if len(gone) > 6 else "")
            warn(f"replacing {out_dir} removes {shown}, which this compile did not write (engines and files made "
                 "from the old graphs: build them again)")
        old, swapped = None, False
        try:
            with signals.deferred():  # the old OUTDIR out of the way and the new one in: both, or neither
                os.unlink(tmp / LOCK)  # (the lock stays held through the descriptor until the swap is done)
                if out_dir.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-{os.getpid()}-", dir=parent))
                    try:
                        os.replace(out_dir, old)
                    except BaseException:
                        old.rmdir()  # (still the empty placeholder)
                        old = None
                        raise
                try:
                    os.replace(tmp, out_dir)
                    swapped = True
                except BaseException:
                    if old is not None:
                        os.replace(old, out_dir)  # the old OUTDIR back
                        old = None
                    raise
        except KeyboardInterrupt:  # held back during the swap, raised at its end
            if swapped:
                warn(f"{out_dir} was written in full before the interrupt")
            raise
        finally:  # (also when a Ctrl-C held back during the swap is raised at its end: the new OUTDIR is in place)
            if swapped and old is not None:
                try:
                    with signals.deferred():  # (a Ctrl-C now is raised once it is gone: not half of it left)
                        _remove_replaced(old)
                finally:
                    if old.exists():  # e.g. read-only files of another user inside it
                        warn(f"the replaced {out_dir} could not be removed completely; what is left is {old}: "
                             "remove it by hand")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def eval_graph(target: str | Path, input_name: str, other_family: UserError,
               log: Callable[[str], None] = lambda s: None) -> Optional[Path]:
    """The graph `eval` runs of a compile OUTDIR, its model.portable.onnx, after its manifest's checks (read_manifest,
    and the sha256 of that graph and its weights: a same-size changed copy would give a score, a wrong one; hashing
    takes seconds against an evaluation's minutes; `log` says it); None where `target` is no OUTDIR. Raises
    `other_family` for an OUTDIR whose model takes another input than `input_name`, and a UserError for a missing
    graph, or graphs copied without their manifest.json."""
    from .trt import manifest_input

    p = Path(target)
    if not p.is_dir():
        return None
    if (p / MARKER).is_file():
        manifest = read_manifest(p)
        if manifest_input(manifest)[0] != input_name:
            raise other_family
        graph = p / "model.portable.onnx"
        if not graph.is_file():
            raise missing_file(p, manifest, graph.name, "the graph eval runs")
        check_files(p, manifest, graph_files(manifest, [graph.name]), hashes=True, log=log, log_over=HASH_LOG_BYTES)
        return graph
    graphs = [g for g in ("model.portable.onnx", "model.onnx") if (p / g).is_file()]
    if graphs and not (p / "config.json").is_file():  # (not a checkpoint: an OUTDIR's copy)
        raise UserError(f"{p} holds {graphs[0]} but no manifest.json: copy it from the directory `mq-deploy compile` "
                        f"wrote, or evaluate the graph itself ({p / graphs[0]})")
    return None


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
