"""Models and tokenizers named by their Hugging Face Hub id: `owner/name`, or `owner/name@REVISION` (a branch, tag or
commit).

A MODEL argument that is not a local path but has that form is fetched into the Hugging Face cache
(~/.cache/huggingface/hub; HF_HOME / HF_HUB_CACHE move it) with huggingface_hub, and the command runs on the cached
snapshot. Only what mq-deploy reads is downloaded: config.json, tokenizer.json where the repository has one, and the
weights the loader would take (one file, or a sharded index and its shards; a repository that holds both
model.safetensors and pytorch_model.bin costs one of them). `--tokenizer owner/name` takes that repository's
tokenizer.json the same way (state-spaces checkpoints ship none: `--tokenizer EleutherAI/gpt-neox-20b`).

HF_HUB_OFFLINE=1 uses the cache only. When the Hub cannot be reached (or fails), a snapshot already in the cache is
used with a warning. A private or gated model needs a token (`hf auth login`, or HF_TOKEN). An argument whose first
folder exists, or that names a file (model.onnx, tokenizer.json, ...), is always a local path; `./x/y` too.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import UserError

# owner/name[@revision]: what the Hub accepts as a model id (its own validation has the last word)
_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*)(?:@(?P<rev>[A-Za-z0-9_./-]+))?$")
# a snapshot in the Hugging Face cache: .../models--OWNER--NAME/snapshots/COMMIT
_SNAPSHOT = re.compile(r"models--(?P<owner>[^/]+?)--(?P<name>[^/]+)/snapshots/(?P<sha>[0-9a-f]{40})/?$")
# names of files, not of Hub models (a mistyped path to one stays a path)
_FILE_SUFFIXES = (".onnx", ".json", ".jsonl", ".safetensors", ".bin", ".pth", ".pt", ".npz", ".txt", ".yaml", ".yml",
                  ".engine", ".gz", ".xz", ".bz2", ".so")


def _repo_revision(spec: str) -> tuple[str, Optional[str]]:
    """`spec`'s repository and revision, or a UserError when it is no Hub id or its revision no valid name."""
    parsed = parse_id(spec)
    if parsed is None:
        raise UserError(f"{spec} is not a Hugging Face Hub id (owner/name or owner/name@revision)")
    repo, revision = parsed
    if revision is not None and any(seg in ("", ".", "..") for seg in revision.split("/")):
        raise UserError(f"{repo}@{revision}: not a valid revision (a branch, tag or commit)")
    return repo, revision


def parse_id(arg: Optional[str | Path]) -> Optional[tuple[str, Optional[str]]]:
    """(repo id, revision or None) when `arg` names a Hub model rather than a local path, else None. An argument that
    exists on disk, whose first folder does (a mistyped local path), or that names a file, is a path."""
    if arg is None or isinstance(arg, Path):
        return None
    m = _ID.match(arg)
    if m is None or m["repo"].lower().endswith(_FILE_SUFFIXES) or Path(arg).expanduser().exists():
        return None
    if Path(arg.split("/", 1)[0]).exists():
        return None
    return m["repo"], m["rev"]


def origin(model_dir: str | Path) -> Optional[dict]:
    """{"repo", "revision"} when `model_dir` is a snapshot in the Hugging Face cache (what fetch_model returns)."""
    m = _SNAPSHOT.search(Path(model_dir).resolve().as_posix())
    return {"repo": f"{m['owner']}/{m['name']}", "revision": m["sha"]} if m else None


def provenance(model_dir: str | Path) -> dict:
    """{"hub": origin} for a model source read from a Hugging Face cache snapshot, else {}."""
    hub = origin(model_dir)
    return {"hub": hub} if hub else {}


def _hub():
    try:
        import huggingface_hub
    except ImportError:  # (a dependency of tokenizers / transformers, so normally there)
        raise UserError("fetching a model from the Hugging Face Hub needs huggingface_hub: pip install huggingface_hub") from None
    return huggingface_hub


def _first_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"


def _status(err: BaseException) -> Optional[int]:
    return getattr(getattr(err, "response", None), "status_code", None)


