"""Segmentation metrics (Dice, surface Dice) and measurements for surgical planning (volume, diameter, tumors).

Array conventions: masks and label maps are numpy arrays indexed like ``Volume.array`` (``[k, j, i]``).

- The *comparison* metrics take ``spacing_zyx``: spacing in **array-axis order** (``Volume.spacing[::-1]``).
- The *measurements* (``volume_ml``, ``largest_diameter_mm``, ``tumor_components``) take ``spacing`` and
  ``direction`` in **Volume/ITK/Slicer order** (``(i, j, k)``, ``Volume.spacing``, ``node.GetSpacing()``), or a
  :class:`~BiSCSegmentationLib.volume.Volume` instead of the array, whose geometry is then used.

Conventions for empty structures (KiTS21's): Dice and surface Dice are 1.0 when both masks are empty (nothing
to find, nothing found) and 0.0 when exactly one is empty. The KiTS19 script gave NaN for both-empty.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .volume import Volume

KIDNEY, TUMOR = 1, 2
_FACE = ndimage.generate_binary_structure(3, 1)      # 6-connectivity (faces)
_FULL = ndimage.generate_binary_structure(3, 3)      # 26-connectivity


def _bool(mask, name: str = "mask") -> np.ndarray:
    a = mask.array if isinstance(mask, Volume) else np.asarray(mask)
    if a.ndim != 3:
        raise ValueError(f"{name} must be a 3D array, got shape {a.shape}")
    return a if a.dtype == bool else a != 0


def _same_shape(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"prediction and ground truth differ in shape: {a.shape} vs {b.shape}")


# ------------------------------------------------------------------------------------------------ overlap
def dice(pred_mask, gt_mask) -> float:
    """Dice coefficient 2|P∩G| / (|P| + |G|) of two binary masks (nonzero = inside).

    Both masks empty -> 1.0 (KiTS21 convention; the KiTS19 script returned NaN there).
    """
    p, g = _bool(pred_mask, "pred_mask"), _bool(gt_mask, "gt_mask")
    _same_shape(p, g)
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & g)) / total


def kits19_case_scores(pred_labels: np.ndarray, gt_labels: np.ndarray) -> Dict[str, float]:
    """KiTS19's per-case scores: kidney Dice on ``label > 0`` (kidney + tumor), tumor Dice on ``label == 2``."""
    p, g = np.asarray(pred_labels), np.asarray(gt_labels)
    _same_shape(p, g)
    return {"kidney_dice": dice(p > 0, g > 0), "tumor_dice": dice(p == TUMOR, g == TUMOR)}


# ------------------------------------------------------------------------------------------- surface Dice
def _bbox(mask: np.ndarray) -> Optional[Tuple[slice, slice, slice]]:
    """Tight bounding box of the nonzero voxels, or None when empty."""
    box = []
    for ax in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != ax)
        idx = np.flatnonzero(mask.any(axis=other))
        if idx.size == 0:
            return None
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def components_in_box(mask: np.ndarray) -> Tuple[Optional[Tuple[slice, ...]], Optional[np.ndarray], int]:
    """26-connected components of a bool ``mask``, labelled inside its bounding box only (labelling is the
    costliest step, and a kidney fills a small part of a CT or an ROI): ``(box, components, count)`` where
    ``components`` (int32, numbered 1..count in raster order, 0 elsewhere) covers ``mask[box]``;
    ``(None, None, 0)`` when the mask is empty."""
    found = ndimage.find_objects(mask.view(np.uint8))
    if not found:
        return None, None, 0
    box = found[0]
    comp, count = ndimage.label(mask[box], structure=_FULL)
    return box, comp, int(count)


