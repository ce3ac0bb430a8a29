"""Validate the planning measurements on real anatomy: the largest axial diameter of each KiTS19 case's largest
tumor (from its label map) against the radiologist's ``radiographic_size`` in ``kits.json``.

Reports the median and 90th-percentile absolute error, the signed bias, the agreement of the AJCC size
category (radiologist's size vs the axial diameter, and vs the largest 3-D diameter that ``size_category``
uses), and how often each R.E.N.A.L. part could be computed. Writes ``planning.json`` (every case) and
``planning.md`` into ``--out``, all or nothing.

    nice -n 19 .venv/bin/python benchmarks/planning_validation.py --kits ../shared/data/kits19 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from BiSCSegmentationLib.nephrometry import size_category
from BiSCSegmentationLib.outputs import OutputSet
from BiSCSegmentationLib.planning import analyse
from BiSCSegmentationLib.volume import read_volume


def case_row(case_dir: Path, radiographic_cm: float, renal: bool) -> dict:
    t = time.perf_counter()
    plan = analyse(read_volume(case_dir / "segmentation.nii.gz"), min_tumor_ml=0.0, renal=renal)
    row = {"case": case_dir.name, "radiographic_mm": round(10.0 * radiographic_cm, 1), "tumors": len(plan.tumors)}
    if plan.tumors:
        big = plan.tumors[0]   # largest first
        row.update(diameter_axial_mm=big["diameter_axial_mm"], diameter_3d_mm=big["diameter_3d_mm"],
                   volume_ml=big["volume_ml"], error_mm=round(big["diameter_axial_mm"] - row["radiographic_mm"], 1),
                   category_radiologist=size_category(row["radiographic_mm"]),
                   category_axial=size_category(big["diameter_axial_mm"]), category_3d=big["size_category"])
        if renal and big["renal"]:
            r = big["renal"]
            row["renal"] = {k: r[k] for k in ("R", "E", "N", "A", "L", "score", "complexity")}
            row["renal_reasons"] = {k: v["reason"] for k, v in r["raw"].items() if "reason" in v and k != "h"}
    row["seconds"] = round(time.perf_counter() - t, 2)
    return row


def summarise(rows) -> dict:
    done = [r for r in rows if "error_mm" in r]
    err = np.array([r["error_mm"] for r in done])
    absolute = np.abs(err)
    out = {"cases": len(rows), "measured": len(done),
           "median_abs_error_mm": round(float(np.median(absolute)), 2),
           "p90_abs_error_mm": round(float(np.percentile(absolute, 90)), 2),
           "mean_abs_error_mm": round(float(absolute.mean()), 2),
           "median_signed_error_mm": round(float(np.median(err)), 2),
           "within_5mm": round(float(np.mean(absolute <= 5)), 3), "within_10mm": round(float(np.mean(absolute <= 10)), 3)}
    for basis in ("axial", "3d"):
        agree = [r["category_radiologist"] == r[f"category_{basis}"] for r in done]
        confusion = Counter((r["category_radiologist"], r[f"category_{basis}"]) for r in done)
        out[f"category_agreement_{basis}"] = round(float(np.mean(agree)), 3)
        out[f"category_confusion_{basis}"] = {f"{a}->{b}": n for (a, b), n in sorted(confusion.items())}
    with_renal = [r for r in done if "renal" in r]
    if with_renal:
        out["renal_computed"] = {k: sum(r["renal"][k] is not None for r in with_renal) for k in "RENAL"}
        out["renal_score_computed"] = sum(r["renal"]["score"] is not None for r in with_renal)
        out["renal_complexity"] = dict(Counter(r["renal"]["complexity"] or "not computed" for r in with_renal))
        reasons = Counter(" ".join(reason.split(";")[0].split()[:12])    # the reason's first words
                          for r in with_renal for reason in set(r["renal_reasons"].values()))
        out["renal_not_computed_reasons"] = dict(reasons)
    out["seconds_per_case_median"] = round(float(np.median([r["seconds"] for r in rows])), 2)
    return out


def markdown(summary: dict, rows, command: str) -> str:
    s = summary
    lines = ["# Planning measurements against the radiologists' tumor sizes (KiTS19)", "",
             f"Command: `{command}`", "",
             f"Largest axial diameter of each case's largest tumor, measured on the KiTS19 label map (voxel centre "
             f"to centre), against `radiographic_size` in `kits.json`; {s['measured']} of {s['cases']} cases.", "",
             "| figure | value |", "| --- | --- |",
             f"| median absolute error | {s['median_abs_error_mm']} mm |",
             f"| 90th percentile absolute error | {s['p90_abs_error_mm']} mm |",
             f"| mean absolute error | {s['mean_abs_error_mm']} mm |",
             f"| median signed error (ours - radiologist) | {s['median_signed_error_mm']} mm |",
             f"| within 5 mm / 10 mm | {100 * s['within_5mm']:.0f} % / {100 * s['within_10mm']:.0f} % |",
             f"| size category agreement, from the axial diameter | {100 * s['category_agreement_axial']:.1f} % |",
             f"| size category agreement, from the largest 3-D diameter (what the report gives) | "
             f"{100 * s['category_agreement_3d']:.1f} % |",
             f"| median time per case (read + measure + R.E.N.A.L.) | {s['seconds_per_case_median']} s |", ""]
    lines += ["Size category confusion (radiologist -> ours), axial: " +
              ", ".join(f"{k} {v}" for k, v in s["category_confusion_axial"].items()), "",
              "3-D: " + ", ".join(f"{k} {v}" for k, v in s["category_confusion_3d"].items()), ""]
    if "renal_computed" in s:
        lines += [f"R.E.N.A.L. parts computed (largest tumor of {s['measured']} cases): " +
                  ", ".join(f"{k} {v}" for k, v in s["renal_computed"].items()) +
                  f"; total score {s['renal_score_computed']}. Complexity: " +
                  ", ".join(f"{k} {v}" for k, v in sorted(s["renal_complexity"].items())) + ".", "",
                  "Reasons for parts not computed (cases): " +
                  "; ".join(f"{k} ({v})" for k, v in s["renal_not_computed_reasons"].items()), "",
                  "No reference nephrometry scores come with KiTS19's public clinical data, so the parts are not "
                  "validated here (see docs/planning.md for their definitions).", ""]
    worst = sorted((r for r in rows if "error_mm" in r), key=lambda r: -abs(r["error_mm"]))[:8]
    lines += ["Largest differences: " + ", ".join(f"{r['case']} ({r['diameter_axial_mm']} vs {r['radiographic_mm']}"
                                                  f" mm)" for r in worst), ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kits", default="../shared/data/kits19", help="KiTS19 folder with kits.json and case_XXXXX/")
    p.add_argument("--out", default="benchmarks/results", help="folder for planning.json and planning.md")
    p.add_argument("--no-renal", action="store_true", help="diameters only (faster)")
    p.add_argument("--limit", type=int, help="first N cases only (a smoke test)")
    p.add_argument("--force", action="store_true", help="replace earlier results")
    args = p.parse_args(argv)
    kits = Path(args.kits)
    clinical = {c["case_id"]: c for c in json.loads((kits / "kits.json").read_text())}
    cases = sorted(d for d in kits.glob("case_*") if (d / "segmentation.nii.gz").is_file() and d.name in clinical
                   and clinical[d.name].get("radiographic_size") is not None)[: args.limit]
    out = OutputSet(args.force, "pass --force to replace them")
    out.add_json(Path(args.out) / "planning.json", {}, "results")   # refuse early (exists, unwritable)
    out.check()
    from tqdm import tqdm

    rows = []
    for d in tqdm(cases, file=sys.stderr, unit="case"):
        try:
            rows.append(case_row(d, float(clinical[d.name]["radiographic_size"]), not args.no_renal))
        except Exception as exc:  # a benchmark goes on, and says which case failed
            rows.append({"case": d.name, "error": f"{type(exc).__name__}: {exc}"})
    summary = summarise(rows)
    command = "nice -n 19 .venv/bin/python benchmarks/planning_validation.py " + " ".join(argv or sys.argv[1:])
    out = OutputSet(args.force, "pass --force to replace them")
    out.add_json(Path(args.out) / "planning.json", {"summary": summary, "cases": rows}, "results")
    out.add_text(Path(args.out) / "planning.md", markdown(summary, rows, command.strip()), "results")
    for path in out.commit():
        print(f"Wrote {path}")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
