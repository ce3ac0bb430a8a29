"""Which cascade model to run: a bundled one, two model files the user browsed to, or two URLs to download.

Bundled models are verified against the SHA-256 in the package's ``models.json``; a bundled model whose file
is not shipped, and the "url" choice, are downloaded with progress into a cache and verified the same way
(:func:`BiSCSegmentationLib.model_file.download_model`); model files work offline. Nothing here imports torch
until a model is actually loaded.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

KINDS = ("bundled", "files", "url")
_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")


def registry_path() -> Path:
    from BiSCSegmentationLib.registry import REGISTRY  # light: no torch

    return REGISTRY


def _registry() -> dict:
    from BiSCSegmentationLib.registry import read_registry

    try:
        return read_registry()
    except (OSError, ValueError):   # none shipped, or unreadable: no bundled model to offer
        return {}


def bundled_models() -> Dict[str, dict]:
    """{name: entry} of the bundled model list (empty when the package ships none)."""
    return dict(_registry().get("models") or {})


def default_bundled() -> str:
    return str(_registry().get("default") or "")


@dataclass
class ModelChoice:
    kind: str = "bundled"
    name: str = ""                  # bundled model name ("" = the default)
    rough_path: str = ""
    fine_path: str = ""
    rough_url: str = ""
    rough_sha256: str = ""
    fine_url: str = ""
    fine_sha256: str = ""
    cache_dir: str = ""             # "" = BiSCSegmentationLib's default cache

    def problems(self) -> List[str]:
        """What stops this choice from being used, in plain words (empty: fine)."""
        if self.kind not in KINDS:
            return [f"unknown model source {self.kind!r}; use one of {', '.join(KINDS)}"]
        if self.kind == "bundled":
            models = bundled_models()
            if not models:
                return ["No bundled model is installed. Browse to the rough and fine model files instead."]
            name = self.name or default_bundled()
            if name not in models:
                return [f"There is no bundled model named \"{name}\"; available: {', '.join(sorted(models))}."]
            return []
        if self.kind == "files":
            out = []
            for stage, path in (("rough", self.rough_path), ("fine", self.fine_path)):
                if not path:
                    out.append(f"Choose the {stage}-stage model file.")
                elif not os.path.isfile(path):
                    out.append(f"The {stage}-stage model file {path} does not exist.")
            return out
        out = []
        for stage, url, sha in (("rough", self.rough_url, self.rough_sha256), ("fine", self.fine_url, self.fine_sha256)):
            if not url:
                out.append(f"Enter the {stage}-stage model URL.")
            if not _SHA256.match(sha or ""):
                out.append(f"Enter the published SHA-256 (64 hexadecimal digits) of the {stage}-stage model; "
                           f"downloads are only used when they match it.")
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelChoice":
        return cls(**{k: str(v) for k, v in (d or {}).items() if k in cls.__dataclass_fields__})

    def describe(self) -> str:
        if self.kind == "bundled":
            return f"bundled model {self.name or default_bundled() or '(none)'}"
        if self.kind == "files":
            return f"model files {os.path.basename(self.rough_path)} + {os.path.basename(self.fine_path)}"
        return f"downloaded model {self.rough_url} + {self.fine_url}"


def load_models(choice: ModelChoice, progress: Optional[Callable[[str, float], None]] = None) -> Tuple:
    """(rough, fine) StageModels for ``choice``; downloads report progress as stage "download"."""
    from BiSCSegmentationLib.model_file import ModelFileError, download_model, load_bundled, load_model_file

    problems = choice.problems()
    if problems:
        raise ModelFileError(" ".join(problems))
    cache = choice.cache_dir or None

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress("download", done / total if total else 0.0)

    if choice.kind == "bundled":
        return load_bundled(choice.name or None, cache_dir=cache, progress=report)
    if choice.kind == "files":
        return (load_model_file(choice.rough_path, stage="rough"), load_model_file(choice.fine_path, stage="fine"))
    rough_file = download_model(choice.rough_url, choice.rough_sha256, cache_dir=cache, progress=report)
    fine_file = download_model(choice.fine_url, choice.fine_sha256, cache_dir=cache, progress=report)
    return (load_model_file(rough_file, expected_sha256=choice.rough_sha256, stage="rough"),
            load_model_file(fine_file, expected_sha256=choice.fine_sha256, stage="fine"))


def model_info(choice, rough, fine) -> dict:
    """The model a run used, as the command line's reports record it: name, and each stage's file and SHA-256."""
    name = {"bundled": choice.name, "files": "custom files", "url": "downloaded model"}.get(choice.kind, choice.kind)
    if choice.kind == "bundled" and not name:
        name = default_bundled() or "bundled model"
    return {"name": name, **{stage: {"file": str(m.path) if getattr(m, "path", None) else None,
                                     "sha256": getattr(m, "sha256", None)}
                             for stage, m in (("rough", rough), ("fine", fine))}}
