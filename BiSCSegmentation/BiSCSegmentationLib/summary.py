"""A run's summary as plain data: what was read, which model ran, the volumes found, the ROIs, the quality
warnings and the timings. ``bisc-segment --summary`` writes it as JSON (with its other outputs, through
``outputs.OutputSet``); batch use and reports read it."""
from __future__ import annotations

import platform
from typing import Dict, Optional, Sequence

import numpy as np

from . import __version__
from .roi import roi_index_bounds
from .volume import Volume

SUMMARY_FORMAT = "bisc-segmentation-summary"
SUMMARY_VERSION = 1


def volumes_ml(labels: Volume, rois: Sequence = ()) -> Dict:
    """Kidney and tumor volume in mL over the whole label map, and inside each ROI's box."""
    a = np.asarray(labels.array)
    ml = labels.voxel_volume_ml
    counts = np.bincount(a.ravel(), minlength=3)
    per_roi = []
    for roi in rois:
        lo, hi = roi_index_bounds(roi, labels)
        first = np.clip(np.ceil(lo - 1e-6).astype(int), 0, None)
        last = np.minimum(np.floor(hi + 1e-6).astype(int), np.array(labels.size_ijk) - 1)
        box = tuple(slice(int(f), int(l) + 1) for f, l in zip(first[::-1], last[::-1]))
        c = np.bincount(a[box].ravel(), minlength=3) if all(s.stop > s.start for s in box) else np.zeros(3)
        per_roi.append({"roi": roi.name, "side": roi.side, "kidney_ml": round(float(c[1] * ml), 2),
                        "tumor_ml": round(float(c[2] * ml), 2)})
    return {"kidney_ml": round(float(counts[1] * ml), 2), "tumor_ml": round(float(counts[2] * ml), 2),
            "per_roi": per_roi}


def summary_document(input_path, ct: Volume, labels: Optional[Volume], rois: Sequence, warnings: Sequence,
                     timings: Dict[str, float], models: Dict, settings: Dict) -> Dict:
    """Everything a reader or a script needs to judge one run, as JSON-ready data."""
    return {
        "format": SUMMARY_FORMAT, "version": SUMMARY_VERSION,
        "software": {"name": "BiSCSegmentation", "version": __version__, "python": platform.python_version()},
        "input": {"path": str(input_path), "size_ijk": list(ct.size_ijk), "spacing_mm": list(ct.spacing),
                  "origin_mm": list(ct.origin), "direction": np.asarray(ct.direction).ravel().tolist()},
        "model": models, "settings": settings,
        "volumes": volumes_ml(labels, rois) if labels is not None else None,
        "rois": [r.to_dict() for r in rois],
        "warnings": [w.to_dict() for w in warnings],
        "trusted": not warnings,
        "timings_s": {k: round(float(v), 3) for k, v in timings.items()},
    }
