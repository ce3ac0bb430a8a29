"""The whole module workflow on a phantom, shared by the Slicer self-test and the slicer-core pytest suite.

:func:`make_case_files` writes a synthetic CT with an oblique, LPS-oriented NRRD header, its ground truth and
two tiny random-weight models; :func:`run_workflow` then does what a radiologist does in the module panel and
checks every step: locate, move/delete/add ROIs, the pre-run checks, segment, the segments' names, colors and
terminology, the subject hierarchy, the planning table (live after an edit), CSV, .seg.nrrd round trip,
"replace only with confirmation", and that the exported label map equals the CLI's for the same file and ROIs.
"""
from __future__ import annotations

import math
import os
import time
from typing import Callable, Dict

import numpy as np

FINE_SPACING = (1.5, 1.5, 3.0)


def oblique(volume, degrees: float = 10.0):
    """The same voxels on a rotated grid (about S, with j and k reversed), centred on the same point."""
    from BiSCSegmentationLib.volume import Volume

    a = math.radians(degrees)
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    direction = rot @ np.diag([1.0, -1.0, -1.0])
    centre = (np.array(volume.size_ijk) - 1) / 2.0
    origin = -(direction @ np.diag(volume.spacing)) @ centre
    return Volume(volume.array, volume.spacing, tuple(origin), direction)


def make_models(folder: str, seed: int = 0):
    """(rough, fine) model files: SC-UNets of widths 4..32 with random weights (no training); one window
    covers a whole ROI, so the fine stage runs in seconds on a CPU."""
    import torch

    from BiSCSegmentationLib.model_file import StageModel, save_model_file
    from BiSCSegmentationLib.network import SCUNetConfig

    paths = []
    for n, (stage, grid) in enumerate((("rough", {"inplane_size": 64, "z_spacing": 6.0}),
                                       ("fine", {"spacing": list(FINE_SPACING)}))):
        torch.manual_seed(seed + n)
        model = StageModel(stage, SCUNetConfig(widths=[4, 8, 16, 32]), grid, inference_window=(64, 192, 192))
        net = model.build()
        if stage == "fine":   # nudge the tumor logit so that random weights give kidney AND tumor voxels
            with torch.no_grad():
                net.label_branch.head.bias[2] += 0.5
        path = os.path.join(folder, f"tiny-{stage}.pt")
        save_model_file(model, path, force=True)
        paths.append(path)
    return tuple(paths)


def make_case_files(folder: str, seed: int = 3) -> Dict:
    """Phantom CT (3 x 3 x 6 mm, oblique LPS header) + labels as NRRD, and tiny models, under ``folder``."""
    from BiSCSegmentationLib.phantom import procedural_labels, synthesize_ct
    from BiSCSegmentationLib.volume import write_volume

    labels = oblique(procedural_labels(seed, spacing=(3.0, 3.0, 6.0), kidneys="both"))
    ct = synthesize_ct(labels, seed)
    paths = {"ct": os.path.join(folder, "phantom-ct.nrrd"), "labels": os.path.join(folder, "phantom-labels.nrrd")}
    write_volume(ct, paths["ct"], force=True)
    write_volume(labels, paths["labels"], force=True)
    paths["rough"], paths["fine"] = make_models(folder)
    paths["folder"] = folder
    return paths


