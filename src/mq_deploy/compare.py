"""`mq-deploy compare`: several recipes on one model, evaluated side by side in one run.

For every recipe the model is compiled in memory (same calibration windows, one shared fp32
calibration), the portable ONNX graph runs in onnxruntime, and each task is scored. Perplexity tasks
also report how far the next-token distributions moved from fp32: mean KL(fp32 ‖ recipe) and top-1
agreement over the same windows.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .backends.ort import OrtRunner
from .errors import UserError
from .outdir import atomic_write_bytes, check_writable
from .passes import needs_stats
from .eval import run_task
from .eval.data import TASKS, load_task_data, resolve_data_path
from .eval.perplexity import token_windows
from .graph.mamba_lm import build_lm_graph
from .quantize import fp32_stats, prepare, stats_windows
from .recipes import check_family, load_recipe


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def perplexity_and_drift(ref_fn, fn, windows: np.ndarray, batch_size: int = 2) -> dict:
    """Perplexity of `fn` on the windows, and KL(ref ‖ fn) / top-1 agreement against `ref_fn`."""
    nll = kl = agree = 0.0
    count = 0
    for s in range(0, len(windows), batch_size):
        w = windows[s:s + batch_size]
        lp = _log_softmax(fn(w)[:, :-1])
        lr = _log_softmax(ref_fn(w)[:, :-1])
        tgt = w[:, 1:]
        nll -= float(np.take_along_axis(lp, tgt[..., None], axis=-1).sum())
        kl += float((np.exp(lr) * (lr - lp)).sum())
        agree += float((lp.argmax(-1) == lr.argmax(-1)).sum())
        count += tgt.size
    return {"perplexity": float(np.exp(nll / count)), "kl": kl / count, "top1_agree": agree / count, "tokens": count}


def compare(model, recipes: Sequence[str], tasks: Sequence[str], tokenizer, calib_windows: np.ndarray, *,
            data: Optional[dict] = None, seq_len: int = 512, limit: Optional[int] = None,
            windows: Optional[int] = None, batch_size: int = 2,
            progress: bool = True, log: Callable[[str], None] = lambda s: None,
            done: Optional[dict] = None, on_row: Callable[[list], None] = lambda rows: None) -> list[dict]:
    """Rows of {"recipe", <task>: {metrics}} for each recipe (the fp32 model first, as 'fp32'). `done`: rows of an
    earlier run by recipe name, taken as they are (`--resume`); `on_row(rows)`: after each row (RunFiles saves)."""
    done = done or {}
    data = data or {}
    recs = [load_recipe(r) for r in recipes]  # validate all names before any work
    for r in recs:
        check_family(r, vim=False)
    ppl_windows, paths = {}, {}
    for t in tasks:  # every task's data found before any work
        if t == "fashion_mnist":
            raise UserError("task 'fashion_mnist' is for a Vision Mamba model directory (e.g. "
                            "src/mq_deploy/assets/vim-fmnist with the vim-* recipes); this is a language model")
        if t not in TASKS:
            raise UserError(f"unknown task '{t}'; valid: {', '.join(TASKS)}")
        paths[t] = resolve_data_path(t, data.get(t), flag=f"--data {t}=PATH")
        if TASKS[t].kind == "perplexity":
            text = load_task_data(t, paths[t])
            ppl_windows[t] = np.asarray(token_windows(tokenizer.encode(text), seq_len, windows or limit), dtype=np.int64)
    ref = OrtRunner(build_lm_graph(model))  # plugin graph: onnxruntime segments + the native scan kernel
    stats0: dict[int, object] = {}  # the fp32 statistics, computed once per `calibration.stats_samples`
    rows = []
    for recipe in [load_recipe("fp32")] + [x for x in recs if x.name != "fp32"]:
        t0 = time.time()
        r = recipe.name
        if reuse_row(rows, done, r, log, on_row):
            continue
        log(f"recipe {r}")
        st = None
        if needs_stats(recipe.passes):  # (a rotation without KLT reads none)
            k = recipe.calibration.get("stats_samples", len(calib_windows))
            if k not in stats0:
                sw = stats_windows(calib_windows, k)
                log(f"calibrating the fp32 graph on {len(sw)} windows (statistics shared by the passes of every recipe "
                    f"with stats_samples {k}{'' if len(sw) == k else ': all the calibration windows there are'})")
                stats0[k] = fp32_stats(model, sw, progress=progress)
            st = stats0[k]
        m2, plan, _ = prepare(model, recipe, calib_windows, progress=progress, stats0=st, log=log)
        runner = OrtRunner(build_lm_graph(m2, plan))
        row = {"recipe": r}
        for t in tasks:
            if t in ppl_windows:
                row[t] = perplexity_and_drift(ref, runner, ppl_windows[t], batch_size)
            else:
                res = run_task(t, runner, tokenizer, data_path=paths[t], seq_len=max(seq_len, 2),
                               limit=limit, batch_size=batch_size, progress=progress)
                row[t] = {k: v for k, v in res.items() if k in ("acc", "acc_norm", "perplexity", "n")}
        row["seconds"] = round(time.time() - t0, 1)
        rows.append(row)
        log(f"  {json.dumps({k: v for k, v in row.items() if k != 'recipe'})}")
        on_row(rows)
    return rows


def headline(metrics: dict) -> float:
    for k in ("perplexity", "acc_norm", "acc"):
        if k in metrics:
            return metrics[k]
    return float("nan")


def markdown_table(rows: list[dict], tasks: Sequence[str]) -> str:
    cols = []
    for t in tasks:
        m = rows[0][t]
        if "kl" in m:
            cols += [(t, "perplexity", "{:.2f}"), (t, "kl", "{:.4f}"), (t, "top1_agree", "{:.3f}")]
        else:  # (a zero-shot task with a perplexity too, LAMBADA's: after its accuracy)
            cols += [(t, k, "{:.4f}") for k in ("acc", "acc_norm", "agreement") if k in m]
            cols += [(t, "perplexity", "{:.2f}")] if "perplexity" in m else []
    acc_cols = [c for c in cols if c[1] == "acc"]  # (every zero-shot task has acc; acc_norm only some)
    head = "| recipe | " + " | ".join(f"{t} {k}" for t, k, _ in cols) + (" | avg acc |" if acc_cols else " |")
    sep = "|---" * (len(cols) + 1 + (1 if acc_cols else 0)) + "|"
    lines = [head, sep]
    base = rows[0]
    for row in rows:
        cells = []
        for t, k, fmt in cols:
            v = row[t][k]
            cell = fmt.format(v)
            if k == "perplexity" and row is not base:
                cell += f" ({100 * (v / base[t][k] - 1):+.2f}%)"
            cells.append(cell)
        if acc_cols:
            cells.append("{:.4f}".format(np.mean([row[t][k] for t, k, _ in acc_cols])))
        lines.append(f"| {row['recipe']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


#: what `compare` of a language model scores, under its table (compare.md, stdout) and in compare.json's meta
SCORED = ("scored: each recipe's TensorRT-flavour graph (model.onnx: plugin nodes on mq-deploy's CPU kernels) in "
          "onnxruntime, sequence length {seq_len}; `mq-deploy eval OUTDIR` scores model.portable.onnx, which can "
          "differ by int8 rounding-boundary flips (`eval OUTDIR/model.onnx --seq-len {seq_len}` gives these numbers)")


def save(rows: list[dict], tasks: Sequence[str], out_dir: Path, meta: dict, note: str = "") -> tuple[Path, Path]:
    """compare.md (the table, then `note` when given) and compare.json (meta and rows), each written whole (a
    temporary file renamed over it: a reader, or a stop half-way, never sees part of one)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "compare.md", out_dir / "compare.json"
    atomic_write_bytes(js, (json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n").encode())
    atomic_write_bytes(md, (markdown_table(rows, tasks) + (f"\n{note}\n" if note else "")).encode())
    return md, js


def recipe_fingerprint(recipe) -> str:
    """What a row of this recipe depends on in the recipe: every field that changes the computation (not where its
    file is, nor its description), so that an edited recipe is run again and a moved checkout is not."""
    d = {k: v for k, v in recipe.to_dict().items() if k not in ("source", "sha256", "description")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def code_stamp(root: Optional[Path] = None) -> str:
    """mq-deploy's version and a digest of its code (the Python and C sources): what a row depends on in the code, so
    that `--resume` after a `git pull` of an editable install (the version string unchanged) runs again. Recipes and
    models are not code here: a changed recipe reruns only its row (recipe_fingerprint), a model its run
    (model_stamp)."""
    from . import __version__

    root = Path(__file__).resolve().parent if root is None else Path(root)
    h = hashlib.sha256()
    for f in sorted(root.rglob("*")):
        if f.is_file() and f.suffix in (".py", ".c", ".h") and not {"__pycache__", "assets", "export_configs"} & set(
                f.relative_to(root).parts):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return f"{__version__}+{h.hexdigest()[:12]}"


def file_stamp(path) -> list:
    """[resolved path, bytes, mtime_ns] of a file, or of each file of a directory (sorted): what tells a file replaced
    in place, without reading it."""
    p = Path(path).resolve()
    if p.is_dir():
        return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in sorted(p.iterdir()) if f.is_file()]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns]] if p.is_file() else [[str(p), None, None]]