def surface_voxels(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face neighbour outside it (outside the array counts as outside)."""
    m = _bool(mask)
    return m & ~ndimage.binary_erosion(m, structure=_FACE, border_value=0)


def surface_distances(pred_mask, gt_mask, spacing_zyx: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """(distances in mm from each gt surface voxel to the pred surface, and from each pred surface voxel to
    the gt surface). Both masks must be non-empty.

    Work is confined to the bounding box of the union of both masks: every surface voxel of either mask lies
    inside it, so the nearest surface voxel of the other mask does too, and no tolerance margin is needed for
    the result to be exact (the crop is what makes this fast on whole CT volumes).
    """
    p, g = _bool(pred_mask, "pred_mask"), _bool(gt_mask, "gt_mask")
    _same_shape(p, g)
    spacing = _spacing(spacing_zyx)
    box = _bbox(p | g)
    if box is None or not p.any() or not g.any():
        raise ValueError("surface distances need two non-empty masks")
    p, g = p[box], g[box]
    sp, sg = surface_voxels(p), surface_voxels(g)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    to_gt = ndimage.distance_transform_edt(~sg, sampling=spacing)
    return to_pred[sg], to_gt[sp]


def surface_dices(pred_mask, gt_mask, spacing_zyx: Sequence[float],
                  tolerances_mm: Sequence[float]) -> Dict[float, float]:
    """Surface Dice at several tolerances at once (the distance maps are computed once); see surface_dice."""
    tols = [float(t) for t in tolerances_mm]
    if any(not (t >= 0) for t in tols):
        raise ValueError(f"tolerances must be non-negative millimetres, got {tols}")
    p, g = _bool(pred_mask, "pred_mask"), _bool(gt_mask, "gt_mask")
    _same_shape(p, g)
    _spacing(spacing_zyx)
    has_p, has_g = bool(p.any()), bool(g.any())
    if not has_p and not has_g:
        return {t: 1.0 for t in tols}
    if not has_p or not has_g:
        return {t: 0.0 for t in tols}
    d_gt, d_pred = surface_distances(p, g, spacing_zyx)
    total = d_gt.size + d_pred.size
    return {t: (int(np.count_nonzero(d_gt <= t)) + int(np.count_nonzero(d_pred <= t))) / total for t in tols}


def surface_dice(pred_mask, gt_mask, spacing_zyx: Sequence[float], tolerance_mm: float) -> float:
    """Normalised surface Dice (Nikolov et al.; DeepMind ``surface_distance``, as used by KiTS21/23).

    The fraction of both surfaces lying within ``tolerance_mm`` of the other surface:
    ``(|{s in S_G : d(s, S_P) <= tol}| + |{s in S_P : d(s, S_G) <= tol}|) / (|S_G| + |S_P|)``.

    Approximation: DeepMind weights each surface element by its area (surfels from the 2x2x2 marching-cubes
    neighbourhoods on a half-voxel-shifted grid). Here a surface element is a *surface voxel* (a voxel of the
    mask with a face neighbour outside it, found by erosion with face connectivity; the image border counts as
    outside), every element weighs the same, and distances are between voxel centres (exact Euclidean distance
    transforms with ``sampling=spacing_zyx``). Values agree closely on smooth organ-sized structures and are
    slightly pessimistic on thin or strongly anisotropic ones.

    Both masks empty -> 1.0; exactly one empty -> 0.0. ``spacing_zyx`` is in array-axis order.
    """
    return surface_dices(pred_mask, gt_mask, spacing_zyx, [tolerance_mm])[float(tolerance_mm)]


def _spacing(spacing) -> np.ndarray:
    s = np.asarray(spacing, dtype=np.float64).ravel()
    if s.size != 3 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"spacing must be three positive numbers (mm), got {tuple(np.ravel(spacing))}")
    return s


def tolerance_label(tolerance_mm: float) -> str:
    """Column suffix for a tolerance: 1 -> '1.0mm', 1.15 -> '1.15mm'."""
    return f"{float(tolerance_mm)!r}mm"


def case_metrics(pred_labels: np.ndarray, gt_labels: np.ndarray, spacing_zyx: Sequence[float],
                 tolerances_mm: Sequence[float] = (1.0, 1.15), score_tumor: bool = True) -> Dict[str, Optional[float]]:
    """All per-case scores used by the evaluations: KiTS19 Dice, surface Dice of kidney (label>0) and tumor
    (label==2) at each tolerance, and ``mean_dice`` (mean of kidney and tumor Dice, KiTS19's ranking score).

    ``score_tumor=False`` (a reference that labels kidneys only): every tumor score and ``mean_dice`` is None,
    "not applicable", because such a reference cannot tell a found tumor from a false one; 0 or 1 would lie.
    """
    p, g = np.asarray(pred_labels), np.asarray(gt_labels)
    _same_shape(p, g)
    row: Dict[str, Optional[float]] = dict(kits19_case_scores(p, g))
    names = ("kidney", "tumor") if score_tumor else ("kidney",)
    sd = {name: surface_dices(p > 0 if name == "kidney" else p == TUMOR,
                              g > 0 if name == "kidney" else g == TUMOR, spacing_zyx, tolerances_mm)
          for name in names}
    for t in tolerances_mm:
        for name in ("kidney", "tumor"):
            row[f"{name}_surface_dice_{tolerance_label(t)}"] = sd[name][float(t)] if name in sd else None
    if not score_tumor:
        row["tumor_dice"] = None
    row["mean_dice"] = (row["kidney_dice"] + row["tumor_dice"]) / 2.0 if score_tumor else None
    return row


def roi_containment(reference, rois: Sequence, min_share: float = 0.05) -> Dict[str, Optional[float]]:
    """Share (0..1) of the reference kidney (label > 0, a Volume) whose voxel centres lie inside the union of
    ``rois`` (boxes with ``contains(points_lps)``, e.g. KidneyROI): what the fine stage can see at all.

    ``roi_containment``: all reference kidney voxels. Per kidney (a 26-connected component holding at least
    ``min_share`` of them; smaller fragments count only in the total): ``roi_containment_right``/``_left``
    when there are two, named by position (LPS +x is the patient's left, as rois_from_mask names ROIs), else
    ``roi_containment_kidney`` (one) or ``roi_containment_kidney_N`` (largest first). None: no kidney.
    """
    m = np.asarray(reference.array) > 0
    box, comp, _ = components_in_box(m)
    if box is None:
        return {"roi_containment": None}
    kji = np.argwhere(m[box]) + np.array([b.start for b in box])
    which = comp[m[box]]                                   # same (C) order as argwhere
    lps = reference.index_to_physical(kji[:, ::-1].astype(np.float64))
    inside = np.zeros(len(kji), bool)
    for roi in rois:
        inside |= np.asarray(roi.contains(lps), bool)
    counts = np.bincount(which)
    hits = np.bincount(which, weights=inside, minlength=counts.size)
    x = np.bincount(which, weights=lps[:, 0], minlength=counts.size) / np.maximum(counts, 1)
    kidneys = [c for c in np.argsort(-counts, kind="stable") if c > 0 and counts[c] >= min_share * len(kji)]
    if len(kidneys) == 2:
        named = zip(("right", "left"), sorted(kidneys, key=lambda c: x[c]))
    else:
        named = zip(["kidney"] if len(kidneys) == 1 else [f"kidney_{n}" for n in range(1, len(kidneys) + 1)], kidneys)
    row: Dict[str, Optional[float]] = {"roi_containment": float(inside.mean())}
    row.update({f"roi_containment_{name}": float(hits[c] / counts[c]) for name, c in named})
    return row


# ------------------------------------------------------------------------------------------- measurements
def _geometry(mask, spacing, direction) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bool array [k,j,i], spacing (i,j,k), direction 3x3) from a Volume or an array plus spacing."""
    if isinstance(mask, Volume):
        spacing = mask.spacing if spacing is None else spacing
        direction = mask.direction if direction is None else direction
    if spacing is None:
        raise ValueError("give the voxel spacing (i, j, k) in mm, or pass a Volume")
    m = _bool(mask)
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=np.float64).reshape(3, 3)
    return m, _spacing(spacing), d


def volume_ml(mask, spacing: Optional[Sequence[float]] = None) -> float:
    """Volume in millilitres: voxel count x voxel volume (spacing in mm, any axis order)."""
    m, s, _ = _geometry(mask, spacing, None)
    return float(np.count_nonzero(m)) * float(np.prod(s)) / 1000.0


def _farthest_pair(points: np.ndarray, chunk: int = 512) -> Tuple[float, int, int]:
    """(distance, index a, index b) of the two farthest of (N, D) points (N >= 1). Squared distances come
    from one matrix product per block (|a|^2 + |b|^2 - 2 a.b, on centred points: fast for the thousands of
    hull vertices of a large tumor); the pairs within rounding of the block's maximum are then measured
    directly, so the result is the exact distance of the farthest pair."""
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 2:
        return 0.0, 0, 0
    c = p - p.mean(axis=0)
    sq = (c * c).sum(axis=1)
    best, pair = -1.0, (0, 0)
    for start in range(0, len(c), chunk):
        block = c[start:start + chunk]
        d2 = sq[start:start + chunk, None] + sq[None, :] - 2.0 * (block @ c.T)
        top = float(d2.max())
        if top < best - 1e-6 * max(best, 1.0):
            continue
        a, b = np.nonzero(d2 >= top - 1e-6 * max(top, 1.0))
        exact = ((p[start + a] - p[b]) ** 2).sum(axis=1)
        k = int(np.argmax(exact))
        if float(exact[k]) > best:
            best, pair = float(exact[k]), (int(start + a[k]), int(b[k]))
    return math.sqrt(max(best, 0.0)), pair[0], pair[1]


def _hull_indices(points: np.ndarray) -> np.ndarray:
    """Indices of (N, D) points that include every convex hull vertex (all of them for tiny or degenerate sets)."""
    if len(points) <= 64:
        return np.arange(len(points))
    centred = points - points.mean(axis=0)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    rank = int(np.count_nonzero(sv > 1e-9 * max(1.0, sv[0])))
    if rank <= 1:   # collinear: the two extremes along the line
        t = centred @ vt[0]
        return np.array([int(np.argmin(t)), int(np.argmax(t))])
    from scipy.spatial import ConvexHull, QhullError
    coords = centred @ vt[:rank].T   # 2D when flat: qhull fails on coplanar 3D input
    try:
        return np.asarray(ConvexHull(coords).vertices)
    except QhullError:  # pragma: no cover - degenerate beyond the rank test; fall back to all points
        return np.arange(len(points))


def largest_diameter_mm(mask, spacing: Optional[Sequence[float]] = None, direction=None) -> float:
    """Largest distance (mm) between the centres of any two voxels of the structure (0.0 for one voxel or none).

    Boundary voxels (erosion with face connectivity) -> convex hull vertices -> maximum pairwise distance,
    in physical coordinates ``direction @ diag(spacing) @ (i, j, k)``. ``spacing``/``direction`` are in
    Volume order (i, j, k), or taken from a Volume passed as ``mask``. Note it measures centre to centre, so
    it is one voxel shorter than the outer extent along an axis (RECIST measures on the image the same way).
    """
    return largest_diameter(mask, spacing, direction)[0]


def largest_diameter(mask, spacing: Optional[Sequence[float]] = None,
                     direction=None) -> Tuple[float, Optional[Tuple[float, float, float]],
                                              Optional[Tuple[float, float, float]]]:
    """:func:`largest_diameter_mm` with its two end points, as continuous (i, j, k) voxel indices (so that a
    viewer can draw the line: map them with ``Volume.index_to_physical``); (0.0, None, None) when empty."""
    m, s, d = _geometry(mask, spacing, direction)
    box = _bbox(m)
    if box is None:
        return 0.0, None, None
    kji = np.argwhere(surface_voxels(m[box])) + np.array([b.start for b in box])
    if len(kji) < 2:
        ijk = tuple(float(v) for v in kji[0][::-1])
        return 0.0, ijk, ijk
    ijk = kji[:, ::-1].astype(np.float64)
    xyz = ijk @ (d @ np.diag(s)).T
    hull = _hull_indices(xyz)
    dist, a, b = _farthest_pair(xyz[hull])
    return dist, tuple(float(v) for v in ijk[hull[a]]), tuple(float(v) for v in ijk[hull[b]])


def tumor_components(labels, spacing: Optional[Sequence[float]] = None, direction=None,
                     origin: Optional[Sequence[float]] = None, label: int = TUMOR,
                     min_volume_ml: float = 0.0) -> List[Dict[str, object]]:
    """One dict per 26-connected component of ``labels == label`` (tumors by default), largest first.

    Keys: ``index`` (1-based, in this order), ``voxels``, ``volume_ml``, ``largest_diameter_mm``,
    ``centroid_kji`` (array index, as numpy indexes ``labels``), ``centroid_ijk`` (ITK/Slicer index order) and,
    when an origin is known (given, or from a Volume), ``centroid_lps`` (mm). Components smaller than
    ``min_volume_ml`` are left out. ``spacing``/``direction``/``origin`` are in Volume order (i, j, k).
    """
    if isinstance(labels, Volume) and origin is None:
        origin = labels.origin
    arr = labels.array if isinstance(labels, Volume) else np.asarray(labels)
    m, s, d = _geometry(labels, spacing, direction)
    m = arr == label
    box, comp, count = components_in_box(m)   # cropped: whole-CT arrays are slow to scan
    if box is None:
        return []
    slices = ndimage.find_objects(comp)
    subs = [comp[sl] == n + 1 for n, sl in enumerate(slices)]
    voxels = np.array([int(np.count_nonzero(sub)) for sub in subs])
    voxel_ml = float(np.prod(s)) / 1000.0
    out: List[Dict[str, object]] = []
    for n in np.argsort(-voxels, kind="stable"):
        vol = float(voxels[n]) * voxel_ml
        if vol < min_volume_ml:
            continue
        sub = subs[n]
        offset = np.array([b.start for b in box]) + np.array([sl.start for sl in slices[n]])
        kji = tuple(float(c) for c in np.argwhere(sub).mean(axis=0) + offset)
        item: Dict[str, object] = {
            "voxels": int(voxels[n]), "volume_ml": vol,
            "largest_diameter_mm": largest_diameter_mm(sub, s, d),
            "centroid_kji": kji, "centroid_ijk": kji[::-1]}
        if origin is not None:
            lps = np.asarray(kji[::-1]) @ (d @ np.diag(s)).T + np.asarray(origin, dtype=np.float64)
            item["centroid_lps"] = tuple(float(v) for v in lps)
        out.append(item)
    for i, item in enumerate(out, 1):
        item["index"] = i
    return out


__all__ = ["dice", "kits19_case_scores", "surface_voxels", "surface_distances", "surface_dice", "surface_dices",
           "case_metrics", "components_in_box", "roi_containment", "tolerance_label", "volume_ml", "largest_diameter_mm", "largest_diameter",
           "tumor_components"]
