"""Set the confidence threshold of the quality checks (``quality.MAX_MEAN_ENTROPY``) on training phantoms.

Runs the bundled cascade on phantoms built around training label maps (never the held-out cases, never
real CT) and records, per case, the fine network's largest per-ROI mean entropy over the voxels it labels,
and every quality warning raised. A clean phantom should raise none; the threshold is set above the
largest entropy seen here, so that a scan like the training data does not trip it.

    python -m bisc_training.calibrate_quality --kits ../shared/data/kits19 \
        --case-list training/recipes/tuning_cases_72.txt --n 12
    python -m bisc_training.calibrate_quality --kits runs/v12/synth --images --case-list LIST --model NAME
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from BiSCSegmentationLib.cascade import CascadePredictor
from BiSCSegmentationLib.metrics import dice
from BiSCSegmentationLib.quality import mean_entropy

from .data import read_case


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kits", required=True, help="folder of case_XXXXX/segmentation.nii.gz (training cases)")
    p.add_argument("--case-list", required=True, help="file with one training case id per line (# comments)")
    p.add_argument("--n", type=int, default=12, help="how many cases of the list (default 12)")
    p.add_argument("--model", help="bundled model name (default: the bundled default)")
    p.add_argument("--out", help="JSON file for the per-case figures")
    p.add_argument("--images", action="store_true",
                   help="read each case's imaging.nii.gz (realistic synthetic training CT) instead of building a "
                        "phantom around its label map")
    args = p.parse_args(argv)
    ids = [ln.split()[0] for ln in Path(args.case_list).read_text().splitlines()
           if ln.strip() and not ln.startswith("#")][: args.n]
    predictor = CascadePredictor.bundled(args.model)
    rows = []
    for case in ids:
        t = time.perf_counter()
        ct, truth = read_case(args.kits, case, synthesize=not args.images)
        result = predictor.predict(ct)
        rows.append({"case": case, "mean_entropy": mean_entropy(predictor.roi_entropies),
                     "kidney_dice": dice(result.labels.array > 0, truth.array > 0),
                     "warnings": [w.code for w in predictor.warnings]})
        print(f"{case}: mean entropy {rows[-1]['mean_entropy']:.3f}, kidney Dice {rows[-1]['kidney_dice']:.3f}, "
              f"warnings {rows[-1]['warnings']} ({time.perf_counter() - t:.1f} s)", flush=True)
    for name, keep in (("kidney Dice >= 0.9", lambda d: d >= 0.9), ("kidney Dice < 0.9", lambda d: d < 0.9)):
        ent = np.array([r["mean_entropy"] for r in rows if r["mean_entropy"] is not None and keep(r["kidney_dice"])])
        if ent.size:
            print(f"{name}: {ent.size} cases, mean entropy median {np.median(ent):.3f}, range {ent.min():.3f}-"
                  f"{ent.max():.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
