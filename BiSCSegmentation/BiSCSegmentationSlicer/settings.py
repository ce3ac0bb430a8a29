"""Remembered settings: device, backend, model, the Advanced options and the last output folder persist
across Slicer restarts (in Slicer's settings, ``QSettings``, group ``BiSCSegmentation``), and *Reset to
defaults* forgets them.

``store`` is anything with QSettings' ``value(key, default)``, ``setValue(key, value)`` and ``remove(key)``
(Slicer: ``qt.QSettings()``). QSettings may hand values back as strings ("true", "10.0", depending on the
platform's format), so :func:`load` converts each value to its setting's type and falls back to the default
for anything it cannot read.
"""
from __future__ import annotations

from typing import Dict

GROUP = "BiSCSegmentation"
BACKENDS = ("auto", "torch", "openvino")

# parameter node field -> default (the same defaults as BiSCSegmentationParameterNode; tested)
DEFAULTS: Dict[str, object] = {
    "modelSource": "bundled",
    "bundledModel": "",
    "roughModelPath": "",
    "fineModelPath": "",
    "roughModelUrl": "",
    "roughModelSha256": "",
    "fineModelUrl": "",
    "fineModelSha256": "",
    "device": "auto",
    "backend": "auto",
    "mirror": False,
    "keepSmallTumors": False,
    "growRois": False,
    "plainTumorBorders": False,
    "minKidneyMl": 10.0,
    "minLesionMl": 0.5,
    "lastOutputFolder": "",
}
CHOICES = {"modelSource": ("bundled", "files", "url"), "device": ("auto", "cpu", "cuda"), "backend": BACKENDS}
RANGES = {"minKidneyMl": (0.0, 200.0), "minLesionMl": (0.0, 100.0)}


def key(name: str) -> str:
    return f"{GROUP}/{name}"


def convert(name: str, raw):
    """``raw`` as the setting's type; ValueError when it does not fit."""
    default = DEFAULTS[name]
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no", ""):
            return False
        raise ValueError(raw)
    if isinstance(default, float):
        value = float(raw)
        lo, hi = RANGES.get(name, (float("-inf"), float("inf")))
        if not lo <= value <= hi:
            raise ValueError(raw)
        return value
    value = "" if raw is None else str(raw)
    if name in CHOICES and value not in CHOICES[name]:
        raise ValueError(raw)
    return value


def load(store) -> Dict[str, object]:
    """Every setting, typed: the stored value, or the default when none (or an unreadable one) is stored."""
    out = {}
    for name, default in DEFAULTS.items():
        raw = store.value(key(name), None)
        try:
            out[name] = default if raw is None else convert(name, raw)
        except (TypeError, ValueError):
            out[name] = default
    return out


def save(store, values: Dict[str, object]) -> None:
    """Store the known settings among ``values`` (enums may be passed as their ``.value``)."""
    for name, value in values.items():
        if name not in DEFAULTS:
            continue
        value = getattr(value, "value", value)
        try:
            store.setValue(key(name), convert(name, value))
        except (TypeError, ValueError):
            continue


def reset(store) -> Dict[str, object]:
    """Forget every stored setting; returns the defaults."""
    for name in DEFAULTS:
        store.remove(key(name))
    return dict(DEFAULTS)
