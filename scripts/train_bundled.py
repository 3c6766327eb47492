"""Train the small Mamba model that ships inside the package (run on a GPU machine).

    python scripts/train_bundled.py --corpus ../shared/data/train/corpus.txt.xz \
        --tokenizer src/mq_deploy/assets/mamba-tiny/tokenizer.json \
        --out src/mq_deploy/assets/mamba-tiny --minutes 4

Architecture: Hugging Face `MambaForCausalLM` (Mamba-1), d_model 192 (= 12·16, so Hadamard sizes
that are not powers of two are exercised), 8 layers, d_inner 384, d_state 16, dt_rank 12,
vocab 8192 (own BPE, `scripts/train_tokenizer.py`), tied embeddings. The parallel scan is the
pure-PyTorch one (`use_mambapy=True`, which in transformers 5.x imports `mambapy.pscan`, so the small
pure-Python `mambapy` package must be installed); no mamba-ssm needed. Weights are saved as
fp16 safetensors (about 7 MB) with the tokenizer and a `training.json` log beside them.
The last 1% of documents are held out for the validation loss that is recorded.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from transformers import MambaConfig, MambaForCausalLM
from transformers.utils.import_utils import is_mambapy_available


def load_documents(path: Path, max_chars: int) -> list[str]:
    with lzma.open(path, "rt", encoding="utf-8") as f:
        text = f.read(max_chars) if max_chars > 0 else f.read()
    docs = [d.strip("\n") for d in text.split("\n\n")]
    return [d for d in docs if d]


def tokenize(tok: Tokenizer, docs: list[str], eot: int) -> np.ndarray:
    ids: list[int] = []
    for enc in tok.encode_batch(docs):
        ids.extend(enc.ids)
        ids.append(eot)
    return np.asarray(ids, dtype=np.int32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--d-model", type=int, default=192)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--minutes", type=float, default=4.0, help="wall-clock training budget")
    ap.add_argument("--max-chars", type=int, default=0, help="read only this many characters (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    # check what the run needs before minutes of tokenizing
    if not is_mambapy_available():
        # Newer transformers import the parallel scan from the separate `mambapy` package; without it
        # the model silently falls back to a 512-step Python loop per layer (far too slow to train).
        raise SystemExit("the `mambapy` package is not importable: install it (pip install mambapy) first")
    if not torch.cuda.is_available():
        raise SystemExit("training the bundled model needs a CUDA GPU (torch.cuda.is_available() is False)")
    for what, path in (("--corpus", args.corpus), ("--tokenizer", args.tokenizer)):
        if not path.is_file():
            raise SystemExit(f"{what}: no such file: {path}")

    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    dev = torch.device("cuda")
    tok = Tokenizer.from_file(str(args.tokenizer))
    vocab = tok.get_vocab_size()
    t0 = time.time()
    docs = load_documents(args.corpus, args.max_chars)
    n_val = max(1, len(docs) // 100)
    train_ids = tokenize(tok, docs[:-n_val], eot=0)
    val_ids = tokenize(tok, docs[-n_val:], eot=0)
    print(f"tokenized {len(docs)} docs: {train_ids.size} train / {val_ids.size} val tokens in {time.time()-t0:.0f}s", flush=True)

    cfg = MambaConfig(
        vocab_size=vocab, hidden_size=args.d_model, state_size=16, num_hidden_layers=args.layers,
        expand=2, conv_kernel=4, time_step_rank=math.ceil(args.d_model / 16), use_bias=False,
        use_conv_bias=True, residual_in_fp32=True, tie_word_embeddings=True, pad_token_id=1,
        bos_token_id=0, eos_token_id=0, use_mambapy=True,
    )
    model = MambaForCausalLM(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"params {n_params}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "A_log" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "A_log" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=True)
    data = torch.from_numpy(train_ids.astype(np.int64)).to(dev)
    n_win = (data.numel() - 1) // args.seq
    offsets = torch.arange(args.seq + 1, device=dev)
    budget = args.minutes * 60.0
    log, it, start = [], 0, time.time()
    warmup = 100
    while True:
        elapsed = time.time() - start
        if elapsed > budget:
            break
        frac = elapsed / budget
        lr = args.lr * min(1.0, (it + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        # Gather the batch on the GPU in one indexing op (slicing with CUDA scalars syncs once per row).
        idx = torch.from_numpy(rng.integers(0, n_win, size=args.batch) * args.seq).to(dev)
        x = data[idx[:, None] + offsets]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(input_ids=x[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, vocab), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        it += 1
        if it % 100 == 0:
            log.append({"it": it, "loss": float(loss), "lr": lr, "t": time.time() - start})
            print(log[-1], flush=True)

    model.eval()
    vdata = torch.from_numpy(val_ids.astype(np.int64)).to(dev)
    nv = (vdata.numel() - 1) // args.seq
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for i in range(0, nv, 16):
            xb = torch.stack([vdata[j * args.seq:(j + 1) * args.seq + 1] for j in range(i, min(nv, i + 16))])
            lg = model(input_ids=xb[:, :-1]).logits.float()
            tot += float(torch.nn.functional.cross_entropy(lg.reshape(-1, vocab), xb[:, 1:].reshape(-1), reduction="sum"))
            cnt += xb[:, 1:].numel()
    val_loss = tot / max(cnt, 1)
    print(f"val loss {val_loss:.4f} ppl {math.exp(val_loss):.2f} after {it} iterations", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    model.config.use_mambapy = False
    model.half().save_pretrained(args.out, safe_serialization=True)
    if args.tokenizer.resolve() != (args.out / "tokenizer.json").resolve():
        shutil.copy(args.tokenizer, args.out / "tokenizer.json")
    info = {"args": {k: str(v) for k, v in vars(args).items()}, "params": n_params, "iterations": it,
            "trained_tokens": it * args.batch * args.seq, "val_tokens": cnt, "val_loss": val_loss,
            "val_ppl": math.exp(val_loss), "gpu": torch.cuda.get_device_name(), "log": log}
    (args.out / "training.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
