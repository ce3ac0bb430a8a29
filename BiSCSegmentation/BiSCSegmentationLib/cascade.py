"""The BiSC-UNet cascade: rough SC-UNet -> one ROI per kidney -> fine SC-UNet per ROI -> label map.

The two stages are separately callable, with the ROIs (physical boxes) as the hand-off, so that a person
can review, move, resize, add or delete ROIs between them (the 3D Slicer module does exactly that):

    predictor = CascadePredictor(rough, fine, InferenceSettings(device="cpu"))
    rough = predictor.locate(ct)                 # RoughResult: preview mask + ROIs
    labels = predictor.segment(ct, rough.rois)   # Volume on exactly ct's grid: 0 bg, 1 kidney, 2 tumor
    # or both at once: predictor.predict(ct)

Inputs of any size, spacing and orientation work: the CT is reoriented losslessly to canonical axes,
resampled per stage, and every result is put back on the input's own grid.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .backends import select_backend
from .decision import ISLAND_FRACTION, Decision, apply_case_steps, case_step_maps, labels_from_differences
from .errors import Cancelled, InputError, ModelError, NoKidneyFound, ROIError
from .inference_settings import InferenceSettings
from .limits import allocation_guard, check_fine_stage, check_rough_stage
from .model_file import StageModel, load_bundled, load_model_file
from .quality import QualityWarning, check_input, check_result, merge, roi_warnings
from .resample import AxisMap, covering_map, nearest_to_stored, resample_linear, spacing_map
from .roi import (MAX_ROI_SIDE_MM, KidneyROI, check_roi, distinct_rois, grow_roi, roi_index_bounds, rois_from_mask,
                  touched_faces)
from .volume import Reorientation, Volume, to_canonical
from .windows import run_network, sliding_window

ProgressCallback = Callable[[str, float], None]
AIR_HU = -1024.0


def pick_device(device: str = "auto") -> torch.device:
    """'auto' picks cuda, then Apple mps, then cpu; anything else is passed to torch."""
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available; use 'auto' or 'cpu'")
    return dev


class RoughResult:
    """The rough stage's output: ``lowres`` (rough labels on the rough grid, canonical orientation, physical
    geometry), ``rois`` and ``mask``, the rough labels on the input's grid (a preview). The preview is made
    on first use: the cascade itself needs only the ROIs, and a full-resolution copy of a 300-slice CT's
    labels costs ~0.05 s."""

    def __init__(self, mask, lowres: Volume, rois: List[KidneyROI]):
        self._mask = mask  # a Volume, or a function that makes it
        self.lowres, self.rois = lowres, rois

    @property
    def mask(self) -> Volume:
        if callable(self._mask):
            self._mask = self._mask()
        return self._mask


@dataclass
class CascadeResult:
    labels: Volume
    rough: RoughResult
    rois: List[KidneyROI]
    timings: Dict[str, float] = field(default_factory=dict)


class CascadePredictor:
    """Runs both stages; see the module docstring. ``settings`` (:class:`InferenceSettings`) say how;
    ``progress(stage, fraction)`` is called as work advances; ``cancel()`` returning True (or an Event being
    set) stops with :class:`Cancelled`. ``decision``/``rough_decision`` replace the model files' own rules
    (training's tuner and tests); ``backend`` replaces the backend object the settings name (tests)."""

    def __init__(
        self,
        rough: StageModel,
        fine: StageModel,
        settings: Optional[InferenceSettings] = None,
        *,
        progress: Optional[ProgressCallback] = None,
        cancel=None,
        decision: Optional[Decision] = None,
        rough_decision: Optional[Decision] = None,
        backend=None,
    ):
        if rough.stage != "rough" or fine.stage != "fine":
            raise ModelError("CascadePredictor needs a rough and a fine stage model, in that order")
        if settings is None:
            settings = InferenceSettings()
        elif not isinstance(settings, InferenceSettings):
            raise TypeError(f"settings must be an InferenceSettings, not {type(settings).__name__}")
        self.settings = settings
        self.rough_model, self.fine_model = rough, fine
        self.device = pick_device(settings.device)
        self.backend = select_backend(settings.backend, None, self.device) if backend is None else backend
        if getattr(self.backend, "name", "torch") != "torch":
            self.device = torch.device("cpu")
        self._runners: Dict[str, Callable] = {}
        self.progress = progress
        self.cancel = cancel
        self.used_rois: List[KidneyROI] = []
        self._entropy: Tuple[float, int] = (0.0, 0)
        self._checked: Optional[tuple] = None  # (CT array, its geometry, its input warnings): see _check_input
        # what the last locate() or segment() found doubtful about its input and result (quality.py)
        self.warnings: List[QualityWarning] = []
        # the fine network's doubt per ROI of the last segment(): (mean entropy over its foreground, voxels)
        self.roi_entropies: List[Tuple[float, int]] = []
        # how each stage's probabilities become labels: the model file's own rule unless one is given
        self.decision = settings.fine_decision(fine.decision) if decision is None else decision
        self.rough_decision = rough.decision if rough_decision is None else rough_decision
        self.timings: Dict[str, float] = {}
        self.notes: List[str] = []  # what the last segment() changed about its ROIs (duplicates left out)
        for m in (rough, fine):
            m.network.to(self.device).eval()

    @property
    def backend_name(self) -> str:
        """What runs the networks, in words (for display); fallbacks are noted once the networks are prepared."""
        return self.backend.describe()

    def prepare(self, stages: Sequence[str] = ("rough", "fine")) -> "CascadePredictor":
        """Convert/compile the stages' networks now (otherwise done on first use)."""
        for m in (self.rough_model, self.fine_model):
            if m.stage in stages:
                self._runner(m)
        return self

    def _runner(self, model: StageModel) -> Callable:
        if model.stage not in self._runners:
            self._runners[model.stage] = self.backend.runner(model)
        return self._runners[model.stage]

    @classmethod
    def from_files(cls, rough_path, fine_path, settings: Optional[InferenceSettings] = None,
                   **kwargs) -> "CascadePredictor":
        return cls(load_model_file(rough_path, stage="rough"), load_model_file(fine_path, stage="fine"), settings,
                   **kwargs)

    @classmethod
    def bundled(cls, name: Optional[str] = None, settings: Optional[InferenceSettings] = None,
                **kwargs) -> "CascadePredictor":
        rough, fine = load_bundled(name)
        return cls(rough, fine, settings, **kwargs)

    # ----------------------------------------------------------------------------------------------- helpers
    def _check_input(self, ct: Volume) -> List[QualityWarning]:
        """quality.check_input, once per CT array: segment() after locate() on the same CT does not redo it."""
        last = self._checked
        if last is None or last[0] is not ct.array or last[1] != (ct.spacing, ct.direction.tobytes()):
            self._checked = (ct.array, (ct.spacing, ct.direction.tobytes()), check_input(ct))
        return list(self._checked[2])

    def _report(self, stage: str, fraction: float) -> None:
        if self._cancelled():
            raise Cancelled(f"cancelled during the {stage} stage")
        if self.progress:
            self.progress(stage, float(min(1.0, max(0.0, fraction))))

    def _cancelled(self) -> bool:
        c = self.cancel
        if c is None:
            return False
        return bool(c.is_set() if hasattr(c, "is_set") else c())

    @staticmethod
    def _normalise(x: torch.Tensor, model: StageModel) -> torch.Tensor:
        lo, hi = (float(v) for v in model.intensity["clip"])
        return (x.clamp_(lo, hi) - float(model.intensity["mean"])) / float(model.intensity["std"])

    def _probabilities(self, model: StageModel, image: torch.Tensor, stage: str,
                       span: Tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """Softmax of the label branch over a (Z, Y, X) normalised image, by sliding window if needed."""
        probs = sliding_window(
            model,
            image,
            self.device,
            self.settings.mirror,
            lambda f: self._report(stage, span[0] + f * (span[1] - span[0])),
            runner=self._runner(model),
        )
        return probs

    # ----------------------------------------------------------------------------------------------- stages
    @allocation_guard("the rough stage")
    def locate(self, ct: Volume) -> RoughResult:
        """Rough stage: in-plane to 128x128 (z at the model's spacing), predict, find one ROI per kidney."""
        self.warnings = self._check_input(ct)
        t0 = time.perf_counter()
        self._report("rough", 0.0)
        canon, reo = to_canonical(ct)
        g = self.rough_model.grid
        nz, ny, nx = canon.array.shape
        maps = rough_grid(canon, int(g["inplane_size"]), float(g["z_spacing"]))
        check_rough_stage(canon, [m.n_out for m in maps], self.rough_model)
        image = resample_linear(canon.array, maps, fill=AIR_HU)
        image = self._normalise(image, self.rough_model)
        probs = self._probabilities(self.rough_model, image, "rough", (0.0, 0.9))
        release = getattr(self._runner(self.rough_model), "release", None)
        if release:  # the rough network's buffers (~260 MB with OpenVINO) would stay held through the fine stage
            release()
        low = (label_argmax(probs) if self.rough_decision.rule == "argmax"
               else labels_from_differences(probs[1:] - probs[:1], self.rough_decision))
        lowres = _grid_volume(canon, maps, low)
        self.timings["rough"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        rois = rois_from_mask(
            lowres,
            self.fine_model.fine_spacing,
            min_component_ml=self.settings.min_component_ml,
            midline_x=_midline_x(canon),
        )
        back = [m.inverse(n) for m, n in zip(maps, canon.array.shape)]
        self.warnings = merge(self.warnings, roi_warnings(rois))
        self.timings["locate"] = time.perf_counter() - t1
        self._report("rough", 1.0)
        return RoughResult(lambda: ct.with_array(nearest_to_stored(low, back, reo)), lowres, rois)

    @allocation_guard("the fine stage")
    def segment(self, ct: Volume, rois: Sequence[KidneyROI]) -> Volume:
        """Fine stage on each ROI at the fine model's spacing; results pasted back onto ct's grid. The input
        and the result are checked (``self.warnings``); ROIs identical to or inside another are left out
        (``notes`` says so); the work's size is checked first (limits.py)."""
        input_warnings = self._check_input(ct)
        if not rois:
            raise NoKidneyFound()
        rois, self.notes = distinct_rois(rois)
        problems = [p for r in rois for p in check_roi(r, ct)]
        if problems:
            raise ROIError("; ".join(problems))
        t0 = time.perf_counter()
        canon, reo = to_canonical(ct)
        check_fine_stage(rois, lambda r: fine_grid(canon, r, self.fine_model), ct.array.size, self.fine_model,
                         self.decision.has_case_steps)
        out_stored = np.zeros(ct.array.shape, dtype=np.uint8)
        out = reo.apply(out_stored)  # a canonical view: pasting into it fills out_stored, no copy back
        boxes, per_roi, maps, used, entropies = [], [], [], [], []
        for n, roi in enumerate(rois):
            span = (n / len(rois), (n + 1) / len(rois))
            self._report("fine", span[0])
            roi, box, labels, roi_maps = self._segment_roi(canon, roi, span, self.decision.has_case_steps)
            used.append(roi)
            entropies.append(self._entropy)
            boxes.append(box)
            per_roi.append(labels)
            maps.append(roi_maps)
        finish_case(out, boxes, per_roi, maps, self.decision, float(np.prod(canon.spacing)) / 1000.0)
        self.used_rois, self.roi_entropies = used, entropies
        self.warnings = merge(input_warnings, check_result(out, canon.array, canon.spacing[::-1], boxes, used,
                                                           entropies))
        self._report("fine", 1.0)
        result = ct.with_array(out_stored)
        self.timings["fine"] = time.perf_counter() - t0
        return result

    def _segment_roi(self, canon: Volume, roi: KidneyROI, span, with_maps: bool):
        """(ROI used, box, labels, the whole-case steps' maps on the same voxels (``case_step_maps``) when
        asked, else None)."""
        roi, box, restored, labels = self.grown_differences(canon, roi, span)
        return roi, box, labels, case_step_maps(restored, self.decision) if with_maps else None

    def grown_differences(self, canon: Volume, roi: KidneyROI, span=(0.0, 1.0)):
        """:meth:`restored_differences` and this stage's labels on ``roi``, grown through the faces its
        foreground touches and run again (at most ``roi_growth`` times): (ROI used, box, restored, labels).

        A rough stage that takes part of a large tumor for background gives a box that cuts the kidney off;
        the fine network, which sees the tumor at full resolution, then marks foreground up to the box's
        face. Growing fixes that (24 training phantoms with v7, 2 rounds, 200 mm2: kidney / tumor Dice 0.9549 /
        0.8381 -> 0.9645 / 0.8486, one case 0.58 -> 0.81 kidney) but also follows false foreground into the
        next organ (34 held-out phantoms: 0.9479 / 0.7441 -> 0.9370 / 0.7150), so it is off by default.
        Extra rounds report no progress.
        """
        bounds = _physical_bounds(canon)
        for round_ in range(self.settings.roi_growth + 1):
            box, restored = self.restored_differences(canon, roi, span if round_ == 0 else (span[1], span[1]))
            labels = roi_labels(restored, self.decision, self.settings.keep_largest)
            if round_ == self.settings.roi_growth:
                break
            faces = touched_faces(
                labels >= self.settings.roi_growth_label,
                box,
                canon.array.shape,
                canon.spacing[::-1],
                self.settings.roi_growth_min_mm2,
            )
            grown = grow_roi(roi, faces, bounds=bounds) if faces else roi
            if grown == roi or max(grown.size) > MAX_ROI_SIDE_MM:  # no kidney is that large (roi.check_roi)
                break
            roi = grown
        return roi, box, restored, labels

    def restored_differences(self, canon: Volume, roi: KidneyROI,
                             span=(0.0, 1.0)) -> Tuple[Tuple[slice, ...], torch.Tensor]:
        """The fine network's (p1 - p0, p2 - p0) for one ROI, restored onto the canonical CT's voxels it covers:
        (slices of canon.array, tensor (2, ...)). Everything a decision rule needs (decision.py)."""
        grid, box = fine_grid(canon, roi, self.fine_model)
        image = resample_linear(canon.array, grid, fill=AIR_HU)
        image = self._normalise(image, self.fine_model)
        probs = self._probabilities(self.fine_model, image, "fine", span)
        back = [m.inverse(s.stop - s.start, s.start) for m, s in zip(grid, box)]
        if probs.shape[0] != 3:
            raise ModelError(
                f"the fine model predicts {probs.shape[0]} classes; the cascade needs 3 " "(background, kidney, tumor)"
            )
        self._entropy = foreground_entropy(probs)
        # Interpolation is linear, so restoring p1 - p0 and p2 - p0 gives the labels of the restored
        # probabilities (either decision rule) with two channels instead of three (a third less of the
        # largest glue step).
        return box, resample_linear(probs[1:] - probs[:1], back, fill=None)

    def predict(self, ct: Volume) -> CascadeResult:
        """Both stages; raises NoKidneyFound when the rough stage finds nothing."""
        t0 = time.perf_counter()
        rough = self.locate(ct)
        labels = self.segment(ct, rough.rois)
        self.timings["total"] = time.perf_counter() - t0
        return CascadeResult(labels, rough, list(self.used_rois), dict(self.timings))


# ---------------------------------------------------------------------------------------------------- glue
def foreground_entropy(probs: torch.Tensor) -> Tuple[float, int]:
    """(mean entropy of the class probabilities, normalised to 0-1, over the voxels more likely kidney or tumor
    than background; their number): how unsure the network is of what it labels."""
    fg = probs[0] < 0.5
    count = int(fg.sum())
    if not count:
        return 0.0, 0
    p = probs[:, fg].float().clamp_min(1e-7)
    return float((-(p * p.log()).sum(0) / math.log(probs.shape[0])).mean()), count


def label_argmax(probs: torch.Tensor) -> np.ndarray:
    """uint8 argmax over the class axis (first maximum wins, as torch.argmax); fast for 3 classes."""
    if probs.shape[0] != 3:
        return probs.argmax(0).to(torch.uint8).cpu().numpy()
    p0, p1, p2 = probs[0], probs[1], probs[2]
    kidney = p1 > p0
    out = kidney.to(torch.uint8)
    out[p2 > torch.maximum(p0, p1)] = 2
    return out.cpu().numpy()


def roi_labels(restored: torch.Tensor, decision: Decision, keep_largest: bool = True) -> np.ndarray:
    """One ROI's labels from its restored differences (``restored_differences``): the decision rule, then the
    islands dropped (:func:`small_components`). With :func:`finish_case`, the fine output's whole
    post-processing: the cascade and training's decision tuner both run exactly these two functions.

    Islands are found on the CT's own grid: on the coarser fine grid instead, they cost 0.0005 kidney and
    0.0007 tumor Dice on the 34 held-out phantoms (thin links to the kidney break there)."""
    labels = labels_from_differences(restored, decision)
    drop = small_components(labels, decision.min_island_fraction) if keep_largest else None
    if drop is not None:
        labels[drop] = 0
    return labels


def finish_case(
    out: np.ndarray,
    boxes: Sequence[Tuple[slice, ...]],
    labels: Sequence[np.ndarray],
    maps: Sequence,
    decision: Decision,
    voxel_ml: float,
) -> None:
    """In place: each ROI's ``labels`` pasted into ``out`` at its box (overlapping ROIs: union, tumor wins over
    kidney), then the decision's whole-case steps over the union of the boxes, so that a tumor split by two
    ROIs is one, with each ROI's ``case_step_maps`` (``maps``; unused when the rule has no such step) pasted
    the same way."""
    for box, roi_out in zip(boxes, labels):
        region = out[box]
        np.maximum(region, roi_out, out=region)
    if decision.has_case_steps and boxes:
        union = tuple(slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3))
        pasted = [None if m[0] is None else paste_max(union, boxes, m) for m in zip(*maps)]
        apply_case_steps(out[union], voxel_ml, decision, *pasted)


def paste_max(union: Tuple[slice, ...], boxes: Sequence[Tuple[slice, ...]], arrays: Sequence[np.ndarray]) -> np.ndarray:
    """One array over the ``union`` box holding each of ``arrays`` at its box (their maximum where boxes overlap)."""
    out = np.zeros(tuple(u.stop - u.start for u in union), dtype=arrays[0].dtype)
    for box, a in zip(boxes, arrays):
        region = out[tuple(slice(b.start - u.start, b.stop - u.start) for b, u in zip(box, union))]
        np.maximum(region, a, out=region)
    return out


def small_components(labels: np.ndarray, min_fraction: float = ISLAND_FRACTION) -> Optional[np.ndarray]:
    """Within one ROI, the voxels of the 26-connected kidney+tumor components smaller than ``min_fraction``
    of the largest (None when there are none): islands elsewhere in the box (bowel, vessels, ribs, a
    neighbouring organ). The ROI is centred on one kidney, so its kidney is the dominant structure; the
    paper's connected-component step (Sec. 2.2) applied to the fine output. The fraction is the fine model's
    ``Decision.min_island_fraction``."""
    from .metrics import components_in_box

    box, comp, n = components_in_box(labels > 0)
    if n <= 1:
        return None
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    drop = sizes < min_fraction * sizes.max()  # a lookup table over the components (faster than np.isin)
    drop[0] = False
    if not drop.any():
        return None
    out = np.zeros(labels.shape, dtype=bool)
    out[box] = drop[comp]
    return out


# --------------------------------------------------------------------------------------------------- grids
def rough_grid(canon: Volume, inplane_size: int, z_spacing: float) -> Tuple[AxisMap, AxisMap, AxisMap]:
    """The rough stage's grid (numpy order z, y, x): in-plane resized to ``inplane_size`` squared (paper:
    128x128), z at ``z_spacing``. Training prepares its data on exactly this grid."""
    nz, ny, nx = canon.array.shape
    return (spacing_map(nz, canon.spacing[2], z_spacing), covering_map(ny, inplane_size),
            covering_map(nx, inplane_size))


def _grid_volume(canon: Volume, maps: Sequence[AxisMap], array: np.ndarray) -> Volume:
    """Volume for ``array`` sampled from canonical ``canon`` at ``maps`` (numpy order z, y, x)."""
    start_ijk = np.array([maps[2].start, maps[1].start, maps[0].start])
    step_ijk = np.array([maps[2].step, maps[1].step, maps[0].step])
    origin = canon.index_to_physical(start_ijk)
    return Volume(array, tuple(np.array(canon.spacing) * step_ijk), tuple(origin), canon.direction)


def _physical_bounds(canon: Volume) -> Tuple[np.ndarray, np.ndarray]:
    """LPS bounding box of the CT's voxels (their outer faces): an ROI never needs to grow past it."""
    n = np.array(canon.size_ijk, dtype=float)
    corners = np.array([[i, j, k] for i in (-0.5, n[0] - 0.5) for j in (-0.5, n[1] - 0.5) for k in (-0.5, n[2] - 0.5)])
    phys = canon.index_to_physical(corners)
    return phys.min(axis=0), phys.max(axis=0)


def _midline_x(canon: Volume) -> float:
    """Patient midline estimate: the x (LPS) centre of the body (voxels above -500 HU), else the image centre."""
    a = canon.array
    sub = a[:: max(1, a.shape[0] // 16), ::4, ::4]
    cols = np.flatnonzero((sub > -500).any(axis=(0, 1)))
    if cols.size < 2:
        centre = (np.array(canon.size_ijk) - 1) / 2.0
        return float(canon.index_to_physical(centre)[0])
    i_mid = (cols[0] + cols[-1]) * 4 / 2.0
    centre = np.array([i_mid, (canon.size_ijk[1] - 1) / 2.0, (canon.size_ijk[2] - 1) / 2.0])
    return float(canon.index_to_physical(centre)[0])


def fine_grid(canon: Volume, roi: KidneyROI, model: StageModel) -> Tuple[List[AxisMap], Tuple[slice, slice, slice]]:
    """The ROI's sampling grid at the fine spacing (numpy order z, y, x) and the canonical voxels it covers.

    The grid is centred on the ROI, a multiple of the network's divisor in every axis, and starts on a
    canonical voxel centre, so when the CT already has the fine spacing the round trip is an exact copy.
    Voxels outside the CT are padded with air; only voxels inside both the ROI and the CT are pasted back.
    """
    lo, hi = (v[::-1] for v in roi_index_bounds(roi, canon))
    spacing_zyx = np.array(canon.spacing[::-1])
    fine_zyx = np.array(model.fine_spacing[::-1])
    div = model.config.divisor
    maps, box = [], []
    for ax in range(3):
        step = fine_zyx[ax] / spacing_zyx[ax]
        n = int(math.ceil((hi[ax] - lo[ax]) / step - 1e-6))
        n = max(div, int(math.ceil(n / div) * div))
        start = (lo[ax] + hi[ax]) / 2.0 - (n - 1) / 2.0 * step
        maps.append(AxisMap(n, float(round(start)), float(step)))
        first = max(0, int(math.ceil(lo[ax] - 1e-6)))
        last = min(canon.array.shape[ax] - 1, int(math.floor(hi[ax] + 1e-6)))
        box.append(slice(first, max(first, last + 1)))
    return maps, tuple(box)


__all__ = ["CascadePredictor", "CascadeResult", "RoughResult", "Cancelled", "NoKidneyFound", "pick_device",
           "fine_grid", "sliding_window", "run_network", "Reorientation"]
