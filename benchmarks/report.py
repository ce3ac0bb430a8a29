"""The cascade benchmark's report: Markdown tables (results.md) and the chart (cascade_benchmark.png)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import numpy as np

from machine_limits import log

PEERS = [("TotalSegmentator, fastest setting (CPU)", "~70 s"), ("TotalSegmentator, full resolution (CPU)", "40-50 min"),
         ("nnU-Net v2, no TTA (CPU)", "~3 min"), ("MONAI Auto3DSeg (10 CPU cores)", "55 s")]


# --------------------------------------------------------------------------------------------------- report
def fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def markdown(res: Dict) -> str:
    m = res["machine"]
    lines = ["# BiSC-UNet cascade benchmark", "",
             f"Machine: {m['cpu']}, {m['threads']} thread(s) used of {m['logical_cpus']} logical CPUs"
             + (f", {m['memory_gib']} GiB" if "memory_gib" in m else "") + f"; ISA: {m['isa']}.",
             f"Software: Python {m['python']}, torch {m['torch']}, OpenVINO {m['openvino'] or 'not installed'}. "
             f"Date: {res['date']}. Load average before / after: {m.get('loadavg_before', 0):.2f} / "
             f"{res.get('loadavg_after', 0):.2f} (1-minute; the benchmark's own load included).", "",
             "## Machine limits", "",
             "| measure | GFLOP/s |", "|---|---:|"]
    fma = m["fma"]
    if fma.get("f32"):
        lines.append(f"| FP32 FMA kernel ({fma['kernel']}) | {fma['f32']:.0f} |")
    if fma.get("bf16"):
        lines.append(f"| bf16 kernel ({fma['bf16_kernel']}) | {fma['bf16']:.0f} |")
    if m.get("fma_1thread", {}).get("f32"):
        lines.append(f"| FP32 FMA kernel, 1 thread | {m['fma_1thread']['f32']:.0f} |")
    lines += [f"| torch.mm fp32 2048^2 | {m['gemm_f32']:.0f} (1 thread: {m['gemm_f32_1thread']:.0f}) |",
              (f"| torch.mm bf16 2048^2 | {m['gemm_bf16']:.0f} (1 thread: {m['gemm_bf16_1thread']:.0f}) |"
               if m["gemm_bf16"] else "| torch.mm bf16 2048^2 | not measured: no bf16 instructions (AVX512-BF16/AMX) |"),
              "", f"% of peak below: fp32 against {m['peak']['f32']:.0f}, bf16 against {m['peak']['bf16']:.0f} GFLOP/s "
              "(the best of the bf16 kernel and the bf16 GEMM, which uses AMX where present).", ""]
    c = res["case"]
    lines += ["## Cascade, array in -> label map out (warm, median of %d runs)" % res["runs"], "",
              f"CT {c['shape']} voxels (z, y, x) at {c['spacing']} mm; ROIs: {c['roi_source']}.", "",
              "| networks | backend | total s | rough net s (GFLOP/s, % peak) | fine net s (GFLOP/s, % peak) "
              "| glue s (share) | Dice kidney/tumor vs torch | setup s |",
              "|---|---|---:|---|---|---|---|---:|"]
    for r in res["cascade"]:
        ag = r.get("agreement_vs_torch")
        agt = f"{ag['kidney']:.4f} / {ag['tumor']:.4f}" if ag else "reference"
        n_note = "" if r.get("n_runs", res["runs"]) == res["runs"] else f" ({r['n_runs']} runs)"
        lines.append(f"| {r['set']} {r['widths']} | {r['described']} | **{r['total_s']:.2f}**{n_note} | "
                     f"{r['rough']['seconds']:.2f} ({r['rough']['gflops']:.0f}, {r['rough']['pct_peak']:.0f}%) | "
                     f"{r['fine']['seconds']:.2f} ({r['fine']['gflops']:.0f}, {r['fine']['pct_peak']:.0f}%) | "
                     f"{r['glue_s']:.2f} ({100 * r['glue_share']:.0f}%) | {agt} | {r['setup_s']:.1f} |")
    firsts = list({r["set"]: r for r in reversed(res["cascade"])}.values())[::-1]
    lines += ["", "Network input shapes (z, y, x) and convolution GFLOP per cascade run: " + "; ".join(
        f"{r['set']}: rough {r['rough']['shapes']} {r['rough']['gflop']:.1f}, fine {r['fine']['shapes']} "
        f"{r['fine']['gflop']:.1f}" for r in firsts), ""]
    e = res.get("end_to_end")
    if e:
        true = next(r for r in res["cascade"] if r["set"] == e["set"] and r["backend"] == e["backend"])
        lines += ["### End to end with the bundled rough stage's own ROIs", "",
                  "| ROIs | ROI sizes mm (x, y, z) | fine voxels | total s | rough net s | fine net s | glue s | "
                  "Dice kidney / tumor vs truth |", "|---|---|---:|---:|---:|---:|---:|---|"]
        for name, r in (("true kidney boxes", true), ("bundled rough stage", e)):
            vox = sum(float(np.prod(sh)) for sh in r["fine"]["shapes"])
            lines.append(f"| {name} | {r['roi_sizes_mm']} | {vox / 1e6:.1f} M | {r['total_s']:.2f} | "
                         f"{r['rough']['seconds']:.2f} | {r['fine']['seconds']:.2f} | {r['glue_s']:.2f} | "
                         f"{r['kidney_dice_gt']:.3f} / {r['tumor_dice_gt']:.3f} |")
        lines += ["", f"({e['described']}, median of {len(e['runs'])} runs.)", ""]
    if res.get("logits"):
        lines += ["Max |logit difference| / max |logit| vs torch eager (fine network, 32x64x64 block): " + "; ".join(
            f"{s}: {k}: {v:.1e}" for s, d in res["logits"].items() for k, v in d.items()), ""]
    if res.get("dice_gt"):
        lines += ["Dice against the phantom's truth (kidney / tumor): " + "; ".join(
            f"{r['set']} {r['backend']}: {r['kidney_dice_gt']:.3f} / {r['tumor_dice_gt']:.3f}" for r in res["cascade"])
            + ("" if res["trained"] else " (random weights: meaningless)"), ""]
    if res.get("baseline"):
        b = res["baseline"]
        lines += ["## Cascade vs one sliding-window pass over the whole CT (non-cascaded baseline)", "",
                  "| | seconds | network GFLOP | Dice kidney / tumor vs truth |", "|---|---:|---:|---|",
                  f"| cascade ({b['backend']}) | {b['cascade_s']:.2f} | {b['cascade_gflop']:.0f} | "
                  f"{b['cascade_dice'][0]:.3f} / {b['cascade_dice'][1]:.3f} |",
                  f"| baseline: {b['windows']} windows of {b['window']} ({b['backend']}) | {b['total_s']:.2f} | "
                  f"{b['gflop']:.0f} | {b['kidney_dice_gt']:.3f} / {b['tumor_dice_gt']:.3f} |", "",
                  f"Cascade speed-up: **{b['speedup']:.1f}x**" + ("" if res["trained"] else
                  " (random weights: Dice meaningless)."), ""]
    pdice = res.get("precision_dice")
    if pdice:
        ref = next(k for k in pdice if k.startswith("max_case_diff_vs_"))
        lines += [f"## bf16 vs f32 accuracy ({pdice['cases']} held-out phantoms, seeds {pdice['seeds']})", "",
                  "| backend | mean kidney Dice | mean tumor Dice | largest per-case difference vs f32 |",
                  "|---|---:|---:|---:|"]
        for s, v in pdice["mean"].items():
            d = pdice[ref].get(s)
            lines.append(f"| {s} | {v['kidney_dice']:.4f} | {v['tumor_dice']:.4f} | {fmt(d, 4)} |")
        lines.append("")
    mem = res.get("memory") or {}
    if mem:
        lines += ["## Peak memory (fresh process, whole cascade)", "", "| case | CT MiB | peak RSS MiB | seconds |",
                  "|---|---:|---:|---:|"]
        for k, v in mem.items():
            if "error" in v:
                lines.append(f"| {k} | - | error: {v['error']} | - |")
            else:
                lines.append(f"| {k} {v['shape']} | {v['ct_mib']:.0f} | {v['peak_rss_mib']:.0f} | {v['seconds']:.2f} |")
        lines.append("")
    cli = res.get("cli")
    if cli:
        lines += ["## Cold command line (new process, .nii.gz in -> .nii.gz out)", "",
                  "| run | wall s | read s | load models s | rough s | fine s | write s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for k in ("end to end, cold cache", "end to end, warm cache", "true ROIs (--rois), cold cache",
                  "true ROIs (--rois), warm cache"):
            v = cli.get(k)
            if not v:
                continue
            if "error" in v:
                lines.append(f"| {k} | error: {v['error']} | | | | | |")
                continue
            t = v["timings"]
            lines.append(f"| {k} | **{v['wall_s']:.2f}** | {fmt(t.get('read input'))} | {fmt(t.get('load models'))} | "
                         f"{fmt(t.get('rough stage'))} | {fmt(t.get('fine stage'))} | {fmt(t.get('write outputs'))} |")
        lines += ["", f"({cli['note']}; wall time includes Python start and imports.)", ""]
    tr = res.get("training")
    if tr:
        bf16 = (f"bf16 autocast {tr['bf16']:.0f} steps/hour (**{tr['speedup']:.2f}x**)" if tr.get("bf16") else
                "bf16 autocast not measured: this CPU has no bfloat16 instructions, and PyTorch's fallback takes "
                "minutes per step (use --amp off here)")
        lines += ["## CPU training throughput", "", f"{tr['setup']}: fp32 {tr['fp32']:.0f} steps/hour, {bf16}.", ""]
    lines += ["## Peers (published CPU figures, other machines)", "", "| tool | time per CT |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in PEERS]
    return "\n".join(lines) + "\n"


def chart(res: Dict, path: Path) -> Optional[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed: no chart")
        return None
    rows = res["cascade"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = [f"{r['set'].split(' ')[0]}\n{r['backend']}" for r in rows]
    y = np.arange(len(rows))
    parts = [("rough network", [r["rough"]["seconds"] for r in rows], "#4c72b0"),
             ("fine network", [r["fine"]["seconds"] for r in rows], "#55a868"),
             ("glue", [max(0.0, r["glue_s"]) for r in rows], "#c44e52")]
    left = np.zeros(len(rows))
    for label, vals, color in parts:
        ax1.barh(y, vals, left=left, color=color, label=label)
        left += np.array(vals)
    ax1.set_yticks(y, names, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("seconds (300x512x512 CT, warm, median)")
    ax1.legend(fontsize=8)
    ax1.set_title("Cascade time per backend")
    pk = res["machine"]["peak"]
    ax2.barh(y, [r["pct_peak_all"] for r in rows], color=["#8172b2" if r["precision"] == "bf16" else "#64b5cd"
                                                          for r in rows])
    ax2.set_yticks(y, names, fontsize=8)
    ax2.invert_yaxis()
    ax2.axvline(80, color="k", ls="--", lw=1)
    ax2.set_xlabel(f"network % of peak (fp32 {pk['f32']:.0f}, bf16 {pk['bf16']:.0f} GFLOP/s)")
    ax2.set_title("Network efficiency")
    fig.suptitle(f"{res['machine']['cpu']}, {res['machine']['threads']} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _strip(o):
    if isinstance(o, dict):
        return {k: _strip(v) for k, v in o.items() if k != "labels"}
    if isinstance(o, list):
        return [_strip(v) for v in o]
    if isinstance(o, tuple):
        return [_strip(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return o