def _is_definite(err: BaseException) -> bool:
    """A Hub answer about the request itself (no such repository or revision, access refused, a bad id), which a
    cached copy must not hide; other failures (no network, a timeout, a server error) leave the cache to serve."""
    from huggingface_hub import errors as e

    return (isinstance(err, (e.RepositoryNotFoundError, e.RevisionNotFoundError, e.HFValidationError))
            or isinstance(err, e.HfHubHTTPError) and _status(err) in (401, 403))


# the libraries a download goes through: their exceptions are the transfer's (huggingface_hub 0.x uses requests,
# 1.x httpx; large files go through hf_xet), not this machine's (a full disk) nor a bug
_TRANSFER_MODULES = ("httpx", "httpx2", "requests", "urllib3", "hf_xet", "http", "ssl", "socket")
# huggingface_hub's own exceptions that are a transfer's: an HTTP failure, a response without the Hub's headers (a
# proxy's), Xet's download errors. Its others (no stored token, a corrupted cache, a dry run) are not: running the
# command again would not mend them.
_HUB_TRANSFER_ERRORS = ("HTTPError", "FileMetadataError", "XetDownloadError", "XetRefreshTokenError",
                        "XetAuthorizationError")


def _transfer_failure(err: BaseException) -> bool:
    """An exception of the download's libraries, a network error, or an answer that is not JSON (a proxy's or captive
    portal's page): not the Hub answering. A closed stdout / stderr (BrokenPipeError) is not one."""
    if isinstance(err, BrokenPipeError):
        return False
    if (type(err).__module__ or "").split(".")[0] == "huggingface_hub":
        return any(c.__name__ in _HUB_TRANSFER_ERRORS for c in type(err).__mro__)
    return ((type(err).__module__ or "").split(".")[0] in _TRANSFER_MODULES
            or isinstance(err, (ConnectionError, TimeoutError, json.JSONDecodeError)))


@contextmanager
def _hub_errors(what: str, repo: str, revision: Optional[str]) -> Iterator[None]:
    """The Hub's answers as one-line UserErrors (exit 2); a failed transfer (no network, the connection lost, a server
    error) as one OSError line (exit 1: run again, a download resumes); Ctrl-C, this machine's OSErrors (disk full)
    and anything else as they are."""
    from huggingface_hub import constants
    from huggingface_hub import errors as e

    at = f" at revision {revision!r}" if revision else ""
    login = "log in with `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN"
    try:
        yield
    except (UserError, KeyboardInterrupt):
        raise
    except e.GatedRepoError:
        raise UserError(f"{repo} is gated on the Hugging Face Hub: accept its terms on huggingface.co/{repo}, then "
                        f"{login}") from None
    except e.RepositoryNotFoundError:
        raise UserError(f"{what} {repo}: not a local path, and the Hugging Face Hub has no model {repo} (or it is "
                        f"private: {login})") from None
    except e.RevisionNotFoundError:
        raise UserError(f"{repo} on the Hugging Face Hub has no revision {revision!r}") from None
    except e.HFValidationError as x:
        raise UserError(f"{what} {repo}: not a local path, nor a valid Hugging Face Hub id ({x})") from None
    except e.LocalEntryNotFoundError as x:
        if constants.HF_HUB_OFFLINE:
            raise UserError(f"{what} {repo}{at} is not in the Hugging Face cache, and HF_HUB_OFFLINE is set: unset it "
                            "to download it, or pass a local path") from None
        raise OSError(f"{what} {repo}{at} is not in the Hugging Face cache, and the Hub could not be reached; check "
                      "the network and run the command again, or pass a local path") from x
    except e.EntryNotFoundError as x:
        raise UserError(f"{repo} on the Hugging Face Hub lacks a file mq-deploy needs ({_first_line(x)})") from None
    except e.HfHubHTTPError as x:
        if _status(x) in (401, 403):
            raise UserError(f"the Hugging Face Hub refused access to {repo} ({_status(x)}): {login}, with a token "
                            "that may read it") from None
        raise OSError(f"fetching {what} {repo} from the Hugging Face Hub failed ({_first_line(x)}); run the command "
                      "again: a download resumes where it stopped") from x
    except Exception as x:  # noqa: BLE001 - the transfer's exceptions: one line; anything else (a bug) as it is
        if not _transfer_failure(x):  # (a full disk: the CLI's one OSError line; a bug: its traceback)
            raise
        raise OSError(f"fetching {what} {repo} from the Hugging Face Hub failed ({_first_line(x)}); run the command "
                      "again: a download resumes where it stopped") from x


