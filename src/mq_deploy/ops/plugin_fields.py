"""The fields of the TensorRT plugin creators, and the attributes of the plugin nodes that carry them.

TensorRT's ONNX parser hands a plugin creator only the fields it declares (getFieldNames: the `Attrs` list
in plugins/*Plugin.cpp), converted by ONNX attribute type (INT → kINT32, FLOAT → kFLOAT32). An attribute
the creator does not declare is dropped without a word, and a declared field the node lacks only gives a
warning and keeps the C++ default. So every plugin node carries every declared field, explicitly, under
the declared name and type: `FIELDS` mirrors the C++ lists (tests/test_plugin_fields.py compares both, and
every exported node, with the sources), and `node_attrs` is the one way an emitter spells the attributes.

Meanings (the C++ reads them so):

| plugin | field | meaning |
|---|---|---|
| SelectiveScan | delta_softplus | 1: Δ = softplus(delta + delta_bias) |
| | has_z | 1: an 8th input z gates y inside the plugin (our graphs gate outside: 0) |
| | has_initial_state | 1: a last input h0 (our graphs start from zero: 0) |
| | u_scale, delta_scale, B_scale, C_scale | dequantization scale of an int8 input; 0 on a float node, which then offers no int8 formats (an implicitly quantized build would otherwise give it int8 with scales it does not read) |
| SelectiveStateUpdate | dt_softplus | 1: Δ = softplus(dt + dt_bias) |
| | has_z | 1: a 9th input z (0) |
| Hadamard | n | transform size (last axis); no default |
| | out_scale | > 0: int8 output quantized with this scale; 0: output in the input's type |
"""

from __future__ import annotations

from typing import Optional

from onnx import helper

from ..errors import InternalError
from .selective_scan import PLUGIN_NAMESPACE, PLUGIN_VERSION  # one kVERSION / kNAMESPACE for every plugin

#: {plugin: {field: (type, default)}}; default None: every node sets it
FIELDS: dict[str, dict[str, tuple[type, Optional[float]]]] = {
    "SelectiveScan": {"delta_softplus": (int, 1), "has_z": (int, 0), "has_initial_state": (int, 0),
                      "u_scale": (float, 0.0), "delta_scale": (float, 0.0), "B_scale": (float, 0.0),
                      "C_scale": (float, 0.0)},
    "SelectiveStateUpdate": {"dt_softplus": (int, 1), "has_z": (int, 0)},
    "Hadamard": {"n": (int, None), "out_scale": (float, 0.0)},
}


def _typed(op: str, name: str, value):
    fields = FIELDS.get(op)
    if fields is None or name not in fields:
        raise InternalError(f"plugin {op} declares no field {name!r} (plugins/*Plugin.cpp, ops/plugin_fields.py)")
    t = fields[name][0]
    if value is None or isinstance(value, bool) or (t is int and int(value) != value):
        raise InternalError(f"plugin {op}: field {name} must be {t.__name__}, got {value!r}")
    return t(value)


def node_attrs(op: str, **values) -> dict:
    """Every declared field of plugin `op` (`values` over the defaults) plus plugin_version / plugin_namespace:
    the keyword attributes of one plugin node."""
    if op not in FIELDS:
        raise InternalError(f"no plugin {op} (ops/plugin_fields.py)")
    for name in values:
        _typed(op, name, values[name])
    attrs = {}
    for name, (_, default) in FIELDS[op].items():
        if name not in values and default is None:
            raise InternalError(f"plugin {op}: field {name} has no default; set it")
        attrs[name] = _typed(op, name, values.get(name, default))
    return {**attrs, "plugin_version": PLUGIN_VERSION, "plugin_namespace": PLUGIN_NAMESPACE}


def fields_of(node) -> dict:
    """{field: value} of a plugin node, the declared default for a field it lacks (as TensorRT's parser does;
    None for one without a default)."""
    have = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: have.get(k, default) for k, (_, default) in FIELDS[node.op_type].items()}


def set_field(node, name: str, value) -> None:
    """Set one declared field on a plugin node in place (replacing the attribute; order kept)."""
    a = helper.make_attribute(name, _typed(node.op_type, name, value))
    for i, old in enumerate(node.attribute):
        if old.name == name:
            node.attribute[i].CopyFrom(a)
            return
    node.attribute.append(a)


def plugin_inventory(model) -> list[dict]:
    """The plugins a graph needs (manifest.json's `plugins`): one {name, version, namespace, count} per plugin op
    with nodes in it, in FIELDS order."""
    counts = {op: 0 for op in FIELDS}
    for n in model.graph.node:
        if n.op_type in counts:
            counts[n.op_type] += 1
    return [{"name": op, "version": PLUGIN_VERSION, "namespace": PLUGIN_NAMESPACE, "count": k}
            for op, k in counts.items() if k]


__all__ = ["FIELDS", "fields_of", "node_attrs", "plugin_inventory", "set_field"]
