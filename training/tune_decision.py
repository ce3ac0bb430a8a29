"""Tune both stages' decision rules (``BiSCSegmentationLib.decision``) on training cases, full cascade.

For each case and rough rule the rough stage finds the ROIs and the fine network runs once per ROI; the restored
probabilities are then turned into labels with every combination of the grid below, exactly as the
cascade does (per-ROI islands, pasting, the case-wide small-tumor step), and scored with the KiTS19
metric. The combination with the best mean of kidney and tumor Dice wins; with ``--write`` it is stored in
copies of the model files (the grid's scores go into their training record).

Tune on *training* cases (with ``--synthesize``, phantoms from fresh seeds: the training phantoms use seed =
case number, the default offset gives other CT around the same anatomy), then score the written model once
on the held-out cases:

    python -m bisc_training.tune_decision --kits ../shared/data/kits19 --split runs/split.json \
        --models runs/v5/bundled --synthesize --n 24 --workers 2 --rough-foreground-bias 0.5,1 --write runs/v6
    bisc-train evaluate --kits ../shared/data/kits19 --synthesize --split runs/split.json --models runs/v6
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from BiSCSegmentationLib.cascade import CascadePredictor, finish_case, roi_labels
from BiSCSegmentationLib.decision import ISLAND_FRACTION, Decision, case_step_maps
from BiSCSegmentationLib.errors import NoKidneyFound
from BiSCSegmentationLib.inference_settings import InferenceSettings
from BiSCSegmentationLib.model_file import load_model_file, save_model_file, sha256_of
from BiSCSegmentationLib.outputs import replace_file, write_json
from BiSCSegmentationLib.volume import Volume, to_canonical

from . import data as D
from .data import pick_cases


def _floats(text: str) -> List[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def restored_differences(predictor: CascadePredictor, ct: Volume, rois=None) -> Tuple[Volume, list]:
    """The canonical CT and, per ROI (default: those the rough stage finds), the cascade's own
    ``(box, restored (p1 - p0, p2 - p0))``, on the ROI as the cascade grows it (``roi_growth``) under the
    predictor's own fine rule: every rule of the grid is then scored on those boxes."""
    canon, _ = to_canonical(ct)
    if rois is None:
        try:
            rois = predictor.locate(ct).rois
        except NoKidneyFound:
            rois = []
    return canon, [predictor.grown_differences(canon, roi)[1:3] for roi in rois]


def _dice(pred: np.ndarray, truth: np.ndarray, truth_total: int) -> float:
    """Dice of ``pred`` against ``truth`` (a crop of a mask with ``truth_total`` voxels in all); KiTS21: 1 if both empty."""
    total = int(np.count_nonzero(pred)) + truth_total
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(pred & truth)) / total


def case_scores(canon: Volume, gt: np.ndarray, rois: list, decisions: Sequence[Decision],
                keep_largest: bool = True) -> Dict[Decision, Tuple[float, float]]:
    """KiTS19 (kidney, tumor) Dice of every decision rule; ``gt`` is on ``canon``'s grid. The labels are made
    by the cascade's own post-processing (``roi_labels`` per ROI, ``finish_case`` over the case), inside the
    ROIs' union box; what does not depend on a rule's case steps is computed once per labelling rule."""
    gk, gtm = int(np.count_nonzero(gt)), int(np.count_nonzero(gt == 2))
    if not rois:
        return {d: (1.0 if gk == 0 else 0.0, 1.0 if gtm == 0 else 0.0) for d in decisions}
    union = tuple(slice(min(b[a].start for b, _ in rois), max(b[a].stop for b, _ in rois)) for a in range(3))
    g = gt[union]
    g_fg, g_tumor = g > 0, g == 2
    voxel_ml = float(np.prod(canon.spacing)) / 1000.0
    boxes = [tuple(slice(b.start - u.start, b.stop - u.start) for b, u in zip(box, union)) for box, _ in rois]
    labels, maps, scores = {}, {}, {}
    for d in decisions:
        rule = _labelling(d)
        if rule not in labels:
            labels[rule] = [roi_labels(diff, rule, keep_largest) for _, diff in rois]
        key = (d.min_tumor_probability > 0, d.has_margin_step, d.foreground_bias + d.tumor_margin_bias)
        if d.has_case_steps and key not in maps:
            maps[key] = [case_step_maps(diff, d) for _, diff in rois]
        pred = np.zeros(g.shape, dtype=np.uint8)
        finish_case(pred, boxes, labels[rule], maps.get(key, []), d, voxel_ml)
        scores[d] = (_dice(pred > 0, g_fg, gk), _dice(pred == 2, g_tumor, gtm))
    return scores


