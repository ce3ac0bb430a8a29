"""Derive the output-plausibility limits (``BiSCSegmentationLib.quality``) from real KiTS19 label maps.

Per kidney (26-connected component of kidney+tumor of at least 10 mL): volume, tumor volume, parenchyma
volume and the extent of its bounding box in mm; per case: how many such kidneys and whether tumor lies in
more than one. Prints percentiles and writes them as JSON; the constants in quality.py quote this output.

    python -m bisc_training.plausibility_limits --kits ../shared/data/kits19 --out runs/plausibility.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from .data import list_cases, read_labels

MIN_KIDNEY_ML = 10.0


def kidney_stats(labels) -> dict:
    """Per-kidney measurements of one label map (a Volume, any orientation)."""
    a = np.asarray(labels.array)
    ml = labels.voxel_volume_ml
    spacing_kji = np.array(labels.spacing[::-1])
    comp, n = ndimage.label(a > 0, structure=np.ones((3, 3, 3), bool))
    sizes = np.bincount(comp.ravel(), minlength=n + 1)
    tumor = np.bincount(comp.ravel(), weights=(a == 2).ravel(), minlength=n + 1)
    kidneys = []
    for idx, box in enumerate(ndimage.find_objects(comp), start=1):
        if box is None or sizes[idx] * ml < MIN_KIDNEY_ML:
            continue
        extent = np.array([s.stop - s.start for s in box]) * spacing_kji
        kidneys.append({"volume_ml": float(sizes[idx] * ml), "tumor_ml": float(tumor[idx] * ml),
                        "parenchyma_ml": float((sizes[idx] - tumor[idx]) * ml),
                        "extent_mm": sorted(float(e) for e in extent)})
    return {"kidneys": kidneys, "tumor_sides": sum(k["tumor_ml"] > 0 for k in kidneys)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kits", required=True, help="folder of case_XXXXX/segmentation.nii.gz")
    p.add_argument("--out", help="JSON file to write the per-case measurements and percentiles to")
    args = p.parse_args(argv)
    cases = list_cases(args.kits)
    per_case = {}
    for n, case in enumerate(cases):
        per_case[case] = kidney_stats(read_labels(Path(args.kits) / case / "segmentation.nii.gz"))
        print(f"\r{n + 1}/{len(cases)}", end="", flush=True)
    print()
    ks = [k for c in per_case.values() for k in c["kidneys"]]
    vol = np.array([k["volume_ml"] for k in ks])
    ext = np.array([k["extent_mm"][-1] for k in ks])
    ratio = np.array([k["tumor_ml"] / max(k["parenchyma_ml"], 1e-6) for k in ks])
    q = (0.5, 5, 50, 95, 99.5, 100)
    summary = {
        "cases": len(cases), "kidneys": len(ks),
        "kidney_volume_ml_percentiles": dict(zip(map(str, q), np.percentile(vol, q).round(1).tolist())),
        "kidney_min_volume_ml": float(vol.min()),
        "kidney_largest_extent_mm_percentiles": dict(zip(map(str, q), np.percentile(ext, q).round(1).tolist())),
        "kidneys_per_case": np.bincount([len(c["kidneys"]) for c in per_case.values()]).tolist(),
        "cases_with_tumor_in_two_kidneys": int(sum(c["tumor_sides"] > 1 for c in per_case.values())),
        "kidneys_tumor_larger_than_parenchyma": int((ratio > 1).sum()),
        "tumor_to_parenchyma_ratio_percentiles": dict(zip(map(str, q), np.percentile(ratio, q).round(3).tolist())),
    }
    print(json.dumps(summary, indent=2))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"summary": summary, "cases": per_case}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
