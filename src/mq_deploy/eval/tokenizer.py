"""A small wrapper around a Hugging Face `tokenizers` JSON file, as evaluation needs it.

Protocol: `encode` never adds special tokens (no BOS/EOS, like lm-evaluation-harness's
`tok_encode(..., add_special_tokens=False)` for causal models and like the GPTQ perplexity
scripts with the GPT-NeoX tokenizer, which has no BOS), and padding/truncation configured in the
JSON file are switched off so that long texts are encoded whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Sequence

from mq_deploy.errors import UserError

EOT_TOKEN = "<|endoftext|>"
#: end-of-text tokens looked for, in order (GPT-NeoX's first; SentencePiece / Llama-style names after it)
EOT_TOKENS = (EOT_TOKEN, "</s>", "<|end_of_text|>", "<eos>")
PAD_TOKEN = "<|padding|>"


class TextTokenizer:
    """Text <-> token ids with the special ids evaluation needs.

    `path` is a tokenizer.json file, or a directory that holds one.

    Attributes:
        eot_id: id of the end-of-text token, `<|endoftext|>` or the first of `EOT_TOKENS` the vocabulary has (the
            prefix token for an empty context, generation's stop token); a tokenizer without one is refused when
            this is read (perplexity and calibration do not need it).
        pad_id: id of `<|padding|>` if the vocabulary has it, else the end-of-text token's, else 0 (padding is
            masked out wherever it is used).
        vocab_size: number of ids, added tokens included.
        model_vocab: None, or the model's vocabulary size (`for_model`): `encode` then refuses ids at or above it.
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
        eot = next((i for i in map(tok.token_to_id, EOT_TOKENS) if i is not None), None)
        pad = tok.token_to_id(PAD_TOKEN)
        self._eot_id: Optional[int] = None if eot is None else int(eot)
        self.pad_id: int = int(pad) if pad is not None else (self._eot_id or 0)
        self.vocab_size: int = int(tok.get_vocab_size(with_added_tokens=True))
        self.model_vocab: Optional[int] = None

    @property
    def eot_id(self) -> int:
        if self._eot_id is None:
            raise UserError(f"tokenizer {self.path} has no end-of-text token ({', '.join(EOT_TOKENS)}): zero-shot "
                            "tasks (the empty context's token) and generation (its stop token) need one; perplexity "
                            "and calibration do not")
        return self._eot_id

    def for_model(self, vocab_size: Optional[int]) -> "TextTokenizer":
        """Refuse, from now on, token ids at or above the model's vocabulary `vocab_size` (None: unknown)."""
        self.model_vocab = None if vocab_size is None else int(vocab_size)
        return self

    def _checked(self, ids: list[int]) -> list[int]:
        if self.model_vocab is not None and ids and max(ids) >= self.model_vocab:
            bad = max(ids)
            raise UserError(f"tokenizer {self.path} gives token id {bad} ({self._tok.id_to_token(bad)!r}), outside the "
                            f"model's vocabulary of {self.model_vocab} ids: it is not this model's tokenizer (pass the "
                            "model's with --tokenizer)")
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no special tokens added."""
        return self._checked(list(self._tok.encode(text, add_special_tokens=False).ids))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` for many texts at once (parallel inside `tokenizers`)."""
        if not texts:
            return []
        encs = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [self._checked(list(e.ids)) for e in encs]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens are kept so that decode(encode(s)) == s."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def __repr__(self) -> str:
        return (
            f"TextTokenizer({self.path!r}, vocab_size={self.vocab_size}, "
            f"eot_id={self._eot_id}, pad_id={self.pad_id})"
        )
