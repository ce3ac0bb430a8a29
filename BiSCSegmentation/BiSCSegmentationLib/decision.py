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
  3. fine stage only: tumor components (26-connected, over the whole case) smaller than ``min_tumor_ml`` become kidney,
     except the largest: with Eq. 1's class balancing the network marks scattered specks of kidney as
     tumor, and each such speck costs tumor Dice; the largest is kept so that a case whose only tumor is
     small keeps it.

Both rules work from the two probability differences (p1 - p0, p2 - p0) that the cascade restores onto the
CT grid (a third less interpolation than three channels): with p0 + p1 + p2 = 1, which linear
interpolation keeps, p0 = (1 - d1 - d2) / 3.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Dict, Optional

import numpy as np
import torch

RULES = ("argmax", "foreground")


@dataclass(frozen=True)
class Decision:
    """How a stage's probabilities become labels (see the module docstring)."""

    rule: str = "argmax"
    foreground_bias: float = 0.0
    tumor_bias: float = 0.0
    min_tumor_ml: float = 0.0

    @classmethod
    def from_dict(cls, d: Optional[Dict]) -> "Decision":
        """From a model file's ``decision`` entry (None or empty: the argmax rule); raises ValueError."""
        if not d:
            return cls()
        unknown = set(d) - {"rule", "foreground_bias", "tumor_bias", "min_tumor_ml"}
        if unknown:
            raise ValueError(f"unknown decision settings {sorted(unknown)}")
        try:
            out = cls(str(d.get("rule", "argmax")), float(d.get("foreground_bias", 0.0)),
                      float(d.get("tumor_bias", 0.0)), float(d.get("min_tumor_ml", 0.0)))
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
        values = (self.foreground_bias, self.tumor_bias, self.min_tumor_ml)
        if not all(math.isfinite(v) for v in values):
            return f"decision settings must be finite numbers, got {values}"
        if self.rule == "argmax" and any(values):
            return "the argmax rule takes no biases or minimum tumor size; use rule 'foreground'"
        if self.min_tumor_ml < 0:
            return f"min_tumor_ml must be >= 0, got {self.min_tumor_ml}"
        if stage == "rough" and self.min_tumor_ml:
            return "min_tumor_ml is a fine-stage setting (the rough stage only finds the ROIs); set it to 0"
        return None

    def without_small_tumor_step(self) -> "Decision":
        """The same rule keeping every tumor component (for a reader who wants to see every small tumor)."""
        return Decision(self.rule, self.foreground_bias, self.tumor_bias, 0.0)

    def to_dict(self) -> Dict:
        return asdict(self)

    def describe(self) -> str:
        if self.rule == "argmax":
            return "argmax"
        parts = [f"foreground bias {self.foreground_bias:g}", f"tumor bias {self.tumor_bias:g}"]
        if self.min_tumor_ml:
            parts.append(f"separate tumors under {self.min_tumor_ml:g} mL become kidney unless largest")
        return f"foreground rule ({', '.join(parts)})"


ARGMAX = Decision()


def labels_from_differences(diff: torch.Tensor, decision: Decision = ARGMAX) -> np.ndarray:
    """uint8 labels (0, 1, 2) from ``diff`` = (p1 - p0, p2 - p0) by the decision's rule (steps 1-2; the
    component step 3 is :func:`relabel_small_tumors`, run once over the whole case)."""
    d1, d2 = diff[0], diff[1]
    if decision.rule == "argmax":  # kidney where p1 > p0, tumor where p2 > max(p0, p1): torch.argmax's ties
        out = (d1 > 0).to(torch.uint8)
        out[d2 > torch.clamp(d1, min=0)] = 2
        return out.cpu().numpy()
    p0 = (1.0 - d1 - d2) / 3.0
    p1, p2 = d1 + p0, d2 + p0
    fg = (p1 + p2) * math.exp(decision.foreground_bias) > p0
    out = fg.to(torch.uint8)
    out[fg & (p2 * math.exp(decision.tumor_bias) > p1)] = 2
    return out.cpu().numpy()


def relabel_small_tumors(labels: np.ndarray, voxel_ml: float, min_ml: float) -> int:
    """In place: tumor components (26-connected) under ``min_ml`` mL become kidney, except the largest.
    ``labels`` may be a view (the cascade passes a canonical view of its output). Returns how many voxels
    changed."""
    from scipy import ndimage

    if min_ml <= 0:
        return 0
    tumor = labels == 2
    box = ndimage.find_objects(tumor.view(np.uint8))
    if not box:
        return 0
    comp, n = ndimage.label(tumor[box[0]], structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return 0
    sizes = np.bincount(comp.ravel())
    sizes[0] = 0
    small = sizes * float(voxel_ml) < float(min_ml)
    small[0] = False
    small[int(np.argmax(sizes))] = False
    if not small.any():
        return 0
    region = labels[box[0]]
    change = small[comp]
    region[change] = 1
    return int(np.count_nonzero(change))


__all__ = ["Decision", "ARGMAX", "RULES", "labels_from_differences", "relabel_small_tumors"]