@contextmanager
def _progress(quiet: bool) -> Iterator[None]:
    """huggingface_hub's download bars off while a quiet fetch runs (and back as they were)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was = are_progress_bars_disabled()
    if quiet and not was:
        disable_progress_bars()
    try:
        yield
    finally:
        if quiet and not was:
            enable_progress_bars()


def _weights(repo: str, config: dict, files: set[str]) -> list[str]:
    """The weight files mq-deploy's loader would read in a repository holding `files`, by its config."""
    from .loaders.formats import FORMATS, detect_format

    if config.get("model_type") == "vim":  # as vision.model._weight_files reads a directory
        named = [n for n in FORMATS["hf"].weight_files if n in files]
        if named:
            return named[:1]
        loose = sorted(f for f in files if f.endswith((".safetensors", ".pth", ".bin")))
        if len(loose) != 1:
            raise UserError(f"{repo} has {'several weight files (' + ', '.join(loose) + ')' if loose else 'no weights'}"
                            "; mq-deploy reads model.safetensors, pytorch_model.bin, a sharded index, or one *.pth")
        return loose
    fmt = FORMATS[detect_format(config, Path(repo) / "config.json")]
    named = [n for n in fmt.weight_files if n in files]
    if not named:
        raise UserError(f"{repo} has no weight file mq-deploy reads: looked for {', '.join(fmt.weight_files)}")
    return named[:1]


def _shards(repo: str, index_path: str, name: str) -> list[str]:
    index = _read_json(index_path, f"{repo}: {name}")
    try:
        return sorted(set(index["weight_map"].values()))
    except (KeyError, TypeError, AttributeError):
        raise UserError(f"{repo}: {name} is not a valid sharded index (no 'weight_map' object)") from None


