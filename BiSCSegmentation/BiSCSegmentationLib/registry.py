"""The bundled model list, ``models/models.json``: the default model's name and, per model, each stage's file,
SHA-256 and download URL. Read here only; nothing here imports torch, so the Slicer module lists the models
before it loads any."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Type

BUNDLED_DIR = Path(__file__).resolve().parent / "models"
REGISTRY = BUNDLED_DIR / "models.json"


def read_registry(error: Type[Exception] = ValueError) -> Dict:
    """``{"default": name, "models": {name: entry}}``; raises ``error`` when the list is missing (a damaged
    list raises ``ValueError``)."""
    if not REGISTRY.is_file():
        raise error(f"{REGISTRY}: the bundled model list is missing; reinstall BiSCSegmentation")
    return json.loads(REGISTRY.read_text())


__all__ = ["BUNDLED_DIR", "REGISTRY", "read_registry"]
