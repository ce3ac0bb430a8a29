"""Kidney regions of interest: found from the rough mask, edited by people, consumed by the fine stage.

An ROI is a box in patient coordinates (LPS, millimetres), axis-aligned with the patient axes, like a 3D
Slicer Markups ROI with no rotation. Keeping ROIs physical (not in voxels) is what lets a person move and
resize them in any viewer and lets the fine stage run at its own spacing.

Sizing follows the paper (Sec. 3.2): in-plane 160 fine-model voxels, or 192 when the kidney is bigger,
along z a multiple of 16 larger than the kidney. Kidneys wider than 192 voxels (about 5% in KiTS19) get the
next multiple of 16, so no kidney or tumor is ever cut off. A kidney the rough stage saw only in part
(a large tumor it took for background) can still reach past its box: the fine stage then grows the box
through the faces its foreground touches (:func:`touched_faces`, :func:`grow_roi`) and runs again.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .errors import ROIError
from .outputs import write_json
from .volume import Volume

SIDES = ("right", "left", "both", "unknown")
CROSSING_MM = 20.0  # a kidney or box reaching this far over the midline on both sides is "both" (see side_of)
ROI_FORMAT = "bisc-rois"
ROI_FORMAT_VERSION = 1
MIN_ROI_MM = 16.0
# No kidney with its tumor needs more: in KiTS19 the largest per-kidney box is 273 voxels (~280 mm) in-plane
# and ~330 mm along z with a large tumor; a larger ROI is a mistake that would only cost memory (a 10 m box
# asked for 24 GB).
MAX_ROI_SIDE_MM = 600.0  # wider than a body: a mistake, not a kidney (quality.py warns from 250 mm)


@dataclass
class KidneyROI:
    center: Tuple[float, float, float]   # LPS mm
    size: Tuple[float, float, float]     # mm along L (x), P (y), S (z)
    side: str = "unknown"

    def __post_init__(self):
        self.center = tuple(float(c) for c in self.center)
        self.size = tuple(float(s) for s in self.size)
        if len(self.center) != 3 or len(self.size) != 3:
            raise ROIError("an ROI needs a 3D center and a 3D size")
        if not all(math.isfinite(v) for v in self.center + self.size):
            raise ROIError(f"ROI center/size must be finite numbers, got {self.center} / {self.size}")
        if min(self.size) <= 0:
            raise ROIError(f"ROI size must be positive in every direction, got {self.size} mm")
        if self.side not in SIDES:
            raise ROIError(f"ROI side must be one of {SIDES}, got {self.side!r}")

    @property
    def name(self) -> str:
        return {"right": "Right kidney ROI", "left": "Left kidney ROI",
                "both": "Kidneys ROI", "unknown": "Kidney ROI"}[self.side]

    @property
    def lower(self) -> np.ndarray:
        return np.asarray(self.center) - np.asarray(self.size) / 2

    @property
    def upper(self) -> np.ndarray:
        return np.asarray(self.center) + np.asarray(self.size) / 2

    def corners(self) -> np.ndarray:
        lo, hi = self.lower, self.upper
        return np.array([[(lo, hi)[a][0], (lo, hi)[b][1], (lo, hi)[c][2]]
                         for a in (0, 1) for b in (0, 1) for c in (0, 1)])

    def contains(self, points_lps: np.ndarray) -> np.ndarray:
        p = np.asarray(points_lps)
        return np.all((p >= self.lower - 1e-6) & (p <= self.upper + 1e-6), axis=-1)

    def to_dict(self) -> dict:
        return {"name": self.name, "side": self.side, "center": list(self.center), "size": list(self.size)}


# ------------------------------------------------------------------------------------------------------ sizing
PAPER_FINE_SPACING = (0.78, 0.78, 3.0)  # x, y, z mm: the grid the paper's ROI sizes are counted on


def paper_roi_voxels(extent_vox: Sequence[float], spacing: Sequence[float] = PAPER_FINE_SPACING) -> Tuple[int, int, int]:
    """Fine-grid ROI size (x, y, z voxels) for a kidney extent in fine voxels (x, y, z), margins included.

    The paper's sizes (160 or 192 voxels in-plane, else the next multiple of 16; z the next multiple of 16
    above the kidney) are counted on its 0.78 x 0.78 x 3 mm grid. A model with another fine spacing gets the
    same physical box, rounded up to a multiple of 8 of its own voxels (the network's divisor), so a coarser
    fine grid does not make the ROI larger in millimetres."""
    scale = np.asarray(spacing, dtype=float) / np.asarray(PAPER_FINE_SPACING)
    paper = np.asarray(extent_vox, dtype=float) * scale  # the extent in paper voxels
    inplane = max(paper[0], paper[1])
    if inplane <= 160:
        n_xy = 160
    elif inplane <= 192:
        n_xy = 192
    else:
        n_xy = int(math.ceil(inplane / 16.0) * 16)
    n_z = int(math.floor(paper[2] / 16.0) * 16 + 16)  # a multiple of 16, strictly larger
    sizes = np.array([n_xy, n_xy, n_z], dtype=float)
    if np.allclose(scale, 1.0):
        return n_xy, n_xy, n_z
    own = np.ceil(sizes / scale / 8.0 - 1e-6) * 8
    return int(own[0]), int(own[1]), int(own[2])


def component_bounds_lps(mask: Volume, labels: np.ndarray, count: int) -> List[Tuple[np.ndarray, np.ndarray, int]]:
    """Physical (LPS) bounding box of each labelled component, voxel extents included, and its voxel count."""
    out = []
    for idx, sl in enumerate(ndimage.find_objects(labels)[:count], start=1):
        if sl is None:
            out.append((None, None, 0))
            continue
        # array is [k, j, i]; index box corners at +-0.5 voxel
        k0, j0, i0 = (s.start - 0.5 for s in sl)
        k1, j1, i1 = (s.stop - 0.5 for s in sl)
        corners = np.array([[i, j, k] for i in (i0, i1) for j in (j0, j1) for k in (k0, k1)])
        phys = mask.index_to_physical(corners)
        n = int(np.count_nonzero(labels[sl] == idx))
        out.append((phys.min(axis=0), phys.max(axis=0), n))
    return out


def rois_from_mask(mask: Volume, fine_spacing: Sequence[float], min_component_ml: float = 10.0,
                   min_fraction_of_largest: float = 0.05, margin_mm: Sequence[float] = (10.0, 10.0, 6.0),
                   max_rois: int = 2, midline_x: Optional[float] = None) -> List[KidneyROI]:
    """One ROI per kidney from a (rough) label map: the largest 26-connected components of label > 0.

    Small islands (under ``min_component_ml`` or under a fraction of the largest) are ignored; one
    component (solitary kidney) gives one ROI; a component crossing the midline well on both sides
    (horseshoe kidney) gives one ROI with side "both". Returns an empty list when no kidney is found.
    """
    fg = np.asarray(mask.array) > 0
    if not fg.any():
        return []
    labels, count = ndimage.label(fg, structure=np.ones((3, 3, 3), bool))
    bounds = component_bounds_lps(mask, labels, count)
    vml = mask.voxel_volume_ml
    comps = [(n * vml, lo, hi) for lo, hi, n in bounds if n]
    comps.sort(key=lambda c: -c[0])
    largest = comps[0][0]
    keep = [c for c in comps if c[0] >= min_component_ml and c[0] >= min_fraction_of_largest * largest][:max_rois]
    if midline_x is None:
        centre_idx = (np.array(mask.size_ijk) - 1) / 2.0
        midline_x = float(mask.index_to_physical(centre_idx)[0])
    fine_spacing = np.asarray(fine_spacing, dtype=float)
    margin = np.asarray(margin_mm, dtype=float)
    rois = []
    for _, lo, hi in keep:
        extent_vox = (hi - lo + 2 * margin) / fine_spacing
        size = np.array(paper_roi_voxels(extent_vox, fine_spacing)) * fine_spacing
        center = (lo + hi) / 2
        rois.append(KidneyROI(tuple(center), tuple(size), side_of(lo[0], hi[0], midline_x)))
    if len(rois) == 2:
        # two kidneys: name them by their relative position (LPS +x is the patient's left), which holds
        # even when the scan is off-centre and the midline estimate is not
        a, b = sorted(rois, key=lambda r: r.center[0])
        a.side, b.side = "right", "left"
    return sorted(rois, key=lambda r: r.center[0])


def side_of(lower_x: float, upper_x: float, midline: float) -> str:
    """Side of a kidney, a box or a point spanning [lower_x, upper_x] (LPS x; LPS +x is the patient's left):
    "both" when it reaches over the midline by more than CROSSING_MM and by a quarter of its width on each
    side (horseshoe kidney), else "right" or "left" by its centre."""
    width = upper_x - lower_x
    if lower_x < midline - CROSSING_MM and upper_x > midline + CROSSING_MM and \
            (upper_x - midline) > 0.25 * width and (midline - lower_x) > 0.25 * width:
        return "both"
    return "right" if (lower_x + upper_x) / 2.0 < midline else "left"


# ---------------------------------------------------------------------------------------------- ROI vs volume
def roi_index_bounds(roi: KidneyROI, volume: Volume) -> Tuple[np.ndarray, np.ndarray]:
    """Continuous (i, j, k) bounds of the ROI's corners in the volume's index space."""
    idx = volume.physical_to_index(roi.corners())
    return idx.min(axis=0), idx.max(axis=0)


def check_roi(roi: KidneyROI, volume: Volume) -> List[str]:
    """Plain-language problems that stop the fine stage from using this ROI (empty list: fine)."""
    problems = []
    if min(roi.size) < MIN_ROI_MM:
        problems.append(f"{roi.name} is too small ({' x '.join(f'{s:.0f}' for s in roi.size)} mm); "
                        f"make it at least {MIN_ROI_MM:.0f} mm in every direction and cover the whole kidney")
    if max(roi.size) > MAX_ROI_SIDE_MM:
        problems.append(f"{roi.name} is too large ({' x '.join(f'{s:.0f}' for s in roi.size)} mm): over "
                        f"{MAX_ROI_SIDE_MM:.0f} mm is wider than a body (the largest KiTS19 kidney box is 221 mm); "
                        f"make it fit around one kidney")
    lo, hi = roi_index_bounds(roi, volume)
    n = np.array(volume.size_ijk)
    if np.any(hi < -0.5) or np.any(lo > n - 0.5):
        problems.append(f"{roi.name} lies outside the image; move it onto the kidney")
    return problems


def distinct_rois(rois: Sequence[KidneyROI], tol_mm: float = 1e-3) -> Tuple[List[KidneyROI], List[str]]:
    """``rois`` without those identical to or lying inside another (they would redo the same voxels), in
    their order, and a note for each one dropped. Of identical ROIs the first is kept."""
    lo = np.array([r.lower for r in rois], dtype=float).reshape(-1, 3)
    hi = np.array([r.upper for r in rois], dtype=float).reshape(-1, 3)
    kept: List[KidneyROI] = []
    notes = []
    for n, roi in enumerate(rois):
        inside = np.all(lo[n] >= lo - tol_mm, axis=1) & np.all(hi[n] <= hi + tol_mm, axis=1)  # roi n inside m
        same = inside & np.all(lo >= lo[n] - tol_mm, axis=1) & np.all(hi <= hi[n] + tol_mm, axis=1)
        inside[n:] &= ~same[n:]  # an identical ROI covers it only if it comes first
        covers = np.flatnonzero(inside)
        if covers.size == 0:
            kept.append(roi)
            continue
        m = int(covers[0])
        notes.append(f"ROI #{n + 1} ({roi.name}) is {'the same as' if same[m] else 'inside'} ROI #{m + 1} "
                     f"({rois[m].name}) and was left out: its voxels are segmented once")
    return kept, notes


def roi_overlap_fraction(roi: KidneyROI, volume: Volume) -> float:
    """Fraction of the ROI's index-space box that lies inside the image (1.0 = fully inside)."""
    lo, hi = roi_index_bounds(roi, volume)
    n = np.array(volume.size_ijk)
    inter = np.clip(np.minimum(hi, n - 0.5) - np.maximum(lo, -0.5), 0, None)
    full = np.maximum(hi - lo, 1e-9)
    return float(np.prod(inter / full))


# ------------------------------------------------------------------------------------------------ ROI growth
def touched_faces(foreground: np.ndarray, box: Sequence[slice], shape: Sequence[int], spacing_zyx: Sequence[float],
                  min_area_mm2: float) -> List[Tuple[int, int]]:
    """Faces of an ROI that its fine-stage ``foreground`` (the box's voxels of a canonical CT of ``shape``)
    touches over at least ``min_area_mm2``, as (LPS axis 0-2, side -1 lower / +1 upper). A face on the CT's
    own border is never reported: there is nothing beyond it. Canonical axes (z, y, x) point along +S, +P,
    +L, so a touched lower z face means the kidney goes on towards the feet."""
    out = []
    for ax in range(3):
        area = float(np.prod([spacing_zyx[a] for a in range(3) if a != ax]))
        for side, index, at_border in ((-1, 0, box[ax].start <= 0), (1, -1, box[ax].stop >= shape[ax])):
            if at_border or foreground.shape[ax] == 0:
                continue
            if np.count_nonzero(np.take(foreground, index, axis=ax)) * area >= min_area_mm2:
                out.append((2 - ax, side))
    return out


def grow_roi(roi: KidneyROI, faces: Sequence[Tuple[int, int]], fraction: float = 0.5,
             bounds: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> KidneyROI:
    """The ROI pushed outwards by ``fraction`` of its size through each of ``faces`` (from
    :func:`touched_faces`), but not past ``bounds`` (LPS lower, upper corners: the CT's extent); the
    opposite faces stay where they are."""
    lo, hi = roi.lower.copy(), roi.upper.copy()
    for axis, side in faces:
        step = fraction * roi.size[axis]
        if side < 0:
            lo[axis] = min(lo[axis], max(lo[axis] - step, bounds[0][axis])) if bounds else lo[axis] - step
        else:
            hi[axis] = max(hi[axis], min(hi[axis] + step, bounds[1][axis])) if bounds else hi[axis] + step
    return KidneyROI(tuple((lo + hi) / 2), tuple(hi - lo), roi.side)


# ------------------------------------------------------------------------------------------------------- JSON
def rois_document(rois: Sequence[KidneyROI]) -> Dict:
    """The JSON document of an ROI file (what :func:`load_rois` reads)."""
    return {"format": ROI_FORMAT, "version": ROI_FORMAT_VERSION, "coordinate_system": "LPS", "units": "mm",
            "rois": [r.to_dict() for r in rois]}


def save_rois(rois: Sequence[KidneyROI], path, force: bool = False) -> Path:
    """Write atomically and read back (see :mod:`outputs`); refuses to overwrite unless ``force``."""
    return write_json(path, rois_document(rois), force=force, description="ROI file")


def load_rois(path) -> List[KidneyROI]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise ROIError(f"{path}: no such ROI file") from None
    except PermissionError:
        raise ROIError(f"{path}: cannot be read (permission denied)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ROIError(f"{path}: not a JSON file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != ROI_FORMAT:
        raise ROIError(f"{path}: not a BiSCSegmentation ROI file (expected \"format\": \"{ROI_FORMAT}\"); "
                       f"write one with bisc-segment --save-rois")
    if doc.get("version") != ROI_FORMAT_VERSION:
        raise ROIError(f"{path}: ROI file version {doc.get('version')} is not supported (expected {ROI_FORMAT_VERSION})")
    system = str(doc.get("coordinate_system", "LPS")).upper()
    if system not in ("LPS", "RAS"):
        raise ROIError(f"{path}: coordinate_system must be LPS or RAS, got {system}")
    rois = []
    for n, item in enumerate(doc.get("rois", []), start=1):
        try:
            center = [float(v) for v in item["center"]]
            if system == "RAS":
                center = [-center[0], -center[1], center[2]]
            rois.append(KidneyROI(center, item["size"], item.get("side", "unknown")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ROIError(f"{path}: ROI #{n} is malformed ({exc}); each ROI needs center [x,y,z] and size "
                           f"[x,y,z] in mm") from exc
    return rois
