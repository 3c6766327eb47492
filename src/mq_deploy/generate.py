"""Token generation with the stateful graphs in onnxruntime: prefill once, then one decode step per token.

    sess = StatefulSession.from_outdir("out/", flavour="portable")
    res = generate(sess, [[12, 7, 99]], max_new_tokens=20, sampling=Sampling())   # greedy
    res.tokens[0]                                                                  # new ids (EOS included)

Prompts of different lengths are LEFT-padded into one batch (the prefill graph masks the padding, so
each row ends in the states of its prompt run alone). The first new token comes from the prefill
logits, each further one from a decode step. A row stops at EOS (kept in its output, as Hugging Face
`generate` keeps it); finished rows keep stepping on EOS until every row is done, and their logits
are ignored.

The states are opaque to this module: whatever `conv_state.{i}` / `ssm_state.{i}` the prefill graph
returns is fed to the step graph, so a recipe's scaled state domain (DESIGN.md §2) passes through
unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import onnx

from .errors import UserError
from .outdir import missing_file, read_manifest

FLAVOURS = {"portable": ".portable.onnx", "plugin": ".onnx", "tensorrt": ".engine"}
DEFAULT_MAX_PROMPT_TOKENS = 2048
DEFAULT_MAX_NEW_TOKENS = 64  # (the CLI's --max-new-tokens default too)


def graph_files(flavour: str) -> tuple[str, str]:
    if flavour not in FLAVOURS:
        raise UserError(f"unknown flavour {flavour!r}; choose one of {', '.join(FLAVOURS)}")
    return f"model.prefill{FLAVOURS[flavour]}", f"model.decode{FLAVOURS[flavour]}"


@dataclass(frozen=True)
class Sampling:
    """Greedy (argmax) by default; otherwise temperature + nucleus (top-p) sampling with a seeded generator."""
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    seed: Optional[int] = None

    def __post_init__(self) -> None:
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise UserError(f"--temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")


def sample(logits: np.ndarray, cfg: Sampling, rng: np.random.Generator) -> np.ndarray:
    """Next token per row of `logits` [batch, vocab]; a UserError where they are not finite (an argmax would still pick
    a token, and text would come out of a broken model)."""
    if not np.all(np.isfinite(logits)):
        raise UserError("the model's logits are not finite (NaN or Inf) while generating: its weights or graph are "
                        "broken (an OUTDIR's files: `mq-deploy validate OUTDIR` checks them)")
    if cfg.greedy:
        return np.argmax(logits, axis=-1).astype(np.int64)
    z = logits.astype(np.float64) / cfg.temperature
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    out = np.empty(len(p), np.int64)
    for r, pr in enumerate(p):
        order = np.argsort(-pr, kind="stable")
        cum = np.cumsum(pr[order])
        keep = order[: int(np.searchsorted(cum, cfg.top_p)) + 1]  # smallest set whose mass reaches top_p
        q = pr[keep] / pr[keep].sum()
        out[r] = keep[rng.choice(len(keep), p=q)]
    return out


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask) int64 [batch, longest] with each prompt right-aligned."""
    L = max(len(p) for p in prompts)
    ids = np.full((len(prompts), L), pad_id, np.int64)
    mask = np.zeros((len(prompts), L), np.int64)
    for r, p in enumerate(prompts):
        if len(p):
            ids[r, L - len(p):] = p
            mask[r, L - len(p):] = 1
    return ids, mask


def check_outdir(outdir: str | Path) -> Path:
    """A compile OUTDIR of a language model (one with something to generate); UserError otherwise."""
    out = Path(outdir)
    if not out.is_dir():
        raise UserError(f"{out} is not a directory; pass the OUTDIR of `mq-deploy compile`")
    from .trt import manifest_input

    manifest = read_manifest(out)
    if manifest_input(manifest)[0] == "pixel_values":
        raise UserError(f"{out} is a Vision Mamba (Vim) image classifier: it has no text to generate (evaluate it with "
                        "`mq-deploy eval OUTDIR --task fashion_mnist`)")
    return out