def _labelling(d: Decision) -> Decision:
    """The part of a rule that sets the labels before the whole-case steps 3 and 4."""
    return replace(d, min_tumor_ml=0.0, min_tumor_probability=0.0, tumor_margin_bias=0.0, tumor_margin_min_ml=0.0)


_WORKER: Dict = {}


def _init(models: str, kits: str, offset: Optional[int], rough_decisions, decisions, threads: int,
          growth: Tuple[int, float] = (0, 200.0)) -> None:
    import torch
    torch.set_num_threads(threads)
    m = Path(models)
    settings = InferenceSettings(device="cpu", roi_growth=growth[0], roi_growth_min_mm2=growth[1])
    predictor = CascadePredictor.from_files(m / "rough.pt", m / "fine.pt", settings)
    _WORKER.update(predictor=predictor,
                   kits=Path(kits), offset=offset, rough_decisions=rough_decisions, decisions=decisions)


def _score(case: str):
    if _WORKER["offset"] is None:  # the case's own CT (real KiTS19: imaging.nii.gz)
        ct, labels = D.read_case(_WORKER["kits"], case)
    else:
        from BiSCSegmentationLib.phantom import synthesize_ct
        labels = D.read_labels(_WORKER["kits"] / case / "segmentation.nii.gz")
        ct = synthesize_ct(labels, seed=int(case[-5:]) + _WORKER["offset"])
    gt = to_canonical(labels)[0].array
    predictor, scores, done = _WORKER["predictor"], {}, []  # done: (ROIs, their scores)
    for rough in _WORKER["rough_decisions"]:
        predictor.rough_decision = rough
        try:
            boxes = predictor.locate(ct).rois
        except NoKidneyFound:
            boxes = []
        found = next((s for b, s in done if b == boxes), None)  # the fine stage runs once per set of ROIs
        if found is None:
            canon, rois = restored_differences(predictor, ct, boxes)
            found = case_scores(canon, gt, rois, _WORKER["decisions"])
            done.append((boxes, found))
        scores.update({(rough, d): v for d, v in found.items()})
    return case, scores


