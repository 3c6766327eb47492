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
    lines += ["", f"## Speed ({b['gpu']}, device copy {b['copy_bandwidth_GBps']:.0f} GB/s counting read+write, "
              f"{b.get('sms', '?')} SMs, max SM clock {b.get('sm_clock_max_mhz', float('nan')):.0f} MHz)", "",
              "Byte roofline = bytes the op must move (inputs once, outputs once) / measured copy bandwidth. "
              "MUFU floor = 20 MUFU operations per (token, channel) (16 state exponentials, softplus ex2 + rcp, "
              "SiLU ex2 + rcp) / (SMs × 16 per clock × max SM clock), for one pass.", "",
              ]
    if b["scan"]:
        lines += ["### SelectiveScan (N=16, z gate, last_state)", "",
                  "| B | L | D | dtype | impl | schedule | poly | ms | byte roofline ms | % | MUFU floor ms | % |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in b["scan"]:
        auto = " (auto)" if r.get("chunks_arg") == 0 else ""
        sched = r.get("plan", f"{r.get('chunks', '')}{auto}")
        lines.append(f"| {r['B']} | {r['L']} | {r['D']} | {r['dtype']} | {r.get('impl', 'mq')} | {sched} | "
                     f"{r.get('poly', '')} | {r['ms']:.3f} | {r['roofline_ms']:.3f} | {100 * r['frac_roofline']:.0f}% | "
                     f"{r.get('mufu_ms', float('nan')):.3f} | {100 * r.get('frac_mufu', float('nan')):.0f}% |")
    alts = b.get("scan_alt") or []
    for alt in [alts] if isinstance(alts, dict) else alts:
        lines += ["", f"fp16 sweep of the alternative build {alt.get('tag', '(ALT_MIN_BLOCKS)')} ({alt['lib']}):", "",
                  "| B | L | D | schedule | ms | MUFU floor % |", "|---|---|---|---|---|---|"]
        for r in alt["rows"]:
            auto = " (auto)" if r.get("chunks_arg") == 0 else ""
            lines.append(f"| {r['B']} | {r['L']} | {r['D']} | {r.get('plan', str(r['chunks']) + auto)} | {r['ms']:.3f} | "
                         f"{100 * r.get('frac_mufu', float('nan')):.0f}% |")
    if b["hadamard"]:
        lines += ["", "### Hadamard (64 MiB fp16 input)", "", "| n | m | dtype | impl | ms | memcpy ms | ratio |", "|---|---|---|---|---|---|---|"]
    for r in b["hadamard"]:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['m']} | | {r.get('impl', 'mq')} | {r['error']} | | |")
            continue
        lines.append(f"| {r['n']} | {r['m']} | {r['dtype']} | {r.get('impl', 'mq')} | {r['ms']:.3f} | {r['memcpy_ms']:.3f} | {r['ratio_vs_memcpy']:.2f} |")
    for alt in b.get("hadamard_alt", []):
        lines += ["", f"Hadamard, build {alt['tag']} ({alt['lib']}):", "", "| n | m | dtype | ms | memcpy ms | ratio |", "|---|---|---|---|---|---|"]
        for r in alt["rows"]:
            lines.append(f"| {r['n']} | {r['m']} | {r['dtype']} | {r['ms']:.3f} | {r['memcpy_ms']:.3f} | {r['ratio_vs_memcpy']:.2f} |")
    if b.get("decode"):
        lines += ["", "### Decode: one token through every layer's SelectiveStateUpdate (CUDA-graph replay)", "",
                  "fp16 x/dt/z/B/C/y, fp32 state updated in place, N 16, z gate, d_inner = 2·d_model. "
                  "bytes/bw = (state read + write in fp32, A, D, dt_bias, x/dt/z/B/C in, y out) / copy bandwidth.", "",
                  "| model | layers | D | B | state MB | mq µs/token | mamba-ssm Triton µs/token | mq speed-up | bytes/bw µs | mq µs/layer |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in b["decode"]:
            mq, mt = r.get("mq_us"), r.get("mamba_triton_us")
            sp = f"{mt / mq:.2f}×" if mq and mt else ""
            mqs = f"{mq:.1f}" if mq else ""
            mts = f"{mt:.1f}" if mt else ""
            per = f"{mq / r['layers']:.2f}" if mq else ""
            lines.append(f"| {r['model']} | {r['layers']} | {r['D']} | {r['B']} | {r['state_MB']:.1f} | {mqs} | {mts} | {sp} | "
                         f"{r['roofline_us']:.1f} | {per} |")
    for alt in b.get("decode_alt", []):
        lines += ["", f"Decode, build {alt['tag']} ({alt['lib']}): {alt['checks'] - len(alt['failures'])}/{alt['checks']} state-update checks "
                  "passed", "", "| model | B | mq µs/token | mamba-ssm Triton µs/token | mq speed-up |", "|---|---|---|---|---|"]
        for r in alt["rows"]:
            mq, mt = r.get("mq_us"), r.get("mamba_triton_us")
            lines.append(f"| {r['model']} | {r['B']} | {mq or float('nan'):.1f} | {mt or float('nan'):.1f} | "
                         f"{(mt / mq if mq and mt else float('nan')):.2f}× |")
    if b.get("mamba_ssm"):
        lines += ["", f"reference-build notes: {b['mamba_ssm']}"]
open(os.path.join(out, "results.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
