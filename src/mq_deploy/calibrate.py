"""Calibration: run the current graph in onnxruntime with the quantization points' tensors marked as
outputs, and reduce them into a named statistics artifact (`calib.npz` + `calib.json`).

Per point: absmax, per-channel absmax, minimum and maximum (last axis), a random sample of |x| (for
percentile / MSE scales), and for the points listed in `cov_points` the second-moment matrix XᵀX/n (KLT,
GPTQ). Points listed in `token_split` ({point: token index}, tensors [batch, tokens, channels]) also get
absmax / per-channel absmax / sample of that one token and of all the others, under `<point>@token` and
`<point>@rest` (Vim's class token, quantized with its own scale).
Deterministic for a fixed seed: the windows and the samples come from `numpy.random.default_rng(seed)`.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from .errors import UserError

SAMPLE_PER_POINT = 1 << 17  # |x| values kept per point for percentile / MSE / entropy scales
OUTPUT_BUDGET = 256 << 20  # bytes of marked intermediate outputs per onnxruntime call


def check_calib_file(path: str | Path) -> Path:
    """A language model's calibration text file, or a UserError that says what `path` is instead."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"calibration file {p} is a folder: a language model calibrates on a text file (.txt, .jsonl, "
                        "compressed too); a folder of Fashion-MNIST files calibrates a Vision Mamba (Vim)")
    if not p.is_file():
        raise UserError(f"calibration file not found: {p}")
    return p


def read_calib_text(path: str | Path, max_chars: int) -> str:
    """The first `max_chars` characters of a calibration text file (plain text), or the rows they reach of JSON lines of
    {"text": str} (.jsonl / .json; either compressed with .xz / .bz2 / .gz or not), read and joined as eval does."""
    from .eval.data import is_jsonl, jsonl_text

    p = check_calib_file(path)
    opener = {".xz": lzma.open, ".bz2": bz2.open, ".gz": gzip.open}.get(p.suffix.lower(), open)
    rows = is_jsonl(p)
    try:
        with opener(p, "rt", encoding="utf-8") as f:
            text = f.read(max_chars)
            if rows and text and not text.endswith("\n"):
                text += f.readline()  # (JSON lines: the row the limit cut, read whole)
    except (OSError, UnicodeDecodeError, EOFError, lzma.LZMAError) as e:
        raise UserError(f"could not read calibration file {p}: {e}") from None
    if rows:
        text = jsonl_text(p, text)
    if not text.strip():
        raise UserError(f"calibration file {p} holds no text")
    return text


def calibration_windows(token_ids: np.ndarray, samples: int, seq_len: int, seed: int) -> np.ndarray:
    """`samples` windows of `seq_len` tokens at random non-overlapping offsets (fewer if the text is short)."""
    n_win = len(token_ids) // seq_len
    if n_win < 1:
        raise UserError(f"calibration text has {len(token_ids)} tokens, fewer than one window of {seq_len}")
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n_win, size=min(samples, n_win), replace=False))
    return np.stack([token_ids[i * seq_len:(i + 1) * seq_len] for i in pick]).astype(np.int64)


@dataclass
class Stats:
    """Calibration statistics by quantization point."""
    absmax: dict = field(default_factory=dict)
    chan: dict = field(default_factory=dict)
    sample: dict = field(default_factory=dict)
    second: dict = field(default_factory=dict)  # XᵀX / n
    chan_sum: dict = field(default_factory=dict)  # per-channel Σx and Σx² (channel variance, for the report)
    chan_sumsq: dict = field(default_factory=dict)
    chan_lo: dict = field(default_factory=dict)  # per-channel minimum / maximum (signed)
    chan_hi: dict = field(default_factory=dict)
    count: dict = field(default_factory=dict)
    gamma: list = field(default_factory=list)  # RMSNorm weights of the calibrated model (to undo γ in covariances)
    meta: dict = field(default_factory=dict)

    def cov(self, pt: str) -> np.ndarray:
        if pt not in self.second:
            raise UserError(f"no covariance statistics for {pt}")
        return self.second[pt]

    def chan_var(self, pt: str) -> np.ndarray:
        n = self.count[pt]
        mean = self.chan_sum[pt] / n
        return np.maximum(self.chan_sumsq[pt] / n - mean ** 2, 0.0)

    def chan_absmax(self, pt: str) -> np.ndarray:
        if pt not in self.chan:
            raise UserError(f"no per-channel statistics for {pt}")
        return self.chan[pt]

    def save(self, out_dir: Path) -> list[Path]:
        """calib.npz (per point: `absmax`, per-channel max |x| `chan` and variance `var`, the |x| `sample`) and
        calib.json. XᵀX is not kept: nothing reads it back, and a GPTQ recipe's are GBs (fp64, ~30 GB for
        mamba-2.8b), written and compressed for minutes."""
        arrays = {}
        var = {pt: self.chan_var(pt) for pt in self.chan_sum if self.count.get(pt)}
        for kind, d in (("absmax", self.absmax), ("chan", self.chan), ("var", var), ("sample", self.sample)):
            for pt, v in d.items():
                arrays[f"{pt}/{kind}"] = np.asarray(v)
        np.savez_compressed(out_dir / "calib.npz", **arrays)
        (out_dir / "calib.json").write_text(json.dumps({**self.meta, "points": sorted(self.absmax),
                                                        "count": self.count}, indent=1) + "\n")
        return [out_dir / "calib.npz", out_dir / "calib.json"]


