"""Evaluate label maps against ground truth: KiTS19 Dice plus surface Dice; console script ``bisc-evaluate``.

    bisc-evaluate PRED_DIR GT_DIR [-o OUT_DIR] [--force] [--tolerance MM ...] [--kidney-only-reference]
                  [--rois PATH] [--cyst-as kidney]

Ground truth may use the KiTS layout (``GT_DIR/case_00123/segmentation.nii.gz``) or flat files
(``case_00123.nii.gz``, ``.nrrd``, ...); predictions likewise (``case_00123.nii.gz``,
``prediction_00123.nii.gz``, ``PRED_DIR/case_00123/prediction.nii.gz``). Cases are matched by their id
``case_XXXXX`` (``prediction_XXXXX`` and ``segmentation_XXXXX`` count as ``case_XXXXX``), otherwise by identical
file name without suffix. Writes ``per_case.csv`` and ``summary.json`` (atomically) and prints a table.

Labels must be 0 background, 1 kidney, 2 tumor; anything else is refused (naming the file and the values)
rather than scored. ``--cyst-as kidney`` maps KiTS21/23 cysts (3) in the *ground truth* to kidney, as
KiTS23's "kidney and masses" region counts them (a prediction holding 3 is still refused).

``--kidney-only-reference``: the ground truth labels kidneys only (e.g. a real CT's ``kidneys.nii.gz``), so
tumor Dice is not applicable (empty in the CSV, null in JSON, left out of the tumor mean, whose ``n`` says
how many cases it has) and the false tumor volume (``false_tumor_ml``: all predicted tumor) is reported with
both kidney volumes. It is a flag, not a guess from the data: a KiTS case can have no tumor, and its tumor
Dice (1 when nothing is predicted, else 0) must stay as KiTS defines it. A ground truth holding label 2 is
refused with the flag.

``--rois PATH`` (the JSON of ``bisc-segment --save-rois``: a folder of ``<case>.rois.json``, or one file when
one case is scored) adds ROI containment: the share of each reference kidney inside the ROIs
(:func:`~BiSCSegmentationLib.metrics.roi_containment`), the ROI count and the largest ROI side in mm.
"""
from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from .errors import InputError
from .metrics import TUMOR, case_metrics, roi_containment, volume_ml
from .outputs import OutputSet
from .roi import load_rois
from .volume import READABLE_SUFFIXES, Volume, read_volume

CSV_NAME, JSON_NAME = "per_case.csv", "summary.json"
_ID = re.compile(r"(?:case|prediction|pred|segmentation|seg)_(\d{5})(?!\d)", re.IGNORECASE)
_LABEL_STEMS = ("segmentation", "prediction", "labels", "label", "seg", "pred")
LABELS = (0, 1, 2)
CYST = 3
CYST_AS = {"kidney": 1}     # --cyst-as choices: where a KiTS21/23 cyst (3) goes
ROI_SUFFIX = ".rois.json"


class EvaluationError(InputError):
    """Bad input to an evaluation; the message names the case or folder and says what to do."""


@dataclass
class EvaluationReport:
    rows: List[Dict[str, object]]
    summary: Dict[str, object]
    paths: List[Path] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ case discovery
def _stem(name: str) -> Optional[str]:
    low = name.lower()
    for suffix in sorted(READABLE_SUFFIXES, key=len, reverse=True):
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return None


def case_key(name: str) -> str:
    """``case_XXXXX`` when the name holds a 5-digit case id, else the name without its image suffix."""
    m = _ID.search(name)
    if m:
        return f"case_{m.group(1)}"
    return _stem(name) or name


