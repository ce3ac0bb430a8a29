"""Model files: one file per cascade stage holding the weights and everything needed to use them.

A model file is a ``torch.save`` dictionary (loaded with ``weights_only=True``, so it cannot run code):

    format: "bisc-unet-model", format_version: 1, stage: "rough" | "fine",
    architecture: SCUNetConfig fields, grid: how the stage resamples its input (see ``StageModel``),
    intensity: {"clip": [lo, hi], "mean": m, "std": s}, labels: {"0": "background", "1": "kidney", "2": "tumor"},
    inference_window: [z, y, x] largest block run at once, training: free-form provenance (command, data, loss),
    decision (optional): how probabilities become labels (``decision.Decision``; absent: argmax),
    state_dict: the SC-UNet weights.

Loading validates every field and reports a wrong, truncated or mismatched file in plain words. Bundled
models are listed in ``models/models.json`` with their SHA-256, which loading checks.
"""
from __future__ import annotations

import copy
import hashlib
import os
import pickle
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from .decision import Decision
from .errors import ModelError
from .network import SCUNet, SCUNetConfig
from .outputs import replace_file, write_file
from .registry import BUNDLED_DIR, read_registry
from .volume import unreadable

FORMAT = "bisc-unet-model"
FORMAT_VERSION = 1
STAGES = ("rough", "fine")
LABELS = {"0": "background", "1": "kidney", "2": "tumor"}
KITS19_INTENSITY = {"clip": [-79.0, 304.0], "mean": 101.0, "std": 76.9}  # nnU-Net's KiTS19 CT statistics


class ModelFileError(ModelError):
    """A model file is missing, corrupt, of another format, or does not match its checksum or architecture."""


@dataclass
class StageModel:
    """A loaded stage: the network plus how to feed it.

    grid for "rough": {"inplane_size": 128, "z_spacing": 3.0} (paper: in-plane resized to 128x128);
    grid for "fine":  {"spacing": [x, y, z]} in mm (paper: 0.78 x 0.78 x 3).
    """

    stage: str
    config: SCUNetConfig
    grid: Dict
    intensity: Dict = field(default_factory=lambda: copy.deepcopy(KITS19_INTENSITY))
    inference_window: Tuple[int, int, int] = (128, 192, 192)
    training: Dict = field(default_factory=dict)
    decision: Decision = field(default_factory=Decision)
    network: Optional[SCUNet] = None
    path: Optional[Path] = None
    sha256: Optional[str] = None

    def build(self) -> SCUNet:
        self.network = SCUNet(self.config)
        return self.network

    @property
    def fine_spacing(self) -> Tuple[float, float, float]:
        return tuple(float(s) for s in self.grid["spacing"])

    def to_file_dict(self) -> Dict:
        if self.network is None:
            raise ModelFileError("no network to save")
        out = {"format": FORMAT, "format_version": FORMAT_VERSION, "stage": self.stage,
               "architecture": self.config.to_dict(), "grid": dict(self.grid), "intensity": dict(self.intensity),
               "labels": dict(LABELS), "inference_window": list(self.inference_window),
               "training": dict(self.training)}
        if self.decision != Decision():  # files with the default rule stay as they were before it existed
            out["decision"] = self.decision.to_dict()
        out["state_dict"] = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        return out


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_model_file(model: StageModel, path, force: bool = False) -> str:
    """Write atomically; returns the file's SHA-256. A decision rule the loader would reject (ValueError) is
    never written."""
    path = Path(path)
    problem = model.decision.problem(model.stage)
    if problem:
        raise ValueError(f"{path}: not written, invalid decision settings ({problem})")
    content = model.to_file_dict()

    def verify(tmp: Path) -> None:  # a short write on a full disk shows up here
        if set(load_plain(tmp, ModelFileError)) != set(content):
            raise ValueError("content differs")

    write_file(path, lambda tmp: torch.save(content, tmp), verify, force=force, description="model file")
    return sha256_of(path)


