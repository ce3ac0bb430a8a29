"""Segments as arrays, read straight from a segmentation's binary labelmaps (no scene node is created).

:func:`segment_boxes` gives each segment as a boolean array cropped to its own voxels plus its offset on a
reference volume's grid: shared labelmap layers are scanned once, inside their non-zero box, so nothing of the
size of the CT is allocated when the segmentation shares the CT's geometry (the module's output always does);
other geometries, and segmentations under a transform, are resampled (nearest neighbour) onto the reference.
The planning table (planning.compute_rows) and the label map export (segmentation.segment_masks) use it.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import slicer
import vtk

from .scene import SceneError


def _labelmap_name() -> str:
    return slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()


def _matrix(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _reference_geometry(reference):
    """(IJK-to-RAS 4x4, dimensions (i, j, k)) of a volume node."""
    m = vtk.vtkMatrix4x4()
    reference.GetIJKToRASMatrix(m)
    return _matrix(m), tuple(reference.GetImageData().GetDimensions())


def _offset_on_grid(image, ref_ijk_to_ras: np.ndarray):
    """Integer (i, j, k) shift from ``image``'s voxel indices to the reference's when both share spacing and
    axes (the usual case: the segmentation's geometry is the CT's); None when they do not."""
    m = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(m)
    t = np.linalg.solve(ref_ijk_to_ras, _matrix(m))
    shift = t[:3, 3]
    if not np.allclose(t[:3, :3], np.eye(3), atol=1e-6) or not np.allclose(shift, np.round(shift), atol=1e-3):
        return None
    return np.round(shift).astype(int)


def _on_reference_grid(seg_node, sid: str, ref_ijk_to_ras: np.ndarray, dims):
    """An oriented image holding the segment on the reference's grid (a resampled copy when the geometry or a
    parent transform differs), and its index shift; no scene node is made."""
    seg = seg_node.GetSegmentation()
    image = seg.GetSegment(sid).GetRepresentation(_labelmap_name())
    if image is not None and seg_node.GetParentTransformNode() is None:
        shift = _offset_on_grid(image, ref_ijk_to_ras)
        if shift is not None:
            return image, shift
    copy = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(seg_node, sid, copy):
        raise SceneError(f"could not read segment {seg.GetSegment(sid).GetName()} as a binary labelmap")
    reference = slicer.vtkOrientedImageData()
    reference.SetExtent(0, dims[0] - 1, 0, dims[1] - 1, 0, dims[2] - 1)
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(ref_ijk_to_ras[r, c]))
    reference.SetImageToWorldMatrix(m)
    out = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(copy, reference, out)
    return out, np.zeros(3, int)


def _nonzero_box(array: np.ndarray):
    """(k0, k1, j0, j1, i0, i1) inclusive box of the non-zero voxels (None when there is none); a few
    milliseconds on a 512x512x300 labelmap (whole slices are tested at once, then only the slab they span)."""
    ks = np.flatnonzero(array.reshape(array.shape[0], -1).any(axis=1))
    if not len(ks):
        return None
    rows = array[ks[0]:ks[-1] + 1].max(axis=0)
    js, iz = np.flatnonzero(rows.any(axis=1)), np.flatnonzero(rows.any(axis=0))
    return int(ks[0]), int(ks[-1]), int(js[0]), int(js[-1]), int(iz[0]), int(iz[-1])


def _layer_view(image, shift, dims):
    """(array [k, j, i] view of the image's non-zero box clipped to the reference grid, its offset (k, j, i) on
    that grid); None when nothing is there."""
    from vtk.util import numpy_support

    scalars = image.GetPointData().GetScalars() if image.GetPointData() is not None else None
    ext = list(image.GetExtent())
    if scalars is None or ext[1] < ext[0] or ext[3] < ext[2] or ext[5] < ext[4]:
        return None
    size = [ext[1] - ext[0] + 1, ext[3] - ext[2] + 1, ext[5] - ext[4] + 1]
    array = numpy_support.vtk_to_numpy(scalars).reshape(size[2], size[1], size[0])
    box = _nonzero_box(array)
    if box is None:
        return None
    k0, k1, j0, j1, i0, i1 = box
    lo = np.maximum(np.array([i0, j0, k0]) + ext[0::2], -shift)              # image indices, clipped
    hi = np.minimum(np.array([i1, j1, k1]) + ext[0::2], np.asarray(dims) - 1 - shift)
    if np.any(hi < lo):
        return None
    a = lo - np.array(ext[0::2])
    b = hi - np.array(ext[0::2]) + 1
    view = array[a[2]:b[2], a[1]:b[1], a[0]:b[0]]
    return view, tuple(int(v) for v in (lo + shift)[::-1])


def segment_boxes(seg_node, reference) -> Dict[str, tuple]:
    """{segment ID: (bool mask [k, j, i] cropped to the segment's voxels, (k, j, i) of its first voxel on the
    reference grid)} for every segment with voxels inside ``reference``'s grid.

    Read straight from the segmentation's binary labelmaps (shared layers are scanned once, inside their
    non-zero box): no scene node is created, and nothing of the size of the CT is allocated when the
    segmentation shares the CT's geometry. Other geometries are resampled (nearest neighbour) onto it.
    """
    ref, dims = _reference_geometry(reference)
    seg = seg_node.GetSegmentation()
    layers = {}
    out = {}
    for n in range(seg.GetNumberOfSegments()):
        sid = seg.GetNthSegmentID(n)
        image, shift = _on_reference_grid(seg_node, sid, ref, dims)
        key = image.GetAddressAsString("vtkOrientedImageData")
        if key not in layers:
            layers[key] = (_layer_view(image, shift, dims), image)   # keep the image alive with its view
        view = layers[key][0]
        if view is None:
            continue
        array, offset = view
        mask = array == seg.GetSegment(sid).GetLabelValue()
        ks = np.flatnonzero(mask.any(axis=(1, 2)))
        if not len(ks):
            continue
        mask = mask[ks[0]:ks[-1] + 1]
        js = np.flatnonzero(mask.any(axis=(0, 2)))
        iz = np.flatnonzero(mask.any(axis=(0, 1)))
        mask = mask[:, js[0]:js[-1] + 1, iz[0]:iz[-1] + 1]
        out[sid] = (mask, (offset[0] + int(ks[0]), offset[1] + int(js[0]), offset[2] + int(iz[0])))
    return out
