"""Function-preserving passes over (MambaModel, GraphPlan).

Each pass states its algebra in its docstring, takes the model, the plan, calibration statistics of
the fp32 model and its parameters, and returns the new model and plan (inputs are not modified).
Every pass has an fp32 equivalence test (tests/test_passes.py): same logits before and after.

Weights are in torch layout (out, in): a linear computes y = x·Wᵀ.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

from ..errors import UserError
from ..graph.plan import GraphPlan
from ..model import MambaModel


@dataclass(frozen=True)
class PassSpec:
    name: str
    fn: Callable
    params: frozenset  # allowed parameter names
    needs_stats: bool = False


REGISTRY: dict[str, PassSpec] = {}


def register(name: str, params=(), needs_stats: bool = False):
    def deco(fn):
        REGISTRY[name] = PassSpec(name, fn, frozenset(params), needs_stats)
        return fn
    return deco


def needs_stats(passes) -> bool:
    """Whether any pass of [(name, params)] reads calibration statistics (its own, or a KLT rotation's)."""
    return any(REGISTRY[n].needs_stats or dict(p).get("klt") for n, p in passes)


def clone(model: MambaModel, plan: GraphPlan) -> tuple[MambaModel, GraphPlan]:
    """New model/plan objects sharing the weight arrays: passes assign new arrays (or copy before
    editing in place), so inputs are never modified and nothing large is copied needlessly."""
    m = copy.copy(model)
    m.layers = [copy.copy(L) for L in model.layers]
    return m, copy.deepcopy(plan)


def run_passes(model: MambaModel, plan: GraphPlan, passes, stats=None, log=lambda s: None, after_each=None):
    """Apply [(name, params)] in order; a failure names the pass and those before it.

    `after_each(name, model, plan)` is called after every pass (the report's per-pass statistics)."""
    done = []
    for name, params in passes:
        spec = REGISTRY.get(name)
        if spec is None:
            raise UserError(f"unknown pass '{name}'")
        if spec.needs_stats and stats is None:
            raise UserError(f"pass '{name}' needs calibration statistics")
        log(f"  pass {name} {dict(params) if params else ''}")
        try:
            model, plan = spec.fn(model, plan, stats, **dict(params))
        except UserError as e:
            raise UserError(f"pass '{name}' (after {', '.join(done) or 'none'}): {e}") from None
        done.append(name)
        if after_each is not None:
            after_each(name, model, plan)
    return model, plan


from . import fold_norms, rotate, smooth  # noqa: E402,F401  (registers the passes)
