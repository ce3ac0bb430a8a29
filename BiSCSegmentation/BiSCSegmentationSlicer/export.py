"""Export report / Export DICOM SEG: the command line's PDF report and DICOM Segmentation, made from the
module's segmentation as it is in the scene now (hand edits included).

Nothing here writes a PDF or a DICOM object itself: the label map (0 background, 1 kidney, 2 tumor, told
apart by the segments' terminology, as :func:`segmentation.export_labels` makes it) goes to the core's
:func:`BiSCSegmentationLib.report.add_report` and :func:`BiSCSegmentationLib.dicom.add_dicom_seg`, written
through an :class:`~BiSCSegmentationLib.outputs.OutputSet` (a hidden temporary file, read back, then renamed
into place: a failed export leaves no partial file, and an existing file is only replaced when asked).

The DICOM source. A volume loaded through Slicer's DICOM module carries ``DICOM.instanceUIDs`` (its SOP
Instance UIDs) and the DICOM database knows each instance's file (:func:`database_files`, replaceable for
tests: slicer-core has no database); otherwise the caller names the series' folder. The database's files are
linked (copied where links are not allowed) into a temporary folder, so the core reads exactly that series in
its own order; the segmentation's label map is then put on the series' grid (the same voxels in another
axis order or direction are reordered losslessly; any other grid is refused).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Callable, Dict, Iterator, List, Optional

import numpy as np

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"   # set by Slicer's DICOM scalar volume plugin
MODEL_ATTRIBUTE = "BiSCSegmentation.Model"      # on the output: the model the run used (JSON, see worker.model_info)
EDITED_NOTE = "edited in 3D Slicer"
OVERWRITE_HINT = "choose another name, or confirm replacing it"
NOT_FROM_DICOM = ("This CT was not loaded from DICOM; a DICOM SEG needs the source series: load the CT through "
                  "the DICOM module, or choose its DICOM folder.")


def _workflow_error(message: str):
    from .logic import WorkflowError

    return WorkflowError(message)


# --------------------------------------------------------------------------------------------- DICOM source
def database_files(volume_node) -> Optional[List[str]]:
    """The files of the DICOM instances ``volume_node`` was loaded from, in the order of its
    ``DICOM.instanceUIDs`` ("" for an instance the database no longer has); None when the volume did not come
    from DICOM or there is no DICOM database (slicer-core, or Slicer without its DICOM module)."""
    import slicer

    uids = (volume_node.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split() if volume_node is not None else []
    db = getattr(slicer, "dicomDatabase", None)
    if not uids or db is None:
        return None
    return [db.fileForInstance(uid) or "" for uid in uids]


def _files_or_folder(volume_node, dicom_folder, find_files: Callable) -> Optional[tuple]:
    """("files", [paths]) from the DICOM database, else ("folder", path) when one was chosen, else None."""
    files = find_files(volume_node) if volume_node is not None else None
    missing = [f for f in files or [] if not f or not os.path.isfile(f)]
    if files and not missing:
        return "files", list(files)
    if dicom_folder:
        if not os.path.isdir(os.fspath(dicom_folder)):
            raise _workflow_error(f"{dicom_folder} is not a folder; choose the folder that holds the CT's DICOM "
                                  f"files.")
        return "folder", os.fspath(dicom_folder)
    if files:
        raise _workflow_error(f"The DICOM database no longer holds {len(missing)} of the {len(files)} files "
                              f"{volume_node.GetName()} was loaded from; import the series again, or choose its "
                              f"DICOM folder.")
    return None


@contextlib.contextmanager
def _linked_folder(files: List[str]) -> Iterator[str]:
    """A temporary folder holding (links to) exactly these files, removed afterwards."""
    folder = tempfile.mkdtemp(prefix="bisc-dicom-")
    try:
        for n, f in enumerate(files):
            target = os.path.join(folder, f"{n:06d}.dcm")
            try:
                os.symlink(os.path.abspath(f), target)
            except (OSError, NotImplementedError, AttributeError):   # Windows without the privilege
                shutil.copyfile(f, target)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def source_series(volume_node, dicom_folder=None, find_files: Callable = database_files,
                  required: bool = True) -> Iterator[Optional[str]]:
    """A folder holding the one DICOM series of ``volume_node`` (see the module docstring); None (or, when
    ``required``, a WorkflowError saying what to do) when there is none."""
    found = _files_or_folder(volume_node, dicom_folder, find_files)
    if found is None:
        if required:
            raise _workflow_error(NOT_FROM_DICOM)
        yield None
    elif found[0] == "folder":
        yield found[1]
    else:
        with _linked_folder(found[1]) as folder:
            yield folder


def on_series_grid(labels, series, ct_name: str, folder_name: str):
    """``labels`` (a Volume on the CT node's grid) as a Volume on the DICOM series' grid, voxel for voxel; a
    WorkflowError when the two grids are not the same voxels."""
    from BiSCSegmentationLib.volume import from_canonical, to_canonical

    if series.same_grid(labels, tol=1e-3):
        return series.with_array(np.asarray(labels.array))
    canon_labels, _ = to_canonical(labels)
    canon_series, reorientation = to_canonical(series.with_array(np.zeros(series.array.shape, np.uint8)))
    if canon_series.same_grid(canon_labels, tol=1e-3):
        return from_canonical(canon_labels.array, series, reorientation)
    size = " x ".join(map(str, labels.size_ijk))
    series_size = " x ".join(map(str, series.size_ijk))
    raise _workflow_error(
        f"The DICOM series in {folder_name} ({series_size} voxels) is not the grid of {ct_name} ({size} voxels; "
        f"size, spacing, position or direction differ): a DICOM SEG must lie on the images it references. "
        f"Choose the DICOM folder {ct_name} was loaded from.")


# ------------------------------------------------------------------------------------------------- inputs
def export_labels(ctx, seg_node, volume_node):
    """The segmentation's label map (1 kidney, 2 tumor) on the CT node's grid, refusing what cannot be
    reported: no segmentation or CT, no kidney segment, kidney segments outside this CT."""
    from . import terminology as term
    from .scene import volume_from_node
    from .segmentation import export_labels as labels_of

    if seg_node is None:
        raise _workflow_error("Select the result segmentation (Output section) first.")
    if volume_node is None or volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise _workflow_error("Select the CT volume the segmentation was made on (Input section).")
    volume_from_node(volume_node, copy=False)        # a CT with image data, not under a transform
    seg = seg_node.GetSegmentation()
    kinds = [term.classify(seg.GetNthSegment(n))[0] for n in range(seg.GetNumberOfSegments())]
    if "kidney" not in kinds:
        raise _workflow_error(f"{seg_node.GetName()} has no kidney segment: the report and the DICOM SEG need at "
                              f"least one kidney (segments named and coded as this module makes them).")
    labels = labels_of(ctx, seg_node, volume_node)
    if not np.any(np.asarray(labels.array) == term.KIDNEY_LABEL):
        raise _workflow_error(f"The kidney segments of {seg_node.GetName()} are empty or lie outside "
                              f"{volume_node.GetName()}; select the CT the segmentation was made on.")
    return labels


def recorded_model(seg_node) -> Dict:
    """The model as the report and the DICOM SEG name it: the one the module recorded on the segmentation
    (name, checksums) with a note when the segments were edited since; without a record, that the
    segmentation was made or edited in 3D Slicer. ``edited``: the segments are not (only) the model's."""
    from .segmentation import is_edited

    raw = seg_node.GetAttribute(MODEL_ATTRIBUTE)
    try:
        model = json.loads(raw) if raw else None
    except ValueError:
        model = None
    if not isinstance(model, dict) or not model.get("name"):
        return {"name": f"not recorded ({EDITED_NOTE})", "edited": True}
    model = dict(model)
    if is_edited(seg_node):
        model["name"] = f"{model['name']}; {EDITED_NOTE} after the run"
        model["edited"] = True
    return model


def identification(volume_node, seg_node, dicom_source: Optional[str]) -> Dict[str, str]:
    """Case and series identification: the DICOM header's when the CT came from DICOM, else the file or node."""
    out: Dict[str, str] = {}
    if dicom_source:
        from BiSCSegmentationLib.dicom import series_identification

        out.update(series_identification(dicom_source))
        out.pop("folder", None)   # a temporary folder's name says nothing
    else:
        storage = volume_node.GetStorageNode()
        name = storage.GetFileName() if storage is not None else None
        if name:
            out["file"] = os.path.basename(name)
    out["CT volume"] = volume_node.GetName()
    out["segmentation"] = seg_node.GetName()
    return out


def _writing(path, suffix: str, what: str, overwrite: bool):
    """Refuse, before any work, a name without ``suffix`` and an existing file (unless ``overwrite``)."""
    from BiSCSegmentationLib.errors import InputError
    from BiSCSegmentationLib.outputs import check_target

    path = os.fspath(path) if path else ""
    if not path.lower().endswith(suffix):
        raise _workflow_error(f"{path or '(no name)'}: the {what} file name must end in {suffix}.")
    try:
        check_target(path, overwrite, what, OVERWRITE_HINT)
    except InputError as exc:
        raise _workflow_error(str(exc)) from exc
    return path


@contextlib.contextmanager
def _plain_errors() -> Iterator[None]:
    """The core's errors for users (a file, a missing package, a DICOM folder) as WorkflowErrors."""
    from BiSCSegmentationLib.errors import InputError

    from .logic import WorkflowError

    try:
        yield
    except WorkflowError:
        raise
    except InputError as exc:
        raise WorkflowError(str(exc)) from exc


# ------------------------------------------------------------------------------------------------ exports
def write_report(ctx, seg_node, volume_node, path, overwrite: bool = False, dicom_folder=None,
                 find_files: Callable = database_files, min_tumor_ml: Optional[float] = None) -> str:
    """The PDF planning report of the segmentation as it is now; returns the path written."""
    from BiSCSegmentationLib.outputs import OutputSet
    from BiSCSegmentationLib.planning import MIN_TUMOR_ML, analyse, plan_document
    from BiSCSegmentationLib.quality import merge
    from BiSCSegmentationLib.report import add_report

    from .logic import stored_warnings

    with _plain_errors():
        path = _writing(path, ".pdf", "report", overwrite)
        labels = export_labels(ctx, seg_node, volume_node)
        from .scene import volume_from_node

        ct = volume_from_node(volume_node)
        plan = analyse(labels, ct, MIN_TUMOR_ML if min_tumor_ml is None else min_tumor_ml)
        warnings = merge(stored_warnings(seg_node), plan.warnings)
        model = recorded_model(seg_node)
        with source_series(volume_node, dicom_folder, find_files, required=False) as folder:
            ident = identification(volume_node, seg_node, folder)
        doc = plan_document(plan, seg_node.GetName(), volume_node.GetName(), ident)
        doc["warnings"] = [w.to_dict() for w in warnings]
        doc["model"] = model
        outputs = OutputSet(overwrite, OVERWRITE_HINT)
        add_report(outputs, path, plan, doc, warnings, model)
        outputs.commit()
    return path


def write_dicom_seg(ctx, seg_node, volume_node, path, dicom_folder=None, overwrite: bool = False,
                    find_files: Callable = database_files) -> str:
    """A DICOM SEG of the segmentation as it is now, referencing the CT's source series; returns the path."""
    from BiSCSegmentationLib.dicom import _require_highdicom, add_dicom_seg
    from BiSCSegmentationLib.outputs import OutputSet
    from BiSCSegmentationLib.volume import read_volume

    with _plain_errors():
        path = _writing(path, ".dcm", "DICOM SEG", overwrite)
        _require_highdicom()
        labels = export_labels(ctx, seg_node, volume_node)
        model = recorded_model(seg_node)
        with source_series(volume_node, dicom_folder, find_files) as folder:
            where = os.fspath(dicom_folder) if dicom_folder else "the DICOM database"
            on_series = on_series_grid(labels, read_volume(folder), volume_node.GetName(), where)
            outputs = OutputSet(overwrite, OVERWRITE_HINT)
            add_dicom_seg(outputs, path, on_series, folder, model)
            outputs.commit()
    return path


__all__ = ["write_report", "write_dicom_seg", "database_files", "source_series", "on_series_grid",
           "recorded_model", "export_labels", "MODEL_ATTRIBUTE", "INSTANCE_UIDS_ATTRIBUTE", "NOT_FROM_DICOM"]