def load_plain(path, error=ValueError, corrupt_hint: str = "delete it to start over, or restore it"):
    """``torch.load`` that never runs code from the file (``weights_only=True``: tensors and plain data only);
    a file holding anything else, or a damaged one, raises ``error`` naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise error(f"{path}: holds objects other than tensors and plain data, which could run code when "
                        f"loaded; refused (use a file written by BiSCSegmentation)") from None
        raise error(f"{path}: is truncated or corrupt; {corrupt_hint}") from exc
    except PermissionError:
        raise error(f"{path}: cannot be read (permission denied)") from None
    except Exception as exc:  # torch raises many types for truncated or foreign files
        raise error(f"{path}: is truncated or corrupt; {corrupt_hint}") from exc


def window_problem(window: Sequence[int], divisor: int) -> Optional[str]:
    """What is wrong with an inference window for a network of this divisor (None: it is usable)."""
    if len(window) != 3 or any(int(w) <= 0 or int(w) % divisor for w in window):
        return f"inference_window must be three positive multiples of {divisor} (z, y, x), got {tuple(window)}"
    return None


def _require(cond: bool, path, what: str) -> None:
    if not cond:
        raise ModelFileError(f"{path}: {what}")


def load_model_file(path, expected_sha256: Optional[str] = None, stage: Optional[str] = None) -> StageModel:
    """Load and validate a model file; the network is built, filled, and put in eval mode on the CPU."""
    path = Path(path)
    problem = unreadable(path)
    if problem or not path.is_file():
        raise ModelFileError(f"{path}: {'no such model file' if problem in (None, 'no such file or folder') else problem}")
    digest = sha256_of(path)
    if expected_sha256 and digest != expected_sha256.lower():
        raise ModelFileError(f"{path}: SHA-256 {digest[:16]}... does not match the published {expected_sha256[:16]}...; "
                             f"the file is damaged or not the published model: download or reinstall it")
    raw = load_plain(path, ModelFileError, "get the model file again")
    _require(isinstance(raw, dict) and raw.get("format") == FORMAT, path,
             f"not a BiSCSegmentation model file (no \"format\": \"{FORMAT}\")")
    _require(raw.get("format_version") == FORMAT_VERSION, path,
             f"model format version {raw.get('format_version')} is not supported by this version "
             f"(supports {FORMAT_VERSION}); update BiSCSegmentation")
    _require(raw.get("stage") in STAGES, path, f"stage must be one of {STAGES}, got {raw.get('stage')!r}")
    if stage is not None:
        _require(raw["stage"] == stage, path, f"is a {raw['stage']} model, but a {stage} model was expected")
    try:
        config = SCUNetConfig.from_dict(raw["architecture"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: invalid architecture ({exc})") from exc
    grid = raw.get("grid") or {}
    if raw["stage"] == "rough":
        _require(isinstance(grid.get("inplane_size"), int) and grid["inplane_size"] % config.divisor == 0
                 and float(grid.get("z_spacing", 0)) > 0, path,
                 f"rough grid needs inplane_size (multiple of {config.divisor}) and z_spacing > 0, got {grid}")
    else:
        sp = grid.get("spacing")
        _require(isinstance(sp, (list, tuple)) and len(sp) == 3 and all(float(s) > 0 for s in sp), path,
                 f"fine grid needs spacing [x, y, z] > 0, got {grid}")
    inten = raw.get("intensity") or {}
    _require(len(inten.get("clip", [])) == 2 and float(inten.get("std", 0)) > 0, path,
             f"intensity needs clip [lo, hi] and std > 0, got {inten}")
    _require(raw.get("labels") == LABELS, path, f"labels must be {LABELS}, got {raw.get('labels')}")
    window = tuple(int(w) for w in raw.get("inference_window", ()))
    problem = window_problem(window, config.divisor)
    _require(problem is None, path, problem or "")
    try:
        decision = Decision.from_dict(raw.get("decision"))
    except ValueError as exc:
        raise ModelFileError(f"{path}: invalid decision settings ({exc})") from None
    problem = decision.problem(raw["stage"])
    _require(problem is None, path, problem or "")
    model = StageModel(raw["stage"], config, grid, inten, window, raw.get("training") or {}, decision,
                       path=path, sha256=digest)
    net = model.build()
    try:
        net.load_state_dict(raw["state_dict"], strict=True)
    except (KeyError, RuntimeError) as exc:
        first = str(exc).splitlines()[0][:200]
        raise ModelFileError(f"{path}: the weights do not match the stored architecture ({first})") from exc
    net.eval()
    return model


# ------------------------------------------------------------------------------------------ bundled models
def bundled_model_names() -> List[str]:
    return sorted(read_registry(ModelFileError)["models"])


def bundled_entry(name: Optional[str] = None) -> Tuple[str, Dict]:
    reg = read_registry(ModelFileError)
    name = name or reg["default"]
    if name not in reg["models"]:
        raise ModelFileError(f"no bundled model named {name!r}; available: {', '.join(sorted(reg['models']))}")
    return name, reg["models"][name]


def load_bundled(name: Optional[str] = None, cache_dir=None,
                 progress: Optional[Callable[[int, int], None]] = None) -> Tuple[StageModel, StageModel]:
    """(rough, fine) of a bundled model: from the package, else downloaded from its URL into the cache."""
    name, entry = bundled_entry(name)
    models = []
    for stage in STAGES:
        item = entry[stage]
        path = BUNDLED_DIR / item["file"]
        if not path.is_file():
            if not item.get("url"):
                raise ModelFileError(f"{path}: bundled {stage} model file is missing and has no download URL; "
                                     f"reinstall BiSCSegmentation or pass model files explicitly")
            path = download_model(item["url"], item["sha256"], cache_dir=cache_dir, progress=progress)
        models.append(load_model_file(path, expected_sha256=item["sha256"], stage=stage))
    return models[0], models[1]


def default_cache_dir() -> Path:
    base = os.environ.get("BISC_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "bisc-segmentation")
    return Path(base)


def download_model(url: str, sha256: str, cache_dir=None, progress: Optional[Callable[[int, int], None]] = None,
                   timeout: float = 60.0) -> Path:
    """Download ``url`` (http(s) or file://) into the cache, verified by SHA-256; reuses a verified copy."""
    if not sha256 or len(sha256) != 64:
        raise ModelFileError(f"refusing to download {url} without a published 64-hex-digit SHA-256")
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    name = os.path.basename(urllib.request.urlparse(url).path) or "model.pt"
    target = cache / f"{sha256[:12]}-{name}"
    if target.is_file() and sha256_of(target) == sha256.lower():
        return target

    def fetch(tmp: Path) -> None:
        with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0)
            done = 0
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
        got = sha256_of(tmp)
        if got != sha256.lower():
            raise ModelFileError(f"download of {url} has SHA-256 {got[:16]}..., expected {sha256[:16]}...; not used")

    try:
        replace_file(target, fetch)
    except OSError as exc:
        raise ModelFileError(f"cannot download {url} ({exc}); check the address or the network, or browse to "
                             f"a local model file instead") from exc
    return target


__all__ = ["StageModel", "ModelFileError", "save_model_file", "load_model_file", "load_bundled", "download_model",
           "bundled_entry", "sha256_of"]
