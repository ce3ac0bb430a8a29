"""The module's segmentation nodes: the output ("<volume> kidneys"), the rough preview, and label map export.

Output ownership. The output node carries ``BiSCSegmentation.Output`` = the CT's node ID and a fingerprint of
its content as written. Re-running replaces the module's own unedited output in place (same node, so views,
Segment Editor and the planning table keep working); an output whose content changed since (someone edited
it) is only replaced after confirmation (:class:`OutputEdited`), and segmentations without the attribute
(made by a person or another module) are never touched.
"""
from __future__ import annotations

import hashlib
from typing import Dict, List, Sequence

import numpy as np
import slicer
import vtk

from . import terminology as term
from .labelmaps import _labelmap_name, _nonzero_box, segment_boxes  # noqa: F401 - re-exported
from .scene import SceneContext, SceneError, place_beside, read_node, unique_name

OUTPUT_ATTRIBUTE = "BiSCSegmentation.Output"
FINGERPRINT_ATTRIBUTE = "BiSCSegmentation.Fingerprint"
PREVIEW_ATTRIBUTE = "BiSCSegmentation.Preview"
PREVIEW_COLOR = (1.0, 0.85, 0.1)
PREVIEW_OPACITY = 0.35


class OutputEdited(RuntimeError):
    """The module's previous output was edited; replacing it needs the user's confirmation."""

    def __init__(self, node):
        self.node = node
        super().__init__(f"\"{node.GetName()}\" was edited after it was created. Replace it with the new result "
                         f"(your edits are lost), or keep it and write the new result to a new segmentation?")


def output_name(volume_node) -> str:
    return f"{volume_node.GetName()} kidneys"


# ------------------------------------------------------------------------------------------------- sides
def assign_sides(labels, rois: Sequence, midline: float) -> np.ndarray:
    """Side of every foreground voxel: 1 right, 2 left (0 background), on ``labels``' grid.

    Each 26-connected structure (a kidney with its tumors) takes the side of the ROI that contains its
    centroid and whose centre is nearest to it. A structure that reaches well over the body midline on both
    sides (horseshoe kidney, or a result that merged both kidneys), one in a "both" ROI, and one in no
    right/left ROI are split voxel by voxel at the midline.
    """
    from BiSCSegmentationLib.metrics import components_in_box
    from BiSCSegmentationLib.roi import side_of
    from scipy import ndimage

    fg = np.asarray(labels.array) > 0
    sides = np.zeros(fg.shape, np.uint8)
    box, comp, count = components_in_box(fg)   # inside the foreground's box: a whole-CT scan per structure is slow
    if box is None:
        return sides
    for n, sl in enumerate(ndimage.find_objects(comp), start=1):
        kji_idx = np.argwhere(comp[sl] == n) + np.array([box[a].start + sl[a].start for a in range(3)])
        c_lps = labels.index_to_physical(kji_idx.mean(axis=0)[::-1])
        candidates = [r for r in rois if r.contains(c_lps[None])[0]]
        best = min(candidates, key=lambda r: float(np.linalg.norm(np.asarray(r.center) - c_lps)), default=None)
        x = labels.index_to_physical(kji_idx[:, ::-1].astype(float))[:, 0]
        crosses = side_of(float(x.min()), float(x.max()), midline) == "both"
        if best is not None and best.side in ("right", "left") and not crosses:
            sides[tuple(kji_idx.T)] = 1 if best.side == "right" else 2
        else:
            sides[tuple(kji_idx.T)] = np.where(x < midline, 1, 2).astype(np.uint8)
    return sides


def split_by_side(labels, sides: np.ndarray) -> np.ndarray:
    """Label map with the output segments' values (1 right kidney, 2 left kidney, 3/4 right/left tumor)."""
    a = np.asarray(labels.array)
    out = np.zeros(a.shape, np.uint8)
    for spec in term.SEGMENTS:
        out[(a == spec.label) & (sides == (1 if spec.side == "right" else 2))] = spec.index
    return out


