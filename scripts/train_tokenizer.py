"""Train the byte-level BPE tokenizer of the bundled model.

    python scripts/train_tokenizer.py --corpus ../shared/data/train/corpus.txt.xz \
        --vocab 8192 --out src/mq_deploy/assets/mamba-tiny/tokenizer.json

The bundled model must stay under 10 MB, and a 50k-token embedding alone would take most of that,
so it gets its own 8k vocabulary trained on the same licensed corpus. Ids 0 and 1 are
`<|endoftext|>` and `<|padding|>`, as in the GPT-NeoX tokenizer of the reference models.
"""

from __future__ import annotations

import argparse
import lzma
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers


def iter_documents(path: Path, max_chars: int):
    """Yield documents (separated by one blank line) up to `max_chars` characters in total."""
    seen = 0
    buf: list[str] = []
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip() == "":
                if buf:
                    doc = "".join(buf)
                    seen += len(doc)
                    yield doc
                    buf = []
                    if seen >= max_chars:
                        return
            else:
                buf.append(line)
    if buf:
        yield "".join(buf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, required=True)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--max-chars", type=int, default=40_000_000, help="characters of corpus to learn merges from")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=args.vocab,
        special_tokens=["<|endoftext|>", "<|padding|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=True,
    )
    tok.train_from_iterator(iter_documents(args.corpus, args.max_chars), trainer=trainer)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(args.out))
    print(f"wrote {args.out} ({tok.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
