"""`OUTDIR/report.html`: what the transforms did to the quantized tensors (like the paper's Figure 2).

For each layer and each activation point: the per-channel maximum and variance before the passes
(fp32 calibration) and after them (the graph that is quantized), drawn as inline SVG line plots,
and per point the quantization SQNR of the chosen static scale on the calibration sample; per
linear, the weight SQNR. Self-contained HTML (no scripts, no external files).
"""

from __future__ import annotations

import html
from typing import Optional

import numpy as np

from .calibrate import Stats
from .graph.plan import ACT_POINTS, LINEARS, GraphPlan, point
from .model import MambaModel
from .quant.qparams import expand_scales, fake_quant, sqnr_db

W, H = 360, 120


def _polyline(y: np.ndarray, ymax: float, color: str) -> str:
    n = len(y)
    xs = np.linspace(4, W - 4, n) if n > 1 else np.array([W / 2])
    ys = H - 4 - (H - 8) * np.clip(y / max(ymax, 1e-30), 0, 1)
    pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs, ys))
    return f'<polyline fill="none" stroke="{color}" stroke-width="1" points="{pts}"/>'


def _plot(title: str, before: Optional[np.ndarray], after: np.ndarray) -> str:
    ymax = float(max(np.max(after), 0 if before is None else np.max(before)))
    lines = ("" if before is None else _polyline(before, ymax, "#c0392b")) + _polyline(after, ymax, "#2471a3")
    return (f'<figure><svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" style="border:1px solid #ccc">{lines}</svg>'
            f'<figcaption>{html.escape(title)} (max {ymax:.3g})</figcaption></figure>')


PALETTE = ("#e67e22", "#27ae60", "#8e44ad", "#16a085", "#7f8c8d", "#d35400", "#2c3e50")


def _stage_plot(title: str, curves: list) -> str:
    ymax = float(max(np.max(c) for _, c in curves))
    lines = "".join(_polyline(c, ymax, PALETTE[k % len(PALETTE)]) for k, (_, c) in enumerate(curves))
    legend = ", ".join(f"<span style='color:{PALETTE[k % len(PALETTE)]}'>{html.escape(n)}</span>"
                       for k, (n, _) in enumerate(curves))
    return (f'<figure><svg width="{W}" height="{H}" viewBox="0 0 {W} {H}" style="border:1px solid #ccc">{lines}</svg>'
            f'<figcaption>{html.escape(title)} (max {ymax:.3g})<br>{legend}</figcaption></figure>')


def build_report(model: MambaModel, plan: GraphPlan, before: Optional[Stats], after: Stats, recipe_name: str,
                 trace: Optional[list] = None) -> str:
    q = plan.quant
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>mq-deploy report: {html.escape(recipe_name)}</title>",
             "<style>body{font-family:sans-serif;margin:2em} figure{display:inline-block;margin:4px} "
             "table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}</style>",
             f"</head><body><h1>Recipe {html.escape(recipe_name)}</h1>",
             "<p>Per-channel statistics of every " + ("quantized activation" if q is None or q.act_scales else
                                                       "activation quantization point (a weight-only recipe quantizes "
                                                       "none of them: shown for what the passes did)") +
             ", <span style='color:#c0392b'>before the passes "
             "(fp32 model)</span> and <span style='color:#2471a3'>after them (the graph that is quantized)</span>, "
             "then the same statistics after each pass in turn (first calibration windows). "
             "Channels on the x axis; flat curves quantize well with one per-tensor scale.</p>"]
    rows = []
    for i in range(model.config.n_layer):
        parts.append(f"<h2>Layer {i}</h2>")
        for ap in ACT_POINTS:
            pt = point(i, ap)
            if pt not in after.chan:
                continue
            b_max = before.chan.get(pt) if before is not None else None
            b_var = before.chan_var(pt) if before is not None and pt in before.chan_sum else None
            parts.append(_plot(f"{pt}: channel max", b_max, after.chan[pt]))
            parts.append(_plot(f"{pt}: channel variance", b_var, after.chan_var(pt)))
            if trace:
                stages = [("fp32", before)] if before is not None else []
                stages += [(name, st) for name, st in trace]
                curves = [(n, st.chan[pt]) for n, st in stages if pt in st.chan]
                if len(curves) > 1:
                    parts.append(_stage_plot(f"{pt}: channel max after each pass", curves))
                    parts.append(_stage_plot(f"{pt}: channel variance after each pass",
                                             [(n, st.chan_var(pt)) for n, st in stages if pt in st.chan]))
            if q is not None and pt in q.act_scales:
                smp = after.sample[pt]
                rows.append((pt, "activation", q.act_scales[pt], after.absmax[pt], sqnr_db(smp, fake_quant(smp, q.act_scales[pt], q.act_bits))))
        if q is not None:
            for lin in LINEARS:
                name = f"layers.{i}.{lin}"
                if name in q.weights:
                    qw, s = q.weights[name]
                    w = getattr(model.layers[i], lin).T
                    kind = f"int{q.bits(name)} per " + (f"block of {qw.shape[0] // s.shape[0]}" if s.ndim == 2 else "channel")
                    rows.append((name + ".weight", kind, float(s.max()), float(np.abs(w).max()),
                                 sqnr_db(w, qw.astype(np.float32) * expand_scales(s, qw.shape[0]))))
    if rows:
        parts.append("<h2>Quantization error per point</h2><table><tr><th>tensor</th><th>kind</th><th>scale (max)</th>"
                     "<th>absmax</th><th>SQNR dB</th></tr>")
        for name, kind, sc, amax, db in rows:
            parts.append(f"<tr><td style='text-align:left'>{html.escape(name)}</td><td>{kind}</td><td>{sc:.4g}</td>"
                         f"<td>{amax:.4g}</td><td>{db:.1f}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
