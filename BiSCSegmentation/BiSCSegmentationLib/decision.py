"""From a network's probabilities to labels: the decision rule each model file carries.

Two rules, chosen per model file (``"decision"``; a file without it uses ``argmax``, as before it existed):

- ``argmax``: the class with the largest probability.
- ``foreground``: two nested decisions instead of one three-way vote, each with a log-odds bias tuned on
  training cases (``bisc_training.tune_decision``), then one clean-up:
  1. kidney-or-tumor against background: foreground where p(kidney) + p(tumor) > p(background) x
     exp(-foreground_bias). The argmax splits the foreground vote between two classes, so where a kidney
     meets a tumor, and inside large tumors, it gives voxels to the background that both foreground classes
     together would win;
  2. within the foreground, tumor where p(tumor) x exp(tumor_bias) > p(kidney);
  3. fine stage only: tumor components (26-connected, over the whole case) become kidney when they are
     smaller than ``min_tumor_ml`` or their mean p(tumor) is under ``min_tumor_probability``, except the
     largest. With Eq. 1's class balancing the network marks specks and patches of healthy kidney as tumor,
     and each costs tumor Dice. Those false components are less sure than true ones (on 24 training
     phantoms with v6: mean p(tumor) 0.35-0.71 against 0.69-0.88 for true tumors up to 150 mL), so the
     mean probability sorts them better than size alone, which also drops small true tumors that lie beside
     a larger false one. The largest is kept so that a case whose only tumor is small or uncertain keeps it.

  4. fine stage only: large tumors take their unsure margin. Background voxels where p(tumor) > p(kidney)
     and the foreground passes a lower threshold, (p(kidney) + p(tumor)) x exp(foreground_bias +
     tumor_margin_bias) > p(background), become tumor when they connect (26-connected, through such
     voxels) to a tumor component of at least ``tumor_margin_min_ml`` mL. On 72 training phantoms with v9's
     networks most missed kidney was the outer shell of large tumors (1.9 of 2.0 L missed, median p(kidney +
     tumor) 0.33-0.40 there, 1-2 mm inside the true surface); lowering the threshold everywhere grows false
     tumors too, so only tumors big enough to be real (after step 3) grow.

Under either rule, the fine stage then drops, per ROI, kidney+tumor islands smaller than
``min_island_fraction`` of the ROI's largest (``cascade.small_components``): an ROI is centred on one
kidney, so a detached island of that size is another organ. The fraction was 0.2, fixed, before it became a
setting (files without it keep 0.2); on 72 training phantoms with v9's networks 0.4-0.6 scored alike and
removed false kidney in a neighbouring organ in 4 cases (kidney Dice 0.9570 -> 0.9604, no case worse),
while 0.8 and over dropped a true kidney split in two by its tumor.

Both rules work from the two probability differences (p1 - p0, p2 - p0) that the cascade restores onto the
CT grid (a third less interpolation than three channels): with p0 + p1 + p2 = 1, which linear
interpolation keeps, p0 = (1 - d1 - d2) / 3.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Dict, Optional, Tuple

import numpy as np
import torch

RULES = ("argmax", "foreground")
ISLAND_FRACTION = 0.2  # the fine stage's island step before it was a setting (files without one)


@dataclass(frozen=True)
class Decision:
    """How a stage's probabilities become labels (see the module docstring)."""

    rule: str = "argmax"
    foreground_bias: float = 0.0
    tumor_bias: float = 0.0
    min_tumor_ml: float = 0.0
    min_tumor_probability: float = 0.0
    min_island_fraction: float = ISLAND_FRACTION
    tumor_margin_bias: float = 0.0
    tumor_margin_min_ml: float = 0.0

    @classmethod
    def from_dict(cls, d: Optional[Dict]) -> "Decision":
        """From a model file's ``decision`` entry (None or empty: the argmax rule); raises ValueError."""
        if not d:
            return cls()
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown decision settings {sorted(unknown)}")
        try:  # by name: a field added later cannot shift the others; a missing one takes its default
            out = cls(**{k: (str(v) if k == "rule" else float(v)) for k, v in d.items()})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"decision settings must be numbers: {exc}") from None
        problem = out.problem()
        if problem:
            raise ValueError(problem)
        return out

    def problem(self, stage: Optional[str] = None) -> Optional[str]:
        """What is wrong with these settings for ``stage`` ("rough", "fine" or None: either) (None: usable)."""
        if self.rule not in RULES:
            return f"decision rule must be one of {RULES}, got {self.rule!r}"
        values = (self.foreground_bias, self.tumor_bias, self.min_tumor_ml, self.min_tumor_probability,
                  self.tumor_margin_bias, self.tumor_margin_min_ml)
        if not all(math.isfinite(v) for v in values + (self.min_island_fraction,)):
            return f"decision settings must be finite numbers, got {values + (self.min_island_fraction,)}"
        if self.rule == "argmax" and any(values):
            return "the argmax rule takes no biases or tumor component or margin settings; use rule 'foreground'"
        if self.min_tumor_ml < 0:
            return f"min_tumor_ml must be >= 0, got {self.min_tumor_ml}"
        if not 0 <= self.min_tumor_probability < 1:
            return f"min_tumor_probability must be in [0, 1), got {self.min_tumor_probability}"
        if self.tumor_margin_bias < 0 or self.tumor_margin_min_ml < 0:
            return (f"tumor_margin_bias and tumor_margin_min_ml must be >= 0 (bias 0: no margin step), got "
                    f"{self.tumor_margin_bias} and {self.tumor_margin_min_ml}")
        if not 0 <= self.min_island_fraction <= 1:
            return f"min_island_fraction must be in [0, 1] (0: keep every island), got {self.min_island_fraction}"
        if stage == "rough" and (self.has_component_step or self.has_margin_step or self.tumor_margin_min_ml
                                 or self.min_island_fraction != ISLAND_FRACTION):
            return ("min_tumor_ml, min_tumor_probability, tumor_margin_bias, tumor_margin_min_ml and "
                    "min_island_fraction are fine-stage settings (the rough stage only finds the ROIs); leave them "
                    f"at 0, 0, 0, 0 and {ISLAND_FRACTION}")
        return None

    @property
    def has_component_step(self) -> bool:
        """Whether step 3 (small or uncertain tumor components become kidney) changes anything."""
        return self.min_tumor_ml > 0 or self.min_tumor_probability > 0

    @property
    def has_margin_step(self) -> bool:
        """Whether step 4 (large tumors take their unsure margin) runs."""
        return self.tumor_margin_bias > 0

    @property
    def has_case_steps(self) -> bool:
        """Whether a step runs over the whole case after the ROIs are pasted (3 or 4)."""
        return self.has_component_step or self.has_margin_step

    def without_small_tumor_step(self) -> "Decision":
        """The same rule keeping every tumor component (for a reader who wants to see every small tumor)."""
        return replace(self, min_tumor_ml=0.0, min_tumor_probability=0.0)

    def without_tumor_margins(self) -> "Decision":
        """The same rule without step 4 (for a reader who wants the network's own tumor border)."""
        return replace(self, tumor_margin_bias=0.0, tumor_margin_min_ml=0.0)

    def to_dict(self) -> Dict:
        return asdict(self)

    def describe(self) -> str:
        islands = ("" if self.min_island_fraction == ISLAND_FRACTION else
                   f"; islands under {self.min_island_fraction:g} of an ROI's largest dropped")
        if self.rule == "argmax":
            return "argmax" + islands
        parts = [f"foreground bias {self.foreground_bias:g}", f"tumor bias {self.tumor_bias:g}"]
        step = []
        if self.min_tumor_ml:
            step.append(f"under {self.min_tumor_ml:g} mL")
        if self.min_tumor_probability:
            step.append(f"of mean p(tumor) under {self.min_tumor_probability:g}")
        if step:
            parts.append(f"separate tumors {' or '.join(step)} become kidney unless largest")
        if self.has_margin_step:
            parts.append(f"tumors of {self.tumor_margin_min_ml:g} mL or more take their margin at foreground bias "
                         f"+{self.tumor_margin_bias:g}")
        return f"foreground rule ({', '.join(parts)}){islands}"


