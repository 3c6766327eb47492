"""Every exported plugin node carries exactly the fields its TensorRT plugin creator declares, under the same names
and types (CPU only: the declarations are read from the C++ sources, not from a built library).

TensorRT's ONNX parser hands createPlugin only the fields named by the creator's getFieldNames() (the `Attrs` list
of each plugins/*Plugin.cpp), converted by ONNX attribute type (INT -> kINT32, FLOAT -> kFLOAT32, STRING -> kCHAR).
A node attribute the creator does not declare is dropped without a word, and a declared field the node lacks only
warns and keeps the C++ default: a renamed field (`B_scale` vs `b_scale`) would leave int8 inputs without their scale
(the plugin then refuses them: no int8 format is offered without all four scales).
"""

import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, helper

from mq_deploy.graph.fuse_scan_quant import unfuse_hadamard_quant
from mq_deploy.compile import compile_model
from mq_deploy.loaders import BUNDLED_DIR
from mq_deploy.ops.ort_kernels import PLUGIN_DOMAIN

from .conftest import FASHION_MNIST
from .helpers import compile_small_w8

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
ONNX_TYPE = {"kINT32": AttributeProto.INT, "kFLOAT32": AttributeProto.FLOAT, "kCHAR": AttributeProto.STRING}
PY_TYPE = {"kINT32": int, "kFLOAT32": float}
# attributes the parser reads itself to find the creator (onnx-tensorrt's plugin importer), never forwarded
LOOKUP = ("plugin_version", "plugin_namespace")


def _io_counts(op: str, f: dict) -> tuple[int, int]:
    """(inputs, outputs) each plugin expects: its nbInputs() / getNbOutputs() in plugins/*Plugin.cpp."""
    if op == "SelectiveScan":
        return 7 + (f["has_z"] != 0) + (f["has_initial_state"] != 0), 2
    if op == "SelectiveStateUpdate":
        return 8 + (f["has_z"] != 0), 2
    if op == "Hadamard":
        return 1, 1
    raise AssertionError(f"no expected input/output counts for plugin {op}")


# -- the C++ declarations ---------------------------------------------------------------------------
_ATTRS_FN = re.compile(r"^Attrs\s+(\w+)\(\)\s*\{\s*return\s+Attrs\(\{(.*?)\}\);\s*\}", re.S | re.M)
_FIELD = re.compile(r"\{\s*\"(\w+)\"\s*,\s*(?:nvinfer1::)?PluginFieldType::(k\w+)\s*,\s*([-+0-9.eEf]+)\s*\}")


def _cstr(src: str, name: str, where: str) -> str:
    found = re.findall(rf"constexpr\s+char\s+const\s*\*\s*{name}\s*=\s*\"([^\"]*)\"\s*;", src)
    assert len(found) == 1, f"{where}: expected one {name} definition, found {found}"
    return found[0]


def declared_fields(plugin_dir: Path = PLUGINS) -> dict[str, dict]:
    """{plugin name: {"fields": {field: (kTYPE, default)}, "version": ..., "namespace": ...}} from the sources:
    each *Plugin.cpp's `Attrs xAttrs() { return Attrs({{"name", PluginFieldType::kT, default}, ...}); }`, which
    its creator's constructor (getFieldNames) and createPlugin (parsing) must both use."""
    common = (plugin_dir / "pluginCommon.h").read_text()
    version, namespace = _cstr(common, "kVERSION", "pluginCommon.h"), _cstr(common, "kNAMESPACE", "pluginCommon.h")
    out = {}
    for cpp in sorted(plugin_dir.glob("*Plugin.cpp")):
        src = re.sub(r"//[^\n]*", "", cpp.read_text())
        fns = _ATTRS_FN.findall(src)
        assert len(fns) == 1, f"{cpp.name}: expected one `Attrs xAttrs() {{ return Attrs({{...}}); }}`, found {len(fns)}"
        fn, body = fns[0]
        fields = {}
        for name, kind, default in _FIELD.findall(body):
            assert name not in fields, f"{cpp.name}: field {name} declared twice"
            assert kind in PY_TYPE, f"{cpp.name}: field {name} has type {kind}; Attrs holds kINT32 / kFLOAT32 only"
            fields[name] = (kind, float(default.rstrip("fF")))
        # every `{"...` entry must have been understood (a new spelling must fail here, not drop a field)
        assert body.count('{"') == len(fields) > 0, f"{cpp.name}: could not read every entry of {fn}(): {body!r}"
        assert re.search(rf"Creator::\w+Creator\(\)\s*:\s*mAttrs\({fn}\(\)\)", src), f"{cpp.name}: creator not built from {fn}()"
        assert re.search(r"Creator::getFieldNames\(\)\s*noexcept\s*\{\s*return\s+mAttrs\.declared\(\);", src), \
            f"{cpp.name}: getFieldNames does not return the declared Attrs"
        assert re.search(rf"Attrs\s+a\s*=\s*{fn}\(\);\s*a\.parse\(fc\);", src), f"{cpp.name}: createPlugin does not parse {fn}()"
        out[_cstr(src, "kNAME", cpp.name)] = {"fields": fields, "version": version, "namespace": namespace}
    return out


