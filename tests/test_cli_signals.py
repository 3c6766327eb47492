"""How the CLI ends when the system stops it or the disk fails it: SIGTERM cleans up as Ctrl-C does (exit 143),
OS errors are one line (exit 1), a closed pipe ends quietly (exit 141), and what a killed run left (SIGKILL: no
clean-up could run) is removed by the next run into the same place."""

import errno
import os
import signal
import subprocess
import sys

import pytest

from mq_deploy import cli
from mq_deploy.outdir import atomic_dir, atomic_write_bytes, remove_leftovers


def _dead_pid() -> int:
    """A pid no process has now (a child that has exited and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sigterm_cleans_up_like_ctrl_c(tmp_path, monkeypatch, capsys):
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


def test_leftovers_of_killed_runs_removed(tmp_path, capsys):
    dead, live = _dead_pid(), os.getpid()
    left = [tmp_path / f".out.tmp-{dead}-k3j2", tmp_path / f".out.old-{dead}"]
    for d in left:
        d.mkdir()
        (d / "weights.bin").write_bytes(b"x")
    mine = tmp_path / f".out.tmp-{live}-zz"  # a live run's (here: this process's own)
    mine.mkdir()
    other = tmp_path / ".other.tmp-1-a"  # another output's
    other.mkdir()
    engine_tmp = tmp_path / f".m.engine.tmp-{dead}-q1"
    engine_tmp.write_bytes(b"half an engine")
    warned = []
    with atomic_dir(tmp_path / "out", warn=warned.append) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert warned == [f"removed what killed runs left beside {tmp_path / 'out'}: .out.old-{dead}, .out.tmp-{dead}-k3j2"]
    assert sorted(os.listdir(tmp_path)) == sorted([mine.name, other.name, engine_tmp.name, "out"])
    atomic_write_bytes(tmp_path / "m.engine", b"ENGINE")
    assert not engine_tmp.exists() and (tmp_path / "m.engine").read_bytes() == b"ENGINE"
    assert remove_leftovers(tmp_path / "out") == []  # nothing more to remove; the live one stays
    assert mine.is_dir()


@pytest.mark.parametrize("exc,rc,err", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/weights.bin"), 1,
     "mq-deploy: error: [Errno 28] No space left on device: '/data/out/weights.bin'\n"),
    (PermissionError(errno.EACCES, "Permission denied", "/data/out"), 1,
     "mq-deploy: error: [Errno 13] Permission denied: '/data/out'\n"),
    (BrokenPipeError(errno.EPIPE, "Broken pipe"), 141, ""),  # `mq-deploy ... | head`: nothing more said
])
def test_os_errors_are_one_line(monkeypatch, capsys, exc, rc, err):
    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_lint", fail)
    assert cli.main(["lint", "x.onnx"]) == rc
    assert capsys.readouterr().err == err


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
    r = subprocess.run(f"{sys.executable} -c \"$CODE\" | head -c 10", shell=True, capture_output=True, text=True,
                       env={**os.environ, "CODE": code})
    assert r.stdout == "x" * 10 and r.stderr == "", r.stderr
