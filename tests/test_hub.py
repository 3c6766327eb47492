"""Models and tokenizers named by Hugging Face Hub id (hub.py), through the real huggingface_hub client against a
stand-in Hub on 127.0.0.1 (tests/hub_server.py; HF_ENDPOINT points the client there, HF_HUB_CACHE at a fresh cache)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .hub_server import FakeHub, repo_files
from mq_deploy import hub
from mq_deploy.compare import file_stamp, model_stamp
from mq_deploy.errors import UserError
from mq_deploy.loaders import BUNDLED_DIR

VIM_DIR = BUNDLED_DIR.parent / "vim-fmnist"


def _sharded(folder: Path, scratch: Path) -> dict[str, bytes]:
    """The bundled model's weights as two safetensors shards and their index (as save_pretrained shards them)."""
    from safetensors.numpy import load_file, save_file

    t = load_file(str(folder / "model.safetensors"))
    names = sorted(t)
    parts = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    out = {"config.json": (folder / "config.json").read_bytes()}
    for shard, keys in parts.items():
        save_file({k: t[k] for k in keys}, str(scratch / shard))
        out[shard] = (scratch / shard).read_bytes()
    out["model.safetensors.index.json"] = json.dumps(
        {"metadata": {}, "weight_map": {k: s for s, keys in parts.items() for k in keys}}).encode()
    return out


@pytest.fixture(scope="module")
def fake_hub(tmp_path_factory):
    tiny = repo_files(BUNDLED_DIR)
    tiny["pytorch_model.bin"] = b"the same weights again: never downloaded, model.safetensors is read"
    repos = {"acme/tiny-mamba": tiny,
             "acme/sharded": _sharded(BUNDLED_DIR, tmp_path_factory.mktemp("shards")),
             "acme/tok": {"tokenizer.json": tiny["tokenizer.json"]},
             "acme/no-tok": {"config.json": tiny["config.json"]},
             "acme/gated": tiny,
             "acme/private": tiny,
             "acme/dropped": tiny,
             "acme/vim": repo_files(VIM_DIR, ("config.json", "model.safetensors"))}
    with FakeHub(repos, gated=("acme/gated",), private=("acme/private",), tags={"v1": "acme/tiny-mamba"}) as h:
        yield h