def _cached(repo: str, revision: Optional[str]) -> str:
    """The cached snapshot of `repo` at `revision` (a branch or tag the cache has seen, or a commit), checked to hold
    config.json and the weights; not the Hub's file listing, which also names what mq-deploy never fetches."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub import errors as e

    config_path = try_to_load_from_cache(repo, "config.json", revision=revision)
    if not isinstance(config_path, str):
        raise e.LocalEntryNotFoundError(f"{repo} is not cached")
    snap = Path(config_path).parent
    files = {p.name for p in snap.iterdir() if p.is_file()}
    stopped = "(a download that stopped); run the command once with the Hub reachable"
    if not any(f.endswith((".safetensors", ".bin", ".pth", ".index.json")) for f in files):
        raise UserError(f"the cached snapshot of {repo} ({snap}) holds no weights {stopped}")
    want = _weights(repo, _read_json(config_path, f"{repo}: config.json"), files)
    if want[0].endswith(".index.json") and want[0] in files:
        want += _shards(repo, str(snap / want[0]), want[0])
    missing = [f for f in want if not (snap / f).is_file()]
    if missing:
        raise UserError(f"the cached snapshot of {repo} ({snap}) lacks {', '.join(missing)} {stopped}")
    return str(snap)


def fetch_model(spec: str, *, quiet: bool = False, log: Callable[[str], None] = lambda s: None,
                warn: Callable[[str], None] = lambda s: None) -> str:
    """The local snapshot directory of Hub model `spec` (owner/name[@revision]), downloaded as needed."""
    repo, revision = _repo_revision(spec)
    hf = _hub()
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    with _hub_errors("model", repo, revision), _progress(quiet):
        if constants.HF_HUB_OFFLINE:
            return _cached(repo, revision)
        log(f"looking up {spec} on the Hugging Face Hub (there is no local path of that name)")
        try:
            info = hf.HfApi().model_info(repo, revision=revision, files_metadata=True)
        except Exception as err:  # noqa: BLE001 - no network, a timeout, a server error: the cache may serve
            if _is_definite(err) or not _transfer_failure(err):
                raise
            try:
                path = _cached(repo, revision)
            except LocalEntryNotFoundError:
                raise OSError(f"could not reach the Hugging Face Hub for model {repo} ({_first_line(err)}), and it is "
                              "not in the Hugging Face cache; check the network and run the command again, or pass a "
                              "local path") from err
            warn(f"the Hugging Face Hub did not answer ({_first_line(err)}); using the cached {repo}: {path}")
            return path
        files = {s.rfilename for s in info.siblings or [] if "/" not in s.rfilename}
        sizes = {s.rfilename: getattr(s, "size", None) for s in info.siblings or []}
        if "config.json" not in files:
            raise UserError(f"{repo} on the Hugging Face Hub has no config.json; mq-deploy compiles Mamba-1 "
                            "checkpoints (Hugging Face or state-spaces) and Vision Mamba")
        # config.json at the asked revision (the cache then maps that branch or tag to its commit, for offline use);
        # the other files at the commit it resolved to (its snapshot folder's name), not at a branch that may move
        config_path = hf.hf_hub_download(repo, "config.json", revision=revision)
        sha = Path(config_path).parent.name

        def get(name: str) -> str:
            if not quiet and not isinstance(try_to_load_from_cache(repo, name, revision=sha), str):
                size = sizes.get(name)
                log(f"downloading {repo}: {name}" + (f" ({size / 1e6:.1f} MB)" if size else ""))
            return hf.hf_hub_download(repo, name, revision=sha)

        if "tokenizer.json" in files:  # before the weights: a snapshot with weights has its tokenizer
            get("tokenizer.json")
        want = _weights(repo, _read_json(config_path, f"{repo}: config.json"), files)
        if want[0].endswith(".index.json"):
            want = _shards(repo, get(want[0]), want[0])
        for name in want:  # (a file already in the snapshot is not downloaded again)
            get(name)
        return str(Path(config_path).parent)


def compiled_from(source: dict, log: Callable[[str], None] = lambda s: None,
                  warn: Callable[[str], None] = lambda s: None) -> Optional[str]:
    """The checkpoint an OUTDIR's manifest names (`model` section): None for the bundled language model (for the
    bundled Vim: this installation's copy), its path where that exists, else, for a model compiled from the Hub (`hub`:
    repository and commit), that commit fetched into this machine's cache (an OUTDIR copied to a device); otherwise
    the recorded path (the loader then says it is missing)."""
    path = source.get("path")
    origin_ = source.get("hub")
    if source.get("bundled") and source.get("format") == "vim":  # the bundled Vim, of this installation
        from .vision.model import BUNDLED_VIM_DIR

        return str(BUNDLED_VIM_DIR)
    if source.get("bundled") or not path and not origin_:  # (a manifest naming neither: the bundled model, as before)
        return None
    if path and Path(path).exists() or not isinstance(origin_, dict) or not origin_.get("repo"):
        return path
    spec = f"{origin_['repo']}@{origin_['revision']}" if origin_.get("revision") else str(origin_["repo"])
    log(f"the checkpoint {path} is not on this machine: taking {spec} from the Hugging Face Hub")
    return fetch_model(spec, log=log, warn=warn)


def fetch_tokenizer(spec: str) -> str:
    """The local path of Hub repository `spec`'s tokenizer.json (owner/name[@revision]), downloaded as needed
    (huggingface_hub itself falls back to the cache when the Hub cannot be reached)."""
    repo, revision = _repo_revision(spec)
    hf = _hub()
    from huggingface_hub import errors

    with _hub_errors("tokenizer", repo, revision):
        try:
            return hf.hf_hub_download(repo, "tokenizer.json", revision=revision)
        except errors.EntryNotFoundError as err:
            if isinstance(err, errors.LocalEntryNotFoundError):
                raise
            raise UserError(f"{repo} on the Hugging Face Hub has no tokenizer.json (mq-deploy reads the tokenizers "
                            "library's format); pass --tokenizer PATH/tokenizer.json") from None


def _read_json(path: str, what: str) -> dict:
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as x:
        raise UserError(f"{what} is not readable JSON ({x})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{what} must hold a JSON object")
    return raw
