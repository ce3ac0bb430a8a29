#!/usr/bin/env python
"""Before/after, same run: the fine stage's glue, from the network's probabilities to the labels on the CT grid.

* before: restore the three probabilities (p0, p1, p2) onto the CT grid, argmax, then drop the small
  26-connected islands (multiplying the labels by a keep table);
* after (what the cascade does now): restore only p1 - p0 and p2 - p0 (interpolation is linear: the same
  argmax), label from those, and clear the islands' voxels.

Also, the islands step alone: components labelled over the whole ROI (before) against inside the
foreground's bounding box (``small_components`` now).

Run on the benchmark phantom's true kidney ROIs with the bundled fine network; both ways timed interleaved
(median of ``--runs``); the labels are compared voxel for voxel. Also times the full-resolution rough
preview that ``locate`` now makes only on demand.

    .venv/bin/python benchmarks/fine_glue.py
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scipy import ndimage

from BiSCSegmentationLib.cascade import (AIR_HU, CascadePredictor, fine_grid, label_argmax,
                                         nearest_to_stored, rough_grid, small_components)
from BiSCSegmentationLib.resample import resample_linear
from BiSCSegmentationLib.volume import to_canonical
from BiSCSegmentationLib.decision import labels_from_differences as label_from_differences
from BiSCSegmentationLib.inference_settings import InferenceSettings
from BiSCSegmentationLib.model_file import default_cache_dir
from BiSCSegmentationLib.roi import rois_from_mask

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_cascade import phantom_case  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args(argv)
    ct, gt = phantom_case(default_cache_dir() / "benchmark" / "phantom", 7, (300, 512, 512), (0.78, 0.78, 1.0))
    predictor = CascadePredictor.bundled(settings=InferenceSettings(device="cpu"))
    canon, reo = to_canonical(ct)
    work = []
    for roi in rois_from_mask(gt, predictor.fine_model.fine_spacing, min_component_ml=1.0):
        grid, box = fine_grid(canon, roi, predictor.fine_model)
        image = predictor._normalise(resample_linear(canon.array, grid, fill=AIR_HU), predictor.fine_model)
        probs = predictor._probabilities(predictor.fine_model, image, "fine")
        work.append((probs, [m.inverse(s.stop - s.start, s.start) for m, s in zip(grid, box)]))

    def before():
        out = []
        for pr, back in work:
            labels = label_argmax(resample_linear(pr, back, fill=None))
            comp, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            keep = (sizes >= 0.2 * sizes.max()).astype(np.uint8)
            keep[0] = 0
            out.append(labels * keep[comp])
        return out

    def after():
        out = []
        for pr, back in work:
            labels = label_from_differences(resample_linear(pr[1:] - pr[:1], back, fill=None))
            drop = small_components(labels)
            if drop is not None:
                labels[drop] = 0
            out.append(labels)
        return out

    differ = sum(int(np.count_nonzero(a != b)) for a, b in zip(before(), after()))
    total = sum(a.size for a in before())
    times = {"before": [], "after": []}
    for _ in range(args.runs):
        for name, fn in (("before", before), ("after", after)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    t3, t2 = statistics.median(times["before"]), statistics.median(times["after"])
    labelled = after()

    def islands_whole_roi(labels):
        comp, n = ndimage.label(labels > 0, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        drop = sizes < 0.2 * sizes.max()
        drop[0] = False
        return drop[comp]

    isl = {"whole": [], "box": []}
    for _ in range(args.runs):
        for name, fn in (("whole", islands_whole_roi), ("box", small_components)):
            t = time.perf_counter()
            [fn(a) for a in labelled]
            isl[name].append(time.perf_counter() - t)
    boxed = [small_components(a) for a in labelled]
    same = all(np.array_equal(islands_whole_roi(a), np.zeros(a.shape, bool) if b is None else b)
               for a, b in zip(labelled, boxed))
    maps = rough_grid(canon, 128, 3.0)
    low = np.zeros([m.n_out for m in maps], np.uint8)
    back = [m.inverse(n) for m, n in zip(maps, canon.array.shape)]
    preview = []
    for _ in range(args.runs):
        t = time.perf_counter()
        nearest_to_stored(low, back, reo)
        preview.append(time.perf_counter() - t)
    print(f"CT {list(ct.array.shape)}, {len(work)} ROIs, {torch.get_num_threads()} thread(s), median of {args.runs}")
    print(f"fine-stage glue (restore, labels, islands): before {t3:.3f} s, after {t2:.3f} s: {t3 / t2:.2f}x faster; "
          f"{differ} of {total} voxels differ ({100.0 * differ / total:.4f}%)")
    i1, i2 = statistics.median(isl["whole"]), statistics.median(isl["box"])
    print(f"islands step alone: whole ROI {i1:.3f} s, foreground box {i2:.3f} s: {i1 / i2:.2f}x faster; "
          f"same voxels: {same}")
    print(f"full-resolution rough preview (now made on demand only): {statistics.median(preview):.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
