#!/usr/bin/env python3
"""Train the reference Vim on Fashion-MNIST (GPU if present) and write a small checkpoint directory.

    python scripts/train_vim.py --data /usr/share/datasets/fashion-mnist --out OUT/vim-fmnist \
        --d-model 192 --depth 6 --patch 4 --seconds 150

OUT holds config.json (model_type "vim", official `VisionMamba` field names), model.safetensors
(fp16, official state-dict names) and training.json (steps, time, fp32 test top-1 of the fp16
weights). Training runs for a wall-clock budget with a cosine learning rate over that budget, so the
same command fits any machine. Needs only torch + numpy (no onnx), so it runs on the GPU machine.
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
from mq_deploy.vision.data import load_split, normalize  # noqa: E402
from mq_deploy.vision.model import VimConfig  # noqa: E402
from mq_deploy.vision.torch_ref import VimTorch  # noqa: E402


def save_safetensors(tensors: dict, path: Path) -> None:
    """Minimal safetensors writer (fp16 / fp32), so the GPU machine needs no extra package."""
    header, blobs, off = {}, [], 0
    for k in sorted(tensors):
        a = np.ascontiguousarray(tensors[k])
        dt = {np.float16: "F16", np.float32: "F32"}[a.dtype.type]
        b = a.tobytes()
        header[k] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


@torch.no_grad()
def accuracy(model, x, y, bs=500):
    model.eval()
    correct = 0
    for s in range(0, len(x), bs):
        correct += (model(x[s:s + bs]).argmax(-1) == y[s:s + bs]).sum().item()
    model.train()
    return correct / len(x)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=None, help="folder with the four Fashion-MNIST idx(.gz) files")
    ap.add_argument("--out", required=True)
    ap.add_argument("--d-model", type=int, default=192)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--patch", type=int, default=4)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--seconds", type=float, default=150.0, help="wall-clock training budget")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after N steps (0: only the time budget)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-limit", type=int, default=0, help="score only the first N test images (0: all 10k)")
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = VimConfig(d_model=args.d_model, depth=args.depth, num_classes=10, img_size=28, patch_size=args.patch,
                    channels=1)
    model = VimTorch(cfg).to(dev)
    xtr, ytr = load_split("train", args.data)
    xte, yte = load_split("test", args.data)
    if args.eval_limit:
        xte, yte = xte[:args.eval_limit], yte[:args.eval_limit]
    xtr = torch.from_numpy(normalize(xtr)).to(dev)
    ytr = torch.from_numpy(ytr).to(dev)
    xte = torch.from_numpy(normalize(xte)).to(dev)
    yte = torch.from_numpy(yte).to(dev)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "A_" not in n and "pos_embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "A_" not in n and "pos_embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay}, {"params": other, "weight_decay": 0}],
                            lr=args.lr, betas=(0.9, 0.98))
    g = torch.Generator(device="cpu").manual_seed(args.seed)
    t0, step, epoch, losses = time.time(), 0, 0, []
    warm = 100
    done = False
    while not done:
        perm = torch.randperm(len(xtr), generator=g).to(dev)
        for s in range(0, len(xtr) - args.batch + 1, args.batch):
            frac = (time.time() - t0) / args.seconds
            if frac >= 1 or (args.max_steps and step >= args.max_steps):
                done = True
                break
            lr = args.lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
            for grp in opt.param_groups:
                grp["lr"] = lr
            idx = perm[s:s + args.batch]
            x, y = xtr[idx], ytr[idx]
            flip = torch.rand(len(x), device=dev) < 0.5  # horizontal flips (labels are flip-invariant)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(model(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item()) if step % 50 == 0 else None
            if step % 100 == 0:
                print(f"step {step} epoch {epoch} loss {loss.item():.4f} lr {lr:.2e} t {time.time() - t0:.0f}s",
                      flush=True)
            step += 1
        epoch += 1
    train_s = time.time() - t0
    # store fp16 weights and report the accuracy of exactly those weights (in fp32 arithmetic)
    sd16 = {k: v.detach().to(torch.float16).cpu().numpy() for k, v in model.state_dict().items()}
    model.load_state_dict({k: torch.from_numpy(v.astype(np.float32)) for k, v in sd16.items()})
    model.to(dev)
    acc = accuracy(model, xte, yte)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(sd16, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    info = {"data": "Fashion-MNIST (dataset-fashion-mnist), 60k train / 10k test", "steps": step,
            "epochs": round(step * args.batch / len(xtr), 2), "batch": args.batch, "lr": args.lr,
            "weight_decay": args.weight_decay, "seconds": round(train_s, 1), "device": str(
                torch.cuda.get_device_name() if dev.type == "cuda" else "cpu"), "torch": torch.__version__,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "test_top1_fp32": acc, "test_images": int(len(xte)), "loss_every_50_steps": [round(v, 4) for v in losses],
            "command": " ".join(sys.argv)}
    (out / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps({k: v for k, v in info.items() if k != "loss_every_50_steps"}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