# ------------------------------------------------------------------------------------------- fingerprint
def fingerprint(seg_node) -> str:
    """Hash of the segments (IDs, names, label values and binary labelmaps); changes when anyone edits them."""
    h = hashlib.sha256()
    seg = seg_node.GetSegmentation()
    for n in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(n)
        segment = seg.GetSegment(sid)
        h.update(f"{sid}|{segment.GetName()}|{segment.GetLabelValue()}|".encode())
        image = segment.GetRepresentation(_labelmap_name())
        if image is None:
            continue
        h.update(str(image.GetExtent()).encode())
        scalars = image.GetPointData().GetScalars() if image.GetPointData() is not None else None
        if scalars is not None:
            from vtk.util import numpy_support
            h.update(np.ascontiguousarray(numpy_support.vtk_to_numpy(scalars) == segment.GetLabelValue()).tobytes())
    return h.hexdigest()




def find_output(ctx: SceneContext, volume_node):
    """The module's latest output segmentation for ``volume_node`` (None when there is none)."""
    if volume_node is None:
        return None
    found = [n for n in ctx.nodes_by_class("vtkMRMLSegmentationNode")
             if n.GetAttribute(OUTPUT_ATTRIBUTE) == volume_node.GetID()]
    return found[-1] if found else None


def is_edited(seg_node) -> bool:
    stored = seg_node.GetAttribute(FINGERPRINT_ATTRIBUTE)
    return bool(stored) and stored != fingerprint(seg_node)


# ------------------------------------------------------------------------------------------------ output
def _import_indexed(ctx: SceneContext, seg_node, reference, indexed: np.ndarray, specs: List) -> None:
    """Fill ``specs`` segments of ``seg_node`` from an index label map (value = spec.index) on ``reference``'s
    grid: each segment from a binary image of its own box, straight into the segmentation (no helper node
    appears in the scene); the segments then share labelmap layers where they do not overlap."""
    from vtk.util import numpy_support

    ijk_to_ras = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(ijk_to_ras)
    logic = slicer.vtkSlicerSegmentationsModuleLogic
    for spec in specs:
        mask = indexed == spec.index
        box = _nonzero_box(mask)
        if box is None:
            continue
        k0, k1, j0, j1, i0, i1 = box
        image = slicer.vtkOrientedImageData()
        image.SetExtent(i0, i1, j0, j1, k0, k1)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        image.SetImageToWorldMatrix(ijk_to_ras)
        numpy_support.vtk_to_numpy(image.GetPointData().GetScalars())[:] = \
            mask[k0:k1 + 1, j0:j1 + 1, i0:i1 + 1].astype(np.uint8).ravel()
        if not logic.SetBinaryLabelmapToSegment(image, seg_node, spec.segment_id, logic.MODE_REPLACE,
                                                image.GetExtent()):
            raise SceneError(f"could not write the segment {spec.name}")
    seg_node.GetSegmentation().CollapseBinaryLabelmaps(False)


def write_output(ctx: SceneContext, volume_node, labels, rois: Sequence, midline: float,
                 mode: str = "ask"):
    """Write the cascade's labels (0/1/2 Volume on the CT's grid) as "<volume> kidneys".

    ``mode``: "ask" raises :class:`OutputEdited` when the previous output was edited; "replace" replaces it
    anyway; "new" keeps it and creates another node. Only segments with voxels are created.
    """
    if mode not in ("ask", "replace", "new"):
        raise ValueError(f"mode must be ask, replace or new, not {mode!r}")
    node = find_output(ctx, volume_node)
    if node is not None and mode == "new":
        node = None
    elif node is not None and mode == "ask" and is_edited(node):
        raise OutputEdited(node)
    indexed = split_by_side(labels, assign_sides(labels, rois, midline))
    present = [s for s in term.SEGMENTS if np.any(indexed == s.index)]
    was_modifying = None
    if node is None:
        node = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", unique_name(ctx, output_name(volume_node)))
        node.CreateDefaultDisplayNodes()
        node.SetAttribute(OUTPUT_ATTRIBUTE, volume_node.GetID())
    else:
        was_modifying = node.StartModify()
    seg = node.GetSegmentation()
    seg.RemoveAllSegments()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    node.SetNodeReferenceID(node.GetReferenceImageGeometryReferenceRole(), volume_node.GetID())
    for spec in present:
        seg.AddEmptySegment(spec.segment_id, spec.name, spec.color)
    if present:
        _import_indexed(ctx, node, volume_node, indexed, present)
    for spec in present:
        term.apply(seg.GetSegment(spec.segment_id), spec)
    node.SetAttribute(FINGERPRINT_ATTRIBUTE, fingerprint(node))
    if was_modifying is not None:
        node.EndModify(was_modifying)
    place_beside(ctx, node, volume_node)
    return node


