"""Fine-stage comparison of two model files on the held-out cases' kidney crops (the paper's Table 1 setting).

Each held-out kidney crop of the prepared cache (ground-truth ROI, at the fine spacing) is segmented by
each fine model; kidney Dice (label>0) and tumor Dice (label==2) are computed per case, then averaged
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

from BiSCSegmentationLib.cascade import sliding_window
from BiSCSegmentationLib.metrics import kits19_case_scores
from BiSCSegmentationLib.model_file import load_model_file

from .data import load_case_arrays


def score_model(model, cache: Path, cases: Sequence[str]) -> Dict[str, Dict[str, float]]:
    lo, hi = (float(v) for v in model.intensity["clip"])
    per_case = {}
    for case in cases:
        arrays = load_case_arrays(cache / case, "fine")
        pred_all, gt_all = [], []
        for p in sorted({k.split("_")[0] for k in arrays}):
            ct = torch.from_numpy(np.asarray(arrays[f"{p}_ct"], dtype=np.float32))
            x = (ct.clamp(lo, hi) - float(model.intensity["mean"])) / float(model.intensity["std"])
            probs = sliding_window(model, x, torch.device("cpu"), False, lambda f: None)
            pred_all.append(probs.argmax(0).numpy().ravel())
            gt_all.append(np.asarray(arrays[f"{p}_labels"]).ravel())
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
    results = {}
    for item in args.model:
        name, _, path = item.partition("=")
        model = load_model_file(path, stage="fine")
        results[name] = score_model(model, args.cache, cases)
    print(f"fine stage on {len(cases)} held-out cases (ground-truth ROIs), KiTS19 metric: mean (std)")
    print("| model | kidney Dice | tumor Dice | iterations |")
    print("| --- | --- | --- | --- |")
    for item in args.model:
        name, _, path = item.partition("=")
        k = np.array([s["kidney_dice"] for s in results[name].values()])
        t = np.array([s["tumor_dice"] for s in results[name].values()])
        its = load_model_file(path).training.get("iterations_done")
        print(f"| {name} | {k.mean():.3f} ({k.std():.3f}) | {t.mean():.3f} ({t.std():.3f}) | {its} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