ARGMAX = Decision()


def labels_from_differences(diff: torch.Tensor, decision: Decision = ARGMAX) -> np.ndarray:
    """uint8 labels (0, 1, 2) from ``diff`` = (p1 - p0, p2 - p0) by the decision's rule (steps 1-2; the
    component step 3 is :func:`relabel_tumor_components`, run once over the whole case)."""
    d1, d2 = diff[0], diff[1]
    if decision.rule == "argmax":  # kidney where p1 > p0, tumor where p2 > max(p0, p1): torch.argmax's ties
        out = (d1 > 0).to(torch.uint8)
        out[d2 > torch.clamp(d1, min=0)] = 2
        return out.cpu().numpy()
    p0, p1, p2 = _probabilities(diff)
    fg = (p1 + p2) * math.exp(decision.foreground_bias) > p0
    out = fg.to(torch.uint8)
    out[fg & (p2 * math.exp(decision.tumor_bias) > p1)] = 2
    return out.cpu().numpy()


def _probabilities(diff: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(p0, p1, p2) from ``diff`` = (p1 - p0, p2 - p0), with p0 + p1 + p2 = 1."""
    p0 = (1.0 - diff[0] - diff[1]) / 3.0
    return p0, diff[0] + p0, diff[1] + p0


def tumor_probability(diff: torch.Tensor) -> torch.Tensor:
    """p(tumor) from ``diff`` = (p1 - p0, p2 - p0): p2 = d2 + p0 with p0 = (1 - d1 - d2) / 3."""
    return (1.0 - diff[0] + 2.0 * diff[1]) / 3.0


def probability_to_uint8(p: torch.Tensor) -> np.ndarray:
    """A probability map stored in a quarter of the memory (step 1/255: means move by < 0.002)."""
    return torch.round(torch.clamp(p, 0.0, 1.0) * 255.0).to(torch.uint8).cpu().numpy()


def relabel_tumor_components(labels: np.ndarray, voxel_ml: float, min_ml: float = 0.0,
                             probability: Optional[np.ndarray] = None, min_probability: float = 0.0) -> int:
    """In place, step 3: tumor components (26-connected) under ``min_ml`` mL, or whose mean ``probability``
    (p(tumor) on ``labels``' grid, float in 0..1 or uint8 in 0..255) is under ``min_probability``, become
    kidney, except the largest. ``labels`` (and ``probability``) may be views (the cascade passes canonical
    views of its output). Returns how many voxels changed."""
    from .metrics import components_in_box

    use_probability = min_probability > 0
    if min_ml <= 0 and not use_probability:
        return 0
    if use_probability and (probability is None or probability.shape != labels.shape):
        raise ValueError("min_probability needs a tumor probability map with the labels' shape")
    box, comp, n = components_in_box(labels == 2)
    if n <= 1:
        return 0
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    drop = sizes * float(voxel_ml) < float(min_ml)
    if use_probability:
        p = probability[box]
        scale = 255.0 if p.dtype == np.uint8 else 1.0
        drop |= _component_sums(comp, p, n) < float(min_probability) * scale * sizes
    drop[0] = False
    drop[int(np.argmax(sizes))] = False
    if not drop.any():
        return 0
    region = labels[box]
    change = drop[comp]
    region[change] = 1
    return int(np.count_nonzero(change))


def _component_sums(comp: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """Sum of ``values`` over each of components 0..n, slab by slab: ``bincount`` wants float64 weights, and a
    float64 copy of a large tumor box (both kidneys' false tumors) held 8 bytes a voxel at the run's peak."""
    sums = np.zeros(n + 1)
    step = max(1, (1 << 22) // max(1, comp[0].size))
    for z in range(0, comp.shape[0], step):
        sl = slice(z, z + step)
        sums += np.bincount(comp[sl].ravel(), weights=values[sl].ravel().astype(np.float64), minlength=n + 1)
    return sums


def case_step_maps(diff: torch.Tensor, decision: Decision) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """What steps 3 and 4 need from one ROI, on its voxels, to run over the whole case once the ROIs are
    pasted (where ROIs overlap, the maximum): (p(tumor) as uint8 when step 3 tests it, step 4's margin
    candidates as bool when step 4 runs), each None when not needed."""
    p_tumor = probability_to_uint8(tumor_probability(diff)) if decision.min_tumor_probability > 0 else None
    return p_tumor, margin_candidates(diff, decision) if decision.has_margin_step else None


def margin_candidates(diff: torch.Tensor, decision: Decision) -> np.ndarray:
    """Step 4's candidates on one ROI's voxels (bool): p(tumor) > p(kidney) and the foreground passes the
    threshold lowered by the margin bias."""
    p0, p1, p2 = _probabilities(diff)
    bias = decision.foreground_bias + decision.tumor_margin_bias
    return ((p2 > p1) & ((p1 + p2) * math.exp(bias) > p0)).cpu().numpy()


def grow_tumor_margins(labels: np.ndarray, voxel_ml: float, min_ml: float, candidates: np.ndarray) -> int:
    """In place, step 4: background ``candidates`` (bool, ``labels``' shape) connected through candidates to a
    tumor component of at least ``min_ml`` mL become tumor. Returns how many voxels changed."""
    from scipy import ndimage

    if candidates.shape != labels.shape:
        raise ValueError("the margin candidates must have the labels' shape")
    tumor = labels == 2
    box = ndimage.find_objects((tumor | (candidates & (labels == 0))).view(np.uint8))
    if not box or not tumor.any():
        return 0
    box = box[0]  # growth never leaves the box of tumor and candidates
    region, tumor = labels[box], tumor[box]
    eight = np.ones((3, 3, 3), bool)
    comp, _ = ndimage.label(tumor, structure=eight)
    sizes = np.bincount(comp.ravel()) * float(voxel_ml)
    big = sizes >= float(min_ml)
    big[0] = False
    seed = big[comp]
    if not seed.any():
        return 0
    free = candidates[box] & (region == 0)
    grown = ndimage.binary_propagation(seed, structure=eight, mask=seed | free) & free
    region[grown] = 2
    return int(np.count_nonzero(grown))


def apply_case_steps(labels: np.ndarray, voxel_ml: float, decision: Decision, p_tumor: Optional[np.ndarray] = None,
                     margin: Optional[np.ndarray] = None) -> None:
    """In place, the whole-case steps 3 and 4 on pasted ``labels`` with :func:`case_step_maps`'s pasted maps."""
    relabel_tumor_components(labels, voxel_ml, decision.min_tumor_ml, p_tumor, decision.min_tumor_probability)
    if decision.has_margin_step:
        if margin is None:
            raise ValueError("the margin step needs the margin candidates (case_step_maps)")
        grow_tumor_margins(labels, voxel_ml, decision.tumor_margin_min_ml, margin)


__all__ = ["Decision", "ARGMAX", "ISLAND_FRACTION", "RULES", "apply_case_steps", "case_step_maps", "grow_tumor_margins",
           "labels_from_differences", "margin_candidates", "probability_to_uint8", "relabel_tumor_components", "tumor_probability"]