def write_preview(ctx: SceneContext, volume_node, mask: np.ndarray):
    """The rough stage's mask (on the CT's grid) as a translucent one-segment segmentation, replacing the last."""
    for old in ctx.nodes_by_class("vtkMRMLSegmentationNode"):
        if old.GetAttribute(PREVIEW_ATTRIBUTE) == volume_node.GetID():
            ctx.remove(old)
    node = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{volume_node.GetName()} rough preview")
    node.SetAttribute(PREVIEW_ATTRIBUTE, volume_node.GetID())
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    fg = (np.asarray(mask) > 0).astype(np.uint8)
    if fg.any():
        spec = term.SegmentSpec("rough_kidneys", "Kidneys (rough stage)", "right", term.KIDNEY_LABEL, 1)
        node.GetSegmentation().AddEmptySegment(spec.segment_id, spec.name, PREVIEW_COLOR)
        _import_indexed(ctx, node, volume_node, fg, [spec])
    display = node.GetDisplayNode()
    display.SetOpacity2DFill(PREVIEW_OPACITY)
    display.SetOpacity2DOutline(0.6)
    display.SetVisibility3D(False)
    place_beside(ctx, node, volume_node)
    return node


def find_preview(ctx: SceneContext, volume_node):
    for node in ctx.nodes_by_class("vtkMRMLSegmentationNode"):
        if volume_node is not None and node.GetAttribute(PREVIEW_ATTRIBUTE) == volume_node.GetID():
            return node
    return None


# ------------------------------------------------------------------------------------------------ export
def segment_masks(ctx: SceneContext, seg_node, reference) -> Dict[str, np.ndarray]:
    """{segment ID: bool mask [k, j, i]} of every segment on ``reference``'s full grid (no scene node)."""
    shape = tuple(reference.GetImageData().GetDimensions())[::-1]
    boxes = segment_boxes(seg_node, reference)
    out = {}
    seg = seg_node.GetSegmentation()
    for n in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(n)
        full = np.zeros(shape, bool)
        if sid in boxes:
            mask, (k, j, i) = boxes[sid]
            full[k:k + mask.shape[0], j:j + mask.shape[1], i:i + mask.shape[2]] = mask
        out[sid] = full
    return out


def export_labels(ctx: SceneContext, seg_node, reference):
    """The segmentation as the cascade's label map (0 background, 1 kidney, 2 tumor) on ``reference``'s grid,
    a LPS :class:`Volume` comparable with the CLI's output; segments are told apart by their terminology."""
    from .scene import volume_from_node

    ref = volume_from_node(reference, copy=False)
    labels = np.zeros(ref.array.shape, np.uint8)
    masks = segment_masks(ctx, seg_node, reference)
    seg = seg_node.GetSegmentation()
    for sid, mask in masks.items():        # kidney first, then tumor on top (as the cascade's maximum)
        if term.classify(seg.GetSegment(sid))[0] == "kidney":
            labels[mask] = term.KIDNEY_LABEL
    for sid, mask in masks.items():
        if term.classify(seg.GetSegment(sid))[0] == "tumor":
            labels[mask] = term.TUMOR_LABEL
    return ref.with_array(labels)


# ----------------------------------------------------------------------------------------------- display
def is_shown_3d(seg_node) -> bool:
    """Whether the segments are shown as surfaces in 3D views (what the module's Show 3D toggle displays)."""
    display = seg_node.GetDisplayNode() if seg_node is not None else None
    return bool(display is not None and display.GetVisibility() and display.GetVisibility3D()
                and seg_node.GetSegmentation().ContainsRepresentation(
                    slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()))


def toggle_3d(seg_node, visible: bool) -> bool:
    """Show 3D as a toggle: surfaces on (made when missing) or off again; returns whether they are shown."""
    show_3d(seg_node, visible)
    return is_shown_3d(seg_node)


def show_3d(seg_node, visible: bool = True) -> None:
    """Closed surfaces in the 3D view (one click in the module); ``visible=False`` hides them again."""
    if visible:
        seg_node.CreateClosedSurfaceRepresentation()
    display = seg_node.GetDisplayNode()
    if display is None:
        seg_node.CreateDefaultDisplayNodes()
        display = seg_node.GetDisplayNode()
    display.SetVisibility3D(visible)
    display.SetVisibility(True)


def load_segmentation(ctx: SceneContext, path):
    """Read a .seg.nrrd into a new segmentation node."""
    return read_node(ctx, "vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode", path, "segmentation")
