"""A small wrapper around a Hugging Face `tokenizers` JSON file, as evaluation needs it.

Protocol: `encode` never adds special tokens (no BOS/EOS, like lm-evaluation-harness's
`tok_encode(..., add_special_tokens=False)` for causal models and like the GPTQ perplexity
scripts with the GPT-NeoX tokenizer, which has no BOS), and padding/truncation configured in the
JSON file are switched off so that long texts are encoded whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

from mq_deploy.errors import UserError

EOT_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|padding|>"


class TextTokenizer:
    """Text <-> token ids with the special ids evaluation needs.

    `path` is a tokenizer.json file, or a directory that holds one.

    Attributes:
        eot_id: id of `<|endoftext|>` (the prefix token for an empty context).
        pad_id: id of `<|padding|>` if the vocabulary has it, else `eot_id`.
        vocab_size: number of ids, added tokens included.
    """

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise UserError(
                f"tokenizer file not found: {p}; pass the path of a Hugging Face tokenizer.json "
                "(or the model directory that holds one)"
            )
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise UserError(
                f"{p} is not a Hugging Face `tokenizers` JSON file ({exc}); pass a tokenizer.json"
            ) from None
        self._init(tok, str(p))

    @classmethod
    def from_tokenizer(cls, tok, name: str = "<in-memory>") -> "TextTokenizer":
        """Wrap an already loaded `tokenizers.Tokenizer`."""
        self = cls.__new__(cls)
        self._init(tok, name)
        return self

    def _init(self, tok, name: str) -> None:
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok
        self.path = name
        eot = tok.token_to_id(EOT_TOKEN)
        if eot is None:
            raise UserError(
                f"tokenizer {name} has no {EOT_TOKEN} token; evaluation needs it as the "
                "end-of-text / empty-context token (GPT-NeoX style tokenizers have it as id 0)"
            )
        pad = tok.token_to_id(PAD_TOKEN)
        self.eot_id: int = int(eot)
        self.pad_id: int = int(pad) if pad is not None else self.eot_id
        self.vocab_size: int = int(tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no special tokens added."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many texts at once (parallel inside `tokenizers`)."""
        if not texts:
            return []
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encs]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens are kept so that decode(encode(s)) == s."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return (
            f"TextTokenizer({self.path!r}, vocab_size={self.vocab_size}, "
            f"eot_id={self.eot_id}, pad_id={self.pad_id})"
        )
