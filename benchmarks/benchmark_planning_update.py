"""Time one planning-table update of the Slicer module on a 512x512x300 CT with a large tumor (issue #20).

The segmentation is written the module's way (BiSCLogic.apply_labels: right kidney with a 9 cm renal tumor,
left kidney) on a real MRML scene (PyPI's slicer-core); then the update the panel runs after an edit
(PlanningObserver.flush: segments read from the binary labelmaps, rows, table node) is timed several times.
Goal: <= 0.3 s per update. Also checks that an update adds no node to the scene. Wall-clock and CPU seconds
(this process's) are both reported: on a busy machine the CPU time is the fairer figure.

    python benchmarks/benchmark_planning_update.py [--repeat 5] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "BiSCSegmentation"))

SHAPE = (300, 512, 512)            # k, j, i
SPACING = (0.78, 0.78, 1.5)        # i, j, k (mm): a typical abdominal CT


def ellipsoid(shape, spacing, center_mm, radii_mm):
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return (((i * spacing[0] - center_mm[0]) / radii_mm[0]) ** 2 + ((j * spacing[1] - center_mm[1]) / radii_mm[1]) ** 2
            + ((k * spacing[2] - center_mm[2]) / radii_mm[2]) ** 2) <= 1.0


def build_labels():
    labels = np.zeros(SHAPE, np.uint8)
    cx, cy, cz = 200.0, 230.0, 225.0                     # centre of the image (mm from the first voxel)
    labels[ellipsoid(SHAPE, SPACING, (cx - 75, cy, cz), (30, 35, 55))] = 1   # kidney on the image's low x
    labels[ellipsoid(SHAPE, SPACING, (cx + 75, cy, cz), (30, 35, 55))] = 1
    labels[ellipsoid(SHAPE, SPACING, (cx - 95, cy - 10, cz + 30), (45, 45, 45))] = 2   # 9 cm tumor: 380 mL
    return labels


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    import slicer
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationLib.volume import Volume
    from BiSCSegmentationSlicer import planning, rois
    from BiSCSegmentationSlicer.logic import BiSCLogic
    from BiSCSegmentationSlicer.scene import add_volume_node, make_scene
    from BiSCSegmentationSlicer.segmentation import segment_boxes

    ctx = make_scene()
    ct = Volume(np.full(SHAPE, -1000, np.int16), SPACING, (0.0, 0.0, 0.0), np.eye(3))
    labels = build_labels()
    ct.array[labels > 0] = 40
    node = add_volume_node(ctx, ct, "Big CT")
    mid = rois.midline_x(node, ct)
    boxes = [KidneyROI((mid - 95, 220.0, 225.0), (150.0, 130.0, 180.0), "right"),
             KidneyROI((mid + 75, 230.0, 225.0), (100.0, 110.0, 150.0), "left")]
    logic = BiSCLogic(ctx)
    t0, c0 = time.perf_counter(), time.process_time()
    seg = logic.apply_labels(node, labels, boxes, mode="new")
    write_s, write_cpu = time.perf_counter() - t0, time.process_time() - c0
    observer = logic.observe(seg, node)          # what the panel attaches; flush() is its timer's update

    added = []
    tag = ctx.scene.AddObserver(slicer.vtkMRMLScene.NodeAddedEvent, lambda c, e: added.append(1))
    times, cpu, boxes_times = [], [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        segment_boxes(seg, node)
        boxes_times.append(time.perf_counter() - t0)
        observer.stale = True                    # as after an edit
        t0, c0 = time.perf_counter(), time.process_time()
        observer.flush()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    ctx.scene.RemoveObserver(tag)
    rows = planning.compute_rows(ctx, seg, node)
    tumor = [r for r in rows if "tumor" in r.segment][0]
    result = {"shape_kji": list(SHAPE), "spacing_ijk_mm": list(SPACING), "tumor_ml": round(tumor.volume_ml, 1),
              "tumor_diameter_mm": round(tumor.largest_diameter_mm, 1), "write_s": round(write_s, 3), "write_cpu_s": round(write_cpu, 3),
              "update_s_median": round(statistics.median(times), 3), "update_s_min": round(min(times), 3),
              "update_s_max": round(max(times), 3), "update_cpu_s_median": round(statistics.median(cpu), 3), "read_segments_s_median": round(statistics.median(boxes_times), 3),
              "nodes_added_by_updates": len(added), "repeat": args.repeat, "goal_s": 0.3}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0 if not added else 1


if __name__ == "__main__":
    sys.exit(main())