def run_workflow(workflow, volume_node, case: Dict, check: Callable, say: Callable = print,
                 idle: Callable = lambda: time.sleep(0.05)) -> Dict:
    """Every step of the module workflow on ``volume_node`` (loaded from case["ct"]); returns what it made."""
    from BiSCSegmentationLib import cli
    from BiSCSegmentationLib.metrics import volume_ml
    from BiSCSegmentationLib.roi import rois_from_mask, save_rois
    from BiSCSegmentationLib.volume import read_volume

    from . import planning, rois, segmentation as segs, terminology as term
    from BiSCSegmentationLib.inference_settings import InferenceSettings

    from .logic import Options, WorkflowError
    from .models import ModelChoice
    from .scene import save_node, study_of

    ctx = workflow.ctx
    options = Options(
        model=ModelChoice(kind="files", rough_path=case["rough"], fine_path=case["fine"]),
        settings=InferenceSettings(device="cpu"),
    )
    report = {}

    say("Locate kidneys: rough stage in the background, polled")
    run = workflow.start_locate(volume_node, options)
    stages = set()
    while True:
        status = run.job.poll()
        stages.add(status.stage)
        if status.finished:
            break
        idle()
    check(status.state == "done", f"locate failed: {status.error} {status.details}")
    check("rough" in stages or status.result is not None, "no progress was reported")
    try:
        workflow.finish_locate(run, status)
    except WorkflowError as exc:      # random weights may find nothing: the plain message is what users see
        check("Add ROI" in str(exc), f"unexpected locate message: {exc}")
    preview = segs.find_preview(ctx, volume_node)
    check(preview is not None, "no rough preview")
    masks = segs.segment_masks(ctx, preview, volume_node)
    shown = np.any(list(masks.values()), axis=0) if masks else np.zeros(status.result["mask"].shape, bool)
    check(np.array_equal(shown, status.result["mask"] > 0), "the preview is not the rough mask")
    check(preview.GetDisplayNode().GetOpacity2DFill() < 1.0, "the preview is not translucent")

    say("Rough result from the ground truth: one ROI per kidney, named by side")
    gt = read_volume(case["labels"])
    gt_rois = rois_from_mask(gt, FINE_SPACING)
    nodes, _ = workflow.apply_rough(volume_node, (gt.array > 0).astype(np.uint8), gt_rois)
    by_name = {n.GetName(): n for n in nodes}
    check(sorted(by_name) == ["Left kidney ROI", "Right kidney ROI"], f"ROI names {sorted(by_name)}")
    mid = rois.midline_x(volume_node)
    check(rois.kidney_roi(by_name["Right kidney ROI"]).center[0] < mid, "the right ROI is not on the patient's right")

    say("Move and resize the right ROI, delete the left one, add one by hand")
    right = by_name["Right kidney ROI"]
    c = right.GetCenter()
    right.SetCenter(c[0] + 6.0, c[1] - 4.5, c[2] + 3.0)                 # RAS: 6 mm to the patient's right
    s = right.GetSize()
    right.SetSize(s[0] + 12.0, s[1], s[2] + 18.0)
    left_roi = rois.kidney_roi(by_name["Left kidney ROI"])
    workflow.delete_roi(by_name["Left kidney ROI"])
    added = workflow.add_roi(volume_node, center_lps=left_roi.center, size_mm=left_roi.size)
    check(added.GetName() == "Left kidney ROI", f"hand-added ROI named {added.GetName()!r}")
    current = workflow.rois(volume_node)
    check(len(current) == 2 and sorted(r.side for r in current) == ["left", "right"], f"ROIs now {current}")
    moved = [r for r in current if r.side == "right"][0]
    check(np.allclose(moved.center, (-(c[0] + 6.0), -(c[1] - 4.5), c[2] + 3.0)), "moved ROI centre not read back")

    say("Unusable ROIs are flagged before running")
    tiny = workflow.add_roi(volume_node, size_mm=(8.0, 8.0, 8.0))
    far = workflow.add_roi(volume_node, center_lps=(0.0, 0.0, 5000.0))
    rows = {r.node_id: r for r in workflow.roi_rows(volume_node)}
    check(any("too small" in p for p in rows[tiny.GetID()].problems), "tiny ROI not flagged")
    check(any("outside" in p for p in rows[far.GetID()].problems), "ROI outside the image not flagged")
    try:
        workflow.start_segment(volume_node, options)
        check(False, "segmenting with unusable ROIs was not refused")
    except WorkflowError as exc:
        check("too small" in str(exc) and "outside" in str(exc), f"refusal message: {exc}")
    workflow.delete_roi(tiny)
    workflow.delete_roi(far)

    say("Segment kidneys: fine stage on the current ROIs")
    run = workflow.start_segment(volume_node, options)
    status = run.job.wait()
    check(status.state == "done", f"segment failed: {status.error} {status.details}")
    seg = workflow.finish_segment(run, status)
    report["output"], report["run"], report["status"] = seg, run, status
    check(seg.GetName() == f"{volume_node.GetName()} kidneys", f"output named {seg.GetName()!r}")
    names = [seg.GetSegmentation().GetNthSegment(i).GetName() for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    check(names and all(n in [s.name for s in term.SEGMENTS] for n in names), f"segment names {names}")
    check(seg.GetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole()) == volume_node.GetID(),
          "reference geometry is not the input")
    check(study_of(ctx, seg) == study_of(ctx, volume_node), "output is not in the input's study")
    for spec in term.SEGMENTS:
        segment = seg.GetSegmentation().GetSegment(spec.segment_id)
        if segment is not None:
            check(term.segment_entry(segment) == spec.terminology, f"terminology of {spec.name}")
            check(np.allclose(segment.GetColor(), spec.color), f"color of {spec.name}")

    say("The exported label map equals the CLI's for the same file and ROIs")
    rois_file = os.path.join(case["folder"], "rois.json")
    save_rois(workflow.rois(volume_node), rois_file, force=True)
    cli_out = os.path.join(case["folder"], "cli-labels.nrrd")
    args = cli.build_segment_parser().parse_args(
        [case["ct"], "-o", cli_out, "--rois", rois_file, "--rough-model", case["rough"], "--fine-model", case["fine"],
         "--device", "cpu", "--quiet", "--force"])
    cli.run_segment(args)
    cli_labels = read_volume(cli_out)
    exported = segs.export_labels(ctx, seg, volume_node)
    check(exported.same_grid(cli_labels), "exported label map is not on the CLI's grid")
    check(np.array_equal(exported.array, cli_labels.array), "exported label map differs from the CLI's")
    report["labels"] = exported

    say("Planning table, CSV")
    table = planning.find_table(ctx, seg)
    check(table is not None, "no planning table")
    rows = planning.compute_rows(ctx, seg, volume_node)
    for row in rows:
        if row.segment in names:
            spec = [s for s in term.SEGMENTS if s.name == row.segment][0]
            side_mask = segs.segment_masks(ctx, seg, volume_node)[spec.segment_id]
            check(abs(row.volume_ml - volume_ml(side_mask, exported.spacing)) < 1e-6, f"volume of {row.segment}")
    check(len(planning.table_rows(table)) == len(rows) + 1, "table rows")
    csv_path = workflow.export_csv(seg, volume_node, os.path.join(case["folder"], "planning.csv"))
    check(os.path.isfile(csv_path), "no CSV")
    report["rows"], report["csv"] = rows, csv_path

    say("Saved .seg.nrrd keeps names, colors and terminology")
    seg_path = save_node(ctx, seg, os.path.join(case["folder"], "kidneys.seg.nrrd"))
    reread = segs.load_segmentation(ctx, seg_path)
    for n in range(reread.GetSegmentation().GetNumberOfSegments()):
        segment = reread.GetSegmentation().GetNthSegment(n)
        spec = [s for s in term.SEGMENTS if s.name == segment.GetName()][0]
        check(term.segment_entry(segment) == spec.terminology and np.allclose(segment.GetColor(), spec.color, atol=1e-3),
              f"{segment.GetName()} lost its terminology or color in the file")
    report["seg_nrrd"] = seg_path
    ctx.remove(reread)

    say("Edit: the table follows; re-running asks before replacing the edited result")
    observer = workflow.observe(seg, volume_node)
    before = planning.table_rows(table)
    _erase_half(ctx, seg, seg.GetSegmentation().GetNthSegmentID(0))
    check(observer.updates >= 1 and planning.table_rows(table) != before, "table not updated after the edit")
    check(segs.is_edited(seg), "edit not detected")
    try:
        workflow.finish_segment(run, status, mode="ask")
        check(False, "an edited output was replaced without confirmation")
    except segs.OutputEdited:
        pass
    other = workflow.finish_segment(run, status, mode="new")
    check(other.GetID() != seg.GetID() and segs.is_edited(seg) and not segs.is_edited(other),
          "'keep' did not create a new segmentation beside the edited one")
    ctx.remove(other)
    again = workflow.finish_segment(run, status, mode="replace")
    check(again.GetID() == seg.GetID() and not segs.is_edited(seg), "'replace' did not reuse the output node")
    return report


def _erase_half(ctx, seg_node, segment_id: str) -> None:
    """A hand edit: erase the lower half (along the array's k axis) of a segment, as Segment Editor would."""
    import slicer
    from vtk.util import numpy_support

    image = slicer.vtkOrientedImageData()
    ctx.segmentations.GetSegmentBinaryLabelmapRepresentation(seg_node, segment_id, image)
    a = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())
    dims = image.GetDimensions()
    view = a.reshape(dims[2], dims[1], dims[0])
    ks = np.flatnonzero(view.any(axis=(1, 2)))
    if ks.size:
        view[: (ks[0] + ks[-1]) // 2 + 1] = 0
    image.GetPointData().GetScalars().Modified()
    ctx.segmentations.SetBinaryLabelmapToSegment(image, seg_node, segment_id,
                                                 slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
