"""How the CLI ends when the system stops it or the disk fails it: SIGTERM cleans up as Ctrl-C does (exit 143),
OS errors are one line (exit 1), a closed pipe ends quietly (exit 141), and what a killed run left (SIGKILL: no
clean-up could run) is removed by the next run into the same place."""

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mq_deploy import cli
from mq_deploy.outdir import LOCK, atomic_dir, atomic_write_bytes, remove_leftovers
from mq_deploy.signals import deferred


def test_sigterm_cleans_up_like_ctrl_c(tmp_path, monkeypatch, capsys, signals_as_a_terminal_gives_them):
    out = tmp_path / "out"
    seen = []

    def compile_then_sigterm(args):
        with atomic_dir(out) as tmp:
            (tmp / "weights.bin").write_bytes(b"x" * 1000)
            seen.extend(os.listdir(tmp_path))
            signal.raise_signal(signal.SIGTERM)  # `timeout`, `docker stop`, a batch system's limit
        return 0

    monkeypatch.setattr(cli, "cmd_compile", compile_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["compile", "--recipe", "fp32", "-o", str(out)]) == 143
    assert capsys.readouterr().err == "mq-deploy: terminated\n"
    assert any(n.startswith(".out.tmp-") for n in seen) and os.listdir(tmp_path) == []  # the temporary went
    assert signal.getsignal(signal.SIGTERM) is before  # main() put the handler back


def test_leftovers_of_killed_runs_removed(tmp_path):
    """A temporary whose lock nobody holds is a killed run's and goes; a held one (a live run's, in any process,
    container or PID namespace: the kernel keeps the lock) stays, as do look-alikes and lock-less directories."""
    import fcntl

    def tmpdir(name, lock=True):
        d = tmp_path / name
        d.mkdir()
        (d / "weights.bin").write_bytes(b"x")
        if lock:
            (d / LOCK).write_bytes(b"")
        return d

    dead = tmpdir(".out.tmp-4242-k3j2abcd")
    live = tmpdir(".out.tmp-1-zzzz0000")
    held = os.open(live / LOCK, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # another open file description: as another process's would be
    keep = [live, tmpdir(".out.tmp-7-nolock00", lock=False), tmpdir(".outx.tmp-5-abcdefgh"), tmpdir(".out.tmp-5"),
            tmpdir(".out.old-1-abcdefgh")]  # (a replaced OUTDIR of a live PID)
    engine_dead, engine_live = tmp_path / ".m.engine.tmp-8-q1w2e3r4", tmp_path / ".m.engine.tmp-9-a1s2d3f4"
    engine_dead.write_bytes(b"half an engine")
    engine_live.write_bytes(b"being written")
    held_file = os.open(engine_live, os.O_RDONLY)
    fcntl.flock(held_file, fcntl.LOCK_EX)
    try:
        warned = []
        with atomic_dir(tmp_path / "out", warn=warned.append) as tmp:
            assert (tmp / LOCK).is_file()  # held while the run lasts
            (tmp / "manifest.json").write_text("{}")
        assert warned == [f"removed what killed runs left beside {tmp_path / 'out'}: {dead.name}"]
        assert not dead.exists() and all(k.is_dir() for k in keep)
        assert sorted(os.listdir(tmp_path / "out")) == ["manifest.json"]  # the lock file is not part of the output
        atomic_write_bytes(tmp_path / "m.engine", b"ENGINE")
        assert not engine_dead.exists() and engine_live.exists() and (tmp_path / "m.engine").read_bytes() == b"ENGINE"
    finally:
        os.close(held)
        os.close(held_file)
    assert remove_leftovers(tmp_path / "out") == [live.name]  # its holder gone: now it is a leftover


def test_leftover_of_a_killed_process(tmp_path):
    """The real thing: a run in another process holds its temporary; SIGKILL it, and the next run removes it."""
    code = ("import sys, time; from mq_deploy.outdir import atomic_dir\n"
            "with atomic_dir(sys.argv[1]) as tmp:\n"
            "    print(tmp, flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "out")], stdout=subprocess.PIPE, text=True)
    try:
        tmp = Path(proc.stdout.readline().strip())
        assert tmp.is_dir() and remove_leftovers(tmp_path / "out") == []  # alive: left alone
    finally:
        proc.kill()
        proc.wait()
    assert tmp.is_dir() and remove_leftovers(tmp_path / "out") == [tmp.name] and not tmp.exists()


def test_the_swap_is_not_cut_in_half(signals_as_a_terminal_gives_them):
    """Ctrl-C or SIGTERM during the swap of an OUTDIR arrives after it."""
    done = []
    with pytest.raises(KeyboardInterrupt):
        with deferred():
            signal.raise_signal(signal.SIGINT)
            done.append("swap")
    assert done == ["swap"]


@pytest.mark.parametrize("exc,rc,err", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/weights.bin"), 1,
     "mq-deploy: error: [Errno 28] No space left on device: '/data/out/weights.bin' (MQ_DEPLOY_TRACEBACK=1 shows "
     "where)\n"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/x"), 1,
     "mq-deploy: error: [Errno 2] No such file or directory: '/data/x' (MQ_DEPLOY_TRACEBACK=1 shows where)\n"),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), 1,  # not stdout's (stdout is fine): an error like any other
     "mq-deploy: error: [Errno 32] Broken pipe (MQ_DEPLOY_TRACEBACK=1 shows where)\n"),
])
def test_os_errors_are_one_line(monkeypatch, capsys, exc, rc, err):
    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_lint", fail)
    assert cli.main(["lint", "x.onnx"]) == rc
    assert capsys.readouterr().err == err
    monkeypatch.setenv("MQ_DEPLOY_TRACEBACK", "1")  # for a bug report: the traceback
    with pytest.raises(type(exc)):
        cli.main(["lint", "x.onnx"])