def collect(runner_factory, points: dict[str, str], windows: np.ndarray, cov_points: Iterable[str] = (),
            batch_size: int = 8, seed: int = 0, progress: bool = True, gamma=None, meta=None,
            token_split: Optional[dict] = None) -> Stats:
    """Run windows through the graph and reduce every point's tensor into `Stats`.

    `runner_factory(extra_outputs)` returns a runner whose `run(feeds)` gives the named outputs."""
    from tqdm import tqdm

    tensors = sorted(set(points.values()))
    runner = runner_factory(tensors)
    cov_points = set(cov_points)
    rng = np.random.default_rng(seed + 1)
    st = Stats(gamma=list(gamma or []), meta=dict(meta or {}))
    n_batches = -(-len(windows) // batch_size)
    per_batch = max(256, SAMPLE_PER_POINT // n_batches)
    token_split = dict(token_split or {})
    samples: dict[str, list] = {}

    def record(pt: str, ax: np.ndarray) -> None:  # ax: |x| as (rows, channels)
        cm = ax.max(axis=0)
        st.chan[pt] = cm if pt not in st.chan else np.maximum(st.chan[pt], cm)
        st.absmax[pt] = max(st.absmax.get(pt, 0.0), float(cm.max()))
        flat = ax.ravel()
        k = min(per_batch, flat.size)
        samples.setdefault(pt, []).append(flat[rng.integers(0, flat.size, size=k)])  # with replacement: O(k)

    for s in tqdm(range(0, len(windows), batch_size), desc="calibrating", unit="batch", disable=not progress,
                  leave=not sys.stderr.isatty()):  # in a log, the finished bar ends its line
        out = runner.run({"input_ids": windows[s:s + batch_size]})
        for pt, name in points.items():
            x = np.asarray(out[name], np.float32).reshape(-1, out[name].shape[-1])
            record(pt, np.abs(x))
            lo, hi = x.min(axis=0), x.max(axis=0)
            st.chan_lo[pt] = lo if pt not in st.chan_lo else np.minimum(st.chan_lo[pt], lo)
            st.chan_hi[pt] = hi if pt not in st.chan_hi else np.maximum(st.chan_hi[pt], hi)
            if pt in token_split:
                x3 = np.abs(np.asarray(out[name], np.float32))
                if x3.ndim != 3:
                    raise UserError(f"token statistics for {pt} need a [batch, tokens, channels] tensor, got {x3.shape}")
                t = token_split[pt]
                record(f"{pt}@token", x3[:, t])
                record(f"{pt}@rest", np.delete(x3, t, axis=1).reshape(-1, x3.shape[-1]))
            # per batch in fp32 (a few thousand rows), across batches in fp64
            st.chan_sum[pt] = st.chan_sum.get(pt, 0) + x.sum(axis=0).astype(np.float64)
            st.chan_sumsq[pt] = st.chan_sumsq.get(pt, 0) + np.einsum("ij,ij->j", x, x).astype(np.float64)
            if pt in cov_points:  # fp32 GEMM per batch (fast BLAS), accumulated in fp64 across batches
                st.second[pt] = st.second.get(pt, 0) + (x.T @ x).astype(np.float64)
            st.count[pt] = st.count.get(pt, 0) + x.shape[0]
    for pt in samples:
        st.sample[pt] = np.concatenate(samples[pt]).astype(np.float32)
    for pt in points:
        if pt in st.second:
            st.second[pt] = st.second[pt] / st.count[pt]
    return st
