"""The scan's plan cost model (plugins/kernels/selectiveScanKernel.cu: planCost, kPlanMargin, selectiveScanPlan) in Python, scored
against edge_sms timings (benchmarks/gpu/edge_sms.sh), and refitted from them.

    python benchmarks/gpu/fit_plan.py RUN.json [RUN.json ...]          # regret of the committed model and the old rules
    python benchmarks/gpu/fit_plan.py --fit FIT.json [--check CHECK.json ...]   # refit on FIT.json (needs scipy)

Regret of a plan on a shape = the time of the (threads a channel, chunks) it picks / the fastest timed one, where
both come from the same run's forced timings (edge_sms times every pick the model can make: kPlanChunks). The
constants below must equal planCost's; tests/test_scan_plan_model.py checks that this port picks what the compiled
plan picked (the check run's "auto" rows, made before kPlanMargin, so with margin 0) and the plans that
plugins/tests/scan_plan_host.cu pins.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict

TILE, FIRST_PCT, MIN_BLOCKS = 16, 75, 5  # kMaxTile, MQ_SCAN_FIRST_PCT, MQ_SCAN_MIN_BLOCKS
PLAN_CHUNKS = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 32)  # kPlanChunks
MARGIN = 0.01  # kPlanMargin: the fewest chunks within 1 % of the least modelled time
# planCost: (a, b) of the 2- and 4-thread kernels, chunked-pass local-token factor, ns a pass, ns a chained chunk,
# one-pass factors (2 / 4 threads)
COMMITTED = (38.7, 1.6, 22.5, 1.35, 0.9, 5400.0, 110.0, 1.03, 1.015)


def chunk_geometry(seq_len: int, chunks: int) -> tuple[int, int, int]:
    """(chunks, first, len) as chunkGeometry makes them."""
    L = max(1, seq_len)
    ln = (L + chunks - 1) // max(1, chunks)
    ln = (ln + TILE - 1) // TILE * TILE
    if chunks <= 1 or ln >= L:
        return 1, L, L
    first = ln
    if chunks >= 3 and FIRST_PCT < 100:
        shortest = max(TILE, ln * FIRST_PCT // 100 // TILE * TILE)
        first = min(ln, max(shortest, (L - (chunks - 1) * ln + TILE - 1) // TILE * TILE))
    return 1 + (L - first + ln - 1) // ln, first, ln


def blocks_per_chunk(B: int, D: int, split: int) -> int:
    return B * math.ceil(D / (128 // split))


def plan_cost(P, sms: int, B: int, L: int, D: int, split: int, geom: tuple[int, int, int]) -> float:
    a2, b2, a4, b4, rho, pass_ns, chain_ns, one2, one4 = P
    a, b, one = (a4, b4, one4) if split == 4 else (a2, b2, one2)

    def per_token(blocks: int) -> float:
        k = (blocks + sms - 1) // sms
        full, rest = divmod(k, MIN_BLOCKS)
        return full * a * (MIN_BLOCKS + b) + (a * (rest + b) if rest else 0.0)

    n, first, ln = geom
    per = blocks_per_chunk(B, D, split)
    if n <= 1:
        return one * L * per_token(per) + pass_ns
    return per_token((n - 1) * per) * (max(first, rho * ln) + ln) + 2 * pass_ns + chain_ns * (n - 1)


def candidates(L: int):
    """(split, requested chunks, geometry) the plan weighs, as selectiveScanPlan loops over them."""
    for split in (4, 2):
        last = 0
        for c in PLAN_CHUNKS:
            if c > max(1, L // 128):
                break
            g = chunk_geometry(L, c)
            if g[0] != last:
                last = g[0]
                yield split, c, g


def plan(P, sms: int, B: int, L: int, D: int, margin: float = MARGIN) -> tuple[int, int]:
    """(threads a channel, chunks) as selectiveScanPlan picks them: of the candidates within `margin` of the least
    modelled cost, the fewest chunks (then the least cost; the first of equals, as the C++ loop keeps it). The check
    run (results/edge-plan/check) was made before the margin: its picks are margin=0's."""
    cands = [(plan_cost(P, sms, B, L, D, split, g), split, g[0]) for split, _, g in candidates(L)]
    best = min(c[0] for c in cands)
    pick = None
    for c in cands:
        if c[0] <= best * (1 + margin) and (pick is None or c[2] < pick[2] or (c[2] == pick[2] and c[0] < pick[0])):
            pick = c
    return pick[1], pick[2]


