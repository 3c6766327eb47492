"""Turn tests.json + bench.json into results.md (GPU named, command recorded)."""
import json
import os
import sys

out = sys.argv[1]
cmd = sys.argv[2] if len(sys.argv) > 2 else ""
lines = ["# mq-deploy kernels on GPU", ""]
tp = os.path.join(out, "tests.json")
if os.path.exists(tp):
    t = json.load(open(tp))
    n = len(t["rows"])
    lines += [f"GPU: {t['gpu']}", f"Command: `{cmd}`", "", f"## Correctness: {n - t['failures']}/{n} checks passed", ""]
    worst = {}
    for r in t["rows"]:
        k = (r["kernel"], r["metric"], r["limit"])
        if k not in worst or r["value"] > worst[k]["value"]:
            worst[k] = r
    lines += ["| kernel | metric | worst value | limit | worst case |", "|---|---|---|---|---|"]
    for (kern, met, lim), r in worst.items():
        lines.append(f"| {kern} | {met} | {r['value']:.3g} | {lim:.3g} | {r['case']} |")
    fails = [r for r in t["rows"] if not r["ok"]]
    if fails:
        lines += ["", "Failures:"] + [f"- {r['kernel']} {r['case']}: {r['metric']}={r['value']:.3g}" for r in fails]
bp = os.path.join(out, "bench.json")
if os.path.exists(bp):
    b = json.load(open(bp))
    lines += ["", f"## Speed ({b['gpu']}, device copy {b['copy_bandwidth_GBps']:.0f} GB/s counting read+write)", "",
              "Roofline time = bytes the op must move (inputs once, outputs once) / measured copy bandwidth.", "",
              "### SelectiveScan (N=16, z gate, last_state)", "",
              "| B | L | D | dtype | impl | chunks | poly | ms | roofline ms | % roofline |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in b["scan"]:
        lines.append(f"| {r['B']} | {r['L']} | {r['D']} | {r['dtype']} | {r.get('impl', 'mq')} | {r.get('chunks', '')} | "
                     f"{r.get('poly', '')} | {r['ms']:.3f} | {r['roofline_ms']:.3f} | {100 * r['frac_roofline']:.0f}% |")
    lines += ["", "### Hadamard (64 MiB fp16 input)", "", "| n | m | dtype | ms | memcpy ms | ratio |", "|---|---|---|---|---|---|"]
    for r in b["hadamard"]:
        lines.append(f"| {r['n']} | {r['m']} | {r['dtype']} | {r['ms']:.3f} | {r['memcpy_ms']:.3f} | {r['ratio_vs_memcpy']:.2f} |")
    lines += ["", "### SelectiveStateUpdate (per token, back-to-back launches)", "",
              "| B | D | dtype | mq µs | mamba-ssm Triton µs |", "|---|---|---|---|---|"]
    for r in b["state_update"]:
        m = r.get("mamba_ssm_triton_us")
        lines.append(f"| {r['B']} | {r['D']} | {r['dtype']} | {r['us']:.2f} | {'' if m is None else f'{m:.2f}'} |")
    if b.get("mamba_ssm"):
        lines += ["", f"mamba-ssm notes: {b['mamba_ssm']}"]
open(os.path.join(out, "results.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