def outdir_graphs(outdir: str | Path, flavour: str = "portable") -> tuple[Path, Path]:
    """Paths of the prefill and decode graphs of a compile OUTDIR; UserError if it lacks them."""
    out = check_outdir(outdir)
    paths = tuple(out / name for name in graph_files(flavour))
    for p in paths:
        if not p.is_file() and flavour == "tensorrt":
            raise UserError(f"{out} has no {p.name}: build the engines on this machine first, `mq-deploy build {out} "
                            f"--graph prefill --plugins LIB` and `... --graph decode ...`")
        if not p.is_file():
            raise missing_file(out, read_manifest(out), p.name, "a stateful graph generation needs")
    return paths


class StatefulSession:
    """The prefill and decode-step graphs of one flavour in onnxruntime, with input checks."""

    def __init__(self, prefill: str | Path | onnx.ModelProto, decode: str | Path | onnx.ModelProto,
                 threads: Optional[int] = None):
        from .backends.ort import OrtRunner

        self.prefill_runner = OrtRunner(prefill, threads=threads)
        self.decode_runner = OrtRunner(decode, threads=threads)
        ins = self.decode_runner.inputs
        # static dims of every state input (the batch dim is symbolic); name → (d1, d2)
        self.state_shapes: dict[str, tuple] = {n: tuple(d[1:]) for n, d in ins.items() if n != "input_ids"}
        self.vocab_size = int(next(iter(self.decode_runner.outputs.values()))[-1])

    @classmethod
    def from_outdir(cls, outdir: str | Path, flavour: str = "portable", threads: Optional[int] = None):
        return cls(*outdir_graphs(outdir, flavour), threads=threads)

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, dict]:
        """Logits [batch, vocab] of the last position and the per-layer states."""
        ids, mask = _prefill_inputs(input_ids, attention_mask, self.vocab_size)
        out = self.prefill_runner.run({"input_ids": ids, "attention_mask": mask})
        logits = out.pop("logits")
        return logits, out

    def step(self, tokens: np.ndarray, states: dict) -> tuple[np.ndarray, dict]:
        """One decode step: tokens [batch] or [batch, 1] + states → logits [batch, vocab], new states."""
        ids = _step_ids(tokens, self.vocab_size)
        feeds = {"input_ids": ids}
        for name, a in _step_states(states, self.state_shapes, ids.shape[0], np.asarray).items():
            feeds[name] = a.astype(np.float32, copy=False)
        out = self.decode_runner.run(feeds)
        logits = out.pop("logits")
        return logits, {k.replace("_out.", "."): v for k, v in out.items()}


class EngineSession:
    """The prefill and decode-step TensorRT engines of an OUTDIR (`mq-deploy build OUTDIR --graph prefill` /
    `--graph decode`), with StatefulSession's calls and checks. The states stay on the GPU between calls (torch CUDA
    tensors: the decode engine reads the previous call's outputs where they are); the logits come back as numpy."""

    def __init__(self, prefill: str | Path, decode: str | Path, plugin_lib: Optional[str] = None):
        from .backends.trt_engine import TrtEngine

        why = "mq-deploy generate --flavour tensorrt"
        self.prefill_engine = TrtEngine(prefill, plugin_lib, why=why, smaller="shorten the prompts / pass fewer")
        self.decode_engine = TrtEngine(decode, plugin_lib, why=why, smaller="pass fewer prompts",
                                       stream=self.prefill_engine.stream)  # one stream: the states pass in order
        pre, dec = self.prefill_engine, self.decode_engine
        if set(pre.inputs) != {"input_ids", "attention_mask"} or "logits" not in dec.outputs:
            raise UserError(f"{prefill} / {decode} are not the prefill and decode-step engines of one OUTDIR (inputs "
                            f"{', '.join(pre.inputs)} / outputs {', '.join(dec.outputs)}); build them with "
                            "`mq-deploy build OUTDIR --graph prefill` and `--graph decode`")
        self.state_shapes = {n: dec.shape(n)[1:] for n in dec.inputs if n != "input_ids"}
        carried = {n for n in pre.outputs if n != "logits"}
        stepped = {n.replace("_out.", ".") for n in dec.outputs if n != "logits"}
        if carried != set(self.state_shapes) or stepped != carried:
            raise UserError(f"the states of {prefill} ({len(carried)}) and {decode} ({len(self.state_shapes)}) do not "
                            "match: were both engines built from the same OUTDIR?")
        self.vocab_size = int(dec.shape("logits")[-1])

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> tuple[np.ndarray, dict]:
        """Logits [batch, vocab] (numpy) of the last position and the per-layer states (on the GPU)."""
        ids, mask = _prefill_inputs(input_ids, attention_mask, self.vocab_size)
        out = self.prefill_engine.run({"input_ids": ids, "attention_mask": mask})
        logits = out.pop("logits")
        return logits.float().cpu().numpy(), out

    def step(self, tokens: np.ndarray, states: dict) -> tuple[np.ndarray, dict]:
        """One decode step: tokens [batch] or [batch, 1] + states (on the GPU, or numpy) → logits, new states."""
        ids = _step_ids(tokens, self.vocab_size)
        feeds = {"input_ids": ids, **_step_states(states, self.state_shapes, ids.shape[0], _as_array_or_tensor)}
        out = self.decode_engine.run(feeds)
        logits = out.pop("logits")
        return logits.float().cpu().numpy(), {k.replace("_out.", "."): v for k, v in out.items()}