def test_broken_pipe_of_a_real_run(tmp_path):
    """The program itself, its stdout closed by the reader: exit quietly, no traceback."""
    code = ("import sys; from mq_deploy import cli\n"
            "def loud(args):\n"
            "    for i in range(100000):\n"
            "        print('x' * 100)\n"
            "    return 0\n"
            "cli.cmd_lint = loud\n"
            "sys.argv = ['mq-deploy', 'lint', 'x.onnx']\n"
            "sys.exit(cli.main())\n")
    r = subprocess.run(f"{sys.executable} -c \"$CODE\" | head -c 10; echo \" rc=${{PIPESTATUS[0]}}\"", shell=True,
                       executable="/bin/bash", capture_output=True, text=True, env={**os.environ, "CODE": code})
    assert r.stdout == "x" * 10 + " rc=141\n" and r.stderr == "", (r.stdout[-40:], r.stderr)


def test_a_replaced_outdir_that_cannot_be_removed_is_said(tmp_path, monkeypatch):
    import mq_deploy.outdir as od

    out = tmp_path / "out"
    for text in ('{"format": "mq-deploy/1", "old": 1}', '{"format": "mq-deploy/1", "new": 1}'):
        warned = []
        with atomic_dir(out, warn=warned.append) as tmp:
            (tmp / "manifest.json").write_text(text)
        monkeypatch.setattr(od.shutil, "rmtree", lambda p, ignore_errors=False: None)  # e.g. another user's files
    assert (out / "manifest.json").read_text() == '{"format": "mq-deploy/1", "new": 1}'
    left = [n for n in os.listdir(tmp_path) if n.startswith(".out.old-")]
    assert len(left) == 1 and warned == [f"the replaced {out} could not be removed completely; what is left is "
                                         f"{tmp_path / left[0]}: remove it by hand"]


def test_ctrl_c_inside_a_tensorrt_callback_is_kept(monkeypatch, capsys, signals_as_a_terminal_gives_them):
    """TensorRT calls mq-deploy's logger from C++ on the main thread (parsing, deserializing): a Ctrl-C landing in it
    would be raised there, and TensorRT's bindings would print and drop it. The handler keeps it instead and it is
    raised once TensorRT has returned: at the next `raise_pending`, at the end of the command at the latest."""
    from mq_deploy import signals
    from mq_deploy import trt as mtrt
    from mq_deploy import trt_progress

    class FakeTRT:  # only what the logger needs
        class ILogger:
            class Severity:
                WARNING = 2

            def __init__(self):
                pass

    monkeypatch.setattr(mtrt, "_LOGGER", [])
    logger = mtrt.trt_logger(FakeTRT)

    def tensorrt_parses(args):
        monkeypatch.setattr(trt_progress, "log_line", lambda text: signal.raise_signal(signal.SIGINT))
        logger.log(1, "a message")  # as TensorRT would call it, the signal landing inside
        assert signals.PENDING  # kept, not raised in the callback
        ran.append("after the call")  # the command goes on until TensorRT returns
        return 0

    ran = []
    monkeypatch.setattr(cli, "cmd_lint", tensorrt_parses)
    assert cli.main(["lint", "x.onnx"]) == 130 and ran == ["after the call"]
    assert capsys.readouterr().err == "mq-deploy: interrupted\n" and not signals.PENDING
    # outside a callback a signal is raised where it lands, as always
    with signals.installed():
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_during_the_swap_leaves_the_new_outdir_and_no_old_one(tmp_path, monkeypatch,
                                                                     signals_as_a_terminal_gives_them):
    """A Ctrl-C held back during the swap is raised at its end: the new OUTDIR is in place and the replaced one is
    removed all the same (it was left as .out.old-* for good: the removal came after the raise)."""
    import mq_deploy.outdir as od

    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "manifest.json").write_text('{"format": "mq-deploy/1"}')
    real = od.os.replace

    def replace(a, b):
        signal.raise_signal(signal.SIGINT)
        real(a, b)

    monkeypatch.setattr(od.os, "replace", replace)
    warned = []
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out, warn=warned.append) as tmp:
            (tmp / "manifest.json").write_text('{"format": "mq-deploy/1", "new": 1}')
    assert warned == [f"{out} was written in full before the interrupt"]  # (else only "interrupted" was said)
    assert (out / "manifest.json").read_text() == '{"format": "mq-deploy/1", "new": 1}'
    assert os.listdir(tmp_path) == ["out"]


