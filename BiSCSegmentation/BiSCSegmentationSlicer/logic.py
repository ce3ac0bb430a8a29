"""BiSCLogic: the module's workflow on a MRML scene, without any GUI.

    logic = BiSCLogic(SceneContext(scene, app_logic))      # inside Slicer: slicer.mrmlScene, app logic
    run = logic.start_locate(ct_node, options)             # background; poll run.job.poll() from a timer
    logic.finish_locate(run, run.job.wait())               # ROI nodes + translucent rough preview
    ... people move, resize, delete or add ROI nodes (logic.add_roi) ...
    run = logic.start_segment(ct_node, options)            # the current ROIs, checked first
    seg = logic.finish_segment(run, run.job.wait())        # "<volume> kidneys" + planning table

The module widget, its self-test and the pytest suite (on PyPI's slicer-core) all drive this class.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from BiSCSegmentationLib.errors import USER_KINDS, InputError
from BiSCSegmentationLib.inference_settings import InferenceSettings

from . import export, planning, rois as roi_nodes, segmentation as segs
from .models import ModelChoice
from .scene import SceneContext, SceneError, volume_from_node
from .worker import ProcessJob, Status, ThreadJob, make_request

NO_KIDNEY_MESSAGE = ("No kidney was found in this CT. Add an ROI by hand around each kidney (\"Add ROI\", then "
                     "move and resize it in the slice views) and press \"Segment kidneys\".")
CANCELLED_MESSAGE = "Cancelled. Nothing was changed."
CLOSED_MESSAGE = "The CT was closed or removed while the run was going; nothing was added to the scene."
# the quality warnings of the run that wrote a segmentation travel with it (JSON list of code/severity/message)
WARNINGS_ATTRIBUTE = "BiSCSegmentation.QualityWarnings"


class WorkflowError(InputError, RuntimeError):
    """Something the user can fix; the message says what (shown as is)."""


@dataclass(frozen=True)
class Options:
    """What a run uses: which model, and how to run it (the core's one settings object; device "auto" is
    resolved by devices.resolve: CUDA when usable, else the CPU)."""

    model: ModelChoice = field(default_factory=ModelChoice)
    settings: InferenceSettings = field(default_factory=InferenceSettings)


@dataclass
class Run:
    """One background run and what its result will be applied to."""

    task: str
    volume_node: object
    ct: object
    job: object
    rois: list = field(default_factory=list)
    roi_mode: str = "keep"      # locate: what happens to ROIs the user edited (rois.replace_rois)


def warnings_text(warnings: Sequence) -> str:
    """The panel's warning box: one line per quality warning, most severe first, and what it means ("" when
    there is none)."""
    from BiSCSegmentationLib.quality import CRITICAL, exit_status_text

    if not warnings:
        return ""
    ordered = sorted(warnings, key=lambda w: w.severity != CRITICAL)
    return "\n".join([exit_status_text(warnings)] + [f"- {w.message} [{w.code}]" for w in ordered])


def stored_warnings(node) -> list:
    """The quality warnings recorded on a segmentation node this module wrote."""
    from BiSCSegmentationLib.quality import QualityWarning

    raw = node.GetAttribute(WARNINGS_ATTRIBUTE) if node is not None else None
    return [QualityWarning.from_dict(d) for d in json.loads(raw)] if raw else []


def error_message(status: Status) -> str:
    """Plain words for a failed or cancelled run."""
    kind, text = status.error_kind, status.error  # kind: BiSCSegmentationLib.errors.error_record
    if kind == "no_kidney":
        return NO_KIDNEY_MESSAGE
    if kind == "cancelled" or status.state == "cancelled":
        return CANCELLED_MESSAGE
    if kind in USER_KINDS:
        return text
    if kind == "missing_dependency":
        return (
            f"A package the computation needs is missing ({text}). Press \"Install dependencies\" in the Input "
            "section (or \"Reinstall dependencies\" under Advanced)."
        )
    if kind == "memory":
        return ("The computation ran out of memory, on the CPU too. Close other programs, or use smaller ROIs, "
                "and try again.")
    if kind == "process":
        return f"The computation {text}. Details are in the Python console."
    return f"The computation failed ({status.error_type or kind}: {text}). Details are in the Python console."


class BiSCLogic:
    """The workflow; ``runner`` is "process" (default, a separate Python) or "thread"."""

    def __init__(self, ctx: SceneContext, runner: str = "process", python: Optional[str] = None):
        if runner not in ("process", "thread"):
            raise ValueError("runner must be 'process' or 'thread'")
        self.ctx, self.runner, self.python = ctx, runner, python
        self.observers = {}
        self.min_lesion_ml = planning.MIN_LESION_ML   # planning: separate tumors listed from this size
        self.active: List[Run] = []                    # runs started and not finished or cancelled
        import slicer

        # closing the scene (File > Close Scene, loading another scene) cancels what runs on it
        self._scene_tag = ctx.scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent,
                                                lambda caller, event: self.scene_closing())

    # ----------------------------------------------------------------------------------------- inputs
    def ct(self, volume_node):
        """The CT node as a LPS Volume, refusing what is clearly not a CT."""
        if volume_node is None:
            raise WorkflowError("Select the CT volume in the Input section.")
        if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise WorkflowError(f"{volume_node.GetName()} is a label map; select the CT volume.")
        try:
            ct = volume_from_node(volume_node)
        except SceneError as exc:
            raise WorkflowError(str(exc)) from exc
        from BiSCSegmentationLib.quality import check_input
        from BiSCSegmentationLib.volume import VolumeError

        try:
            check_input(ct)  # what bisc-segment and the cascade refuse, refused before a job starts
        except VolumeError as exc:
            raise WorkflowError(f"{volume_node.GetName()}: {exc}") from exc
        return ct

    def _start(self, task: str, volume_node, options: Options, rois=()) -> Run:
        problems = options.model.problems()
        if problems:
            raise WorkflowError(" ".join(problems))
        ct = self.ct(volume_node)
        request = make_request(task, options.model.to_dict(), options.settings, rois)
        job = ThreadJob(request, ct) if self.runner == "thread" else ProcessJob(request, ct, python=self.python)
        run = Run(task, volume_node, ct, job.start(), list(rois))
        self.active.append(run)
        return run

    def cancel(self, run: Run) -> List[int]:
        """Stop a run (the process tree is ended, see worker.ProcessJob.cancel); PIDs left alive, if any."""
        if run in self.active:
            self.active.remove(run)
        return run.job.cancel()

    def scene_closing(self) -> None:
        """The scene is being closed: cancel the runs and stop watching its segmentations."""
        self.cancel_all()
        for obs in self.observers.values():
            obs.close()
        self.observers = {}

    def cancel_all(self) -> List[int]:
        """Cancel every active run (scene close, module reload, application exit)."""
        survivors = []
        for run in list(self.active):
            survivors += self.cancel(run)
        return survivors

    def _check(self, run: Run, status: Status, task: str) -> dict:
        if run.task != task:
            raise ValueError(f"this is a {run.task} run, not a {task} run")
        if not status.finished:
            raise ValueError("the run has not finished yet")
        if run in self.active:
            self.active.remove(run)
        if status.state != "done":
            raise WorkflowError(error_message(status))
        if run.volume_node is None or not self.ctx.scene.IsNodePresent(run.volume_node):
            raise WorkflowError(CLOSED_MESSAGE)
        return status.result

    # ----------------------------------------------------------------------------------------- locate
    def start_locate(self, volume_node, options: Options, roi_mode: str = "keep") -> Run:
        """Rough stage in the background. ``roi_mode`` says what happens to ROIs the person edited when the
        result arrives (rois.replace_rois: "keep" them, the default, or "replace" them; ask first with
        :meth:`edited_rois`)."""
        if roi_mode not in roi_nodes.ROI_MODES:
            raise ValueError(f"roi_mode must be one of {roi_nodes.ROI_MODES}")
        run = self._start("locate", volume_node, options)
        run.roi_mode = roi_mode
        return run

    def finish_locate(self, run: Run, status: Status):
        """ROI nodes + rough preview from a finished locate run; raises WorkflowError when nothing was found
        (the preview is still shown)."""
        result = self._check(run, status, "locate")
        return self.apply_rough(run.volume_node, result["mask"], result["rois"], ct=run.ct, mode=run.roi_mode)

    def edited_rois(self, volume_node) -> list:
        """ROI nodes moved, resized or renamed since Locate made them, or added by hand (kept by Locate)."""
        return roi_nodes.edited_rois(self.ctx, volume_node)

    def watch_rois(self, volume_node, on_change) -> roi_nodes.ROIWatcher:
        """Call ``on_change()`` on every change of the volume's ROI nodes (the panel's list follows)."""
        return roi_nodes.ROIWatcher(self.ctx, volume_node, on_change)

    def apply_rough(self, volume_node, mask: np.ndarray, rois: List, ct=None, mode: str = "keep"):
        """Show a rough result: translucent preview and one ROI node per kidney (the person's edited ROIs are
        kept unless ``mode`` is "replace"; "ask" raises rois.ROIsEdited before anything changes)."""
        ct = ct if ct is not None else self.ct(volume_node)
        mid = roi_nodes.midline_x(volume_node, ct)
        if mode == "ask" and self.edited_rois(volume_node):
            raise roi_nodes.ROIsEdited(self.edited_rois(volume_node))
        preview = segs.write_preview(self.ctx, volume_node, mask)
        nodes = roi_nodes.replace_rois(self.ctx, volume_node, rois, mode=mode)
        for node in nodes:
            roi_nodes.update_side(node, mid)
            roi_nodes.mark_located(node)       # named by side now: that is the box and name Locate made
        if not rois:
            raise WorkflowError(NO_KIDNEY_MESSAGE)
        return nodes, preview

    # ------------------------------------------------------------------------------------------- ROIs
    def roi_rows(self, volume_node):
        """The ROI list with what is wrong with each ROI (cheap: no copy of the CT)."""
        try:
            ct = volume_from_node(volume_node, copy=False)
        except SceneError as exc:
            raise WorkflowError(str(exc)) from exc
        return roi_nodes.check_rows(self.ctx, volume_node, ct)

    def add_roi(self, volume_node, center_lps=None, size_mm=roi_nodes.DEFAULT_SIZE_MM):
        return roi_nodes.add_roi(self.ctx, volume_node, center_lps, size_mm)

    def delete_roi(self, node) -> None:
        self.ctx.remove(node)

    def rois(self, volume_node) -> list:
        return [r for _, r in roi_nodes.current_rois(self.ctx, volume_node)]

    # ---------------------------------------------------------------------------------------- segment
    def start_segment(self, volume_node, options: Options) -> Run:
        """Fine stage on the current ROIs in the background (refused with the reasons when an ROI is unusable)."""
        ct = self.ct(volume_node)
        rows = roi_nodes.check_rows(self.ctx, volume_node, ct)
        problems = roi_nodes.problems_before_segmenting(rows)
        if problems:
            raise WorkflowError(" ".join(problems))
        return self._start("segment", volume_node, options, self.rois(volume_node))

    def finish_segment(self, run: Run, status: Status, mode: str = "ask"):
        """Write "<volume> kidneys" (see segmentation.write_output for ``mode``) and its planning table."""
        result = self._check(run, status, "segment")
        used = result.get("rois", run.rois)
        roi_nodes.show_grown(self.ctx, run.volume_node, run.rois, used)
        node = self.apply_labels(run.volume_node, result["labels"], used, mode=mode, ct=run.ct)
        node.SetAttribute(WARNINGS_ATTRIBUTE, json.dumps(result.get("warnings", [])))
        if result.get("model"):       # name and checksums, for the report and the DICOM SEG
            node.SetAttribute(export.MODEL_ATTRIBUTE, json.dumps(result["model"]))
        return node

    def apply_labels(self, volume_node, labels: np.ndarray, rois: List, mode: str = "ask", ct=None):
        ct = ct if ct is not None else self.ct(volume_node)
        import contextlib

        with contextlib.ExitStack() as stack:     # the table is updated once, below, not per written segment
            for obs in self.observers.values():
                stack.enter_context(obs.paused())
            node = segs.write_output(self.ctx, volume_node, ct.with_array(np.asarray(labels, np.uint8)), rois,
                                     roi_nodes.midline_x(volume_node, ct), mode=mode)
        preview = segs.find_preview(self.ctx, volume_node)
        if preview is not None and preview.GetDisplayNode() is not None:
            preview.GetDisplayNode().SetVisibility(False)
        self.update_planning(node, volume_node)
        return node

    def output(self, volume_node):
        return segs.find_output(self.ctx, volume_node)

    # --------------------------------------------------------------------------------------- planning
    def update_planning(self, seg_node, volume_node):
        return planning.update_table(self.ctx, seg_node, volume_node, min_lesion_ml=self.min_lesion_ml)

    def planning_table(self, seg_node, volume_node):
        """The segmentation's planning table, computed only when it is not current (showing a result that
        was just written does not compute it again)."""
        if planning.is_current(self.ctx, seg_node, volume_node, self.min_lesion_ml):
            return planning.find_table(self.ctx, seg_node)
        return self.update_planning(seg_node, volume_node)

    def planning_rows(self, seg_node, volume_node):
        return planning.compute_rows(self.ctx, seg_node, volume_node, self.min_lesion_ml)

    def observe(self, seg_node, volume_node, schedule=None, on_update=None) -> planning.PlanningObserver:
        """Keep the planning table current while the segmentation is edited (one observer per segmentation)."""
        old = self.observers.pop(seg_node.GetID(), None)
        if old is not None:
            old.close()
        obs = planning.PlanningObserver(self.ctx, seg_node, volume_node, schedule, on_update,
                                        lambda: self.min_lesion_ml)
        self.observers[seg_node.GetID()] = obs
        return obs

    def export_csv(self, seg_node, volume_node, path) -> str:
        return planning.write_csv(self.planning_rows(seg_node, volume_node), path)

    def export_report(self, seg_node, volume_node, path, overwrite: bool = False, dicom_folder=None) -> str:
        """The PDF planning report (the command line's) of the segmentation as it is now, with the run's
        quality warnings and model; identified from DICOM when the CT came from DICOM. An existing file is
        only replaced with ``overwrite``; a failure leaves no file. Raises WorkflowError (plain message)."""
        return export.write_report(self.ctx, seg_node, volume_node, path, overwrite=overwrite,
                                   dicom_folder=dicom_folder, find_files=self.dicom_files,
                                   min_tumor_ml=self.min_lesion_ml)

    def export_dicom_seg(self, seg_node, volume_node, path, dicom_folder=None, overwrite: bool = False) -> str:
        """A DICOM SEG of the segmentation as it is now, referencing the CT's source series: the files Slicer's
        DICOM database holds for it, else ``dicom_folder``; else a WorkflowError saying what to do."""
        return export.write_dicom_seg(self.ctx, seg_node, volume_node, path, dicom_folder=dicom_folder,
                                      overwrite=overwrite, find_files=self.dicom_files)

    def dicom_files(self, volume_node):
        """The CT's DICOM files (export.database_files; tests replace it: slicer-core has no DICOM database)."""
        return export.database_files(volume_node)

    def close(self) -> None:
        """Cancel active runs and stop observing (module reload, application exit)."""
        self.cancel_all()
        for obs in self.observers.values():
            obs.close()
        self.observers = {}
        if self._scene_tag is not None:
            self.ctx.scene.RemoveObserver(self._scene_tag)
            self._scene_tag = None

    # ------------------------------------------------------------------------------------ synchronous
    def locate(self, volume_node, options: Options, timeout: Optional[float] = None):
        run = self.start_locate(volume_node, options)
        return self.finish_locate(run, run.job.wait(timeout))

    def segment(self, volume_node, options: Options, mode: str = "ask", timeout: Optional[float] = None):
        run = self.start_segment(volume_node, options)
        return self.finish_segment(run, run.job.wait(timeout), mode=mode)