# -- the check --------------------------------------------------------------------------------------
def mismatches(model: onnx.ModelProto, declared: dict) -> list[str]:
    """One line per way a plugin node of `model` and its creator's declaration disagree."""
    out = []
    for n in model.graph.node:
        if n.domain != PLUGIN_DOMAIN:
            continue
        if n.op_type not in declared:
            out.append(f"{n.name}: no plugin creator {n.op_type} in plugins/")
            continue
        d = declared[n.op_type]
        attrs = {a.name: a for a in n.attribute}
        have, want = set(attrs) - set(LOOKUP), set(d["fields"])
        for name in sorted(want - have):
            out.append(f"{n.name}: declared field {name} missing (TensorRT warns and uses the default)")
        for name in sorted(have - want):
            out.append(f"{n.name}: attribute {name} is not a declared field (TensorRT drops it)")
        for name, value in (("plugin_version", d["version"]), ("plugin_namespace", d["namespace"])):
            a = attrs.get(name)
            if a is None or a.type != AttributeProto.STRING or a.s.decode() != value:
                out.append(f"{n.name}: {name} must be the string {value!r}")
        values = {k: v for k, (_, v) in d["fields"].items()}
        for name in sorted(have & want):
            kind = d["fields"][name][0]
            a = attrs[name]
            if a.type != ONNX_TYPE[kind]:
                out.append(f"{n.name}: {name} is ONNX {AttributeProto.AttributeType.Name(a.type)}, "
                           f"the creator declares {kind}")
                continue
            values[name] = helper.get_attribute_value(a)
            if kind == "kINT32" and not -2**31 <= values[name] < 2**31:
                out.append(f"{n.name}: {name} = {values[name]} does not fit kINT32")
        n_in, n_out = _io_counts(n.op_type, values)
        if (len(n.input), len(n.output)) != (n_in, n_out):
            out.append(f"{n.name}: {len(n.input)} inputs / {len(n.output)} outputs, the plugin expects "
                       f"{n_in} / {n_out} with these fields")
    return out


# -- graphs from the normal compile path --------------------------------------------------------------
@pytest.fixture(scope="module")
def outdirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("fields")
    compile_small_w8(root)
    compile_model(None, "fp32", root / "fp32", progress=False)
    dirs = {"w8": root / "w8", "fp32": root / "fp32"}
    if FASHION_MNIST is not None:
        compile_model(str(BUNDLED_DIR.parent / "vim-fmnist"), "vim-mambaquant-w8a8", root / "vim", calib_samples=8)
        dirs["vim"] = root / "vim"
    return dirs


GRAPHS = [("w8", "model.onnx"), ("w8", "model.prefill.onnx"), ("w8", "model.decode.onnx"),
          ("fp32", "model.onnx"), ("fp32", "model.prefill.onnx"), ("fp32", "model.decode.onnx"), ("vim", "model.onnx")]


def test_declarations_are_read():
    d = declared_fields()
    assert set(d) == {"SelectiveScan", "SelectiveStateUpdate", "Hadamard"}
    assert d["SelectiveScan"]["fields"]["B_scale"] == ("kFLOAT32", 0.0)
    assert d["Hadamard"]["fields"]["n"][0] == "kINT32"
    assert d["SelectiveScan"]["version"] == "1" and d["SelectiveScan"]["namespace"] == "mq_deploy"


