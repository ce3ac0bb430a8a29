"""Fine-stage comparison of two model files on the held-out cases' kidney crops (the paper's Table 1 setting).

Each held-out kidney of the prepared cache gets the ROI the cascade would give it from a perfect rough
stage (paper sizing around the ground-truth kidney, at the fine spacing); each fine model segments it; kidney Dice (label>0) and tumor Dice (label==2) are computed per case, then averaged
(KiTS19 metric). The rough stage is left out, so the comparison isolates the fine network's loss.

    python -m bisc_training.compare_losses --cache runs/cache --split runs/split.json \
        --model bce=runs/fine-bce/fine.pt --model ce=runs/fine-ce/fine.pt
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from BiSCSegmentationLib.cascade import sliding_window
from BiSCSegmentationLib.metrics import kits19_case_scores
from BiSCSegmentationLib.model_file import load_model_file

from BiSCSegmentationLib.roi import paper_roi_voxels

from .data import AIR_HU, _crop, load_case_arrays
from .train import with_prior


def roi_box(labels: np.ndarray, spacing_zyx: Sequence[float], margin_mm=(6.0, 10.0, 10.0)) -> np.ndarray:
    """(start, size) in voxels of the paper-sized ROI around the crop's kidney (its largest component), as
    ``rois_from_mask`` sizes it at inference."""
    comp, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.array([[0, 0, 0], list(labels.shape)])
    biggest = 1 + int(np.argmax(np.bincount(comp.ravel())[1:]))
    sl = ndimage.find_objects((comp == biggest).astype(np.int32))[0]
    lo, hi = np.array([s.start for s in sl]), np.array([s.stop for s in sl])
    extent = (hi - lo) + 2 * np.asarray(margin_mm) / np.asarray(spacing_zyx)
    size = np.array(paper_roi_voxels(extent[::-1])[::-1])  # paper_roi_voxels takes x, y, z
    start = np.round((lo + hi) / 2 - size / 2).astype(int)
    return np.array([start, size])


def score_model(model, cache: Path, cases: Sequence[str]) -> Dict[str, Dict[str, float]]:
    lo, hi = (float(v) for v in model.intensity["clip"])
    spacing_zyx = tuple(model.fine_spacing[::-1])
    per_case = {}
    for case in cases:
        arrays = load_case_arrays(cache / case, "fine")
        pred_all, gt_all = [], []
        for p in sorted({k.split("_")[0] for k in arrays}):
            start, size = roi_box(np.asarray(arrays[f"{p}_labels"]), spacing_zyx)
            ct = torch.from_numpy(_crop(arrays[f"{p}_ct"], start, size, AIR_HU).astype(np.float32))
            x = (ct.clamp(lo, hi) - float(model.intensity["mean"])) / float(model.intensity["std"])
            probs = sliding_window(model, x, torch.device("cpu"), False, lambda f: None)
            pred_all.append(probs.argmax(0).numpy().ravel())
            gt_all.append(_crop(arrays[f"{p}_labels"], start, size, 0).ravel())
        # all crops of a case together: one score per case, as the KiTS19 metric has it
        per_case[case] = kits19_case_scores(np.concatenate(pred_all)[None, None], np.concatenate(gt_all)[None, None])
    return per_case


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--model", action="append", required=True, help="NAME=FILE (a fine-stage model)")
    ap.add_argument("-o", "--out", type=Path, help="write the per-case scores as JSON")
    args = ap.parse_args(argv)
    cases: List[str] = json.loads(args.split.read_text())["test"]
    results, rows = {}, []
    for item in args.model:
        name, _, path = item.partition("=")
        model = load_model_file(path, stage="fine")
        its = model.training.get("iterations_done")
        results[name] = score_model(model, args.cache, cases)
        rows.append((name, its))
        prior = model.training.get("label_log_prior")
        if prior:  # the same network without its prior correction: Eq. 1's raw output
            scale = float(model.training.get("prior_scale", 1.0))
            model.network = with_prior(model.network, [-scale * v for v in prior])
            results[name + " without prior correction"] = score_model(model, args.cache, cases)
            rows.append((name + " without prior correction", its))
    print(f"fine stage on {len(cases)} held-out cases (ground-truth ROIs), KiTS19 metric: mean (std)")
    print("| model | kidney Dice | tumor Dice | iterations |")
    print("| --- | --- | --- | --- |")
    for name, its in rows:
        k = np.array([s["kidney_dice"] for s in results[name].values()])
        t = np.array([s["tumor_dice"] for s in results[name].values()])
        print(f"| {name} | {k.mean():.3f} ({k.std():.3f}) | {t.mean():.3f} ({t.std():.3f}) | {its} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
