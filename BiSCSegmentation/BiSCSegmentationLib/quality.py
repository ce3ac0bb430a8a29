"""Trust signals: refuse a CT the models cannot read, and warn when a result is implausible.

One mechanism for the command line, the Slicer module and batch use: a :class:`QualityWarning` has a stable
``code``, a ``severity`` and a one-line ``message`` saying what was found and what to check. Input checks
(:func:`check_input`) raise :class:`~.volume.VolumeError` for what cannot be read as a CT in Hounsfield units
and return warnings for what can be read but is doubtful; output checks (:func:`check_result`) compare the
segmentation with what real kidneys look like. The limits come from the 168 real KiTS19 label maps
(``python -m bisc_training.plausibility_limits --kits ../shared/data/kits19``; figures in docs/quality.md).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .volume import Volume, VolumeError

WARNING = "warning"    # check the result before using it
CRITICAL = "critical"  # the result is implausible: do not use it without correcting it
SEVERITIES = (WARNING, CRITICAL)

# ---- input limits -----------------------------------------------------------------------------------------
SPACING_RANGE_MM = (0.3, 10.0)     # outside: a wrong header (e.g. 100 mm slices makes an 11 m patient)
MAX_EXTENT_MM = 2500.0             # a whole-body CT is under 2 m long and 0.7 m wide
THICK_SLICE_MM = 5.0               # KiTS19 slices are 0.5-5 mm: thicker ones were never seen in training
OBLIQUE_DEGREES = 10.0             # the networks see the scan rotated by this much when it is oblique
AIR_HU = -1000.0

# ---- output limits (per kidney = 26-connected kidney+tumor component of >= 10 mL) ----------------------------
# Measured on the 168 KiTS19 label maps in ../shared/data/kits19 (333 kidneys; `python -m
# bisc_training.plausibility_limits --kits ../shared/data/kits19`): volume with tumor 0.5th-99.5th percentile
# 112-1541 mL (all: 43-1684 mL); largest box side 83-181 mm (all: at most 221 mm); 165 cases have two kidneys,
# 3 one, none more; 4 cases have tumor in both kidneys; in 25 kidneys (7.5%) the tumor outweighs the rest.
# Outside the percentiles is a warning; outside everything observed, with a margin, is critical.
KIDNEY_ML_WARN = (112.0, 1541.0)
KIDNEY_ML_CRITICAL = (40.0, 1800.0)
KIDNEY_EXTENT_WARN_MM = 181.0
KIDNEY_EXTENT_CRITICAL_MM = 240.0
ROI_SIDE_MAX_MM = 250.0            # the largest kidney box (221 mm) plus the fine stage's margins
MIN_KIDNEY_ML = 10.0
FACE_TOUCH_MM2 = 200.0             # foreground on an ROI face over at least this area: the box cut it off
KIDNEY_HU_RANGE = (-20.0, 350.0)   # non-contrast -10..60, enhanced 100..300 (notes/ct-appearance.md)
# Mean normalised entropy of the fine network over the voxels it labels kidney or tumor. On 20 training
# phantoms (bisc_training.calibrate_quality, bundled bisc-phantom-v10) it was 0.19-0.52 (median 0.29) where
# kidney Dice >= 0.9; the limit sits just above everything seen there: only a scan unlike the training data
# goes beyond it (docs/quality.md).
MAX_MEAN_ENTROPY = 0.55


@dataclass(frozen=True)
class QualityWarning:
    """One finding about an input or a result. ``code`` is stable (scripts may test it); ``message`` is one
    line for a person."""

    code: str
    severity: str
    message: str

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> Dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict) -> "QualityWarning":
        return cls(str(d["code"]), str(d["severity"]), str(d["message"]))

    def __str__(self) -> str:
        return f"{self.severity.upper()} [{self.code}]: {self.message}"


def merge(*groups: Iterable[QualityWarning]) -> List[QualityWarning]:
    """The warnings of several checks, each once, in order."""
    out: List[QualityWarning] = []
    for group in groups:
        for w in group:
            if w not in out:
                out.append(w)
    return out


# ------------------------------------------------------------------------------------------------- input
def check_input(ct: Volume) -> List[QualityWarning]:
    """Refuse (VolumeError) a volume that is not a readable CT in Hounsfield units; warn on doubtful ones."""
    a = ct.array
    if a.dtype.kind not in "iuf":
        raise VolumeError(f"the CT must hold numbers (Hounsfield units), got dtype {a.dtype}")
    if min(a.shape) < 2:
        raise VolumeError(f"the image is not a 3D CT volume (shape {a.shape}); give a CT with several slices")
    warnings = _check_geometry(ct)
    if a.dtype.kind == "f":
        _refuse_non_finite(a)
    warnings += _check_intensities(a)
    return warnings


def _check_geometry(ct: Volume) -> List[QualityWarning]:
    lo, hi = SPACING_RANGE_MM
    if any(not lo <= s <= hi for s in ct.spacing):
        raise VolumeError(f"voxel spacing {' x '.join(f'{s:.4g}' for s in ct.spacing)} mm is outside what a CT "
                          f"has ({lo}-{hi} mm); the image header is wrong: fix the spacing in the header")
    extent = np.array(ct.size_ijk) * np.array(ct.spacing)
    if extent.max() > MAX_EXTENT_MM:
        raise VolumeError(f"the image is {' x '.join(f'{e:.0f}' for e in extent)} mm, larger than a body; the "
                          f"image header's spacing is wrong: fix it")
    d = ct.direction
    if not np.allclose(d.T @ d, np.eye(3), atol=1e-3):
        raise VolumeError("the direction matrix is not orthonormal (sheared or scaled axes); the image header "
                          "is corrupt: re-export the CT")
    warnings = []
    # angle between each axis and the nearest patient axis
    angle = float(np.degrees(np.arccos(np.clip(np.abs(d).max(axis=0).min(), -1.0, 1.0))))
    if angle > OBLIQUE_DEGREES:
        warnings.append(QualityWarning("INPUT_OBLIQUE", WARNING,
                                       f"the scan is oblique ({angle:.0f} degrees from the patient axes); the "
                                       f"networks saw only axial scans: check the result slice by slice"))
    slice_mm = sorted(ct.spacing)[-1]
    if slice_mm > THICK_SLICE_MM:
        warnings.append(QualityWarning("INPUT_THICK_SLICES", WARNING,
                                       f"slices are {slice_mm:.3g} mm apart; the models were trained on 0.5-5 mm: "
                                       f"small tumors and kidney borders may be missed"))
    return warnings


def _refuse_non_finite(a: np.ndarray) -> None:
    bad_per_slice = [int(np.count_nonzero(~np.isfinite(a[k]))) for k in range(a.shape[0])]
    slices = [k for k, n in enumerate(bad_per_slice) if n]
    if slices:
        where = f"slice {slices[0]}" if len(slices) == 1 else f"{len(slices)} slices ({slices[0]}-{slices[-1]})"
        raise VolumeError(f"{sum(bad_per_slice)} voxels in {where} are not numbers (NaN or infinite); the file is "
                          f"damaged or was exported wrongly: re-export the CT")


def intensity_sample(a: np.ndarray, target: int = 2_000_000) -> np.ndarray:
    """An even sample of about ``target`` voxels (every n-th along each axis), as float32."""
    step = max(1, int(round((a.size / target) ** (1 / 3))))
    return np.asarray(a[::step, ::step, ::step], dtype=np.float32).ravel()


def _check_intensities(a: np.ndarray) -> List[QualityWarning]:
    """Judge from the histogram whether the values are Hounsfield units: a body in CT has fat (about -100 HU)
    and, around it or in the bowel and lungs, air (about -1000 HU)."""
    s = intensity_sample(a)
    s = s[np.isfinite(s)]
    if s.size == 0:
        raise VolumeError("the image holds no voxels")
    if float(s.min()) >= 0 and float(s.max()) <= 1:
        raise VolumeError("the image values lie in [0, 1]: not a CT in Hounsfield units (is it a mask or a "
                          "normalised image?); give the original CT")
    whole = np.all(np.mod(s, 1) == 0)
    values = np.unique(s) if whole else np.empty(0)
    if whole and float(s.min()) >= 0 and values.size <= 16 and float(values.max()) < 256:
        shown = ", ".join(str(int(v)) for v in values[:8])
        raise VolumeError(f"the image holds only a few small whole numbers ({shown}): it looks like a label map, "
                          f"not a CT in Hounsfield units; give the original CT")
    if float(np.mean(s < -50)) < 1e-4:
        # unsigned storage without the rescale: air near 0, and the body (fat -100, soft tissue 40, blood and
        # enhanced organs up to 200 HU) almost all within 824-1224
        body = s[s > 300]
        in_range = float(np.mean((body > 824) & (body < 1224))) if body.size else 0.0
        if in_range > 0.8 and float(np.mean(s < 124)) > 0.02:
            raise VolumeError("no voxel is below -50 HU but many lie near 0 and near 1000: the CT looks stored "
                              "without its rescale (air at 0 instead of -1000, an offset of about +1024); "
                              "convert it to Hounsfield units (apply the rescale slope and intercept)")
        raise VolumeError(f"no voxel is darker than -50 HU, so no fat and no air (the values run {float(s.min()):.0f} to "
                          f"{float(s.max()):.0f}): not a CT in Hounsfield units (an MR, or a rescaled image?); "
                          f"give a CT in Hounsfield units")
    warnings = []
    if float(np.mean(np.abs(s - AIR_HU) < 150)) < 1e-4 and float(np.mean(s < -1200)) < 1e-4:
        warnings.append(QualityWarning("INPUT_NO_AIR", WARNING,
                                       "no air (about -1000 HU) in the image: it is cropped inside the body or "
                                       "not in Hounsfield units; check the CT's intensities"))
    return warnings


# ------------------------------------------------------------------------------------------------ output
def roi_warnings(rois: Sequence) -> List[QualityWarning]:
    """ROIs no kidney needs: more boxes than kidneys, or a box larger than any kidney with its margins."""
    out = []
    for roi in rois:
        if max(roi.size) > ROI_SIDE_MAX_MM:
            out.append(QualityWarning("ROI_TOO_LARGE", CRITICAL,
                                      f"{roi.name} is {_mm(roi.size)}, larger than any kidney needs (at most "
                                      f"{ROI_SIDE_MAX_MM:.0f} mm a side): other organs were taken for kidney; "
                                      f"draw the box around the kidney by hand"))
    if len(rois) > 2:
        out.append(QualityWarning("ROI_COUNT", WARNING, f"{len(rois)} ROIs for at most two kidneys: delete the "
                                                        f"boxes that hold no kidney"))
    return out


def check_result(labels: np.ndarray, ct: np.ndarray, spacing_zyx: Sequence[float], boxes: Sequence[tuple],
                 rois: Sequence, entropies: Sequence[Tuple[float, int]] = ()) -> List[QualityWarning]:
    """Compare a segmentation (0/1/2, any axis order, with the CT's voxels ``ct`` on the same grid) with what
    real kidneys look like. ``boxes`` are the ROIs' voxel slices of ``labels``, ``rois`` the KidneyROIs they
    come from, ``entropies`` the fine network's (mean normalised entropy, voxels) over each ROI's foreground.
    Arrays are in canonical order (z, y, x pointing S, P, L), as the cascade holds them."""
    from scipy import ndimage

    from .metrics import components_in_box
    from .roi import touched_faces

    spacing_zyx = tuple(float(s) for s in spacing_zyx)
    ml = float(np.prod(spacing_zyx)) / 1000.0
    out = roi_warnings(rois)
    # the fine stage labels only inside the ROIs: work on their union, not the whole scan (memory)
    union = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3)) \
        if boxes else tuple(slice(0, n) for n in labels.shape)
    fg_union = labels[union] > 0
    found, comp, n = components_in_box(fg_union)
    if found is None:
        return out + [QualityWarning("NO_KIDNEY_LABELLED", CRITICAL, "the fine stage labelled no kidney in the "
                                     "ROIs: check that each box is on a kidney")]
    box = tuple(slice(f.start + u.start, f.stop + u.start) for f, u in zip(found, union))
    sub_labels = labels[box]
    sizes = np.bincount(comp.ravel(), minlength=n + 1) * ml
    tumor = np.bincount(comp[sub_labels == 2], minlength=n + 1) * ml  # tumor voxels only (memory)
    kidneys = [i for i in range(1, n + 1) if sizes[i] >= MIN_KIDNEY_ML]
    if len(kidneys) > 2:
        out.append(QualityWarning("KIDNEY_COUNT", CRITICAL,
                                  f"{len(kidneys)} separate structures of 10 mL or more are labelled kidney or "
                                  f"tumor (a body has at most two kidneys): other organs were labelled"))
    elif len(kidneys) == 1:
        out.append(QualityWarning("ONE_KIDNEY", WARNING,
                                  "only one kidney was labelled: a solitary or horseshoe kidney, or one the ROIs "
                                  "missed; check the other side"))
    objects = ndimage.find_objects(comp)
    for i in kidneys:
        extent = max((s.stop - s.start) * sp for s, sp in zip(objects[i - 1], spacing_zyx))
        what = f"a kidney of {sizes[i]:.0f} mL" + (f" (tumor {tumor[i]:.0f} mL)" if tumor[i] > 0 else "")
        out += _kidney_size_warnings(what, float(sizes[i]), float(extent))
        if tumor[i] > sizes[i] - tumor[i]:
            out.append(QualityWarning("TUMOR_LARGER_THAN_KIDNEY", WARNING,
                                      f"in {what} the tumor outweighs the rest of the kidney "
                                      f"({sizes[i] - tumor[i]:.0f} mL): true of 7.5% of real KiTS19 kidneys, all "
                                      f"with large tumors; check the tumor's border"))
    if sum(tumor[i] > 0 for i in kidneys) > 1:
        out.append(QualityWarning("TUMOR_BILATERAL", WARNING, "tumor is labelled in both kidneys (4 of 168 KiTS19 "
                                                              "patients): check each tumor"))
    for roi, b in zip(rois, boxes):
        inside = tuple(slice(s.start - u.start, s.stop - u.start) for s, u in zip(b, union))
        faces = touched_faces(fg_union[inside], b, labels.shape, spacing_zyx, FACE_TOUCH_MM2)
        if faces:
            names = ", ".join(_FACE_NAMES[f] for f in faces)
            out.append(QualityWarning("FOREGROUND_AT_ROI_FACE", WARNING,
                                      f"kidney or tumor reaches the {names} face of the {roi.name}: the box may "
                                      f"cut the kidney off; enlarge it (or use ROI growth) and run again"))
    edges = _scan_edges(labels, spacing_zyx)
    if edges:
        out.append(QualityWarning("KIDNEY_AT_SCAN_EDGE", WARNING,
                                  f"kidney or tumor reaches the {', '.join(edges)} edge of the scan: the scan may "
                                  f"cut a kidney off, and volumes are then too small"))
    entropy = mean_entropy(entropies)
    if entropy is not None and entropy > MAX_MEAN_ENTROPY:
        out.append(QualityWarning("LOW_CONFIDENCE", WARNING,
                                  f"the fine network is unsure of what it labelled (mean entropy {entropy:.2f}; "
                                  f"at most {MAX_MEAN_ENTROPY} on training phantoms it segments well): check the "
                                  f"result"))
    kidney_hu = np.asarray(ct[box][sub_labels == 1], dtype=np.float32)
    if kidney_hu.size:
        median = float(np.median(kidney_hu))
        lo_hu, hi_hu = KIDNEY_HU_RANGE
        if not lo_hu <= median <= hi_hu:
            out.append(QualityWarning("KIDNEY_INTENSITY", WARNING,
                                      f"the voxels labelled kidney have a median of {median:.0f} HU; kidney is "
                                      f"about -10 to 60 HU without contrast and 100 to 300 HU with it: another "
                                      f"tissue may have been labelled"))
    return out


def mean_entropy(entropies: Sequence[Tuple[float, int]]) -> Optional[float]:
    """The fine network's mean entropy over all the voxels it labelled, from per-ROI (mean, voxels)."""
    n = sum(c for _, c in entropies)
    return sum(m * c for m, c in entropies) / n if n else None


def _kidney_size_warnings(what: str, ml: float, extent_mm: float) -> List[QualityWarning]:
    """Volume and extent against real kidneys: a warning outside 99% of them, critical outside them all."""
    (wlo, whi), (clo, chi) = KIDNEY_ML_WARN, KIDNEY_ML_CRITICAL
    if not clo <= ml <= chi:
        return [QualityWarning("KIDNEY_VOLUME", CRITICAL,
                               f"{what} is outside the {clo:.0f}-{chi:.0f} mL any real kidney with its tumor has: "
                               f"the segmentation is implausible; check it slice by slice")]
    if extent_mm > KIDNEY_EXTENT_CRITICAL_MM:
        return [QualityWarning("KIDNEY_EXTENT", CRITICAL,
                               f"{what} spans {extent_mm:.0f} mm, more than any real kidney (at most "
                               f"{KIDNEY_EXTENT_CRITICAL_MM:.0f} mm): other organs were labelled")]
    out = []
    if not wlo <= ml <= whi:
        out.append(QualityWarning("KIDNEY_VOLUME", WARNING,
                                  f"{what} is outside the {wlo:.0f}-{whi:.0f} mL of 99% of real kidneys: check it"))
    if extent_mm > KIDNEY_EXTENT_WARN_MM:
        out.append(QualityWarning("KIDNEY_EXTENT", WARNING,
                                  f"{what} spans {extent_mm:.0f} mm, more than 99.5% of real kidneys "
                                  f"({KIDNEY_EXTENT_WARN_MM:.0f} mm): check for labelled neighbouring organs"))
    return out


# (LPS axis, side) from roi.touched_faces -> words
_FACE_NAMES = {(0, -1): "right", (0, 1): "left", (1, -1): "anterior", (1, 1): "posterior",
               (2, -1): "inferior", (2, 1): "superior"}


def _scan_edges(labels: np.ndarray, spacing_zyx: Sequence[float]) -> List[str]:
    """Which ends of a canonical (S, P, L-ordered) scan kidney or tumor reaches over >= FACE_TOUCH_MM2."""
    names = (("inferior", "superior"), ("anterior", "posterior"), ("right", "left"))
    out = []
    for ax in range(3):
        area = float(np.prod([spacing_zyx[a] for a in range(3) if a != ax]))
        for side, index in ((0, 0), (1, -1)):
            if np.count_nonzero(np.take(labels, index, axis=ax)) * area >= FACE_TOUCH_MM2:
                out.append(names[ax][side])
    return out


def _mm(size) -> str:
    return " x ".join(f"{v:.0f}" for v in size) + " mm"


def exit_status_text(warnings: Sequence[QualityWarning]) -> str:
    """One closing line for a person: how far to trust the result."""
    if not warnings:
        return "No quality warnings."
    critical = sum(w.severity == CRITICAL for w in warnings)
    if critical:
        return (f"{len(warnings)} quality warning(s), {critical} critical: the result is implausible; do not use "
                f"it without checking and correcting it.")
    return f"{len(warnings)} quality warning(s): check the result before using it."
