"""Run a cascade predictor on held-out cases and score it: KiTS19 Dice, surface Dice, timings per case.

Independent of where the cases come from: ``cases`` is any sequence or iterable of
``(case_id, ct, gt)`` where ``ct`` and ``gt`` are :class:`Volume` objects or image paths. The predictor is
anything with ``predict(ct) -> result`` where ``result.labels`` is a label Volume on the CT's grid and
``result.timings`` a dict of seconds (``CascadePredictor`` is one).

Writes ``OUT_DIR/per_case.csv`` and ``OUT_DIR/summary.json`` (atomically; never overwrites without
``force``) and, if asked, ``OUT_DIR/predictions/<case_id>.nii.gz``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import numpy as np

from BiSCSegmentationLib.evaluation import (CSV_NAME, JSON_NAME, EvaluationError, check_outputs, check_same_grid,
                                            format_table, summarise, write_report)
from BiSCSegmentationLib.metrics import case_metrics
from BiSCSegmentationLib.volume import Volume, read_volume, write_volume

CaseInput = Tuple[str, Union[Volume, str, Path], Union[Volume, str, Path]]
PREDICTIONS_DIR = "predictions"


def _volume(v) -> Volume:
    return v if isinstance(v, Volume) else read_volume(v)


def _iterate(cases) -> Iterable[CaseInput]:
    if hasattr(cases, "__len__") and hasattr(cases, "__getitem__"):
        return (cases[n] for n in range(len(cases)))  # lazy sequences build each case on access
    return iter(cases)


def _no_kidney_error():
    try:
        from BiSCSegmentationLib.cascade import NoKidneyFound
        return NoKidneyFound
    except ImportError:  # pragma: no cover - torch missing; then no CascadePredictor either
        return ()


def evaluate_cascade(predictor, cases: Union[Sequence[CaseInput], Iterable[CaseInput]], out_dir,
                     tolerances_mm: Sequence[float] = (1.0, 1.15), write_predictions: bool = False,
                     force: bool = False, progress: bool = True, verbose: bool = True) -> Dict[str, object]:
    """Predict and score every case; returns the summary dict (as written to summary.json) plus ``per_case``.

    A case where the rough stage finds no kidney is scored as an empty prediction (``no_kidney_found`` = 1);
    any other error stops the evaluation, naming the case. Timing columns (seconds): ``time_<stage>_s`` from
    the predictor's timings, ``time_predict_s`` (wall clock of ``predict``) and ``time_case_s`` (including
    reading the images and scoring).
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    check_outputs(out_dir, force)
    pred_dir = out_dir / PREDICTIONS_DIR
    if write_predictions and not force and pred_dir.is_dir() and any(pred_dir.iterdir()):
        raise FileExistsError(f"{pred_dir} already holds predictions; pass force=True (--force) to overwrite")
    total = len(cases) if hasattr(cases, "__len__") else None
    rows: List[Dict[str, object]] = []
    bar = tqdm(_iterate(cases), total=total, desc="evaluating cascade", unit="case", disable=not progress)
    for item in bar:
        bar.set_postfix_str(str(item[0]))
        rows.append(score_case(predictor, *item, tolerances_mm=tolerances_mm,
                               pred_dir=pred_dir if write_predictions else None, force=force))
    bar.close()
    return report(rows, out_dir, tolerances_mm, pred_dir if write_predictions else None, force, verbose)


def score_case(predictor, case_id, ct, gt, tolerances_mm: Sequence[float] = (1.0, 1.15), pred_dir=None,
               force: bool = False) -> Dict[str, object]:
    """One row of the report: predict ``ct`` (Volume or path) and score it against ``gt``.

    A case where the rough stage finds no kidney is scored as an empty prediction (``no_kidney_found`` = 1).
    """
    t_case = time.perf_counter()
    case_id = str(case_id)
    ct, gt = _volume(ct), _volume(gt)
    check_same_grid(ct, gt, case_id + " (CT vs ground truth)")
    gt_labels = np.asarray(gt.array).astype(np.uint8)
    t0 = time.perf_counter()
    try:
        result = predictor.predict(ct)
        labels, timings, found = result.labels, dict(getattr(result, "timings", {}) or {}), True
    except _no_kidney_error():
        labels, timings, found = ct.with_array(np.zeros(ct.array.shape, np.uint8)), {}, False
    except Exception as exc:
        raise RuntimeError(f"{case_id}: the cascade failed: {exc}") from exc
    t_predict = time.perf_counter() - t0
    if not isinstance(labels, Volume):
        labels = ct.with_array(np.asarray(labels))
    check_same_grid(labels, gt, case_id)
    pred = np.asarray(labels.array).astype(np.uint8)
    if pred_dir is not None:
        write_volume(labels.with_array(pred), Path(pred_dir) / f"{case_id}.nii.gz", force=force)
    row: Dict[str, object] = {"case": case_id}
    row.update(case_metrics(pred, gt_labels, gt.spacing[::-1], tolerances_mm))
    row["no_kidney_found"] = 0 if found else 1
    for stage, seconds in timings.items():
        row[f"time_{stage}_s"] = float(seconds)
    row["time_predict_s"] = t_predict
    row["time_case_s"] = time.perf_counter() - t_case
    return row


def report(rows: List[Dict[str, object]], out_dir, tolerances_mm: Sequence[float] = (1.0, 1.15), pred_dir=None,
           force: bool = False, verbose: bool = True) -> Dict[str, object]:
    """Summarise the rows and write per_case.csv + summary.json; returns the summary plus ``per_case``."""
    if not rows:
        raise EvaluationError("no cases to evaluate")
    out_dir = Path(out_dir)
    failed = [str(r["case"]) for r in rows if r.get("no_kidney_found")]
    summary = summarise(rows, tolerances_mm=[float(t) for t in tolerances_mm], no_kidney_found=failed,
                        predictions_dir=str(pred_dir) if pred_dir is not None else None)
    paths = write_report(rows, summary, out_dir, force, CSV_NAME, JSON_NAME)
    if verbose:
        print(format_table(summary))
        if failed:
            print(f"no kidney found (scored as empty predictions): {', '.join(failed)}")
        print("wrote " + ", ".join(str(p) for p in paths))
    return {**summary, "per_case": rows}


__all__ = ["evaluate_cascade", "score_case", "report", "PREDICTIONS_DIR"]
