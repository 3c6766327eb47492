"""fp32 greedy generation through the prefill + decode graphs gives EXACTLY Hugging Face's tokens.

Reference: `MambaForCausalLM.generate(prompt, do_sample=False, max_new_tokens=20)` on each prompt alone.
Ours: batch 1 (each prompt alone) and the three prompts as one left-padded batch, in both flavours.
"""

import numpy as np
import pytest

from mq_deploy.generate import Sampling, StatefulSession, generate
from mq_deploy.graph.mamba_lm import build_lm_graph
from mq_deploy.graph.stateful import build_stateful_graphs

from .conftest import NEOX_TOKENIZER, REF_MODEL, need

PROMPTS = ["The capital of France is",
           "Once upon a time, in a small village by the sea, there lived an old fisherman who",
           "In 1905,"]
NEW = 20


def hf_greedy(model, prompts):
    import torch

    from mq_deploy.backends.torch_hf import build_hf_model

    hf = build_hf_model(model)
    flushed = torch.set_flush_denormal(True)  # exp(Δ·A) denormals make CPU torch 5-10x slower; no effect on tokens
    try:
        out = []
        for p in prompts:
            ids = torch.tensor([p])
            with torch.no_grad():
                g = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False)
            out.append(g[0, len(p):].tolist())
        return out
    finally:
        if flushed:
            torch.set_flush_denormal(False)


def case(model_path, tokenizer_path):
    from mq_deploy.eval.tokenizer import TextTokenizer
    from mq_deploy.loaders import load_model

    m = load_model(model_path)
    tok = TextTokenizer(tokenizer_path)
    prompts = tok.encode_batch(PROMPTS)
    assert len({len(p) for p in prompts}) == 3  # different lengths: the batch is really padded
    graphs = build_stateful_graphs(build_lm_graph(m), m.config)
    sess = {"plugin": StatefulSession(graphs["model.prefill.onnx"], graphs["model.decode.onnx"]),
            "portable": StatefulSession(graphs["model.prefill.portable.onnx"], graphs["model.decode.portable.onnx"])}
    return prompts, hf_greedy(m, prompts), sess, tok


@pytest.fixture(scope="module", params=["bundled", "reference"])
def model_case(request):
    from mq_deploy.loaders import BUNDLED_DIR

    if request.param == "bundled":
        need(BUNDLED_DIR / "model.safetensors")
        return case(None, BUNDLED_DIR / "tokenizer.json")
    return case(need(REF_MODEL), need(NEOX_TOKENIZER))


@pytest.mark.parametrize("flavour", ["plugin", "portable"])
def test_greedy_tokens_equal_hf(model_case, flavour):
    prompts, ref, sess, tok = model_case
    s = sess[flavour]
    assert all(len(r) == NEW or r[-1] == 0 for r in ref)
    for p, want in zip(prompts, ref):  # batch 1
        got = generate(s, [p], NEW, Sampling(), eos_id=tok.eot_id).tokens[0]
        assert got == want, f"{flavour} batch 1, prompt {tok.decode(p)!r}:\n ours {got}\n   hf {want}"
    res = generate(s, prompts, NEW, Sampling(), eos_id=tok.eot_id, pad_id=tok.pad_id)  # one left-padded batch
    for p, got, want in zip(prompts, res.tokens, ref):
        assert got == want, f"{flavour} batch 3, prompt {tok.decode(p)!r}:\n ours {got}\n   hf {want}"
    assert res.decode_steps == max(len(r) for r in ref) - 1


def test_sampling_is_seeded_and_top_p_zero_mass_is_greedy(model_case):
    prompts, ref, sess, tok = model_case
    s = sess["portable"]
    a = generate(s, prompts, 8, Sampling(greedy=False, temperature=0.9, top_p=0.8, seed=3)).tokens
    b = generate(s, prompts, 8, Sampling(greedy=False, temperature=0.9, top_p=0.8, seed=3)).tokens
    assert a == b
    # top_p → 0 keeps only the most likely token: the greedy choice
    g = generate(s, prompts[:1], 8, Sampling(greedy=False, temperature=1.0, top_p=1e-9, seed=0), eos_id=None).tokens[0]
    assert g == ref[0][:8] or 0 in ref[0][:8]