def find_label_files(folder, role: str = "label") -> Dict[str, Path]:
    """{case key: label file} for a flat folder of images or a KiTS-style folder of case folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"{role} folder {folder} does not exist or is not a folder")
    found: Dict[str, Path] = {}
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue  # hidden and half-written (.part) files
        if entry.is_dir():
            inner = [p for p in sorted(entry.iterdir()) if p.is_file() and (_stem(p.name) or "").lower() in _LABEL_STEMS]
            if not inner:
                continue
            if len(inner) > 1:
                raise EvaluationError(f"{entry}: several label files ({', '.join(p.name for p in inner)}); keep one")
            path, key = inner[0], case_key(entry.name)
        elif entry.is_file() and _stem(entry.name) is not None and "imaging" not in entry.name.lower():
            path, key = entry, case_key(entry.name)
        else:
            continue
        if key in found:
            raise EvaluationError(f"{role} files {found[key]} and {path} are both case {key}; keep one")
        found[key] = path
    return found


def read_labels(path: Path, case: str, role: str, cyst_as: Optional[str] = None) -> Volume:
    """A label map of 0/1/2 as uint8; other values are refused, not scored (a 3 or 255 would silently count as
    kidney). ``cyst_as`` (a key of CYST_AS) first maps KiTS cysts (3) into a label we score."""
    vol = read_volume(path)
    a = vol.array
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise EvaluationError(f"{case}: {role} {path} holds non-integer values; give a label map (0, 1, 2)")
    elif a.dtype.kind not in "iub":
        raise EvaluationError(f"{case}: {role} {path} has dtype {a.dtype}; give an integer label map")
    if a.size and (a.min() < 0 or a.max() > 255):
        raise EvaluationError(f"{case}: {role} {path} holds label values outside 0 background, 1 kidney, 2 tumor "
                              f"(from {a.min()} to {a.max()}); map them to 0/1/2 first")
    a = a.astype(np.uint8)
    if cyst_as is not None:
        a[a == CYST] = CYST_AS[cyst_as]
    present = np.flatnonzero(np.bincount(a.ravel(), minlength=256))
    bad = [int(v) for v in present if v not in LABELS]
    if bad:
        hint = ("KiTS21/23 cysts are 3: pass --cyst-as kidney to score them as kidney" if bad == [CYST] and
                role == "ground truth" else "map them to 0/1/2 first")
        raise EvaluationError(f"{case}: {role} {path} holds label values {', '.join(map(str, bad))} outside 0 "
                              f"background, 1 kidney, 2 tumor; {hint} (nothing was written)")
    return vol.with_array(a)


def check_same_grid(pred: Volume, gt: Volume, case: str) -> None:
    """Raise EvaluationError naming the case and what differs when the two grids do not match."""
    if pred.same_grid(gt):
        return
    fields = [("size (i,j,k)", pred.size_ijk, gt.size_ijk, 0), ("spacing", pred.spacing, gt.spacing, 1e-4),
              ("origin", pred.origin, gt.origin, 1e-3), ("direction", pred.direction, gt.direction, 1e-4)]
    diffs = [f"{name} {np.round(a, 4).tolist()} vs {np.round(b, 4).tolist()}" for name, a, b, tol in fields
             if np.shape(a) != np.shape(b) or not np.allclose(a, b, atol=tol)]
    raise EvaluationError(f"{case}: the prediction's grid does not match the ground truth's ({'; '.join(diffs)}); "
                          "predictions must be on the CT's own grid (bisc-segment writes them so)")


# ------------------------------------------------------------------------------------------------ reports
def metric_columns(rows: Sequence[Dict[str, object]]) -> List[str]:
    """Columns holding numbers (None: not applicable to that case) besides the case name."""
    cols: List[str] = []
    for r in rows:
        cols += [k for k, v in r.items() if k not in cols and k != "case" and
                 (v is None or isinstance(v, (int, float))) and not isinstance(v, bool)]
    return cols


def _stats(v: np.ndarray) -> Dict[str, Optional[float]]:
    if v.size == 0:  # not applicable to any case
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std()), "n": int(v.size)}


def summarise(rows: Sequence[Dict[str, object]], **extra) -> Dict[str, object]:
    """Mean and (population) standard deviation of every numeric column over the cases where it applies (not
    None; ``n`` counts them), plus ``extra`` entries."""
    metrics = {c: _stats(np.array([float(r[c]) for r in rows if r.get(c) is not None]))
               for c in metric_columns(rows)}
    return {"n_cases": len(rows), **extra, "metrics": metrics}


def format_table(summary: Dict[str, object]) -> str:
    metrics = summary.get("metrics", {})
    width = max([len("metric")] + [len(c) for c in metrics])
    lines = [f"{'metric':<{width}}  {'mean':>8}  {'std':>8}  {'n':>4}", "-" * (width + 26)]
    lines += [f"{c:<{width}}  {'n/a':>8}  {'n/a':>8}  {0:>4}" if m["mean"] is None else
              f"{c:<{width}}  {m['mean']:8.4f}  {m['std']:8.4f}  {m['n']:>4}" for c, m in metrics.items()]
    lines.append(f"cases: {summary.get('n_cases', 0)}")
    if summary.get("reference_labels"):
        lines.append(f"reference: {summary['reference_labels']}")
    for key, what in (("missing_predictions", "missing predictions"), ("missing_rois", "cases without ROI file")):
        missing = summary.get(key) or []
        lines += [f"{what} ({len(missing)}): {', '.join(missing)}"] if missing else []
    lines += [f"note: {n}" for n in summary.get("notes") or []]
    return "\n".join(lines)


def check_outputs(out_dir, force: bool, names: Iterable[str] = (CSV_NAME, JSON_NAME)) -> List[Path]:
    """Fail before any work if an output exists and ``force`` is not set."""
    paths = [Path(out_dir) / n for n in names]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{', '.join(existing)} exist(s); pass --force to overwrite (nothing was written)")
    return paths


def write_report(rows: Sequence[Dict[str, object]], summary: Dict[str, object], out_dir, force: bool = False,
                 csv_name: str = CSV_NAME, json_name: str = JSON_NAME) -> List[Path]:
    """Write the per-case CSV and the summary JSON atomically; refuses to overwrite unless ``force``."""
    csv_path, json_path = check_outputs(out_dir, force, (csv_name, json_name))
    columns = ["case"] + [c for c in (list(rows[0].keys()) if rows else []) if c != "case"]
    for r in rows:
        columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    out = OutputSet(force)  # both, or neither
    out.add_text(csv_path, buf.getvalue(), "per-case CSV")
    out.add_json(json_path, summary, "summary JSON")
    return out.commit()


# --------------------------------------------------------------------------------------------- evaluation
def score_labels(pred: Volume, gt: Volume, tolerances_mm: Sequence[float] = (1.0, 1.15), kidney_only: bool = False,
                 rois: Optional[Sequence] = None, case: str = "case") -> Dict[str, object]:
    """One case's scores (both label maps 0/1/2 on the same grid): case_metrics, and with ``kidney_only``
    tumor scores None plus ``pred_kidney_ml`` (label 1), ``ref_kidney_ml`` and ``false_tumor_ml`` (label 2);
    with ``rois`` (None: not given) ROI containment, ``roi_count`` and ``roi_max_side_mm``."""
    check_same_grid(pred, gt, case)
    if kidney_only and np.any(gt.array == TUMOR):
        raise EvaluationError(f"{case}: the ground truth holds tumor (label 2), but --kidney-only-reference says it "
                              "labels kidneys only; drop the flag to score the tumor")
    row: Dict[str, object] = dict(case_metrics(pred.array, gt.array, gt.spacing[::-1], tolerances_mm,
                                               score_tumor=not kidney_only))
    if kidney_only:
        row.update(pred_kidney_ml=volume_ml(pred.array == 1, pred.spacing),
                   ref_kidney_ml=volume_ml(gt.array, gt.spacing),
                   false_tumor_ml=volume_ml(pred.array == TUMOR, pred.spacing))
    if rois is not None:
        row.update(roi_containment(gt, rois), roi_count=len(rois),
                   roi_max_side_mm=max((max(r.size) for r in rois), default=None))
    return row


def find_roi_files(path, cases: Sequence[str]) -> Dict[str, Path]:
    """{case: ROI file}: ``<case>.rois.json`` files in a folder (matched like label files), or one file for
    the one case scored."""
    path = Path(path)
    if path.is_file():
        if len(cases) != 1:
            raise EvaluationError(f"--rois {path} is one file but {len(cases)} cases are scored; give a folder "
                                  f"of <case>{ROI_SUFFIX} files")
        return {cases[0]: path}
    if not path.is_dir():
        raise EvaluationError(f"--rois {path}: no such file or folder (give bisc-segment --save-rois files)")
    found = {case_key(f.name[: -len(ROI_SUFFIX)]): f for f in sorted(path.iterdir())
             if f.is_file() and f.name.lower().endswith(ROI_SUFFIX) and not f.name.startswith(".")}
    if not any(c in found for c in cases):
        raise EvaluationError(f"--rois {path}: no <case>{ROI_SUFFIX} file for any scored case "
                              f"(e.g. {cases[0]}{ROI_SUFFIX})")
    return found


def evaluate_folders(pred_dir, gt_dir, tolerances_mm: Sequence[float] = (1.0, 1.15), out_dir=None,
                     force: bool = False, progress: bool = True, kidney_only: bool = False,
                     cyst_as: Optional[str] = None, rois=None) -> EvaluationReport:
    """Score every ground-truth case that has a prediction; see the module docstring for layouts and options
    (``kidney_only``: --kidney-only-reference, ``cyst_as``: --cyst-as, ``rois``: --rois PATH).

    Returns the per-case rows and the summary (missing predictions and unmatched prediction files listed);
    writes them to ``out_dir`` when given. Raises EvaluationError on bad input (no match, grid mismatch,
    labels other than 0/1/2) before writing anything.
    """
    from tqdm import tqdm

    if cyst_as is not None and cyst_as not in CYST_AS:
        raise EvaluationError(f"--cyst-as must be one of {', '.join(CYST_AS)}, got {cyst_as!r}")
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    if pred_dir.resolve() == gt_dir.resolve():
        raise EvaluationError("PRED_DIR and GT_DIR are the same folder; give the predictions their own folder")
    if any(not float(t) >= 0 for t in tolerances_mm):
        raise EvaluationError(f"surface Dice tolerances must be non-negative millimetres, got {list(tolerances_mm)}")
    if out_dir is not None:
        check_outputs(out_dir, force)
    gts, preds = find_label_files(gt_dir, "ground-truth"), find_label_files(pred_dir, "prediction")
    if not gts:
        raise EvaluationError(f"no ground-truth label files in {gt_dir} (expected case_XXXXX/segmentation.nii.gz "
                              f"or image files: {', '.join(READABLE_SUFFIXES)})")
    matched = [k for k in gts if k in preds]
    missing = [k for k in gts if k not in preds]
    unmatched = [preds[k].name for k in preds if k not in gts]
    if not matched:
        raise EvaluationError(f"no prediction in {pred_dir} matches a ground-truth case in {gt_dir}; files are "
                              "matched by case id (case_XXXXX or prediction_XXXXX) or by identical file name")
    roi_files = find_roi_files(rois, matched) if rois is not None else {}
    rows: List[Dict[str, object]] = []
    any_tumor = False
    for case in tqdm(matched, desc="evaluating", unit="case", disable=not progress):
        gt = read_labels(gts[case], case, "ground truth", cyst_as)
        pred = read_labels(preds[case], case, "prediction")
        any_tumor = any_tumor or bool(np.any(gt.array == TUMOR))
        boxes = load_rois(roi_files[case]) if case in roi_files else None
        rows.append({"case": case, **score_labels(pred, gt, tolerances_mm, kidney_only, boxes, case)})
    notes = []
    if not kidney_only and not any_tumor:
        notes.append("no ground truth holds tumor (label 2): tumor Dice is scored as KiTS does (1 when no tumor is "
                     "predicted either, else 0); if these references label kidneys only, pass "
                     "--kidney-only-reference")
    summary = summarise(rows, n_ground_truth=len(gts), tolerances_mm=[float(t) for t in tolerances_mm],
                        reference_labels=("kidney only (--kidney-only-reference): tumor scores not applicable, "
                                          "false tumor mL reported") if kidney_only else "kidney and tumor (KiTS)",
                        cyst_as=cyst_as, missing_predictions=missing, unmatched_predictions=unmatched,
                        missing_rois=[c for c in matched if c not in roi_files] if rois is not None else [],
                        rois=str(rois) if rois is not None else None, notes=notes,
                        pred_dir=str(pred_dir), gt_dir=str(gt_dir))
    paths = write_report(rows, summary, out_dir, force) if out_dir is not None else []
    return EvaluationReport(rows, summary, paths)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bisc-evaluate", description="Score label maps against ground truth: KiTS19 kidney/tumor Dice "
        "and surface Dice (KiTS21 definition). Writes per_case.csv and summary.json.")
    parser.add_argument("pred_dir", help="folder of predicted label maps (case_XXXXX.nii.gz, prediction_XXXXX..)")
    parser.add_argument("gt_dir", help="folder of ground truth (KiTS layout case_XXXXX/segmentation.nii.gz or flat)")
    parser.add_argument("-o", "--out-dir", help="where to write the results (default: PRED_DIR/evaluation)")
    parser.add_argument("--force", action="store_true", help="overwrite existing results")
    parser.add_argument("--tolerance", type=float, nargs="+", default=[1.0, 1.15], metavar="MM",
                        help="surface Dice tolerances in mm (default: 1.0 1.15)")
    parser.add_argument("--kidney-only-reference", action="store_true",
                        help="the ground truth labels kidneys only (e.g. a real CT's kidneys.nii.gz): tumor Dice "
                             "is not applicable (empty/null, left out of the mean) and the false tumor volume (mL) "
                             "is reported; a ground truth with label 2 is refused")
    parser.add_argument("--rois", metavar="PATH", help="ROI files of bisc-segment --save-rois: a folder of "
                        f"<case>{ROI_SUFFIX}, or one file when one case is scored; adds ROI containment")
    parser.add_argument("--cyst-as", choices=sorted(CYST_AS), help="score ground-truth label 3 (KiTS21/23 cyst) "
                        "as this label (KiTS23 counts cysts in the kidney region); without it label 3 is refused")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.pred_dir) / "evaluation"
    try:
        report = evaluate_folders(args.pred_dir, args.gt_dir, args.tolerance, out_dir, args.force,
                                  progress=not args.quiet, kidney_only=args.kidney_only_reference,
                                  cyst_as=args.cyst_as, rois=args.rois)
    except (ValueError, OSError) as exc:  # EvaluationError, VolumeError, FileExistsError among them
        print(f"bisc-evaluate: error: {exc}", file=sys.stderr)
        return 2
    print(format_table(report.summary))
    unmatched = report.summary.get("unmatched_predictions") or []
    if unmatched:
        print(f"predictions without ground truth (ignored): {', '.join(unmatched)}")
    print("wrote " + ", ".join(str(p) for p in report.paths))
    return 0


__all__ = ["evaluate_folders", "EvaluationError", "EvaluationReport", "find_label_files", "find_roi_files", "case_key",
           "summarise", "score_labels", "write_report", "format_table", "check_outputs", "check_same_grid",
           "read_labels", "main"]