def model_stamp(path) -> list:
    """`file_stamp` of a checkpoint folder; a snapshot in the Hugging Face cache by its repository and commit instead
    (a commit's files do not change, and other tools add files to the same snapshot folder)."""
    from .hub import origin

    hub = origin(path)
    return [["hub", hub["repo"], hub["revision"]]] if hub else file_stamp(path)


def reuse_row(rows: list, done: dict, name: str, log: Callable[[str], None], on_row: Callable[[list], None]) -> bool:
    """Take recipe `name`'s row from an earlier run (`--resume`) if `done` has it."""
    if name not in done:
        return False
    rows.append(done[name])
    log(f"recipe {name}: the earlier run's row (--resume)")
    on_row(rows)
    return True


class RunFiles:
    """compare's output folder while it runs: compare.json / compare.md rewritten after every recipe, marked partial
    (meta "complete": false, a line under the table) until the last, so that a stop (Ctrl-C, a crash, a recipe that
    fails) keeps the rows done; `earlier` reads them back for `--resume`. `settings`: everything a row depends on
    besides its recipe (model files, calibration, tasks, lengths, data files, tokenizer, version); `recipes`: the
    run's recipe names (fp32 first) and their fingerprints."""

    HINT = "add --resume to the same command"

    def __init__(self, out_dir: Path, tasks: Sequence[str], meta: dict, settings: dict, recipes: dict,
                 note: str = ""):
        self.out_dir, self.tasks, self.note = Path(out_dir), list(tasks), note
        settings = json.loads(json.dumps(settings))  # as compare.json will hold it (tuples as lists) for `earlier`
        self.meta = {**meta, "settings": settings, "recipes": recipes}
        self.saved = 0  # rows of this run now in compare.json

    @property
    def json_path(self) -> Path:
        return self.out_dir / "compare.json"

    def prepare(self) -> None:
        """The output folder made and written to once before any work: a bad -o is one line now, not a traceback
        after the first recipe."""
        if self.out_dir.exists() and not self.out_dir.is_dir():
            raise UserError(f"-o {self.out_dir} is a file, not a folder for compare.md / compare.json")
        check_writable(self.json_path, "compare's results")
        check_writable(self.out_dir / "compare.md", "compare's table")

    def _read(self) -> Optional[dict]:
        js = self.json_path  # (prepare() has checked the folder)
        if not js.is_file():
            return None
        try:
            old = json.loads(js.read_text())
            meta, rows = old["meta"], old["rows"]
            ok = isinstance(meta.get("settings"), dict) and isinstance(meta.get("recipes"), dict) \
                and all(isinstance(r, dict) and isinstance(r.get("recipe"), str) for r in rows)
        except (ValueError, KeyError, TypeError, AttributeError):
            ok = False
        return old if ok else {}  # {}: there, but not one `earlier` can read

    def check_fresh(self, log: Callable[[str], None]) -> None:
        """A run without --resume: say what an earlier compare.json in the folder will lose."""
        old = self._read()
        if old is None:
            return
        n = len(old.get("rows", []))
        log(f"{self.json_path} exists{f' ({n} rows)' if n else ''}: this run replaces it as it goes "
            "(--resume would keep the rows it can)")

    def earlier(self, log: Callable[[str], None] = lambda s: None) -> dict:
        """Rows of compare.json by recipe name that this run can take as they are: same settings, same recipe
        fingerprint. Another run's settings are an error (naming what differs); no file, nothing to take."""
        js, old = self.json_path, self._read()
        if old is None:
            log(f"--resume: no {js} yet; running every recipe")
            return {}
        if not old:
            raise UserError(f"--resume: {js} is not a compare.json this mq-deploy can continue (written by an "
                            "older version, or edited); drop --resume, or pass another -o")
        meta, rows = old["meta"], old["rows"]
        mine = self.meta["settings"]
        differ = sorted(k for k in set(meta["settings"]) | set(mine) if meta["settings"].get(k) != mine.get(k))
        if differ:
            def short(v) -> str:
                t = json.dumps(v)
                return t if len(t) <= 60 else t[:57] + "..."

            said = "; ".join(f"{k} {short(meta['settings'].get(k))} there, {short(mine.get(k))} now" for k in differ)
            raise UserError(f"--resume: {js} was made with other settings ({said}): drop --resume to start afresh, or "
                            "pass another -o")
        bad = self._bad_row(rows)
        if bad:
            raise UserError(f"--resume: {js} {bad}, which compare does not write (an edited file?): drop --resume to "
                            "run every recipe again, or pass another -o")
        want = self.meta["recipes"]
        take = {r["recipe"]: r for r in rows if meta["recipes"].get(r["recipe"]) == want.get(r["recipe"])}
        changed = sorted({r["recipe"] for r in rows} & set(want) - set(take))
        dropped = sorted({r["recipe"] for r in rows} - set(want))
        log(f"--resume: {len(take)} of {len(want)} recipes from {js}"
            + (f"; {', '.join(changed)} changed since: run again" if changed else "")
            + (f"; {', '.join(dropped)} not in this run: left out of the new table" if dropped else ""))
        self.saved = len(take)
        return take

    def _bad_row(self, rows: list) -> str:
        """What makes the rows of an earlier compare.json (its settings this run's) unfit to take as they are: a recipe
        twice, a task missing, a metric that is not a number, or metrics other than the other rows' ("" if none)."""
        seen, keys = set(), {}
        for r in rows:
            name = r["recipe"]
            if name in seen:
                return f"has two rows of recipe {name}"
            seen.add(name)
            for t in self.tasks:
                m = r.get(t)
                if not isinstance(m, dict) or not m:
                    return f"has no {t} results in the row of recipe {name}"
                wrong = [k for k, v in m.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
                if wrong:
                    return f"has {t} {wrong[0]} {json.dumps(m[wrong[0]])} in the row of recipe {name}, not a number"
                if keys.setdefault(t, set(m)) != set(m):
                    return f"has other {t} metrics in the row of recipe {name} ({', '.join(sorted(m))}) than in the " \
                           f"first ({', '.join(sorted(keys[t]))})"
        return ""

    def update(self, rows: list) -> None:
        """Save the rows so far (complete once every recipe has its row)."""
        left = len(self.meta["recipes"]) - len(rows)
        note = self.note
        if left:
            note = (f"partial: {len(rows)} of {len(self.meta['recipes'])} recipes (the run stopped, or is still "
                    f"going; {self.HINT} to continue it)" + (f"\n\n{note}" if note else ""))
        save(rows, self.tasks, self.out_dir, {**self.meta, "complete": not left}, note)
        self.saved = len(rows)

    def run(self, resume: bool, log: Callable[[str], None], say: Callable[[str], None], go):
        """go(done, on_row): the comparison, with the rows of an earlier run (`resume`), saved as it goes; a stop is
        told what was kept through `say` (shown also with -q: it says how to go on)."""
        self.prepare()
        if resume:
            done = self.earlier(log)
        else:
            self.check_fresh(log)
            done = {}
        try:
            return go(done, self.update)
        except BaseException:
            self.stopped(say)
            raise

    def stopped(self, log: Callable[[str], None]) -> None:
        """Say what a stopped run left (the rows saved so far)."""
        if self.saved:
            log(f"compare: {self.saved} of {len(self.meta['recipes'])} recipes are saved in {self.json_path}; "
                f"{self.HINT} to run the rest")