def run_cli(*args, env):
    return subprocess.run([sys.executable, "-m", "mq_deploy", *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=env)


def hub_env(fake_hub, cache: Path, **extra) -> dict:
    """The stand-in Hub, a fresh cache, no token (HF_HOME holds none), no other HF_ setting of this machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=fake_hub.url, HF_HUB_CACHE=str(cache), HF_HOME=str(cache.parent / "hf-home"),
               HF_HUB_DISABLE_TELEMETRY="1")
    env.update(extra)
    return env


def test_compile_fetches_only_what_it_reads(fake_hub, tmp_path):
    env = hub_env(fake_hub, tmp_path / "cache")
    ref = run_cli("compile", "-q", "-o", tmp_path / "bundled", env=env)
    assert ref.returncode == 0, ref.stderr
    before = len(fake_hub.downloaded())
    r = run_cli("compile", "acme/tiny-mamba", "-o", tmp_path / "out", env=env)
    assert r.returncode == 0, r.stderr
    assert "looking up acme/tiny-mamba on the Hugging Face Hub" in r.stderr
    mb = len(fake_hub.repos["acme/tiny-mamba"]["model.safetensors"]) / 1e6
    assert f"downloading acme/tiny-mamba: model.safetensors ({mb:.1f} MB)" in r.stderr
    got = fake_hub.downloaded()[before:]
    # config.json, the tokenizer and the one weight file the loader reads (not pytorch_model.bin beside it); no more
    assert got == ["config.json", "tokenizer.json", "model.safetensors"], got
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    sha = fake_hub.sha["acme/tiny-mamba"]
    assert m["model"]["hub"] == {"repo": "acme/tiny-mamba", "revision": sha}
    snap = tmp_path / "cache" / "models--acme--tiny-mamba" / "snapshots" / sha
    assert m["model"]["path"] == str(snap.resolve())
    # the same model as the bundled one: the same weights, the same tokenizer
    assert (tmp_path / "out" / "weights.bin").read_bytes() == (tmp_path / "bundled" / "weights.bin").read_bytes()
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (BUNDLED_DIR / "tokenizer.json").read_bytes()

    # again, and by a tag: from the cache (the client checks the revision, downloads nothing)
    for spec in ("acme/tiny-mamba", "acme/tiny-mamba@v1"):
        r = run_cli("compile", "-q", spec, "-o", tmp_path / "again", env=env)
        assert r.returncode == 0, r.stderr
        assert json.loads((tmp_path / "again" / "manifest.json").read_text())["model"]["hub"]["revision"] == sha
    assert fake_hub.downloaded()[before:] == got
    # another tool fetched a file mq-deploy does not read into the same snapshot, listing the commit's files
    # (huggingface_hub then knows of pytorch_model.bin, which mq-deploy never fetched): offline still works
    other = subprocess.run([sys.executable, "-c", "import huggingface_hub as h; "
                            "h.snapshot_download('acme/tiny-mamba', allow_patterns=['generation_config.json'])"],
                           env=env, capture_output=True, text=True)
    assert other.returncode == 0, other.stderr
    assert (snap / "generation_config.json").is_file() and not (snap / "pytorch_model.bin").exists()
    n = len(fake_hub.requests)
    for spec in ("acme/tiny-mamba@main", "acme/tiny-mamba@v1", f"acme/tiny-mamba@{sha}"):
        r = run_cli("compile", "-q", spec, "-o", tmp_path / "offline", env={**env, "HF_HUB_OFFLINE": "1"})
        assert r.returncode == 0, (spec, r.stderr)
    assert len(fake_hub.requests) == n  # no request at all
    # the Hub unreachable (nothing listens on that port): the cached snapshot, with a warning
    down = {**env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    r = run_cli("compile", "-q", "acme/tiny-mamba", "-o", tmp_path / "down", env=down)
    assert r.returncode == 0, r.stderr
    assert "warning: the Hugging Face Hub did not answer (" in r.stderr
    assert "using the cached acme/tiny-mamba" in r.stderr
    r = run_cli("compile", "-q", "acme/sharded", "-o", tmp_path / "down2", env=down)
    assert r.returncode == 1  # (a system error: run again when the network is back)
    assert "could not reach the Hugging Face Hub for model acme/sharded" in r.stderr
    assert "not in the Hugging Face cache" in r.stderr and "Traceback" not in r.stderr

    # validate on another machine (a fresh cache): the checkpoint fetched again, at the commit the manifest records
    device = hub_env(fake_hub, tmp_path / "device-cache")
    (tmp_path / "cache").rename(tmp_path / "host-cache")  # the manifest's path: not on the device
    before = len(fake_hub.downloaded())
    r = run_cli("validate", tmp_path / "out", "--torch", "--seq", "8", env=device)
    assert r.returncode == 0, r.stderr
    assert "is not on this machine: taking acme/tiny-mamba@" + sha in r.stderr and "torch-fp32" in r.stdout
    assert fake_hub.downloaded()[before:] == got
    assert any(p.endswith(f"/resolve/{sha}/model.safetensors") for m, p in fake_hub.requests if m == "GET")
    r = run_cli("validate", tmp_path / "out", "--model", "acme/tiny-mamba", "--seq", "8", "-q", env=device)
    assert r.returncode == 0, r.stderr
    assert fake_hub.downloaded()[before + len(got):] == []  # (cached now)
    r = run_cli("validate", tmp_path / "out", "--torch", "--seq", "8",
                env={**device, "HF_HUB_CACHE": str(tmp_path / "c3"), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "is not in the Hugging Face cache" in r.stderr.strip().splitlines()[-1]
    (tmp_path / "host-cache").rename(tmp_path / "cache")

    # eval takes a Hub id too (torch on the cached checkpoint)
    text = tmp_path / "t.txt"
    text.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    r = run_cli("eval", "acme/tiny-mamba", "--task", "text", "--data", text, "--seq-len", "64", "--limit", "2",
                "--json", env=env)
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout.strip().splitlines()[-1])
    assert np.isfinite(row["perplexity"]) and row["model"].startswith("torch:")

    # a snapshot whose weights are missing (a download that stopped): offline says so; online fetches them again
    (snap / "model.safetensors").unlink()
    r = run_cli("compile", "-q", "acme/tiny-mamba", "-o", tmp_path / "partial", env={**env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "holds no weights (a download that stopped)" in r.stderr
    r = run_cli("compile", "-q", "acme/tiny-mamba", "-o", tmp_path / "partial", env=env)
    assert r.returncode == 0, r.stderr
    assert (snap / "model.safetensors").is_file()


def test_sharded_checkpoint_and_hub_tokenizer(fake_hub, tmp_path):
    env = hub_env(fake_hub, tmp_path / "cache")
    before = len(fake_hub.downloaded())
    r = run_cli("compile", "-q", "acme/sharded", "--tokenizer", "acme/tok", "-o", tmp_path / "out", env=env)
    assert r.returncode == 0, r.stderr
    got = fake_hub.downloaded()[before:]
    assert sorted(got) == sorted(["config.json", "model.safetensors.index.json", "model-00001-of-00002.safetensors",
                                  "model-00002-of-00002.safetensors", "tokenizer.json"]), got
    ref = run_cli("compile", "-q", "-o", tmp_path / "bundled", env=env)
    assert ref.returncode == 0, ref.stderr
    assert (tmp_path / "out" / "weights.bin").read_bytes() == (tmp_path / "bundled" / "weights.bin").read_bytes()
    m = json.loads((tmp_path / "out" / "manifest.json").read_text())
    tok_src = m["files"]["tokenizer.json"]["source"]
    assert "models--acme--tok" in tok_src and (tmp_path / "out" / "tokenizer.json").is_file()
    r = run_cli("compile", "-q", "acme/sharded", "-o", tmp_path / "offline", env={**env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr  # index and shards checked in the cache
    sha = fake_hub.sha["acme/sharded"]
    (tmp_path / "cache" / "models--acme--sharded" / "snapshots" / sha / "model-00002-of-00002.safetensors").unlink()
    r = run_cli("compile", "-q", "acme/sharded", "-o", tmp_path / "offline", env={**env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2 and "lacks model-00002-of-00002.safetensors (a download that stopped)" in r.stderr

    # a Vision Mamba from the Hub
    r = run_cli("compile", "-q", "acme/vim", "-o", tmp_path / "vim", env=env)
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "vim" / "manifest.json").read_text())
    assert m["model"]["family"] == "vim" and m["model"]["hub"]["repo"] == "acme/vim"


def test_not_the_hub_answering(fake_hub, tmp_path):
    """A captive portal's page instead of the Hub's JSON: the cache serves (with a warning), else one line."""
    env = hub_env(fake_hub, tmp_path / "cache")
    r = run_cli("compile", "-q", "acme/tiny-mamba", "-o", tmp_path / "first", env=env)
    assert r.returncode == 0, r.stderr
    fake_hub.portal = True
    try:
        cached = run_cli("compile", "-q", "acme/tiny-mamba", "-o", tmp_path / "out", env=env)
        missing = run_cli("compile", "-q", "acme/vim", "-o", tmp_path / "vim", env=env)
    finally:
        fake_hub.portal = False
    assert cached.returncode == 0, cached.stderr
    assert "did not answer (JSONDecodeError" in cached.stderr and "using the cached acme/tiny-mamba" in cached.stderr
    assert missing.returncode == 1 and "Traceback" not in missing.stderr
    assert "could not reach the Hugging Face Hub for model acme/vim (JSONDecodeError" in missing.stderr


def test_closed_output_pipe_while_fetching(fake_hub, tmp_path):
    """`mq-deploy compile owner/name 2>&1 | head`: the closed pipe ends it quietly (141), not as a failed download."""
    env = hub_env(fake_hub, tmp_path / "cache")
    r = subprocess.run(f"{sys.executable} -m mq_deploy compile acme/tiny-mamba -o {tmp_path / 'out'} 2>&1 | true; "
                       "echo \"rc=${PIPESTATUS[0]}\"", shell=True, executable="/bin/bash", capture_output=True,
                       text=True, env=env)
    assert r.stdout.strip() == "rc=141", (r.stdout, r.stderr)


def test_connection_lost_mid_download(fake_hub, tmp_path):
    env = hub_env(fake_hub, tmp_path / "cache")
    fake_hub.drop.add("model.safetensors")
    try:
        r = run_cli("compile", "acme/dropped", "-o", tmp_path / "out", env=env)
    finally:
        fake_hub.drop.clear()
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("mq-deploy: error: fetching model acme/dropped from the Hugging Face Hub failed ("), last
    assert "run the command again: a download resumes where it stopped" in last and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists()
    r = run_cli("compile", "-q", "acme/dropped", "-o", tmp_path / "out", env=env)
    assert r.returncode == 0, r.stderr


REFUSED_BEFORE_ASKING = ("mambaquant-w9a9", "rtn-w9a9", "calibration file not found: /no/such/calib.txt",
                         "this recipe needs calibration text, and MQ_DEPLOY_DATA_DIR=/no/such/dir is not a folder: "
                         "pass --calib FILE")


@pytest.mark.parametrize("args, extra_env, message", [
    (("compile", "acme/nope"), {}, "model acme/nope: not a local path, and the Hugging Face Hub has no model acme/nope"),
    (("compile", "acme/private"), {}, "the Hugging Face Hub has no model acme/private (or it is private"),
    (("compile", "acme/tiny-mamba"), {"HF_TOKEN": "hf_not_a_token"},
     "the Hugging Face Hub refused access to acme/tiny-mamba (401)"),
    (("compile", "acme/tiny-mamba@v9"), {}, "acme/tiny-mamba on the Hugging Face Hub has no revision 'v9'"),
    (("compile", "acme/gated"), {}, "acme/gated is gated on the Hugging Face Hub"),
    (("compile", "--tokenizer", "acme/no-tok"), {}, "acme/no-tok on the Hugging Face Hub has no tokenizer.json"),
    (("compile", "--tokenizer", "acme/nope"), {}, "tokenizer acme/nope: not a local path"),
    (("compile", "--tokenizer", "acme/tok"), {"HF_HUB_OFFLINE": "1"},
     "tokenizer acme/tok is not in the Hugging Face cache, and HF_HUB_OFFLINE is set"),
    # refused before any download
    (("compile", "acme/tiny-mamba", "--recipe", "mambaquant-w9a9"), {}, "mambaquant-w9a9"),
    (("compare", "acme/tiny-mamba", "--recipes", "fp32,rtn-w9a9"), {}, "rtn-w9a9"),
    (("compile", "acme/tiny-mamba", "--recipe", "rtn-w8a8", "--calib", "/no/such/calib.txt"), {},
     "calibration file not found: /no/such/calib.txt"),
    (("compile", "acme/tiny-mamba", "--recipe", "rtn-w8a8"), {"MQ_DEPLOY_DATA_DIR": "/no/such/dir"},
     "this recipe needs calibration text, and MQ_DEPLOY_DATA_DIR=/no/such/dir is not a folder: pass --calib FILE"),
])
def test_hub_errors_are_one_line(fake_hub, tmp_path, args, extra_env, message):
    env = hub_env(fake_hub, tmp_path / "cache", **extra_env)
    before, asked = len(fake_hub.downloaded()), len(fake_hub.requests)
    r = run_cli(*args, "-o", tmp_path / "out", env=env)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("mq-deploy: error: ") and message in lines[-1], r.stderr
    assert all(x.startswith("looking up ") for x in lines[:-1]), r.stderr  # nothing else: no traceback, no retries
    assert not (tmp_path / "out").exists()
    assert fake_hub.downloaded()[before:] == []  # nothing fetched (refused before the download, or by the Hub)
    if message in REFUSED_BEFORE_ASKING:
        assert len(fake_hub.requests) == asked  # not one request to the Hub


def test_nothing_fetched_for_an_output_compile_would_refuse(fake_hub, tmp_path):
    env = hub_env(fake_hub, tmp_path / "cache")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not an OUTDIR")
    n = len(fake_hub.requests)
    r = run_cli("compile", "acme/tiny-mamba", "-o", foreign, env=env)
    assert r.returncode == 2 and "is not empty and was not written by mq-deploy" in r.stderr
    assert len(fake_hub.requests) == n and (foreign / "notes.txt").is_file()


def test_offline_and_not_cached(fake_hub, tmp_path):
    env = hub_env(fake_hub, tmp_path / "cache", HF_HUB_OFFLINE="1")
    n = len(fake_hub.requests)
    r = run_cli("compile", "acme/tiny-mamba", "-o", tmp_path / "out", env=env)
    assert r.returncode == 2
    assert "model acme/tiny-mamba is not in the Hugging Face cache" in r.stderr.strip().splitlines()[-1]
    assert len(fake_hub.requests) == n


def test_parse_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    assert hub.parse_id("state-spaces/mamba-130m-hf") == ("state-spaces/mamba-130m-hf", None)
    assert hub.parse_id("acme/m@v1.0") == ("acme/m", "v1.0")
    assert hub.parse_id("acme/m@refs/pr/3") == ("acme/m", "refs/pr/3")
    assert hub.parse_id("out/tiny") is None  # a mistyped local path: "out" exists here
    assert hub.parse_id("out") is None and hub.parse_id(None) is None
    assert hub.parse_id("acme/model.onnx") is None and hub.parse_id("acme/tok.json") is None
    assert hub.parse_id("ckpt/model.safetensors") is None and hub.parse_id("x/model.ONNX") is None
    assert hub.parse_id("x/vocab.txt") is None and hub.parse_id("acme/mamba-2.8b-hf") == ("acme/mamba-2.8b-hf", None)
    assert hub.parse_id("/abs/path") is None and hub.parse_id("./acme/m") is None and hub.parse_id("a/b/c") is None
    assert hub.parse_id(Path("acme/m")) is None  # a Path is a path
    (tmp_path / "acme").mkdir()
    assert hub.parse_id("acme/m") is None


def test_weight_choice():
    hf_cfg = json.loads((BUNDLED_DIR / "config.json").read_text())
    both = {"config.json", "model.safetensors", "pytorch_model.bin"}
    assert hub._weights("a/b", hf_cfg, both) == ["model.safetensors"]
    assert hub._weights("a/b", hf_cfg, both | {"model.safetensors.index.json"}) == ["model.safetensors"]  # as
    # transformers' from_pretrained: the single file before an index
    assert hub._weights("a/b", hf_cfg, {"config.json", "model.safetensors.index.json", "pytorch_model.bin"}) == [
        "model.safetensors.index.json"]
    ss_cfg = {"d_model": 64, "n_layer": 2, "vocab_size": 100}
    assert hub._weights("a/b", ss_cfg, both) == ["pytorch_model.bin"]  # state-spaces: its loader's order
    with pytest.raises(UserError, match="has no weight file mq-deploy reads"):
        hub._weights("a/b", hf_cfg, {"config.json", "weights.pt"})
    with pytest.raises(UserError, match="model_type is 'mamba2'"):
        hub._weights("a/b", {"model_type": "mamba2"}, both)
    vim = {"model_type": "vim"}
    assert hub._weights("a/b", vim, {"config.json", "vim_t.pth"}) == ["vim_t.pth"]
    assert hub._weights("a/b", vim, {"config.json", "vim_t.pth", "model.safetensors"}) == ["model.safetensors"]
    with pytest.raises(UserError, match=r"several weight files \(a.pth, b.pth\)"):
        hub._weights("a/b", vim, {"config.json", "a.pth", "b.pth"})
    with pytest.raises(UserError, match="has no weights"):
        hub._weights("a/b", vim, {"config.json"})


def test_revision_and_manifest_edges(tmp_path):
    with pytest.raises(UserError, match=r"acme/m@\.\./x: not a valid revision"):
        hub.fetch_model("acme/m@../x")
    with pytest.raises(UserError, match="not a valid revision"):
        hub.fetch_tokenizer("acme/m@a//b")
    assert hub.compiled_from({"bundled": True, "path": "/elsewhere"}) is None
    assert hub.compiled_from({"config": {}}) is None  # (a manifest naming no checkpoint: the bundled model)
    assert hub.compiled_from({"bundled": False, "path": str(tmp_path)}) == str(tmp_path)
    gone = str(tmp_path / "gone")
    assert hub.compiled_from({"bundled": False, "path": gone}) == gone  # no Hub origin: the loader says it is missing


def test_origin_of_a_cache_snapshot(tmp_path):
    snap = tmp_path / "models--acme--tiny-mamba" / "snapshots" / ("ab" * 20)
    snap.mkdir(parents=True)
    assert hub.origin(snap) == {"repo": "acme/tiny-mamba", "revision": "ab" * 20}
    assert hub.origin(tmp_path) is None and hub.origin(BUNDLED_DIR) is None
    # compare --resume knows such a snapshot by its commit: another tool adding a file to it changes nothing
    stamp = model_stamp(snap)
    (snap / "README.md").write_text("added by another tool")
    assert model_stamp(snap) == stamp == [["hub", "acme/tiny-mamba", "ab" * 20]]
    assert model_stamp(BUNDLED_DIR) == file_stamp(BUNDLED_DIR)


def test_validate_simulate_adds_no_torch_reference(fake_hub, tmp_path):
    """--simulate re-derives from the checkpoint, which for a Hub model may be fetched; it is not --torch."""
    env = hub_env(fake_hub, tmp_path / "cache")
    calib = tmp_path / "calib.txt"
    calib.write_text(" ".join(["The quick brown fox jumps over the lazy dog, then naps in the sun."] * 100))
    r = run_cli("compile", "-q", "acme/tiny-mamba", "--recipe", "rtn-w8a8", "--calib", calib, "--calib-samples", "2",
                "--calib-seq-len", "32", "-o", tmp_path / "w8", env=env)
    assert r.returncode == 0, r.stderr
    (tmp_path / "cache").rename(tmp_path / "gone")  # validate on another machine
    r = run_cli("validate", tmp_path / "w8", "--simulate", "--seq", "8", env=hub_env(fake_hub, tmp_path / "c2"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is not on this machine: taking acme/tiny-mamba@" in r.stderr
    assert "simulation" in r.stdout and "torch-fp32" not in r.stdout


def test_checks_before_a_download(tmp_path, monkeypatch):
    """What compile / compare would refuse, refused before the model is fetched; a recipe file of one's own (it may be
    a Vim's, whose calibration is images) is not held to the language models' calibration text."""
    import argparse
    import shutil

    from mq_deploy.cli import _check_before_download
    from mq_deploy.recipes import RECIPE_DIR

    monkeypatch.delenv("MQ_DEPLOY_DATA_DIR", raising=False)
    mine = tmp_path / "myvim.yaml"
    shutil.copy(RECIPE_DIR / "vim-rtn-w8a8.yaml", mine)
    ns = lambda **kw: argparse.Namespace(**{"force": False, "calib": None, "output": str(tmp_path / "o"), **kw})  # noqa: E731
    _check_before_download(ns(command="compile", recipe=str(mine)))
    _check_before_download(ns(command="compile", recipe="vim-rtn-w8a8"))
    _check_before_download(ns(command="compile", recipe="fp32"))
    _check_before_download(ns(command="compare", recipes="fp32,fp16"))
    _check_before_download(ns(command="compare", recipes="rtn-w4a16,quarot-w4a16"))  # (they read no text)
    _check_before_download(ns(command="compile", recipe="rtn-w4a16", calib=str(tmp_path / "none.txt")))  # (unread)
    _check_before_download(ns(command="eval"))
    with pytest.raises(UserError, match="this recipe needs calibration text"):
        _check_before_download(ns(command="compile", recipe="rtn-w8a8"))
    with pytest.raises(UserError, match="this recipe needs calibration text"):
        _check_before_download(ns(command="compare", recipes="fp32,gptq-w8a8"))
    with pytest.raises(UserError, match="calibration file not found"):
        _check_before_download(ns(command="compile", recipe="rtn-w8a8", calib=str(tmp_path / "none.txt")))
    (tmp_path / "c.txt").write_text("text")
    _check_before_download(ns(command="compile", recipe="rtn-w8a8", calib=str(tmp_path / "c.txt")))


def test_which_failures_a_rerun_mends():
    """A transfer's failure says "run the command again"; huggingface_hub's other errors (no stored token, a corrupted
    cache) and this machine's own OSErrors are not dressed up as one."""
    from huggingface_hub import errors as e

    httpx = pytest.importorskip("httpx2" if importlib.util.find_spec("httpx2") else "httpx")
    transfer = [httpx.ConnectError("no route"), e.FileMetadataError("no etag"), ConnectionResetError("reset"),
                TimeoutError("slow"), json.JSONDecodeError("portal", "<html>", 0)]
    if hasattr(e, "XetDownloadError"):
        transfer.append(e.XetDownloadError("xet"))
    for err in transfer:
        assert hub._transfer_failure(err), err
    for err in (e.LocalTokenNotFoundError("no token"), e.CorruptedCacheException("bad refs"), BrokenPipeError(),
                PermissionError("read-only cache"), ValueError("a bug")):
        assert not hub._transfer_failure(err), err
        with pytest.raises(type(err)) as raised, hub._hub_errors("model", "acme/m", None):
            raise err
        assert raised.value is err  # as it is: not the "run the command again" line
    with pytest.raises(OSError, match="failed .*FileMetadataError: no etag.*run the command again"), \
            hub._hub_errors("model", "acme/m", None):
        raise e.FileMetadataError("no etag")


def test_a_dot_segment_is_no_revision():
    """A revision with a `.` or `..` segment (a path, not a branch, tag or commit) is refused before the Hub is asked."""
    for spec in ("acme/m@./x", "acme/m@x/.", "acme/m@.", "acme/m@../x", "acme/m@a//b"):
        with pytest.raises(UserError, match="not a valid revision"):
            hub._repo_revision(spec)
    assert hub._repo_revision("acme/m@refs/pr/3") == ("acme/m", "refs/pr/3")
    assert hub._repo_revision("acme/m@v1.0") == ("acme/m", "v1.0")


def test_origin_of_a_snapshot_reached_through_a_link(tmp_path):
    """A link to a cache snapshot (or a path through one) is still that snapshot: its repository and commit."""
    snap = tmp_path / "hub" / "models--acme--tiny-mamba" / "snapshots" / ("cd" * 20)
    snap.mkdir(parents=True)
    (tmp_path / "ckpt").symlink_to(snap)
    assert hub.origin(tmp_path / "ckpt") == {"repo": "acme/tiny-mamba", "revision": "cd" * 20}
    assert hub.origin(snap / ".." / ("cd" * 20)) == {"repo": "acme/tiny-mamba", "revision": "cd" * 20}


@pytest.mark.parametrize("status, served", [(401, False), (403, False), (500, True), (503, True)])
def test_a_refusal_is_not_hidden_by_the_cache_a_server_error_is(monkeypatch, status, served):
    """The Hub refusing access (401 / 403) answers the request: one UserError, though a copy is cached; a server error
    (5xx) is a failed transfer: the cached snapshot serves, with a warning."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub import errors as e

    httpx = pytest.importorskip("httpx2" if importlib.util.find_spec("httpx2") else "httpx")

    def model_info(self, repo, **kw):
        resp = httpx.Response(status, request=httpx.Request("GET", f"https://hub.invalid/api/models/{repo}"))
        raise e.HfHubHTTPError(f"{status} from the stand-in", response=resp)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(hub, "_cached", lambda repo, revision: "/cache/models--acme--m/snapshots/x")
    warned = []
    if served:
        assert hub.fetch_model("acme/m", warn=warned.append) == "/cache/models--acme--m/snapshots/x"
        assert len(warned) == 1 and f"did not answer (HfHubHTTPError: {status} from the stand-in)" in warned[0]
    else:
        with pytest.raises(UserError, match=rf"the Hugging Face Hub refused access to acme/m \({status}\)"):
            hub.fetch_model("acme/m", warn=warned.append)
        assert warned == []


def test_a_quiet_fetch_leaves_the_progress_bars_as_they_were():
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was = are_progress_bars_disabled()
    try:
        enable_progress_bars()
        with hub._progress(quiet=True):
            assert are_progress_bars_disabled()
        assert not are_progress_bars_disabled()  # back on
        disable_progress_bars()  # off already (HF_HUB_DISABLE_PROGRESS_BARS, or the caller's choice)
        with hub._progress(quiet=True):
            pass
        assert are_progress_bars_disabled()  # still off
    finally:
        (disable_progress_bars if was else enable_progress_bars)()


def test_vim_weight_choice_is_one_file():
    """A Vim repository holding model.safetensors and pytorch_model.bin costs one of them, as a Mamba one does."""
    vim = {"model_type": "vim"}
    assert hub._weights("a/b", vim, {"config.json", "model.safetensors", "pytorch_model.bin"}) == ["model.safetensors"]
    assert hub._weights("a/b", vim, {"config.json", "pytorch_model.bin", "vim_t.pth"}) == ["pytorch_model.bin"]


def test_a_config_that_is_no_object_is_one_error(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text("[1, 2]")
    with pytest.raises(UserError, match="acme/m: config.json must hold a JSON object"):
        hub._read_json(str(cfg), "acme/m: config.json")


def test_files_fetched_at_the_commit_the_revision_names(fake_hub, tmp_path):
    """config.json at the revision asked (the cache then maps that tag to its commit), the other files at that commit
    (a branch or tag may move between two downloads); a file already in the snapshot is not said to be downloaded."""
    env = hub_env(fake_hub, tmp_path / "cache")
    code = ("from mq_deploy import hub\n"
            "for _ in range(2):\n"
            "    print(hub.fetch_model('acme/tiny-mamba@v1', log=lambda s: print('log:', s, flush=True)))\n")
    n = len(fake_hub.requests)
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    sha = fake_hub.sha["acme/tiny-mamba"]
    gets = [p for m, p in fake_hub.requests[n:] if m == "GET" and "/resolve/" in p]
    assert gets == ["/acme/tiny-mamba/resolve/v1/config.json", f"/acme/tiny-mamba/resolve/{sha}/tokenizer.json",
                    f"/acme/tiny-mamba/resolve/{sha}/model.safetensors"], gets
    files = fake_hub.repos["acme/tiny-mamba"]
    said = [ln for ln in r.stdout.splitlines() if ln.startswith("log: downloading ")]
    assert said == [f"log: downloading acme/tiny-mamba: {f} ({len(files[f]) / 1e6:.1f} MB)"
                    for f in ("tokenizer.json", "model.safetensors")], r.stdout  # the first time only
    snap = tmp_path / "cache" / "models--acme--tiny-mamba" / "snapshots" / sha
    assert r.stdout.splitlines()[-1] == str(snap)
