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

from BiSCSegmentationLib.metrics import kits19_case_scores
from BiSCSegmentationLib.model_file import load_model_file

from .calibrate import log_probabilities
from .data import stage_crops
from .train import without_prior


def score_model(model, cache: Path, cases: Sequence[str]) -> Dict[str, Dict[str, float]]:
    per_case = {}
    for case in cases:
        pred_all, gt_all = [], []
        for ct, labels in stage_crops(model, cache, case):
            pred_all.append(log_probabilities(model, ct).argmax(0).numpy().ravel())
            gt_all.append(labels.ravel())
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
        if without_prior(model) is not None:  # the same network without its correction: Eq. 1's raw output
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