@pytest.mark.parametrize("outdir,name", GRAPHS, ids=[f"{o}/{n}" for o, n in GRAPHS])
def test_plugin_nodes_match_creator_fields(outdirs, outdir, name):
    if outdir not in outdirs:
        pytest.skip("dataset-fashion-mnist is not installed (Vim calibration)")
    m = onnx.load(str(outdirs[outdir] / name), load_external_data=False)
    kinds = {n.op_type for n in m.graph.node if n.domain == PLUGIN_DOMAIN}
    assert kinds >= ({"Hadamard"} if outdir != "fp32" else set()) | \
        ({"SelectiveStateUpdate"} if "decode" in name else {"SelectiveScan"})
    assert mismatches(m, declared_fields()) == []
    for n in m.graph.node:  # int8 into the scan: every scale set from its Q (> 0); float input: 0 (no int8 formats)
        if n.op_type == "SelectiveScan":
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            scales = [a.get(s) for s in ("u_scale", "delta_scale", "B_scale", "C_scale")]
            assert all(s > 0 and s != 1.0 for s in scales) if outdir != "fp32" else scales == [0.0] * 4, (n.name, scales)


def test_python_field_table_matches_the_sources():
    from mq_deploy.ops.plugin_fields import FIELDS

    d = declared_fields()
    assert set(FIELDS) == set(d)
    for op, fields in FIELDS.items():
        want = {k: (PY_TYPE[kind], v) for k, (kind, v) in d[op]["fields"].items()}
        # a field without a usable default (None in the table) is one every node must set
        assert {k: t for k, (t, _) in fields.items()} == {k: t for k, (t, _) in want.items()}, op
        assert {k: v for k, (_, v) in fields.items() if v is not None} == \
            {k: v for k, (_, v) in want.items() if fields[k][1] is not None}, op


def test_a_renamed_field_is_caught(outdirs, tmp_path):
    """Mutation: the C++ renames B_scale; the exported graphs no longer match."""
    for f in PLUGINS.glob("*Plugin.cpp"):
        shutil.copy(f, tmp_path / f.name)
    shutil.copy(PLUGINS / "pluginCommon.h", tmp_path / "pluginCommon.h")
    cpp = tmp_path / "selectiveScanPlugin.cpp"
    cpp.write_text(cpp.read_text().replace('"B_scale"', '"b_scale"'))
    m = onnx.load(str(outdirs["w8"] / "model.onnx"), load_external_data=False)
    found = mismatches(m, declared_fields(tmp_path))
    assert any("declared field b_scale missing" in s for s in found)
    assert any("attribute B_scale is not a declared field" in s for s in found)
    # and a type drift: delta_softplus as a float field
    cpp.write_text(cpp.read_text().replace('{"delta_softplus", PluginFieldType::kINT32, 1}',
                                           '{"delta_softplus", PluginFieldType::kFLOAT32, 1.0}'))
    assert any("delta_softplus is ONNX INT, the creator declares kFLOAT32" in s
               for s in mismatches(m, declared_fields(tmp_path)))


def test_cpu_paths_take_older_graphs_and_refuse_what_they_cannot_run(outdirs):
    """onnxruntime-extensions wants every declared attribute: a graph written before the fields were explicit
    gets the defaults (as TensorRT does); a value the CPU kernels do not implement is a clear error."""
    from mq_deploy.backends.ort import OrtRunner
    from mq_deploy.errors import UserError

    m = onnx.load(str(outdirs["w8"] / "model.onnx"))
    ids = np.random.default_rng(0).integers(0, 8192, size=(1, 7))
    ref = OrtRunner(m, plugins="extensions")(ids)
    old = onnx.ModelProto()
    old.CopyFrom(m)
    assert unfuse_hadamard_quant(old) == 8  # such a graph had no Hadamard writing int8 (out_scale) either
    for n in old.graph.node:
        keep = [a for a in n.attribute if a.name not in ("has_z", "has_initial_state", "out_scale")]
        del n.attribute[:]
        n.attribute.extend(keep)
    assert np.array_equal(OrtRunner(old, plugins="extensions")(ids), ref)
    (scan,) = [n for n in old.graph.node if n.name == "layers.0/selective_scan"]
    scan.attribute.append(helper.make_attribute("has_z", 1))
    for mode in ("extensions", "native"):
        with pytest.raises(UserError, match="has_z = 1"):
            OrtRunner(old, plugins=mode)