def _old_outdir(out):
    """An OUTDIR of ours at `out` with files at the top and in a folder, as a replaced one would hold."""
    with atomic_dir(out) as tmp:
        (tmp / "manifest.json").write_text('{"format": "mq-deploy/1", "old": 1}')
        for name in ("model.onnx", "weights.bin", "engines/model.engine"):
            (tmp / name).parent.mkdir(exist_ok=True)
            (tmp / name).write_bytes(b"x")


def test_ctrl_c_during_the_removal_of_the_replaced_outdir_waits_for_it(tmp_path, monkeypatch,
                                                                      signals_as_a_terminal_gives_them):
    """A Ctrl-C while the replaced OUTDIR is removed is raised once it is gone: it left half of it, without its
    manifest, which no later run named."""
    out = tmp_path / "out"
    _old_outdir(out)
    real = os.unlink

    def unlink(path, *a, **k):
        if ".out.old-" in str(path):
            signal.raise_signal(signal.SIGINT)
        real(path, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "manifest.json").write_text('{"format": "mq-deploy/1", "new": 1}')
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["out"]
    assert (out / "manifest.json").read_text() == '{"format": "mq-deploy/1", "new": 1}'


def test_the_replaced_outdir_loses_its_manifest_last(tmp_path, monkeypatch):
    """What a SIGKILL during the removal leaves (nothing can hold that back) still holds manifest.json, so that the
    next run names it (old_leftovers)."""
    out = tmp_path / "out"
    _old_outdir(out)
    gone, real, real_rmdir = [], os.unlink, os.rmdir

    def unlink(path, *a, **k):
        gone.append(os.path.basename(path))
        real(path, *a, **k)

    def rmdir(path, *a, **k):
        gone.append(os.path.basename(path) + "/")
        real_rmdir(path, *a, **k)

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "rmdir", rmdir)
    with atomic_dir(out) as tmp:
        (tmp / "manifest.json").write_text('{"format": "mq-deploy/1", "new": 1}')
        gone.clear()
    monkeypatch.undo()
    gone.remove(LOCK)  # (the new OUTDIR's lock, in the swap)
    assert sorted(gone[:4]) == ["engines/", "model.engine", "model.onnx", "weights.bin"], gone
    assert gone[4] == "manifest.json" and gone[5].startswith(".out.old-") and len(gone) == 6, gone
    assert os.listdir(tmp_path) == ["out"]


def test_an_unlistable_replaced_outdir_does_not_fail_the_compile(tmp_path, monkeypatch):
    """The new OUTDIR is in place when the old one is removed: an error listing the old one (permissions) is no
    reason to fail the run (an OSError there would be exit 1 after a successful compile)."""
    out = tmp_path / "out"
    _old_outdir(out)
    real = Path.iterdir

    def iterdir(self):
        if ".out.old-" in self.name:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    with atomic_dir(out) as tmp:
        (tmp / "manifest.json").write_text('{"format": "mq-deploy/1", "new": 1}')
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["out"]


def test_a_replaced_outdir_left_by_a_killed_run_is_named_not_removed(tmp_path):
    """.out.old-PID-XXXXXXXX holding an mq-deploy manifest (a run killed during its swap or the removal after it) is
    named by the next run, with whether it is the only copy, and kept (it may be the old OUTDIR's only copy); a
    folder of the user's that merely looks alike is neither named nor touched."""
    left = tmp_path / ".out.old-4242-k3j2ab_d"
    mine = tmp_path / ".out.old-20241201-backup"  # the user's own (not mkdtemp's 8 characters, no manifest)
    for d in (left, mine):
        d.mkdir()
        (d / "weights.bin").write_bytes(b"x")
    (left / "manifest.json").write_text('{"format": "mq-deploy/1"}')
    for exists in (False, True):
        warned = []
        with atomic_dir(tmp_path / "out", warn=warned.append) as tmp:
            (tmp / "manifest.json").write_text('{"format": "mq-deploy/1"}')
        only = "" if exists else f" ({tmp_path / 'out'} is missing: this may be its only copy)"
        assert warned == [f"{left} is an OUTDIR that a killed run replaced{only}; remove it by hand once it is not "
                          "needed"]
        assert remove_leftovers(tmp_path / "out") == [] and left.is_dir() and (mine / "weights.bin").is_file()


def test_ctrl_c_while_exiting_after_success_is_no_traceback(tmp_path):
    """A Ctrl-C after the command has finished (during the libraries' clean-up at exit) ends the process quietly; it
    gave "Exception ignored in atexit callback ... KeyboardInterrupt" after a successful compile."""
    code = ("import atexit, signal, sys; from mq_deploy import cli\n"
            "cli.cmd_lint = lambda args: print('done') or 0\n"
            "atexit.register(lambda: signal.raise_signal(signal.SIGINT))\n"
            "sys.argv = ['mq-deploy', 'lint', 'x.onnx']\n"
            "sys.exit(cli.main())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert r.stdout == "done\n" and r.stderr == "" and r.returncode == -signal.SIGINT, (r.returncode, r.stderr)