def old_plan(sms: int, B: int, L: int, D: int) -> tuple[int, int]:
    """The rules planCost replaced (4 threads where B·D·4 fit one wave, unless 4 threads would chunk with under 4
    pass-1 blocks an SM; one pass where B·D·threads ≥ 1/3 of the resident threads; else chunkedPlanChunks)."""
    resident = sms * 128 * MIN_BLOCKS

    def chunked(split):
        per = blocks_per_chunk(B, D, split)
        c_max = min(max(1, L // 128), MIN_BLOCKS * sms // per + 1)

        def cost(c):
            n, _, ln = chunk_geometry(L, c)
            k = (max(1, n - 1) * per + sms - 1) // sms
            p = (k + MIN_BLOCKS - 1) // MIN_BLOCKS * (min(k, MIN_BLOCKS) + 1.2)
            return 1.85 * ln * p if n > 1 else L * p
        best, best_cost = 1, cost(1)
        for c in range(2, c_max + 1):
            if cost(c) <= best_cost * (1 + 1e-9):
                best, best_cost = c, cost(c)
        return best

    split = 4 if B * D * 4 <= resident else 2
    if split == 4 and B * D * 12 < resident:
        c4 = chunk_geometry(L, chunked(4))[0]
        if c4 > 1 and (c4 - 1) * blocks_per_chunk(B, D, 4) < (MIN_BLOCKS - 1) * sms:
            split = 2
    chunks = 1 if B * D * split * 3 >= resident else chunked(split)
    return split, chunk_geometry(L, chunks)[0]


def load(paths):
    """{(sms, pdl, type, B, L, D): {(threads, chunks): ms}} of the forced timings, and the auto rows."""
    forced, auto = defaultdict(dict), {}
    for path in paths:
        with open(path) as fh:
            for r in json.load(fh):
                key = (r["sms"], r.get("pdl", 0), r["type"], r["B"], r["L"], r["D"])
                if r["config"] == "forced":
                    forced[key][(r["threads"], r["chunks"])] = r["ms"]
                else:
                    auto[key] = r
    return forced, auto


def regrets(pick, forced):
    """{(sms, pdl, type): [regret, ...]} of a plan function (sms, B, L, D) -> (threads, chunks); shapes whose pick was
    not timed are counted apart."""
    out, untimed = defaultdict(list), defaultdict(int)
    for key, cfg in forced.items():
        sms, pdl, typ, B, L, D = key
        p = pick(sms, B, L, D)
        if p in cfg:
            out[(sms, pdl, typ)].append(cfg[p] / min(cfg.values()))
        else:
            untimed[(sms, pdl, typ)] += 1
    return out, untimed


def report(forced, P=COMMITTED) -> str:
    model, _ = regrets(lambda *s: plan(P, *s), forced)
    old, old_untimed = regrets(old_plan, forced)
    lines = ["| SMs | type | shapes | model mean | model max | old rules mean | old rules max |", "|---|---|---|---|---|---|---|"]
    for part in sorted(model):
        m, o = model[part], old.get(part, [])
        note = f" ({old_untimed[part]} picks untimed)" if old_untimed.get(part) else ""
        lines.append(f"| {part[0]}{' PDL' if part[1] else ''} | {part[2]} | {len(m)} | {sum(m) / len(m):.3f} | {max(m):.3f} | "
                     + (f"{sum(o) / len(o):.3f} | {max(o):.3f}{note} |" if o else "– | – |"))
    allm = [v for r in model.values() for v in r]
    allo = [v for r in old.values() for v in r]
    lines.append(f"| all | | {len(allm)} | {sum(allm) / len(allm):.4f} | {max(allm):.3f} | {sum(allo) / len(allo):.4f} | {max(allo):.3f} |")
    return "\n".join(lines)


def fit(forced, start=COMMITTED):
    """Nelder-Mead on mean regret + 0.1 × max regret + 0.5 × the mean squared log error of every timing."""
    import numpy as np
    from scipy.optimize import minimize

    def logerr(P):
        errs = [(math.log(plan_cost(P, k[0], k[3], k[4], k[5], t, chunk_geometry(k[4], c))) - math.log(ms * 1e6)) ** 2
                for k, cfg in forced.items() for (t, c), ms in cfg.items()]
        return sum(errs) / len(errs)

    def objective(x):
        if min(x[0], x[2], x[4]) <= 0:
            return 1e9
        r = [v for part in regrets(lambda *s: plan(list(x), *s), forced)[0].values() for v in part]
        return (np.mean(r) - 1) + 0.1 * (max(r) - 1) + 0.5 * logerr(list(x))

    res = minimize(objective, list(start), method="Nelder-Mead", options=dict(maxiter=1500, maxfev=1500))
    return [float(v) for v in res.x]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", help="edge_sms JSON files to score the committed model on")
    ap.add_argument("--fit", help="refit the constants on this edge_sms JSON (needs scipy)")
    ap.add_argument("--check", nargs="*", default=[], help="with --fit: score the refitted model on these runs too")
    a = ap.parse_args(argv)
    if a.fit:
        forced, _ = load([a.fit])
        P = fit(forced)
        print("fitted:", ", ".join(f"{v:.4g}" for v in P))
        print(f"\nin sample ({a.fit}):\n" + report(forced, P))
        if a.check:
            print(f"\nheld out ({', '.join(a.check)}):\n" + report(load(a.check)[0], P))
        return 0
    if not a.runs:
        ap.error("name edge_sms JSON files, or --fit")
    print(report(load(a.runs)[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
