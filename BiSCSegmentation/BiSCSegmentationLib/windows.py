"""Windowed inference: a network run over a volume larger than its block, in overlapping tiles (half-block
steps) blended with Gaussian weights, optionally averaged over the 8 mirrorings. The cascade runs both
stages through :func:`sliding_window`; a backend (backends.py) supplies the ``runner`` that executes one block.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .model_file import StageModel


def _gaussian_weight(shape: Sequence[int]) -> torch.Tensor:
    axes = [torch.exp(-0.5 * ((torch.arange(n, dtype=torch.float32) - (n - 1) / 2) / (n / 8.0)) ** 2)
            for n in shape]
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (w / w.max()).clamp_(min=1e-3)


def _starts(n: int, window: int) -> List[int]:
    if n <= window:
        return [0]
    count = int(math.ceil((n - window) / (window / 2))) + 1
    return [int(round(i * (n - window) / (count - 1))) for i in range(count)]


def mirror_flips(axes: str) -> List[Tuple[int, ...]]:
    """Tensor dims (N, C, z, y, x) of every combination of mirrorings along ``axes`` (letters of "zyx")."""
    dims = [2 + "zyx".index(a) for a in "zyx" if a in axes]
    return [c for n in range(len(dims) + 1) for c in itertools.combinations(dims, n)]


@torch.no_grad()
def run_network(model: StageModel, x: torch.Tensor, mirror: bool, runner: Optional[Callable] = None) -> torch.Tensor:
    """Softmax probabilities (N, C, ...) of the label branch, averaged over mirrorings if asked: all 8, or
    those along the axes the model was trained to see mirrored (``training["mirror_axes"]``, e.g. "x").
    ``runner`` (x -> label logits, from a backend) defaults to the torch network itself."""
    forward = runner or model.network.forward_labels
    if not mirror:
        return torch.softmax(forward(x), dim=1)
    acc = None
    flips = mirror_flips(model.training.get("mirror_axes") or "zyx")
    for dims in flips:
        xi = torch.flip(x, dims).contiguous() if dims else x
        p = torch.softmax(forward(xi), dim=1)
        p = torch.flip(p, dims) if dims else p
        acc = p if acc is None else acc + p
    return acc / len(flips)


def sliding_window(model: StageModel, image: torch.Tensor, device: torch.device, mirror: bool,
                   report: Callable[[float], None], runner: Optional[Callable] = None) -> torch.Tensor:
    """Probabilities (C, Z, Y, X) for a normalised (Z, Y, X) image; windows no larger than the model's
    ``inference_window``, blended with Gaussian weights; sizes padded to the network's divisor."""
    div = model.config.divisor
    shape = list(image.shape)
    padded = [max(div, int(math.ceil(n / div) * div)) for n in shape]
    window = [min(w, p) for w, p in zip(model.inference_window, padded)]
    pad_value = float(image.min()) if image.numel() else 0.0
    x = torch.full(padded, pad_value, dtype=torch.float32)
    x[: shape[0], : shape[1], : shape[2]] = image
    tiles = [(a, b, c) for a in _starts(padded[0], window[0]) for b in _starts(padded[1], window[1])
             for c in _starts(padded[2], window[2])]
    c_out = model.config.num_classes
    if len(tiles) == 1:
        probs = run_network(model, x[None, None].to(device), mirror, runner)[0]
        report(1.0)
        return probs[:, : shape[0], : shape[1], : shape[2]].float()
    acc = torch.zeros([c_out] + padded, dtype=torch.float32, device=device)
    norm = torch.zeros(padded, dtype=torch.float32, device=device)
    weight = _gaussian_weight(window).to(device)
    for n, (a, b, c) in enumerate(tiles):
        sl = (slice(a, a + window[0]), slice(b, b + window[1]), slice(c, c + window[2]))
        p = run_network(model, x[sl][None, None].to(device), mirror, runner)[0].float()
        acc[(slice(None),) + sl] += p * weight
        norm[sl] += weight
        report((n + 1) / len(tiles))
    return (acc / norm)[:, : shape[0], : shape[1], : shape[2]]


__all__ = ["sliding_window", "run_network"]
