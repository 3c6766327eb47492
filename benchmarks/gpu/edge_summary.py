"""Summarises edge_sms's JSON (benchmarks/gpu/edge_sms.sh): per SM count, build (with or without PDL) and type pair,
the automatic plan's time against the fastest (threads a channel, chunks) timed, shape by shape, as markdown.

    python benchmarks/gpu/edge_summary.py RUN.json [RUN.json ...] [--json ALL.json]   # --json: all rows in one file
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict


def summary(rows: list[dict]) -> str:
    runs = defaultdict(list)
    for r in rows:
        runs[(r["sms"], r.get("pdl", 0), r["type"], r["B"], r["L"], r["D"])].append(r)
    out, by_part = [], defaultdict(list)
    for key in sorted(runs):
        auto = next(r for r in runs[key] if r["config"] == "auto")
        # the auto pick's time from its forced row where timed: the auto row is timed first of all, and runs without
        # edge_sms's warm-up (before the repeat run) measured it up to 6 % slow
        auto = next((r for r in runs[key] if r["config"] == "forced" and (r["threads"], r["chunks"]) ==
                     (auto["threads"], auto["chunks"])), auto)
        best = min(runs[key], key=lambda r: r["ms"])
        by_part[key[:3]].append((key[3:], auto, best))
    for (sms, pdl, typ), shapes in sorted(by_part.items()):
        ratios = [a["ms"] / b["ms"] for _, a, b in shapes]
        out += [f"### {sms} SMs{', PDL' if pdl else ''}, {typ}: auto/best max {max(ratios):.3f}, "
                f"mean {sum(ratios) / len(ratios):.3f}", "",
                "| B | L | D | auto (threads, chunks) | ms | best timed (threads, chunks) | ms | auto/best |",
                "|---|---|---|---|---|---|---|---|"]
        for (b, l, d), a, bst in shapes:
            out.append(f"| {b} | {l} | {d} | {a['threads']}, {a['chunks']} | {a['ms']:.4f} | {bst['threads']}, {bst['chunks']} "
                       f"| {bst['ms']:.4f} | {a['ms'] / bst['ms']:.3f} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    dump = None
    if "--json" in args:
        k = args.index("--json")
        dump = args[k + 1] if k + 1 < len(args) else sys.exit(__doc__)
        del args[k:k + 2]
    if not args:
        sys.exit(__doc__)
    rows = []
    for a in args:
        with open(a) as fh:
            rows += json.load(fh)
    if dump:
        with open(dump, "w") as fh:
            json.dump(rows, fh, indent=0)
    print(summary(rows))
