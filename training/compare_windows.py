"""Which block (inference window) a stage's network should run on: the full cascade scored with each.

A network trained on patches and run on a whole ROI sees a larger input than in training, and instance
normalisation then sees other statistics; smaller blocks blended by the sliding window can score better or,
for tumors larger than a block, worse. Choose on *training* cases (``--cases train``, with phantoms from
fresh seeds: the training phantoms use seed = case number, ``--seed-offset`` adds to it) and only then score
the chosen window once on the held-out ones.

    python -m bisc_training.compare_windows --kits ../shared/data/kits19 --split runs/split.json \
        --models runs/v4/bundled --cases train --n 16 --seed-offset 100000 \
        --window fine=96,192,192 --window fine=32,96,96 --window fine=48,128,128

Prints a Markdown table (mean KiTS19 kidney / tumor Dice per window) and, with ``--out``, writes every
case's scores as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from BiSCSegmentationLib.cascade import CascadePredictor, NoKidneyFound
from BiSCSegmentationLib.inference_settings import InferenceSettings
from BiSCSegmentationLib.metrics import kits19_case_scores
from BiSCSegmentationLib.phantom import synthesize_ct

from . import data as D
from .data import pick_cases


def parse_window(text: str):
    stage, _, dims = text.partition("=")
    if stage not in ("rough", "fine") or not dims:
        raise argparse.ArgumentTypeError(f"expected rough=Z,Y,X or fine=Z,Y,X, got {text!r}")
    return stage, tuple(int(v) for v in dims.split(","))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kits", type=Path, required=True, help="folder of KiTS19 label maps (phantom CT is built)")
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--models", type=Path, required=True, help="folder with rough.pt and fine.pt")
    ap.add_argument("--cases", choices=["train", "test"], default="train")
    ap.add_argument("--n", type=int, default=16, help="number of cases (0: all)")
    ap.add_argument("--seed-offset", type=int, default=100000, help="phantom seed = case number + this")
    ap.add_argument("--window", type=parse_window, action="append", required=True, metavar="STAGE=Z,Y,X")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--out", type=Path, help="per-case scores (JSON)")
    args = ap.parse_args(argv)
    split = json.loads(args.split.read_text())
    cases = pick_cases(split, args.cases, args.n)
    predictor = CascadePredictor.from_files(
        args.models / "rough.pt", args.models / "fine.pt", InferenceSettings(device="cpu", backend=args.backend)
    )
    models = {"rough": predictor.rough_model, "fine": predictor.fine_model}
    own = {s: m.inference_window for s, m in models.items()}
    names = [f"{s}={'x'.join(map(str, w))}" for s, w in args.window]
    rows = []
    for case in cases:
        labels = D.read_labels(args.kits / case / "segmentation.nii.gz")
        ct = synthesize_ct(labels, seed=int(case[-5:]) + args.seed_offset)
        row = {"case": case}
        for name, (stage, window) in zip(names, args.window):
            for s, m in models.items():
                m.inference_window = window if s == stage else own[s]
            try:
                pred = predictor.predict(ct).labels.array
            except NoKidneyFound:
                pred = np.zeros_like(labels.array)
            s = kits19_case_scores(pred, labels.array)
            row[name] = [s["kidney_dice"], s["tumor_dice"]]
        rows.append(row)
        print(case, "  ".join(f"{n}: {row[n][0]:.3f} / {row[n][1]:.3f}" for n in names), flush=True)
    print(f"\n{len(rows)} {args.cases} cases (phantom seed = case number + {args.seed_offset}); "
          f"the model files' own windows: rough {own['rough']}, fine {own['fine']}\n")
    print("| window | kidney Dice | tumor Dice |\n| --- | --- | --- |")
    for n in names:
        k, t = np.mean([r[n] for r in rows], axis=0)
        print(f"| {n} | {k:.4f} | {t:.4f} |")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
