"""Compare two Q/DQ graphs of the same function as tightly as fp32 rounding allows.

Two correct fp32 implementations of one quantized graph (the plugin flavour on its kernels, the portable
flavour on standard ops) sum in different orders, so now and then a value lands within ~1e-7 of a rounding
boundary and the two round it one int8 step apart; in a Mamba model the scan state then carries that step
on, and the outputs differ by up to a few percent — a property of the inputs and the CPU's kernels, not of
either graph. `follower(test)` rewrites every QuantizeLinear input x of the test graph into

    x' = Where(|f - x| <= FOLLOW_STEPS * scale, f, x)

with f a new graph input (named `follow_name(x)`) fed with the reference graph's value of x: the test graph
then takes the reference's side on boundary cases and rounds on its own everywhere else, so the two outputs
agree to fp32 rounding, and a wrong scale, weight or kernel (which moves values by more than 1/1000 of a
step) still shows. The language model's numpy simulation does the same (`quant.simulate.layer`, `follow`),
fed by `point_values`.

validate also follows a TensorRT validation engine (`mq-deploy build --validation-engine`, which outputs the
tensors before its QuantizeLinear nodes): model.portable.onnx takes every one of the engine's roundings (steps =
inf: each layer computed from the engine's int8 codes, compared tensor by tensor with `step_distances`), and,
reported, those within ENGINE_FOLLOW_STEPS, a wider window for fp16 / TF32 float layers; `fp16_stand_in` is what
that is tested with where TensorRT is absent.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import TensorProto, helper

FOLLOW_STEPS = 1e-3
# A TensorRT engine's float layers may run in fp16 (--fp16) or TF32: its values before a QuantizeLinear differ
# from onnxruntime's fp32 by up to a few hundredths of a step (fp16 holds 127 steps to ~0.03 step), so
# onnxruntime follows an engine (validate's `portable~ vs tensorrt`) within a tenth of a step. Measured with
# model.onnx given fp16 storage of every float tensor but the RMSNorm layers (benchmarks/validate_engine_follow.py):
# on mamba-ref-29m W8A8 at 2x64 the direct distance is 0.15 of max|logit| and the followed one 7e-4, while a
# 1 % C_scale error in one scan still shows as 3.6e-2.
ENGINE_FOLLOW_STEPS = 0.1
_SUFFIX = "::follow"


def follow_name(tensor: str) -> str:
    return tensor + _SUFFIX


def _fused_quantizers(model: onnx.ModelProto) -> dict:
    """{float output: scale} of the Hadamard nodes that quantize their own output (graph/fuse_scan_quant.py,
    fuse_hadamard_quant): each stands for a QuantizeLinear on that tensor, which unfuse_hadamard_quant (and so
    every onnxruntime run) gives back."""
    from .fuse_scan_quant import hadamard_out_scale

    return {n.name: hadamard_out_scale(n) for n in model.graph.node if hadamard_out_scale(n)}


def quantized_tensors(model: onnx.ModelProto) -> list[str]:
    """Inputs of the top-level QuantizeLinear nodes (the values a rounding decision is made on), sorted; a Hadamard
    fused with its QuantizeLinear counts as one (its float output)."""
    return sorted({n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"} | set(_fused_quantizers(model)))


def validation_marks(model: onnx.ModelProto) -> list[str]:
    """What a validation engine of `model` outputs besides the graph's outputs (`mq-deploy build --validation-engine`):
    every quantized tensor (for a fused Hadamard: its codes, dequantized), then the float twin of each fused Hadamard
    (graph/fuse_scan_quant.py, dequantize_hadamard_codes)."""
    from .fuse_scan_quant import float_twin

    return quantized_tensors(model) + [float_twin(t) for t in sorted(_fused_quantizers(model))]


def follower(model: onnx.ModelProto, tensors: Optional[list[str]] = None,
             steps: float = FOLLOW_STEPS, codes=()) -> onnx.ModelProto:
    """A copy of `model` whose QuantizeLinear nodes on `tensors` (default: all top-level ones) round the
    value fed as `follow_name(x)` where it is within `steps` of a step of their own x (see above; an engine
    is followed at ENGINE_FOLLOW_STEPS). Tensors in `codes` are fed values already rounded (a validation engine's
    dequantized codes of a fused Hadamard): those are taken within `steps` + 1/2 step, where x is within `steps` of
    the boundary next to them. Every QuantizeLinear must have a scalar scale (per-tensor activation quantization)."""
    if not steps > 0:
        raise ValueError(f"follower: steps must be > 0, not {steps}")
    from .fuse_scan_quant import unfuse_hadamard_quant

    m = onnx.ModelProto()
    m.CopyFrom(model)
    unfuse_hadamard_quant(m)  # a fused Hadamard's rounding is followed on its QuantizeLinear
    g = m.graph
    want = set(quantized_tensors(model) if tensors is None else tensors)
    inits = {t.name: t for t in g.initializer}
    new_nodes, added = [], set()
    for k, n in enumerate(g.node):
        if n.op_type == "QuantizeLinear" and n.input[0] in want:
            x, s = n.input[0], n.input[1]
            if s in inits and int(np.prod(inits[s].dims)) != 1:
                raise ValueError(f"follower: QuantizeLinear {n.name} has a per-channel scale")
            f = follow_name(x)
            if f not in added:
                g.input.append(helper.make_tensor_value_info(f, TensorProto.FLOAT, None))
                added.add(f)
            p = f"{n.name or k}/follow"
            lim = helper.make_tensor(f"{p}/steps", TensorProto.FLOAT, [], [_window(x, steps, codes)])
            g.initializer.append(lim)
            new_nodes += [helper.make_node("Sub", [f, x], [f"{p}/diff"], name=f"{p}/Sub"),
                          helper.make_node("Abs", [f"{p}/diff"], [f"{p}/abs"], name=f"{p}/Abs"),
                          helper.make_node("Mul", [s, lim.name], [f"{p}/lim"], name=f"{p}/Mul"),
                          helper.make_node("LessOrEqual", [f"{p}/abs", f"{p}/lim"], [f"{p}/agree"],
                                           name=f"{p}/LessOrEqual"),
                          helper.make_node("Where", [f"{p}/agree", f, x], [f"{p}/x"], name=f"{p}/Where")]
            q = onnx.NodeProto()
            q.CopyFrom(n)
            q.input[0] = f"{p}/x"
            new_nodes.append(q)
        else:
            new_nodes.append(n)
    if not added:
        raise ValueError("follower: the graph has no QuantizeLinear to follow")
    del g.node[:]
    g.node.extend(new_nodes)
    return m


def quantizer_params(model: onnx.ModelProto) -> dict:
    """{tensor: (scale, zero point)} of the top-level QuantizeLinear nodes with initializer scales, in graph order
    (a tensor quantized twice: its first node; per-tensor scales, as follower requires)."""
    from onnx import numpy_helper

    from .fuse_scan_quant import hadamard_out_scale

    inits = {t.name: t for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if hadamard_out_scale(n):  # a fused Hadamard: the quantizer of its float output (its node name)
            out.setdefault(n.name, (hadamard_out_scale(n), np.int8(0)))
            continue
        if n.op_type != "QuantizeLinear" or n.input[0] in out or n.input[1] not in inits:
            continue
        zp = (numpy_helper.to_array(inits[n.input[2]]).reshape(-1)[0] if len(n.input) > 2 and n.input[2] in inits
              else np.int8(0))
        out[n.input[0]] = (float(numpy_helper.to_array(inits[n.input[1]]).reshape(-1)[0]), zp)
    return out


def _window(tensor: str, steps: float, codes) -> float:
    """How far (in steps) a follower takes the value fed for `tensor`: `steps`, half a step more for rounded values."""
    return steps + 0.5 if tensor in codes else steps


def _code(v: np.ndarray, s, zp) -> np.ndarray:
    """The integers a QuantizeLinear of scale s and zero point zp makes of v."""
    info = np.iinfo(zp.dtype) if zp.dtype.kind in "iu" else np.iinfo(np.int8)
    return np.clip(np.rint(v / s) + int(zp), info.min, info.max)


def roundings_taken(model: onnx.ModelProto, own: dict, other: dict, steps: float = FOLLOW_STEPS, codes=()) -> int:
    """How many rounding decisions `follower(model, ..., steps=steps)` took from `other` ({tensor: value}) that
    differ from its own: values within `steps` of a step of each other that quantize to different integers at
    the tensor's QuantizeLinear (scale and zero point from `model`'s initializers; each tensor counted once)."""
    taken = 0
    for t, (s, zp) in quantizer_params(model).items():
        if t not in own or t not in other:
            continue
        x, f = np.asarray(own[t], np.float32), np.asarray(other[t], np.float32)
        differ = _code(f, np.float32(s), zp) != _code(x, np.float32(s), zp)
        taken += int(np.count_nonzero((np.abs(f - x) <= _window(t, steps, codes) * s) & differ))
    return taken


def step_distances(model: onnx.ModelProto, own: dict, other: dict) -> dict:
    """{tensor: (mean, max, gain)} for the tensors both give, in graph order: the mean and largest |other − own| in
    steps of the tensor's QuantizeLinear, and gain = Σ own·(other − own) / Σ own², the relative scale by which
    `other` departs from `own` (least squares). Meant for `own` from `follower(model, steps=inf)` fed `other` (a
    validation engine's values): every QuantizeLinear then quantizes the engine's value, so each tensor is
    computed from the engine's own int8 codes and differs only by what the float layers since the last
    quantizer do differently — nothing carries over from earlier layers. On an fp16 stand-in engine: means
    0.012-0.018 step and |gain| ≤ 1.7e-4; a 1 % C_scale error in one scan of a language model: gain 3.1e-3 to
    7.8e-3 on that scan's output tensor (on the Vim 10 % gives 1.0e-3; benchmarks/results/validate_engine_follow.md).
    A fused Hadamard's point is compared on its float twin's value (graph/fuse_scan_quant.py,
    dequantize_hadamard_codes), its codes by `fused_code_differences`."""
    out = {}
    for t, s, _, x, y in _pairs(model, own, other, "step_distances"):
        d = np.abs(y - x) / s
        xx = float((x * x).sum())
        gain = float((x * (y - x)).sum()) / xx if xx > 0 else (0.0 if not d.any() else float("inf"))
        out[t] = (float(d.mean()), float(d.max()), gain)
    return out


def _pairs(model: onnx.ModelProto, a: dict, b: dict, what: str):
    """(tensor, scale, zero point, a's value, b's value) in float64 for the quantized tensors of `model` both give, in
    graph order; a ValueError naming `what` where their shapes differ."""
    for t, (s, zp) in quantizer_params(model).items():
        if t in a and t in b:
            x, y = np.asarray(a[t], np.float64), np.asarray(b[t], np.float64)
            if x.shape != y.shape:
                raise ValueError(f"{what}: {t} is {x.shape} in one and {y.shape} in the other")
            yield t, s, zp, x, y


# A fused Hadamard's kernel rounds its fp32 value; its float twin may write fp16 (a relative 2^-12), read its input
# through an fp16 reformat (about 2^-12 of the tensor's rms on each value, the transform being orthonormal), and sum
# in another order: the twin's value is trusted to TWIN_REL of (|value| + the tensor's rms), 8x that.
TWIN_REL = 2.0 ** -9


def fused_code_differences(model: onnx.ModelProto, codes: dict, twins: dict,
                           window: float = ENGINE_FOLLOW_STEPS) -> dict:
    """{tensor: (share, largest, count)} for the fused Hadamards of a validation engine, in graph order: `codes` its
    dequantized codes, `twins` its float twin's values (the same Hadamard without the fused rounding), each rounded
    with the tensor's QuantizeLinear (scale and zero point from `model`); count = codes that differ from the twin's
    where the twin lies further from a rounding boundary than it can be from the kernel's own value (TWIN_REL of its
    magnitude and the tensor's rms, at most `window` steps: nearer, an engine may round either way), or by more than
    one code anywhere; share = count / size, largest = the largest difference in codes. A wrong scale in the kernel
    moves each value by that share of it: 1 % shows on codes of a few steps, 0.3 % on codes of 30 steps and more
    (benchmarks/gpu/twin_check.py on the kernels)."""
    out = {}
    for t, s, zp, y, f in _pairs(model, codes, twins, "fused_code_differences"):
        dc = np.abs(_code(y, s, zp) - _code(f, s, zp))
        v = f / s
        slack = np.minimum(window, TWIN_REL * (np.abs(v) + np.sqrt(np.mean(v * v))))  # (v·rel + rms·rel)
        firm = 0.5 - np.abs(v - np.rint(v)) > slack
        n = int(np.count_nonzero(((dc > 0) & firm) | (dc > 1)))
        out[t] = (n / max(dc.size, 1), float(dc.max()) if dc.size else 0.0, n)
    return out


def run_following(model: onnx.ModelProto, values: dict, feeds: dict, steps: float = FOLLOW_STEPS, *,
                  threads: Optional[int] = None, own: Optional[dict] = None, codes=()) -> tuple[dict, int]:
    """Run `follower(model, sorted(values), steps)` on `feeds` plus `values` ({tensor: another implementation's
    value before its QuantizeLinear}) in onnxruntime (one session: plugin nodes on the extensions kernels,
    since the follower's extra inputs feed nodes inside the graph): (its outputs, the roundings it took from
    `values`, see roundings_taken). `own`, a dict, receives the graph's own values of those tensors; `codes`: the
    tensors of `values` that are rounded already (follower)."""
    from ..backends.ort import OrtRunner

    tensors = sorted(values)
    got = OrtRunner(follower(model, tensors, steps, codes), threads=threads, plugins="extensions",
                    extra_outputs=tensors).run({**feeds, **{follow_name(t): values[t] for t in tensors}})
    mine = {t: got.pop(t) for t in tensors}
    if own is not None:
        own.update(mine)
    return got, roundings_taken(model, mine, values, steps, codes)


def compare_following(reference, test: onnx.ModelProto, feeds: dict, output: str, *,
                      threads: Optional[int] = None) -> dict:
    """Run `reference` (a ModelProto or path) on `feeds` with the test graph's quantized tensors as extra
    outputs, then `follower(test)` on the same feeds plus those values (run_following); {"max_rel":
    max|b - a| / max|a|, "reference": a, "test": b, "roundings_taken": n} for `output`, and every graph output
    of both runs ({name: value}) as "reference_outputs" / "test_outputs"."""
    from ..backends.ort import OrtRunner

    tensors = quantized_tensors(test)
    ref = OrtRunner(reference, threads=threads, extra_outputs=tensors).run(dict(feeds))
    got, taken = run_following(test, {t: ref[t] for t in tensors}, feeds, threads=threads)
    a, b = np.asarray(ref[output]), np.asarray(got[output])
    names = [o.name for o in test.graph.output]
    return {"max_rel": float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)), "reference": a, "test": b,
            "roundings_taken": taken, "reference_outputs": {n: ref[n] for n in names if n in ref},
            "test_outputs": {n: got[n] for n in names if n in got}}


def point_values(graph, points: dict, act_scales: dict, ids: np.ndarray, **runner) -> dict:
    """Run a language-model graph (a ModelProto or path) on `ids` with the quantization points' tensors
    (`points`: {point: tensor}, from `build_lm_graph(..., with_points=True)` or the manifest) as extra
    outputs: {point: value before its QuantizeLinear, ..., "logits": logits}; without "logits" it is the
    `follow` argument of `quant.simulate.forward`. `runner`: OrtRunner keyword arguments."""
    from ..backends.ort import OrtRunner

    pts = [pt for pt in act_scales if pt in points]  # a scale the graph does not use has no tensor
    outs = OrtRunner(graph, extra_outputs=sorted({points[pt] for pt in pts}), **runner).run({"input_ids": ids})
    return {"logits": outs["logits"], **{pt: outs[points[pt]] for pt in pts}}


_FLOAT_OPS = {"DequantizeLinear", "Mul", "MatMul", "Add", "Sub", "Div", "Sqrt", "Sigmoid", "Softplus", "Exp",
              "ReduceMean", "Conv", "Gather", "Transpose", "Split", "SelectiveScan", "Hadamard"}


def fp16_stand_in(model: onnx.ModelProto, noise: float = 0.0, kernel_scale: Optional[dict] = None) -> onnx.ModelProto:
    """A copy of a model.onnx (language model or Vim) whose float tensors are stored in fp16 (each rounded
    through a Cast pair where it is made), but for the RMSNorm layers, which `mq-deploy build --fp16` keeps in
    fp32 (graph/precision.py): what validate's engine rows are tested and measured with where TensorRT is absent, a
    stand-in for an engine whose float layers run in fp16. Tensor names are kept, so its values before each
    QuantizeLinear can be asked for as a validation engine's are; a fused Hadamard's tensor (its node's name) holds
    the int8 codes of its fp32 value dequantized, and `float_twin` of it that value in fp16, as in a validation engine
    (trt.py, `_codes_copy`; the stand-in's outputs to ask for: `validation_marks(model)`). `noise` > 0:
    each rounded value is also multiplied by 1 + U(−noise, noise) (fixed seeds), a correct engine whose float layers
    round more coarsely (5e-4: about twice fp16's own rounding error). `kernel_scale`: {fused Hadamard: f}, a wrong
    kernel there, rounding its codes with f times its out_scale (they are still read with out_scale)."""
    from .fuse_scan_quant import float_twin, unfuse_hadamard_quant
    from .precision import rms_norm_nodes

    m = onnx.ModelProto()
    m.CopyFrom(model)
    fused = _fused_quantizers(m)
    unknown = sorted(set(kernel_scale or {}) - set(fused))
    if unknown:
        raise ValueError(f"fp16_stand_in: {', '.join(unknown)} is no fused Hadamard of the model")
    unfuse_hadamard_quant(m)  # for the CPU: the Hadamard's float output (the node's name), then its QuantizeLinear
    fp32 = {o for n in rms_norm_nodes(m) for o in n.output}
    new = []
    for n in m.graph.node:
        new.append(n)
        if n.op_type not in _FLOAT_OPS:
            continue
        for k, o in enumerate(n.output):
            if o and o not in fp32:
                n.output[k] = f"{o}::fp32"
                new.append(helper.make_node("Cast", [f"{o}::fp32"], [f"{o}::fp16"], to=TensorProto.FLOAT16))
                if not noise:
                    new.append(helper.make_node("Cast", [f"{o}::fp16"], [o], to=TensorProto.FLOAT))
                    continue
                new += [helper.make_node("Cast", [f"{o}::fp16"], [f"{o}::rounded"], to=TensorProto.FLOAT),
                        helper.make_node("RandomUniformLike", [f"{o}::rounded"], [f"{o}::u"], low=1.0 - noise,
                                         high=1.0 + noise, seed=float(len(new))),
                        helper.make_node("Mul", [f"{o}::rounded", f"{o}::u"], [o])]
    nodes, made = [], {o for n in new for o in n.output}
    for n in new:  # each fused Hadamard: its float value is the twin's, its tensor the codes the kernel rounds its fp32
        nodes.append(n)  # value to (QuantizeLinear's rounding, half to even, and saturation, spelled out so that the
        for j, o in enumerate(n.output):  # quantizers stay the model's)
            if o in fused:
                n.output[j] = float_twin(o)
                rounding = fused[o] * (kernel_scale or {}).get(o, 1.0)
                consts = [helper.make_tensor(f"{o}::{k}", TensorProto.FLOAT, [], [v])
                          for k, v in (("scale", fused[o]), ("rounding", rounding), ("lo", -128.0), ("hi", 127.0))]
                m.graph.initializer.extend(consts)
                kernel = f"{o}::fp32" if f"{o}::fp32" in made else float_twin(o)
                nodes += [helper.make_node("Div", [kernel, f"{o}::rounding"], [f"{o}::steps"]),
                          helper.make_node("Round", [f"{o}::steps"], [f"{o}::rounded_steps"]),
                          helper.make_node("Clip", [f"{o}::rounded_steps", f"{o}::lo", f"{o}::hi"], [f"{o}::codes"]),
                          helper.make_node("Mul", [f"{o}::codes", f"{o}::scale"], [o])]
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m
