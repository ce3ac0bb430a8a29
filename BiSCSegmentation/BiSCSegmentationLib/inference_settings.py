"""The inference options, in one immutable object that every entry point builds once and passes whole.

The command line (``bisc-segment``), the 3D Slicer module (its logic and worker process), batch runs and the
training package's evaluation all make an :class:`InferenceSettings` and hand it to
:class:`~BiSCSegmentationLib.cascade.CascadePredictor`. A new option is a field here (with its default and
check) plus its control in each user interface. Plain Python: the Slicer module imports it without torch.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Mapping

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")
BACKEND_NAMES = ("auto", "torch", "openvino")
PRECISIONS = ("auto", "f32", "bf16", "f16")
# what the command line and the Slicer module offer: a backend, optionally with a precision
BACKEND_CHOICES = ("auto", "torch", "openvino", "openvino-f32", "openvino-bf16", "torch-bf16")
ROI_GROWTH_ON = 2  # rounds of ROI growth when a user interface offers growth as a plain on/off switch


class SettingsError(InputError):
    """An inference setting out of range or of the wrong type; the message names it."""


@dataclass(frozen=True)
class InferenceSettings:
    """How the cascade runs. Defaults are the product's defaults."""

    device: str = "auto"              # auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:N, mps
    backend: str = "auto"             # what runs the networks (backends.py): auto, torch, openvino[-bf16], ...
    mirror: bool = False              # test-time mirroring over the model's mirror axes (up to 8x slower)
    min_component_ml: float = 10.0    # rough stage: smallest structure taken for a kidney
    keep_largest: bool = True         # fine stage: drop islands far smaller than the ROI's kidney
    roi_growth: int = 0               # fine stage: grow an ROI the kidney reaches the face of, at most N times
    roi_growth_min_mm2: float = 200.0  # ... when the foreground touches that face over at least this area
    roi_growth_label: int = 1         # ... 1: kidney or tumor must touch it, 2: tumor only
    keep_small_tumors: bool = False   # fine stage: skip the model's small/unsure tumor step (decision.py)
    plain_tumor_borders: bool = False  # fine stage: skip the model's tumor margin step (decision.py)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            kind = type(f.default)
            if kind is bool and not isinstance(value, bool):
                raise SettingsError(f"{f.name} must be true or false, not {value!r}")
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise SettingsError(f"{f.name} must be a whole number, not {value!r}")
            if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise SettingsError(f"{f.name} must be a number, not {value!r}")
            if kind is float:
                object.__setattr__(self, f.name, float(value))
        if not isinstance(self.device, str) or not (self.device in DEVICES or re.fullmatch(r"cuda:\d+", self.device)):
            raise SettingsError(f"device {self.device!r}: use one of {', '.join(DEVICES)} or cuda:N")
        name, _, precision = str(self.backend).lower().partition("-")
        if name not in BACKEND_NAMES or (precision and precision not in PRECISIONS):
            raise SettingsError(f"backend {self.backend!r}: use one of {', '.join(BACKEND_CHOICES)}")
        if not self.min_component_ml >= 0:
            raise SettingsError(f"min_component_ml must be 0 or more (got {self.min_component_ml})")
        if self.roi_growth < 0 or self.roi_growth_label not in (1, 2) or not self.roi_growth_min_mm2 >= 0:
            raise SettingsError(f"ROI growth needs roi_growth >= 0 (got {self.roi_growth}), roi_growth_label 1 or 2 "
                                f"(got {self.roi_growth_label}) and roi_growth_min_mm2 >= 0 "
                                f"(got {self.roi_growth_min_mm2})")

    def replace(self, **changes: Any) -> "InferenceSettings":
        """A copy with ``changes`` (checked like a new object)."""
        return replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "InferenceSettings":
        """From :meth:`to_dict`'s output (missing keys take their defaults; unknown keys are refused)."""
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise SettingsError(f"unknown inference settings {unknown}; known: {[f.name for f in fields(cls)]}")
        return cls(**dict(d))

    def fine_decision(self, decision):
        """The fine model's decision rule (decision.Decision) with the steps these settings switch off."""
        if self.keep_small_tumors:
            decision = decision.without_small_tumor_step()
        if self.plain_tumor_borders:
            decision = decision.without_tumor_margins()
        return decision


__all__ = ["InferenceSettings", "SettingsError", "DEVICES", "BACKEND_CHOICES", "ROI_GROWTH_ON"]