def _as_array_or_tensor(a):
    """A torch tensor as it is (the engine session's states stay on the device); anything else as a numpy array."""
    return a if hasattr(a, "data_ptr") and hasattr(a, "is_cuda") else np.asarray(a)


def _check_ids(ids: np.ndarray, vocab_size: int) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise UserError(f"token id {int(ids.max() if ids.max() >= vocab_size else ids.min())} is outside "
                        f"the model's vocabulary [0, {vocab_size}); is the tokenizer the model's?")


def _prefill_inputs(input_ids, attention_mask, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The prefill's (input_ids, attention_mask) as int64, checked: [batch, sequence], 0/1 left padding, ids in the
    vocabulary."""
    ids = np.asarray(input_ids, np.int64)
    mask = np.asarray(attention_mask, np.int64)
    if ids.ndim != 2 or ids.shape[1] == 0 or mask.shape != ids.shape:
        raise UserError(f"prefill: input_ids {ids.shape} and attention_mask {mask.shape} must both be "
                        "[batch, sequence] with sequence >= 1")
    if not np.isin(mask, (0, 1)).all() or not mask[:, -1].all() or (np.diff(mask, axis=1) < 0).any():
        raise UserError("prefill: attention_mask must be 0/1 LEFT padding (zeros, then ones, last column all "
                        "ones); pad prompts on the left, e.g. with generate.left_pad")
    _check_ids(ids, vocab_size)
    return ids, mask


def _step_ids(tokens, vocab_size: int) -> np.ndarray:
    ids = np.asarray(tokens, np.int64).reshape(-1, 1)
    _check_ids(ids, vocab_size)
    return ids


def _step_states(states: dict, shapes: dict, batch: int, as_array) -> dict:
    """{state: as_array(value)} for every state the decode step takes, each checked to be [batch, *its dims] and of a
    floating type (a numpy array, or a torch tensor: its dtype's is_floating_point)."""
    missing = sorted(set(shapes) - set(states))
    if missing:
        raise UserError(f"decode step: missing state input(s) {', '.join(missing[:4])}"
                        f"{' ...' if len(missing) > 4 else ''} (expected {len(shapes)} states)")
    out = {}
    for name, dims in shapes.items():
        a = as_array(states[name])
        want = (batch, *dims)
        if tuple(a.shape) != want:
            raise UserError(f"decode step: state '{name}' has shape {tuple(a.shape)}, expected {want} "
                            f"([batch, {', '.join(map(str, dims))}] with batch = {batch} from input_ids)")
        floating = getattr(a.dtype, "is_floating_point", None)
        if not (np.issubdtype(a.dtype, np.floating) if floating is None else floating):
            raise UserError(f"decode step: state '{name}' has dtype {a.dtype}, expected float32")
        out[name] = a
    return out


@dataclass
class Generation:
    tokens: list[list[int]]                  # new tokens per prompt (EOS included when reached)
    prompt_tokens: list[int]                 # prompt lengths
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0
    decode_steps: int = 0
    finished: list[bool] = field(default_factory=list)

    @property
    def decode_tokens(self) -> int:
        """New tokens the decode steps produced, all rows together (each row's first comes from the prefill; a
        finished row's further steps produce none)."""
        return sum(max(len(t) - 1, 0) for t in self.tokens)

    @property
    def decode_tokens_per_second(self) -> float:
        """decode_tokens per second of decoding."""
        return self.decode_tokens / self.decode_seconds if self.decode_seconds > 0 else float("nan")


def check_request(prompts: Sequence[Sequence[int]], max_new_tokens: int,
                  max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS) -> None:
    """UserError for an empty or too long prompt or a non-positive token budget."""
    encode = "encode text first, e.g. mq_deploy.eval.tokenizer.TextTokenizer('OUTDIR/tokenizer.json').encode(text)"
    if isinstance(prompts, (str, bytes)) or not prompts:
        raise UserError(f"prompts must be a list of token-id lists; {encode}" if prompts else "no prompt given")
    for r, p in enumerate(prompts):
        if isinstance(p, (str, bytes)) or not all(isinstance(t, (int, np.integer)) for t in p):
            raise UserError(f"prompt {r + 1} is not a list of token ids; {encode}")
        if len(p) == 0:
            raise UserError(f"prompt {r + 1} is empty (0 tokens); give some text to continue")
        if len(p) > max_prompt_tokens:
            raise UserError(f"prompt {r + 1} has {len(p)} tokens, more than the maximum of {max_prompt_tokens} "
                            "(raise --max-prompt-tokens or shorten the prompt)")
    if max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")


def generate(session: StatefulSession, prompts: Sequence[Sequence[int]], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
             sampling: Sampling = Sampling(), eos_id: Optional[int] = 0, pad_id: int = 0,
             max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
             on_token: Optional[Callable[[int, int], None]] = None,
             on_finish: Optional[Callable[[int, list[int]], None]] = None) -> Generation:
    """Generate up to `max_new_tokens` per prompt; `on_token(row, id)` streams, `on_finish(row, ids)` reports a row."""
    check_request(prompts, max_new_tokens, max_prompt_tokens)
    rng = np.random.default_rng(sampling.seed)
    B = len(prompts)
    res = Generation([[] for _ in range(B)], [len(p) for p in prompts], finished=[False] * B)
    ids, mask = left_pad(prompts, pad_id)
    t0 = time.perf_counter()
    logits, states = session.prefill(ids, mask)
    res.prefill_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    nxt = None  # (the tokens of the step before)
    for n in range(max_new_tokens):
        if n > 0:
            logits, states = session.step(nxt, states)
            res.decode_steps += 1
        nxt = sample(logits, sampling, rng)
        for r in range(B):
            if res.finished[r]:
                nxt[r] = eos_id if eos_id is not None else pad_id
                continue
            tok = int(nxt[r])
            res.tokens[r].append(tok)
            if on_token:
                on_token(r, tok)
            if tok == eos_id or len(res.tokens[r]) == max_new_tokens:
                res.finished[r] = True
                if on_finish:
                    on_finish(r, res.tokens[r])
        if all(res.finished):
            break
    res.decode_seconds = time.perf_counter() - t1
    res.finished = [bool(t and t[-1] == eos_id) for t in res.tokens]  # stopped at EOS (not at the limit)
    return res


class TextStream:
    """Incremental detokenization: `push(id)` returns the new text (holding back incomplete UTF-8)."""

    def __init__(self, decode: Callable[[list[int]], str], skip: Sequence[int] = ()):
        self._decode, self._skip = decode, set(skip)
        self._ids: list[int] = []
        self._printed = 0

    def push(self, tok: int) -> str:
        if tok in self._skip:
            return ""
        self._ids.append(tok)
        text = self._decode(self._ids)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
            return ""
        new, self._printed = text[self._printed:], len(text)
        return new