def read_case_list(path: Path, split: Dict) -> List[str]:
    """The case ids in ``path`` (one per line; blank lines and ``#`` comments ignored), checked against the
    split: tuning on a held-out case would make its evaluation meaningless."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the case list {path}: {exc.strerror or exc}") from None
    cases = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    cases = [c for c in cases if c]
    if not cases:
        raise ValueError(f"{path} names no cases (one case id per line, e.g. case_00003)")
    dupes = sorted({c for c in cases if cases.count(c) > 1})
    if dupes:
        raise ValueError(f"{path} names these cases more than once: {', '.join(dupes)}")
    train = set(split.get("train", []))
    outside = [c for c in cases if c not in train]
    if outside:
        held = [c for c in outside if c in set(split.get("test", []))]
        what = f"held-out cases ({', '.join(held)})" if held else f"cases not in the split ({', '.join(outside)})"
        raise ValueError(f"{path} names {what}; tune on the split's training cases only")
    return cases


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kits", type=Path, required=True, help="folder of KiTS19 label maps (phantom CT is built)")
    ap.add_argument("--split", type=Path, required=True)
    ap.add_argument("--models", type=Path, required=True, help="folder with rough.pt and fine.pt")
    ap.add_argument("--cases", choices=["train", "test"], default="train",
                    help="tune on training cases; 'test' only to report, never to choose")
    ap.add_argument("--n", type=int, default=24, help="number of cases, spread over the list (0: all)")
    ap.add_argument("--case-list", type=Path, metavar="FILE",
                    help="tune on the cases named in FILE (one case id per line, # comments) instead of --cases/--n; "
                         "each must be in the split's training cases")
    ap.add_argument("--synthesize", action="store_true",
                    help="phantom CT around each label map (for folders of label maps without CT images); without it "
                         "each case's own imaging.nii.gz is read")
    ap.add_argument("--seed-offset", type=int, default=100000,
                    help="--synthesize: phantom seed = case number + this (the training phantoms use + 0)")
    ap.add_argument("--rough-foreground-bias", type=_floats, default=[],
                    help="also try the rough stage with the foreground rule at these biases (>0: larger kidneys, "
                         "so larger ROIs); each value runs the fine network once more per case")
    ap.add_argument("--foreground-bias", type=_floats, default=[0.0, 0.125, 0.25])
    ap.add_argument("--tumor-bias", type=_floats, default=[0.0, 0.125])
    ap.add_argument("--min-tumor-ml", type=_floats, default=[0.0, 2.0, 4.0])
    ap.add_argument("--min-tumor-probability", type=_floats, default=[0.0, 0.6, 0.65, 0.7],
                    help="step 3: tumor components whose mean p(tumor) is under this become kidney (0: off)")
    ap.add_argument("--tumor-margin-bias", type=_floats, default=[0.0, 1.0],
                    help="step 4: foreground bias added in the margin of large tumors (0: no margin step)")
    ap.add_argument("--tumor-margin-min-ml", type=_floats, default=[50.0],
                    help="step 4: only tumors of at least this many mL take their margin")
    ap.add_argument("--min-island-fraction", type=_floats, default=[ISLAND_FRACTION, 0.5],
                    help="per ROI, kidney+tumor islands smaller than this fraction of the ROI's largest are dropped")
    ap.add_argument("--roi-growth", type=int, default=0, metavar="N",
                    help="grow an ROI whose fine foreground touches a face at most N times, as bisc-segment "
                         "--roi-growth (default 0: never)")
    ap.add_argument("--roi-growth-min-mm2", type=float, default=200.0,
                    help="how much of a face the foreground must touch for the ROI to grow")
    ap.add_argument("--workers", type=int, default=1, help="cases scored in parallel (one process each)")
    ap.add_argument("--out", type=Path, help="every case's scores for every combination (JSON)")
    ap.add_argument("--write", type=Path, metavar="DIR",
                    help="write DIR/rough.pt and DIR/fine.pt with the best decision rules (a rough file whose own "
                         "rule wins is copied unchanged)")
    ap.add_argument("--force", action="store_true", help="overwrite --out / --write")
    args = ap.parse_args(argv)
    targets = [args.out] + ([args.write / "rough.pt", args.write / "fine.pt"] if args.write else [])
    for path in targets:
        if path is not None and path.exists() and not args.force:
            print(f"tune_decision: {path} exists; pass --force to overwrite", file=sys.stderr)
            return 2
    split = json.loads(args.split.read_text())
    try:
        cases = read_case_list(args.case_list, split) if args.case_list else pick_cases(split, args.cases, args.n)
    except ValueError as exc:
        print(f"tune_decision: {exc}", file=sys.stderr)
        return 2
    own = load_model_file(args.models / "fine.pt", stage="fine")
    own_rough = load_model_file(args.models / "rough.pt", stage="rough")
    axes = {
        name: getattr(args, name)
        for name in (
            "foreground_bias",
            "tumor_bias",
            "min_tumor_ml",
            "min_tumor_probability",
            "min_island_fraction",
            "tumor_margin_bias",
            "tumor_margin_min_ml",
        )
    }
    grid = [Decision("foreground", **dict(zip(axes, c))) for c in itertools.product(*axes.values())]
    # without a margin bias the margin size does nothing: one row, not one per size
    grid = list(dict.fromkeys(d if d.has_margin_step else replace(d, tumor_margin_min_ml=0.0) for d in grid))
    decisions = list(dict.fromkeys([own.decision] + grid))  # the model's own rule: the reference row
    roughs = list(
        dict.fromkeys(
            [own_rough.decision] + [Decision("foreground", foreground_bias=b) for b in args.rough_foreground_bias]
        )
    )
    bad = next((f"{stage} rule {d.describe()}: {p}" for stage, rules in (("fine", grid), ("rough", roughs))
                for d in rules for p in [d.problem(stage)] if p), None)
    if bad:  # before hours of scoring, not when the winner is written
        print(f"tune_decision: the grid holds an invalid {bad}", file=sys.stderr)
        return 2
    workers = max(1, args.workers)
    offset = args.seed_offset if args.synthesize else None
    init = (str(args.models), str(args.kits), offset, roughs, decisions,
            max(1, (os.cpu_count() or 1) // workers), (args.roi_growth, args.roi_growth_min_mm2))
    rows = {}
    if workers == 1:
        _init(*init)
        results = map(_score, cases)
    else:
        import multiprocessing as mp
        pool = mp.get_context("spawn").Pool(workers, initializer=_init, initargs=init)
        results = pool.imap_unordered(_score, cases)
    for case, scores in results:
        rows[case] = scores
        print(f"{case} ({len(rows)}/{len(cases)})", flush=True)
    if workers > 1:
        pool.close()
    reference = (own_rough.decision, own.decision)
    keys = [reference] + [(r, d) for r in roughs for d in grid]
    means = {k: np.mean([rows[c][k] for c in rows], axis=0) for k in keys}
    ranked = sorted(keys[1:], key=lambda k: -float(means[k].sum()))  # ties: the earlier (smaller) settings
    what = f"phantom seed = case number + {offset}" if args.synthesize else "their own CT"
    which = args.case_list.name if args.case_list else args.cases
    print(f"\n{len(rows)} {which} cases ({what}): the model files' own rules, then the best 10\n")
    print("| rough rule | fine rule | kidney Dice | tumor Dice |\n| --- | --- | --- | --- |")
    for k in [reference] + ranked[:10]:
        print(f"| {k[0].describe()} | {k[1].describe()} | {means[k][0]:.4f} | {means[k][1]:.4f} |")
    if args.out:  # its folder made, written whole or not at all (the tuning may have taken an hour)
        write_json(args.out, {"cases": sorted(rows), "seed_offset": offset, "scores": [
            {"rough": k[0].to_dict(), "fine": k[1].to_dict(), "mean": [float(v) for v in means[k]],
             "per_case": {c: list(rows[c][k]) for c in sorted(rows)}} for k in [reference] + ranked]},
            force=True, description="tuning table", indent=1)
    if args.write:
        write_models(args.write, own_rough, own, ranked[0], sorted(rows), offset,
                     [[*k[0].to_dict().values(), *k[1].to_dict().values(), *(round(float(v), 5) for v in means[k])]
                      for k in ranked], args.force)
    return 0


def write_models(folder: Path, rough, fine, best, cases, seed_offset, table, force: bool) -> None:
    """rough.pt and fine.pt in ``folder`` with the ``best`` (rough, fine) rules; the tuning goes into the
    files' training record. A rough model whose own rule won is copied byte for byte."""
    import shutil
    folder.mkdir(parents=True, exist_ok=True)
    record = {"cases": cases, "seed_offset": seed_offset,
              "columns": ("rough rule, fine rule (rule, foreground bias, tumor bias, min tumor mL, min tumor "
                          "probability, min island fraction, tumor margin bias, tumor margin min mL each), kidney, "
                          "tumor"),
              "scores": table}
    for model, decision, name in ((rough, best[0], "rough.pt"), (fine, best[1], "fine.pt")):
        if decision == model.decision and name == "rough.pt":
            replace_file(folder / name, lambda tmp: shutil.copyfile(model.path, tmp))
        else:
            model.training = {**model.training, "decision_tuning": {
                "from_sha256": model.sha256, "previous": model.decision.to_dict(), **record}}
            model.decision = decision
            save_model_file(model, folder / name, force=force)
        print(f"{folder / name}: {decision.describe()}; sha256 {sha256_of(folder / name)}")


if __name__ == "__main__":
    sys.exit(main())
