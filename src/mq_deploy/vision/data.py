"""Fashion-MNIST (Debian package `dataset-fashion-mnist`: idx files under /usr/share/datasets/fashion-mnist)
and top-1 evaluation of any `logits_fn(pixel_values float32[B, C, H, W]) -> float32[B, classes]`.

Images are scaled to [0, 1] and normalised with the training set's mean/std (MEAN, STD), the same in
training, calibration and evaluation. The label names follow the data set's README.
"""

from __future__ import annotations

import gzip
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import UserError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530
SIZE = 28  # Fashion-MNIST's images are SIZE×SIZE, grey
LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def data_dir(path: Optional[str | Path] = None) -> Path:
    if path is None:
        env = os.environ.get("MQ_DEPLOY_DATA_DIR")
        cands = ([Path(env) / "fashion-mnist"] if env else []) + [DEFAULT_DIR]
        for c in cands:
            if (c / (FILES["test"][0] + ".gz")).is_file() or (c / FILES["test"][0]).is_file():
                return c
        raise UserError("Fashion-MNIST not found: `apt-get install dataset-fashion-mnist` (files under "
                        f"{DEFAULT_DIR}), put the four idx(.gz) files in $MQ_DEPLOY_DATA_DIR/fashion-mnist, or name "
                        "their folder: compile --calib DIR, eval --data DIR, compare --data fashion_mnist=DIR")
    p = Path(path)
    if p.is_file():
        raise UserError(f"{p} is a file: a Vision Mamba's data is a folder holding the four Fashion-MNIST idx(.gz) "
                        "files (a text file calibrates a language model)")
    if not p.is_dir():
        raise UserError(f"Fashion-MNIST directory not found: {p}")
    return p


def _read_idx(path: Path) -> np.ndarray:
    for cand in (path.with_name(path.name + ".gz"), path):
        if cand.is_file():
            opener = gzip.open if cand.suffix == ".gz" else open
            with opener(cand, "rb") as f:
                raw = f.read()
            break
    else:
        raise UserError(f"missing Fashion-MNIST file {path}(.gz)")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 8:
        raise UserError(f"{path}: not an idx file of unsigned bytes")
    nd = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(nd)]
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * nd)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path}: truncated ({data.size} values, header says {dims})")
    return data.reshape(dims)


def load_split(split: str, path: Optional[str | Path] = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [n, 28, 28], labels int64 [n]) of "train" (60k) or "test" (10k)."""
    if split not in FILES:
        raise UserError(f"unknown split {split!r}; use train or test")
    d = data_dir(path)
    imgs, labels = (_read_idx(d / f) for f in FILES[split])
    return imgs, labels.astype(np.int64)


def normalize(images: np.ndarray, channels: int = 1) -> np.ndarray:
    """uint8 [n, H, W] → float32 [n, C, H, W] (grey repeated to C channels)."""
    x = (images.astype(np.float32) / 255.0 - MEAN) / STD
    return np.repeat(x[:, None], channels, axis=1)


def check_image_size(img_size: Optional[int], what: str) -> None:
    """Fashion-MNIST's images are 28×28: one error for a model that takes another size (its patch grid and position
    embedding are fixed), before `what` runs on images it was not made for."""
    if img_size is not None and img_size != SIZE:
        raise UserError(f"the model takes {img_size}×{img_size} images and Fashion-MNIST's are {SIZE}×{SIZE}: {what} "
                        "needs images of the model's size (mq-deploy's Vim data is Fashion-MNIST only)")


def calibration_images(n: int, channels: int = 1, seed: int = 0, path=None, img_size: Optional[int] = None
                       ) -> np.ndarray:
    """`n` normalised training images picked at random (calibration never sees the test set); `img_size`: the
    model's, checked against the data set's."""
    check_image_size(img_size, "calibration")
    imgs, _ = load_split("train", path)
    pick = np.sort(np.random.default_rng(seed).choice(len(imgs), size=min(n, len(imgs)), replace=False))
    return normalize(imgs[pick], channels)


def evaluate_top1(logits_fn: Callable[[np.ndarray], np.ndarray], channels: int = 1, limit: Optional[int] = None,
                  batch_size: int = 256, path=None, progress: bool = False, reference=None,
                  img_size: Optional[int] = None) -> dict:
    """Top-1 accuracy on the 10k test images (the first `limit`); with `reference` (predictions of
    another model), also the agreement with it. `img_size`: the model's, checked against the data set's."""
    check_image_size(img_size, "evaluation")
    imgs, labels = load_split("test", path)
    if limit is not None:
        if limit < 1:
            raise UserError(f"limit must be at least 1, got {limit}")
        imgs, labels = imgs[:limit], labels[:limit]
    preds = []
    from tqdm import tqdm

    for s in tqdm(range(0, len(imgs), batch_size), desc="fashion_mnist", disable=not progress,
                  leave=not sys.stderr.isatty()):  # in a log, the finished bar ends its line
        logits = np.asarray(logits_fn(normalize(imgs[s:s + batch_size], channels)))
        if not np.all(np.isfinite(logits)):  # (argmax would pick class 0 for a row of NaN)
            raise UserError("the model's logits are not finite (NaN or Inf): its weights or graph are broken (an "
                            "OUTDIR's files: `mq-deploy validate OUTDIR` checks them)")
        preds.append(logits.argmax(-1))
    pred = np.concatenate(preds)
    out = {"task": "fashion_mnist", "top1": float((pred == labels).mean()), "n": int(len(labels))}
    if reference is not None:
        out["agreement"] = float((pred == np.asarray(reference)[:len(pred)]).mean())
    out["predictions"] = pred
    return out
