"""Prefill and decode-step graphs, derived from the full-sequence graph by graph surgery.

Both are rewrites of the graph `build_lm_graph` emitted (after any passes), so they carry the same
weights under the same initializer names (`layers.{i}.in_proj.weight`, ...), the same node names
and whatever Q/DQ nodes and scales a recipe inserted: a recipe quantizes all three graphs alike.
Only three places per layer change, and none of them sits between a Q/DQ pair and its consumer.

Prefill (`model.prefill.onnx`):

    input_ids      int64 [batch, sequence]   prompts LEFT-padded to a common length
    attention_mask int64 [batch, sequence]   1 = real token, 0 = padding
    → logits       float [batch, vocab]      next-token logits (last position only)
      conv_state.{i} float [batch, d_inner, d_conv-1]   last d_conv-1 conv inputs x (zeros before the prompt)
      ssm_state.{i}  float [batch, d_inner, d_state]    SelectiveScan's last_state

  per layer:  x ← x ⊙ m before the depthwise Conv and c ← c ⊙ m after it (c is the conv output,
  so u = SiLU(c) = 0 at pads). A padded position then feeds zeros to the conv window, and with
  u = 0 the scan state stays h = exp(ΔA)·0 + Δ·0·B = 0: a left-padded prompt ends in exactly the
  states of the same prompt run alone (HF's `apply_mask_to_padding_states` does the same).
  Only the last position goes through norm_f and lm_head (the residual stream is sliced first).

Decode step (`model.decode.onnx`):

    input_ids int64 [batch, 1], conv_state.{i}, ssm_state.{i}
    → logits float [batch, vocab], conv_state_out.{i}, ssm_state_out.{i}

  per layer:  w = Concat(conv_state, x_t) [batch, d_inner, d_conv]; the Conv node becomes the
  depthwise dot ReduceSum(w ⊙ taps, axis 2) + bias on the same taps/bias tensors (Mul/ReduceSum, not
  a grouped Conv, which onnxruntime runs channel by channel); the new conv state is w[:, :, 1:].
  The SelectiveScan node becomes a SelectiveStateUpdate plugin node
  (state, x, dt, A, Bm, Cm, Dskip, dt_bias) → (y, new_state) on the same input tensors.

State domain (DESIGN.md §2): the states are whatever the graph's scan carries. With state
smoothing (Bm rows ÷ s, Cm rows × s in W_x) the scan's h is h_true / s, prefill emits it in that
scaled domain and the step consumes it with the same scaled Bm/Cm, so nothing needs converting
between the two graphs. A state that comes from outside (an unscaled h0) would need ×(1/s) before
it is fed in: that is the hook `STATE_DOMAIN_NOTE` describes (recorded in the manifest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import onnx
from onnx import TensorProto, helper

from ..errors import InternalError
from ..model import MambaConfig
from ..ops import selective_scan as ss
from ..ops import state_update as su
from ..ops.ort_kernels import PLUGIN_DOMAIN
from ..ops.plugin_fields import node_attrs
from .builder import GraphBuilder

BATCH, SEQ = "batch", "sequence"
INT64_MAX = 2**63 - 1
# Hook for state smoothing (DESIGN.md §2): the carried ssm_state is in the scan's own domain. Prefill and
# decode read the same W_x, so a state passes between them unchanged; only a state brought in from
# outside (another runtime, an unsmoothed h0) must be converted, h_stored = h / s.
STATE_DOMAIN_NOTE = ("ssm_state is in the scan's domain: h/s under state smoothing (Bm rows of W_x divided by s, "
                     "Cm rows multiplied by s), plain h otherwise; prefill and decode share W_x, so states pass "
                     "between them unchanged; convert an external h0 as h0/s")
_LAYER = re.compile(r"^layers\.(\d+)/")


def conv_state_name(i: int, out: bool = False) -> str:
    return f"conv_state{'_out' if out else ''}.{i}"


def ssm_state_name(i: int, out: bool = False) -> str:
    return f"ssm_state{'_out' if out else ''}.{i}"


@dataclass(frozen=True)
class StateShapes:
    """Shapes of the carried state of one layer (batch first, dynamic)."""
    d_inner: int
    d_conv: int
    d_state: int

    @classmethod
    def of(cls, config: MambaConfig) -> "StateShapes":
        return cls(config.d_inner, config.d_conv, config.d_state)

    @property
    def conv(self) -> list:
        return [BATCH, self.d_inner, self.d_conv - 1]

    @property
    def ssm(self) -> list:
        return [BATCH, self.d_inner, self.d_state]


def io_spec(config: MambaConfig) -> dict:
    """The manifest's description of the prefill and decode graphs' inputs and outputs."""
    s, V = StateShapes.of(config), config.vocab_size
    st = lambda name, shape: {"name": name, "dtype": "float32", "shape": shape}  # noqa: E731
    per_layer = lambda out: [x for i in range(config.n_layer)  # noqa: E731
                             for x in (st(conv_state_name(i, out), s.conv), st(ssm_state_name(i, out), s.ssm))]
    ids = lambda seq: {"name": "input_ids", "dtype": "int64", "shape": [BATCH, seq]}  # noqa: E731
    logits = {"name": "logits", "dtype": "float32", "shape": [BATCH, V]}
    return {
        "prefill": {"inputs": [ids(SEQ), {"name": "attention_mask", "dtype": "int64", "shape": [BATCH, SEQ]}],
                    "outputs": [logits] + per_layer(False), "padding": "left", "logits": "last position"},
        "decode": {"inputs": [ids(1)] + per_layer(False), "outputs": [logits] + per_layer(True)},
        "state_domain": STATE_DOMAIN_NOTE,
    }


# -- locating the per-layer nodes -----------------------------------------------------------------
def _layer_of(node: onnx.NodeProto) -> int:
    m = _LAYER.match(node.name)
    if m is None:
        raise InternalError(f"node {node.name} ({node.op_type}) carries no layers.<i>/ scope")
    return int(m.group(1))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _per_layer(g: onnx.GraphProto, config: MambaConfig) -> tuple[dict, dict]:
    """{layer: depthwise Conv node}, {layer: SelectiveScan node}; checked against the config."""
    convs, scans = {}, {}
    for n in g.node:
        if n.op_type == "Conv" and n.domain in ("", "ai.onnx") and _attrs(n).get("group", 1) > 1:
            convs.setdefault(_layer_of(n), []).append(n)
        elif n.domain == PLUGIN_DOMAIN and n.op_type == ss.PLUGIN_NAME:
            scans.setdefault(_layer_of(n), []).append(n)
    want = list(range(config.n_layer))
    for kind, found in (("depthwise Conv", convs), ("SelectiveScan", scans)):
        if sorted(found) != want or any(len(v) != 1 for v in found.values()):
            raise InternalError(f"stateful graphs: expected one {kind} node in each of layers 0..{config.n_layer - 1}, "
                                f"found {({k: len(v) for k, v in sorted(found.items())})}")
    for i, (n,) in convs.items():
        a = _attrs(n)
        if a.get("group") != config.d_inner or list(a.get("kernel_shape", [config.d_conv])) != [config.d_conv]:
            raise InternalError(f"{n.name}: Conv group/kernel {a.get('group')}/{a.get('kernel_shape')} do not match "
                                f"d_inner={config.d_inner}, d_conv={config.d_conv}")
    return {i: v[0] for i, v in convs.items()}, {i: v[0] for i, v in scans.items()}


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _replace_output(g: onnx.GraphProto, old: str, new_vi: list[onnx.ValueInfoProto]) -> None:
    keep = [o for o in g.output if o.name != old]
    del g.output[:]
    g.output.extend(new_vi + keep)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _squeeze_logits(g: onnx.GraphProto, b: GraphBuilder) -> None:
    """Rename the [batch, 1, vocab] `logits` to an internal name and squeeze it to [batch, vocab]."""
    (producer,) = [n for n in g.node if "logits" in n.output]
    idx = list(producer.output).index("logits")
    producer.output[idx] = "head/logits_3d"
    with b.scope("head"):
        b.op("Squeeze", ["head/logits_3d", b.ints("seq_axis", [1])], name="last_token", out_names=["logits"])


def _finish(m: onnx.ModelProto, b: GraphBuilder, outputs: list[onnx.ValueInfoProto], domains) -> onnx.ModelProto:
    g = m.graph
    g.node.extend(b.nodes)
    g.initializer.extend(b.initializers)
    del g.output[:]
    g.output.extend(outputs)
    del g.value_info[:]  # shapes changed (sequence → 1 / last position); let checkers re-infer
    ops = [o for o in m.opset_import if o.domain != PLUGIN_DOMAIN] + [helper.make_opsetid(d, 1) for d in domains]
    del m.opset_import[:]
    m.opset_import.extend(ops)
    # topological order: the rewrites appended consumers after producers only in part
    _toposort(g)
    return m


def _toposort(g: onnx.GraphProto) -> None:
    avail = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(x in avail for x in n.input):
                ordered.append(n)
                avail.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            missing = sorted({x for n in rest for x in n.input if x not in avail})[:5]
            raise InternalError(f"stateful graph: unresolved inputs {missing}")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


def _state_vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


# -- prefill --------------------------------------------------------------------------------------
def build_prefill_graph(full: onnx.ModelProto, config: MambaConfig) -> onnx.ModelProto:
    """The prefill graph from the full-sequence plugin graph (see the module docstring)."""
    m = _copy(full)
    g = m.graph
    m.graph.name = "mamba_lm_prefill"
    s = StateShapes.of(config)
    convs, scans = _per_layer(g, config)
    b = GraphBuilder("prefill")
    b._used.update(t for n in g.node for t in list(n.output) + [n.name])
    b._used.update(i.name for i in g.initializer)
    g.input.append(helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [BATCH, SEQ]))
    with b.scope("padding"):
        mask_f = b.op("Cast", ["attention_mask"], name="mask_float", to=TensorProto.FLOAT)
        mask_c = b.op("Unsqueeze", [mask_f, b.ints("channel_axis", [1])], name="mask_channels")  # [B, 1, L]
        left_pad = b.ints("conv_state_pads", [0, 0, s.d_conv - 1, 0, 0, 0])
        last_k = (b.ints("last_k_start", [-(s.d_conv - 1)]), b.ints("end", [INT64_MAX]), b.ints("time_axis", [2]))
    outputs = []
    for i in range(config.n_layer):
        conv, scan = convs[i], scans[i]
        with b.scope(f"layers.{i}"):
            x = conv.input[0]
            xm = b.op("Mul", [x, mask_c], name="mask_conv_in")
            conv.input[0] = xm
            raw = b.fresh("conv1d_unmasked")
            c_out = conv.output[0]
            conv.output[0] = raw
            b.op("Mul", [raw, mask_c], name="mask_conv_out", out_names=[c_out])
            padded = b.op("Pad", [xm, left_pad], name="conv_state_pad", mode="constant")
            b.op("Slice", [padded, *last_k], name="conv_state", out_names=[conv_state_name(i)])
        if any(scan.output[1] in n.input for n in g.node):
            raise InternalError(f"{scan.name}: last_state is consumed inside the graph; expected it unused")
        scan.output[1] = ssm_state_name(i)
        outputs += [_state_vi(conv_state_name(i), s.conv), _state_vi(ssm_state_name(i), s.ssm)]
    _slice_last_position(g, b)
    _squeeze_logits(g, b)
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, config.vocab_size])
    return _finish(m, b, [logits] + outputs, [PLUGIN_DOMAIN])


def _slice_last_position(g: onnx.GraphProto, b: GraphBuilder) -> None:
    """Feed the head (norm_f, lm_head: nodes named head/...) only the last position of the residual stream."""
    head = [n for n in g.node if n.name.startswith("head/")]
    produced_in_head = {o for n in head for o in n.output}
    consts = {t.name for t in g.initializer}  # initializers and what is computed from them alone (fp16 Casts)
    for n in g.node:
        if n.input and all(not x or x in consts for x in n.input):
            consts.update(n.output)
    ext = sorted({x for n in head for x in n.input if x and x not in produced_in_head and x not in consts})
    if len(ext) != 1:
        raise InternalError(f"prefill: expected the head to read one tensor (the residual stream), it reads {ext}")
    (r,) = ext
    with b.scope("head"):
        r_last = b.op("Slice", [r, b.ints("last_start", [-1]), b.ints("last_end", [INT64_MAX]),
                                b.ints("seq_axis_slice", [1])], name="last_position")
    for n in head:
        for k, x in enumerate(n.input):
            if x == r:
                n.input[k] = r_last


# -- decode step ----------------------------------------------------------------------------------
def build_decode_graph(full: onnx.ModelProto, config: MambaConfig) -> onnx.ModelProto:
    """The decode-step graph from the full-sequence plugin graph (see the module docstring)."""
    m = _copy(full)
    g = m.graph
    m.graph.name = "mamba_lm_decode"
    s = StateShapes.of(config)
    convs, scans = _per_layer(g, config)
    b = GraphBuilder("decode")
    b._used.update(t for n in g.node for t in list(n.output) + [n.name])
    b._used.update(i.name for i in g.initializer)
    (ids,) = [i for i in g.input if i.name == "input_ids"]
    ids.type.tensor_type.shape.dim[1].Clear()
    ids.type.tensor_type.shape.dim[1].dim_value = 1
    with b.scope("state"):
        drop_first = (b.ints("start", [1]), b.ints("end", [INT64_MAX]), b.ints("time_axis", [2]))
    outputs = []
    for i in range(config.n_layer):
        conv, scan = convs[i], scans[i]
        g.input.extend([_state_vi(conv_state_name(i), s.conv), _state_vi(ssm_state_name(i), s.ssm)])
        with b.scope(f"layers.{i}"):
            window = b.op("Concat", [conv_state_name(i), conv.input[0]], name="conv_window", axis=2)  # [B, di, K]
            # the depthwise dot Σ_k taps[:, k] ⊙ window[:, :, k] (+ bias) on the Conv's own taps/bias tensors
            # (a grouped Conv in onnxruntime runs one tiny GEMM per channel: ~3x slower per step at batch 8)
            taps = b.op("Squeeze", [conv.input[1], b.ints("tap_axis", [1])], name="conv_taps")  # [di, K]
            dot_out = [conv.output[0]] if len(conv.input) < 3 or not conv.input[2] else None
            dot = b.op("ReduceSum", [b.op("Mul", [window, taps], name="conv_mul"), b.ints("tap_sum_axis", [2])],
                       name="conv_dot", keepdims=1, out_names=dot_out)  # [B, di, 1]
            if dot_out is None:
                bias = b.op("Unsqueeze", [conv.input[2], b.ints("bias_axis", [1])], name="conv_bias_col")
                b.op("Add", [dot, bias], name="conv_bias", out_names=[conv.output[0]])
            g.node.remove(conv)
            b.op("Slice", [window, *drop_first], name="conv_state_update", out_names=[conv_state_name(i, True)])
        if len(scan.input) != len(ss.INPUTS):
            raise InternalError(f"{scan.name}: SelectiveScan has {len(scan.input)} inputs, expected {len(ss.INPUTS)}")
        if any(scan.output[1] in n.input for n in g.node):
            raise InternalError(f"{scan.name}: last_state is consumed inside the graph; expected it unused")
        u, delta, A, Bm, Cm, Dskip, dbias = scan.input
        if any(n.op_type == "QuantizeLinear" and set(n.output) & {u, delta, Bm, Cm} for n in g.node):
            raise InternalError(f"{scan.name}: int8 scan inputs (fuse_scan_quant); the step has no scale fields, "
                                "build it from the Q→DQ graph")
        softplus = int(_attrs(scan).get("delta_softplus", 1))
        step = helper.make_node(
            su.PLUGIN_NAME, [ssm_state_name(i), u, delta, A, Bm, Cm, Dskip, dbias],
            [scan.output[0], ssm_state_name(i, True)], name=f"layers.{i}/selective_state_update", domain=PLUGIN_DOMAIN,
            **node_attrs(su.PLUGIN_NAME, dt_softplus=softplus))
        scan.CopyFrom(step)
        outputs += [_state_vi(conv_state_name(i, True), s.conv), _state_vi(ssm_state_name(i, True), s.ssm)]
    _squeeze_logits(g, b)
    logits = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [BATCH, config.vocab_size])
    return _finish(m, b, [logits] + outputs, [PLUGIN_DOMAIN])


def build_stateful_graphs(full: onnx.ModelProto, config: MambaConfig) -> dict[str, onnx.ModelProto]:
    """{file name: graph} for both stateful graphs in both flavours."""
    from .lower import lower_selective_scan, lower_state_update

    prefill, decode = build_prefill_graph(full, config), build_decode_graph(full, config)
    return {"model.prefill.onnx": prefill, "model.prefill.portable.onnx": lower_selective_scan(prefill),
            "model.decode.onnx": decode,
            # the step's own plugin first; lower_selective_scan then lowers any others (Hadamard) and the domain
            "model.decode.portable.onnx": lower_selective_scan(lower_state_update(decode))}


PREFILL_TOL = 1e-4


def self_check(full, graphs: dict[str, onnx.ModelProto], config: MambaConfig,
               prompt: int = 5, steps: int = 2, tol: Optional[float] = None) -> dict:
    """Prefill (one row left-padded by 2) + `steps` decode steps vs the full graph's logits, for each
    flavour whose two graphs are in `graphs`.

    `full` is the full graph with the same kernels as the pair (the plugin graph for the tensorrt pair, its
    portable lowering for the portable pair: the prefill is held to fp32 rounding, so it must be compared
    with the same arithmetic), or a function returning it (built, run and released inside).

    Without activation quantization the step and the scan differ only in fp32 rounding (default tol 1e-4).
    With Q/DQ nodes a value within rounding of a quantization boundary can land one step apart and, in a
    deep model, that step flips more roundings in later layers, so a quantized pair is only sanity-checked
    (default tol 0.25); compile checks the derivation tightly on the same weights without activation
    quantization (compile._stateful)."""
    import numpy as np

    from ..backends.ort import OrtRunner

    full_graph = full() if callable(full) else full
    if tol is None:
        tol = 0.25 if any(n.op_type == "QuantizeLinear" for n in full_graph.graph.node) else 1e-4
    rng = np.random.default_rng(0)
    L = prompt + steps
    ids = rng.integers(0, config.vocab_size, size=(2, L))
    ref_plugins = sum(n.domain == PLUGIN_DOMAIN for n in full_graph.graph.node)
    full_runner = OrtRunner(full_graph)
    ref = full_runner(ids)  # [2, L, V]
    short = ids[1, 2:prompt]  # row 1: a prompt 2 shorter, left-padded
    ref_short = full_runner(ids[1:, 2:])
    del full_runner, full_graph  # one graph's sessions alive at a time (a 130m-shape model: ~0.5 GB each)
    pids = np.stack([ids[0, :prompt], np.concatenate([[0, 0], short])])
    mask = np.ones_like(pids)
    mask[1, :2] = 0
    scale = float(np.abs(ref).max())
    worst, prefill_worst = {}, {}
    for flavour, suffix in (("tensorrt", ".onnx"), ("portable", ".portable.onnx")):
        if f"model.prefill{suffix}" not in graphs:
            continue
        out = OrtRunner(graphs[f"model.prefill{suffix}"]).run({"input_ids": pids, "attention_mask": mask})
        dec = OrtRunner(graphs[f"model.decode{suffix}"])
        got = [out.pop("logits")]
        want = [np.stack([ref[0, prompt - 1], ref_short[0, prompt - 3]])]
        for t in range(steps):
            tok = np.stack([ids[0, prompt + t], ids[1, prompt + t]])[:, None]
            out = dec.run({"input_ids": tok, **out})
            got.append(out.pop("logits"))
            want.append(np.stack([ref[0, prompt + t], ref_short[0, prompt - 2 + t]]))
            out = {k.replace("_out.", "."): v for k, v in out.items()}
        err = max(float(np.abs(g - w).max()) for g, w in zip(got, want)) / max(scale, 1e-30)
        # the prefill computes the full graph's arithmetic (same scan kernel, same conv, same Hadamard), so its
        # logits must match to fp32 rounding whatever the recipe; only the decode steps take the looser bound above
        pre_err = float(np.abs(got[0] - want[0]).max()) / max(scale, 1e-30)
        if not np.isfinite(pre_err) or pre_err > PREFILL_TOL:
            raise InternalError(f"self-check: {flavour} prefill logits differ from the full graph's "
                                f"(max rel error {pre_err:.3g}, limit {PREFILL_TOL})")
        if not np.isfinite(err) or err > tol:
            raise InternalError(f"self-check: {flavour} prefill/decode logits differ from the full graph's "
                                f"(max rel error {err:.3g})")
        worst[flavour] = err
        prefill_worst[flavour] = pre_err
    return {"batch": 2, "prompt": prompt, "left_padding": 2, "decode_steps": steps, "tolerance": tol,
            "reference_plugin_nodes": ref_plugins,
            "max_rel_error_vs_full_graph": worst, "prefill_tolerance": PREFILL_TOL,
            "prefill_max_rel_error_vs_full_graph": prefill_worst}
