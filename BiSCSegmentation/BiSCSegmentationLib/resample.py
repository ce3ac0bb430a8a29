"""Separable resampling between axis-aligned grids of the same orientation.

Every resampling the cascade does (CT -> rough grid, CT -> ROI grid at the fine spacing, probabilities ->
CT grid) maps each output index ``o`` of an axis to the input's continuous index ``start + o * step``.
Such maps are separable, so linear resampling is three small matrix products (BLAS speed, no per-voxel
Python), and when ``step == 1`` with an integer ``start`` it is an exact copy. Downsampling widens the
triangle kernel to the step (antialiasing), as area averaging would.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch


@dataclass(frozen=True)
class AxisMap:
    """Output index o of this axis samples the input at continuous index ``start + o * step``."""

    n_out: int
    start: float
    step: float

    def positions(self) -> np.ndarray:
        return self.start + np.arange(self.n_out) * self.step

    def inverse(self, n_out: int, first: int = 0) -> "AxisMap":
        """Map from this map's output grid back onto input indices ``first .. first + n_out - 1``."""
        return AxisMap(n_out, (first - self.start) / self.step, 1.0 / self.step)


def covering_map(n_in: int, n_out: int) -> AxisMap:
    """n_out cells covering the same extent as n_in cells (what an image resize does)."""
    step = n_in / n_out
    return AxisMap(n_out, (step - 1.0) / 2.0, step)


def spacing_map(n_in: int, spacing_in: float, spacing_out: float) -> AxisMap:
    """Cover the same extent at another spacing (at least one output cell)."""
    n_out = max(1, int(round(n_in * spacing_in / spacing_out)))
    return covering_map(n_in, n_out)


def linear_weights(n_in: int, m: AxisMap, antialias: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Dense (n_out, n_in) interpolation matrix and the mask of outputs that fall inside the input."""
    pos = m.positions()
    width = max(1.0, abs(m.step)) if antialias else 1.0
    taps = int(math.ceil(width)) * 2 + 2
    base = np.floor(pos - width).astype(np.int64) + 1
    idx = base[:, None] + np.arange(taps)[None, :]
    w = np.clip(1.0 - np.abs(idx - pos[:, None]) / width, 0.0, None)
    idx = np.clip(idx, 0, n_in - 1)  # replicate edges within the half-voxel border
    mat = np.zeros((m.n_out, n_in), dtype=np.float64)
    np.add.at(mat, (np.repeat(np.arange(m.n_out), taps), idx.ravel()), w.ravel())
    rows = mat.sum(axis=1, keepdims=True)
    mat = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    inside = (pos >= -0.5 - 1e-6) & (pos <= n_in - 0.5 + 1e-6)
    return mat.astype(np.float32), inside


def _apply_axis(x: torch.Tensor, mat: torch.Tensor, axis: int) -> torch.Tensor:
    """Multiply ``mat`` (n_out, n_in) along ``axis`` (negative, one of -3, -2, -1) of x."""
    if axis == -1:
        return torch.matmul(x, mat.T)
    if axis == -2:
        return torch.matmul(mat, x)
    moved = x.movedim(-3, -2)
    return torch.matmul(mat, moved).movedim(-2, -3)


def resample_linear(array, maps: Sequence[AxisMap], fill: float = 0.0, antialias: bool = True,
                    device: str = "cpu") -> torch.Tensor:
    """Resample the last three axes of ``array`` (numpy or tensor, ``(..., Z, Y, X)``) to ``maps``.

    Outputs outside the input get ``fill``. Only the input region that the maps touch is read, so cutting
    a small ROI out of a large CT costs only the ROI's size.
    """
    x = torch.as_tensor(np.asarray(array) if not torch.is_tensor(array) else array).to(device, torch.float32)
    shape_in = x.shape[-3:]
    mats, insides = [], []
    crop = []
    for ax in range(3):
        mat, inside = linear_weights(shape_in[ax], maps[ax], antialias)
        cols = np.flatnonzero(mat.any(axis=0))
        lo, hi = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 1)
        crop.append(slice(lo, hi))
        mats.append(torch.from_numpy(np.ascontiguousarray(mat[:, lo:hi])).to(device))
        insides.append(inside)
    x = x[(Ellipsis,) + tuple(crop)]
    # shrink the axes that shrink most first: less work for the later products
    order = sorted(range(3), key=lambda a: maps[a].n_out / max(1, shape_in[a]))
    for ax in order:
        x = _apply_axis(x, mats[ax], ax - 3)
    if fill is not None and not all(i.all() for i in insides):
        for ax in range(3):
            bad = np.flatnonzero(~insides[ax])
            if bad.size:
                index = [slice(None)] * x.dim()
                index[x.dim() - 3 + ax] = torch.from_numpy(bad).to(device)
                x[tuple(index)] = fill
    return x


def resample_nearest(array: np.ndarray, maps: Sequence[AxisMap], fill=0) -> np.ndarray:
    """Nearest-neighbour resampling of the last three axes (for label maps): exact, no new values."""
    array = np.asarray(array)
    idx, inside = [], []
    for ax in range(3):
        n_in = array.shape[array.ndim - 3 + ax]
        pos = np.floor(maps[ax].positions() + 0.5).astype(np.int64)
        inside.append((pos >= 0) & (pos < n_in))
        idx.append(np.clip(pos, 0, n_in - 1))
    out = array[(Ellipsis,) + np.ix_(*idx)]
    if not all(i.all() for i in inside):
        out = out.copy()
        mask = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
        out[..., ~mask] = fill
    return out