def test_node_dump_for_the_gpu_plugin_check(outdirs, tmp_path):
    """benchmarks/gpu/plugin_nodes.py (the inputs of the GPU run of the TensorRT plugins on real graphs) stores every
    plugin node with its forwarded fields and its inputs as the node receives them: the CPU reference on the stored
    inputs (int8 ones dequantized with the node's scale fields) gives the stored outputs."""
    import importlib.util
    import json

    from mq_deploy.ops.selective_scan import selective_scan
    from mq_deploy.ops.state_update import selective_state_update
    from mq_deploy.quant.hadamard import hadamard_transform

    spec = importlib.util.spec_from_file_location("plugin_nodes", PLUGINS.parent / "benchmarks" / "gpu" / "plugin_nodes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "nodes.npz"
    mod.main([str(outdirs["w8"]), str(outdirs["fp32"]), "-o", str(out), "--batch", "2", "--seq", "40",
              "--text", str(outdirs["w8"].parent / "calib.txt")])
    z = np.load(out)
    meta = json.loads(str(z["meta"]))
    count = {}
    for m in meta:
        key = (m["source"].split("/")[-1], m["op"])
        count[key] = count.get(key, 0) + 1
    assert count == {("model.onnx", "SelectiveScan"): 16, ("model.onnx", "Hadamard"): 8,
                     ("model.decode.onnx", "SelectiveStateUpdate"): 16, ("model.decode.onnx", "Hadamard"): 8}
    scale_of = {0: "u_scale", 1: "delta_scale", 3: "B_scale", 4: "C_scale"}
    for k, m in enumerate(meta):
        ins = [z[f"{k}.in{j}"] for j in range(len(m["inputs"]))]
        outs = [z[f"{k}.out{j}"] for j in range(len(m["outputs"]))]
        f = m["fields"]
        assert set(f) == set(declared_fields()[m["op"]]["fields"]), m["node"]
        # what the references below (and plugin_check.py's) take for granted of today's graphs: no z / h0 inputs,
        # a Hadamard writing int8 (out_scale: its QuantizeLinear fused) in the quantized graphs only
        w8 = m["source"].startswith("w8")
        assert f.get("has_z", 0) == 0 and f.get("has_initial_state", 0) == 0, m["node"]
        assert (f.get("out_scale", 0.0) > 0) == (w8 and m["op"] == "Hadamard"), m["node"]
        assert all(m["kinds"][name] == ("int" if isinstance(v, int) else "float") for name, v in f.items())
        if m["op"] == "SelectiveScan":
            int8 = [j for j, a in enumerate(ins) if a.dtype == np.int8]
            assert int8 == ([0, 1, 3, 4] if m["source"].startswith("w8") else []), (m["node"], int8)
            x = [a.astype(np.float32) * np.float32(f[scale_of[j]]) if a.dtype == np.int8 else a for j, a in enumerate(ins)]
            y, h = selective_scan(*x[:6], delta_bias=x[6], delta_softplus=bool(f["delta_softplus"]))
            assert outs[0].shape == (2, 40, ins[2].shape[0]) and outs[0].dtype == np.float32
        elif m["op"] == "SelectiveStateUpdate":
            y, h = selective_state_update(*ins, dt_softplus=bool(f["dt_softplus"]))
        else:
            y, h = hadamard_transform(ins[0]), None
            if f["out_scale"]:  # int8 codes; the float64 reference may land a rounding boundary one step away
                assert outs[0].dtype == np.int8 and outs[0].shape == ins[0].shape, m["node"]
                codes = np.clip(np.rint(y.astype(np.float64) / f["out_scale"]), -128, 127)
                d = np.abs(outs[0] - codes)
                assert d.max() <= 1 and np.count_nonzero(d) <= max(2, 1e-4 * d.size), m["node"]
                assert np.abs(outs[0]).max() >= 16, m["node"]  # the codes use the int8 range (a scale of the right size)
                continue
        assert np.abs(y - outs[0]).max() <= 1e-4 * np.abs(outs[0]).max(), m["node"]
        if h is not None:
            assert np.abs(h - outs[1]).max() <= 1e-4 * np.abs(outs[1]).max(), m["node"]
