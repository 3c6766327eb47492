"""Recipes are data: `export_configs/<name>.yaml` → a validated, frozen `Recipe`.

A recipe names the numeric precision and the list of graph passes (each `{name: ..., <params>}`)
that the compiler applies in order. `--recipe` takes a bundled recipe name or a path to a YAML file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .errors import UserError

RECIPE_DIR = Path(__file__).resolve().parent / "export_configs"
PRECISIONS = ("fp32", "fp16", "w8a8", "w4a8", "w4a16")
# w4a16: weight-only INT4 (activations stay floating point), the form TensorRT documents INT4 in (weight-only, block
# scales of 64 or 128)
_KEYS = {"name", "description", "precision", "passes", "weights", "activations", "calibration"}
_SECTIONS = {
    # block_size: 0 = one scale per output channel; n > 0 (INT4 only) = one per n input rows of each output
    # channel (opset-21 blocked DequantizeLinear); linears whose input size n does not divide are int8 per channel
    # (TensorRT takes INT4 in blocks of 64 / 128 only; `quant/linear.py`)
    # act_order (GPTQ): input rows quantized in order of decreasing calibration energy diag(XᵀX), scales unchanged
    "weights": {"bits": (int, 8), "method": (str, "rtn"), "clip_search": (bool, False), "block_size": (int, 0),
                "act_order": (bool, False)},
    # cls_token (Vim): "separate" gives the class token its own scale at the linear inputs where its range
    # differs from the patch tokens' (larger, or less than half); "shared": one scale per tensor
    "activations": {"bits": (int, 8), "method": (str, "percentile"), "percentile": (float, 99.99),
                    "scan_inputs": (bool, True), "cls_token": (str, "shared")},
    # stats_samples: windows (an evenly spaced subset) of the fp32 statistics run the data-driven passes read
    # (KLT covariances, smoothing maxima); the activation scales always use all `samples`
    "calibration": {"samples": (int, 128), "seq_len": (int, 512), "seed": (int, 0), "stats_samples": (int, 32)},
}
# (lowest, highest, why) of the numbers above; None: no bound
_RANGES = {
    "activations.percentile": (50.0, 100.0, " (a percent, e.g. 99.99: 0.9999 would clip every activation at the 1 % "
                                            "point of its magnitudes)"),
    "calibration.samples": (1, None, ""), "calibration.seq_len": (2, None, ""), "calibration.seed": (0, None, ""),
    "calibration.stats_samples": (1, None, ""),
}

# pass parameters: (type, lowest, highest); None: no bound (the same name means the same thing in every pass)
_PASS_PARAMS = {"alpha": (float, 0.0, 1.0), "klt": (bool, None, None), "random_signs": (bool, None, None),
                "seed": (int, 0, None), "keep_tied": (bool, None, None)}


def _check_value(where: str, v, typ: type, lo=None, hi=None, hint: str = "") -> object:
    """v as `typ` (an int for a float), or one UserError naming `where` (recipe, section.key) and the accepted range."""
    if typ is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise UserError(f"{where} must be {typ.__name__}, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        span = f"in [{lo}, {hi}]" if lo is not None and hi is not None else f">= {lo}" if lo is not None else f"<= {hi}"
        raise UserError(f"{where} must be {span}, got {v!r}{hint}")
    return v


@dataclass(frozen=True)
class Recipe:
    name: str
    precision: str
    description: str = ""
    passes: tuple = field(default_factory=tuple)  # tuple of (pass name, frozen params dict items)
    weights: dict = field(default_factory=dict)
    activations: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    source: str = ""
    sha256: str = ""

    @property
    def quantized(self) -> bool:
        """Weights quantized (every precision but fp32 / fp16)."""
        return self.precision in ("w8a8", "w4a8", "w4a16")

    @property
    def act_quantized(self) -> bool:
        """Activations quantized too (int8, static scales): not w4a16."""
        return self.precision in ("w8a8", "w4a8")

    @property
    def quant_calibrates(self) -> bool:
        """The quantizer reads a calibration run of the transformed graph (activation scales, or GPTQ's Hessians): every
        quantized recipe but a weight-only RTN one."""
        return self.act_quantized or (self.quantized and self.weights.get("method") == "gptq")

    def to_dict(self) -> dict:
        return {"name": self.name, "precision": self.precision, "description": self.description,
                "passes": [{"name": n, **dict(p)} for n, p in self.passes], "weights": self.weights,
                "activations": self.activations, "calibration": self.calibration, "source": self.source,
                "sha256": self.sha256}


def available_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def family(recipe: Recipe) -> Optional[str]:
    """"vim" for a bundled vim-* recipe, "lm" for the other bundled ones but fp32 / fp16; None where the recipe says
    nothing of the model (fp32, fp16, a recipe file of one's own)."""
    if recipe.name in ("fp32", "fp16") or not recipe.source or Path(recipe.source).resolve().parent != RECIPE_DIR:
        return None  # (resolved: a bundled recipe named by a relative path, or through a link, is still bundled)
    return "vim" if recipe.name.startswith("vim-") else "lm"


def check_family(recipe: Recipe, vim: bool) -> None:
    """A bundled recipe named vim-* is for Vision Mamba (Vim) models, every other bundled one but fp32 / fp16 for
    language models (their passes and calibration differ): one UserError when `recipe` does not fit the model. A
    recipe file of one's own is not judged by its name; what does not fit in it is an error where it is used (a Vim
    pass parameter, cls_token on a language model)."""
    if family(recipe) in (None, "vim" if vim else "lm"):
        return
    if vim:
        raise UserError(f"recipe {recipe.name} is a language-model recipe; use fp32, fp16 or the vim-* recipes for a "
                        f"Vim model ({', '.join(r for r in available_recipes() if r.startswith('vim-'))})")
    raise UserError(f"recipe {recipe.name} is a Vision Mamba (Vim) recipe; use a language-model recipe for this model "
                    f"({', '.join(r for r in available_recipes() if not r.startswith('vim-'))})")


def _parse(raw, origin: str) -> Recipe:
    if not isinstance(raw, dict):
        raise UserError(f"recipe {origin}: expected a YAML mapping with keys {sorted(_KEYS)}")
    unknown = set(raw) - _KEYS
    if unknown:
        raise UserError(f"recipe {origin}: unknown keys {sorted(unknown)}; allowed: {sorted(_KEYS)}")
    name, precision = raw.get("name"), raw.get("precision")
    if not isinstance(name, str) or not name:
        raise UserError(f"recipe {origin}: 'name' must be a non-empty string")
    if precision not in PRECISIONS:
        raise UserError(f"recipe {origin}: precision '{precision}' is not supported here; supported: {', '.join(PRECISIONS)}")
    passes = raw.get("passes") or []
    if not isinstance(passes, list):
        raise UserError(f"recipe {origin}: 'passes' must be a list")
    from .passes import REGISTRY

    KNOWN_PASSES = {k: v.params for k, v in REGISTRY.items()}
    sections = {}
    for sec, fields in _SECTIONS.items():
        given = raw.get(sec) or {}
        if not isinstance(given, dict):
            raise UserError(f"recipe {origin}: '{sec}' must be a mapping")
        bad = set(given) - set(fields)
        if bad:
            raise UserError(f"recipe {origin}: unknown keys in '{sec}': {sorted(bad)}; allowed: {sorted(fields)}")
        vals = {}
        for k, (typ, default) in fields.items():
            lo, hi, hint = _RANGES.get(f"{sec}.{k}", (None, None, ""))
            if f"{sec}.{k}" == "activations.percentile" and given.get("method", "percentile") != "percentile":
                lo = hi = None  # (not read by the other methods: its type only)
            vals[k] = _check_value(f"recipe {origin}: {sec}.{k}", given.get(k, default), typ, lo, hi, hint)
        sections[sec] = vals
    if sections["weights"]["method"] not in ("rtn", "gptq"):
        raise UserError(f"recipe {origin}: weights.method must be rtn or gptq")
    if sections["weights"]["bits"] not in (4, 8) or sections["activations"]["bits"] != 8:
        raise UserError(f"recipe {origin}: weights.bits must be 4 or 8 and activations.bits 8")
    from .quant.qparams import ACT_METHODS

    if sections["activations"]["method"] not in ACT_METHODS:
        raise UserError(f"recipe {origin}: activations.method must be one of {', '.join(ACT_METHODS)}")
    if sections["activations"]["cls_token"] not in ("shared", "separate"):
        raise UserError(f"recipe {origin}: activations.cls_token must be 'shared' or 'separate'")
    bs = sections["weights"]["block_size"]
    if bs < 0 or (bs and (sections["weights"]["bits"] != 4 or bs % 2)):
        raise UserError(f"recipe {origin}: weights.block_size must be 0 (per channel) or an even size with bits 4")
    if sections["weights"]["act_order"] and sections["weights"]["method"] != "gptq":
        raise UserError(f"recipe {origin}: weights.act_order applies to method gptq only")
    if precision == "w4a16" and raw.get("activations"):
        raise UserError(f"recipe {origin}: precision w4a16 quantizes weights only (activations stay floating point): "
                        "remove its 'activations' section")
    if precision in ("w8a8", "w4a8", "w4a16") and sections["weights"]["bits"] != int(precision[1]):
        raise UserError(f"recipe {origin}: precision {precision} but weights.bits is {sections['weights']['bits']}")
    parsed = []
    for i, p in enumerate(passes):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise UserError(f"recipe {origin}: pass #{i + 1} must be a mapping with a 'name'")
        pname = p["name"]
        if pname not in KNOWN_PASSES:
            raise UserError(f"recipe {origin}: unknown pass '{pname}'; known passes: {sorted(KNOWN_PASSES) or 'none yet'}")
        params = {k: v for k, v in p.items() if k != "name"}
        bad = set(params) - KNOWN_PASSES[pname]
        if bad:
            raise UserError(f"recipe {origin}: pass '{pname}' has unknown parameters {sorted(bad)}")
        for k, v in params.items():
            if k in _PASS_PARAMS:
                params[k] = _check_value(f"recipe {origin}: pass '{pname}' {k}", v, *_PASS_PARAMS[k])
        parsed.append((pname, tuple(sorted(params.items()))))
    return Recipe(name=name, precision=precision, description=str(raw.get("description", "")), passes=tuple(parsed),
                  **sections)


def load_recipe(name_or_path: str) -> Recipe:
    """Load a bundled recipe by name (e.g. 'fp32') or a recipe YAML file by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise UserError(f"recipe file not found: {p}")
        path = p
    else:
        path = RECIPE_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise UserError(f"unknown recipe '{name_or_path}'; available: {', '.join(available_recipes())} (or a path to a .yaml file)")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"recipe {path} is not valid YAML: {what}{where}") from None
    r = _parse(raw, str(path))
    return Recipe(**{**r.__dict__, "source": str(path), "sha256": hashlib.sha256(text.encode()).hexdigest()})
