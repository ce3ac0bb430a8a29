"""How well the rough stage localises: per held-out case, the predicted kidney volume against the truth,
its Dice, and the share of the true kidney voxels that lie inside the ROIs it gives (what the fine stage
can still segment). Rough stage only (``CascadePredictor.locate``), so it is quick.

    python -m bisc_training.check_rough --kits ../shared/data/kits19 --synthesize --split runs/split.json \
        --models runs/v3/bundled --cases 14
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from BiSCSegmentationLib.cascade import CascadePredictor
from BiSCSegmentationLib.inference_settings import InferenceSettings
from BiSCSegmentationLib.metrics import roi_containment

from . import data as D


def check_case(predictor: CascadePredictor, ct, gt) -> Dict[str, float]:
    truth = np.asarray(gt.array) > 0
    found = predictor.locate(ct)
    pred = np.asarray(found.mask.array) > 0
    inside = roi_containment(gt, found.rois)["roi_containment"]  # bisc-evaluate --rois measures the same
    n_t, n_p = int(truth.sum()), int(pred.sum())
    return {"volume_ratio": n_p / max(n_t, 1), "dice": 2.0 * int((pred & truth).sum()) / max(n_p + n_t, 1),
            "inside_rois": 1.0 if inside is None else inside, "rois": len(found.rois)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kits", type=Path, required=True)
    ap.add_argument("--synthesize", action="store_true", help="phantom CT around the label maps")
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--models", type=Path, required=True, help="folder with rough.pt and fine.pt")
    ap.add_argument("--cases", type=int, default=0, help="the first N held-out cases (default all)")
    args = ap.parse_args(argv)
    cases = json.loads(args.split.read_text())["test"]
    cases = cases[: args.cases] if args.cases else cases
    predictor = CascadePredictor.from_files(
        args.models / "rough.pt", args.models / "fine.pt", InferenceSettings(device="cpu")
    )
    rows = []
    print("| case | predicted / true kidney volume | rough Dice | true kidney inside the ROIs | ROIs |")
    print("| --- | --- | --- | --- | --- |")
    for case in cases:
        r = check_case(predictor, *D.read_case(args.kits, case, args.synthesize))
        rows.append(r)
        print(f"| {case} | {r['volume_ratio']:.2f} | {r['dice']:.3f} | {r['inside_rois']:.3f} | {r['rois']} |",
              flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("volume_ratio", "dice", "inside_rois")}
    print(f"| mean of {len(rows)} | {mean['volume_ratio']:.2f} | {mean['dice']:.3f} | {mean['inside_rois']:.3f} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
