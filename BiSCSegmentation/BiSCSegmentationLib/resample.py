"""Separable resampling between axis-aligned grids of the same orientation.

Every resampling the cascade does (CT -> rough grid, CT -> ROI grid at the fine spacing, probabilities ->
CT grid) maps each output index ``o`` of an axis to the input's continuous index ``start + o * step``.
Such maps are separable, so linear resampling is three small matrix products (BLAS speed, no per-voxel
Python), and when ``step == 1`` with an integer ``start`` it is an exact copy. Downsampling widens the
triangle kernel to the step (antialiasing), as area averaging would.

``resample_linear`` reads straight from a strided view of the stored CT (no copy of the whole volume), slab
by slab, with banded interpolation matrices; ``nearest_to_stored`` writes labels straight into the stored
layout.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np
import torch

if TYPE_CHECKING:  # pragma: no cover
    from .volume import Reorientation


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


# ----------------------------------------------------------------------------------- linear, from views
def _is_copy(m: AxisMap, n_in: int) -> bool:
    """The map only copies input voxels start .. start + n_out - 1 (all inside)."""
    return m.step == 1.0 and float(m.start).is_integer() and m.start >= 0 and m.start + m.n_out <= n_in


def _banded(mat: np.ndarray, rows: int = 16) -> List[Tuple[slice, slice, torch.Tensor]]:
    """An interpolation matrix as blocks of rows with the columns they touch (its nonzeros lie on a band):
    far fewer multiply-adds than the dense product when an axis shrinks a lot."""
    n_out = mat.shape[0]
    if n_out < 2 * rows:
        return [(slice(0, n_out), slice(0, mat.shape[1]), torch.from_numpy(np.ascontiguousarray(mat)))]
    blocks = []
    for r0 in range(0, n_out, rows):
        sub = mat[r0:r0 + rows]
        cols = np.flatnonzero(sub.any(axis=0))
        c0, c1 = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 1)
        blocks.append((slice(r0, r0 + sub.shape[0]), slice(c0, c1), torch.from_numpy(np.ascontiguousarray(sub[:, c0:c1]))))
    return blocks


def _apply_banded(x: torch.Tensor, blocks, axis: int) -> torch.Tensor:
    if len(blocks) == 1:
        return _apply_axis(x, blocks[0][2], axis)
    shape = list(x.shape)
    shape[axis] = blocks[-1][0].stop
    out = torch.empty(shape, dtype=x.dtype, device=x.device)
    src, dst = [slice(None)] * x.dim(), [slice(None)] * x.dim()
    for rows, cols, mat in blocks:
        src[axis], dst[axis] = cols, rows
        if axis == -2:  # straight into the output rows
            torch.matmul(mat, x[tuple(src)], out=out[tuple(dst)])
        else:
            out[tuple(dst)] = _apply_axis(x[tuple(src)], mat, axis)
    return out


def resample_linear(array, maps: Sequence[AxisMap], fill: Optional[float] = 0.0, device: Optional[str] = None,
                    chunk_voxels: int = 1 << 22) -> torch.Tensor:
    """Linear (antialiased) resampling of the last three axes of a numpy array or view of any strides, or a
    tensor, ``(..., Z, Y, X)``, to ``maps``; float32 on ``device`` (default: the tensor's, or the CPU).

    Outputs outside the input get ``fill`` (None: left as extrapolated). Only the region the maps touch is
    read and converted to float32, slabs of z at a time (bounded memory for any CT size; cutting a small ROI
    out of a large CT costs only the ROI's size), and axes that are exact copies are sliced instead of
    multiplied."""
    if device is None:
        device = array.device if torch.is_tensor(array) else "cpu"
    shape = array.shape[-3:]
    if isinstance(array, np.ndarray):
        # a canonical view of a NIfTI-ordered CT runs backwards along y and x: flip such axes (and their maps)
        # so that each slab converts to float32 in one forward pass (2.5x faster than copying it first)
        maps = list(maps)
        for ax in range(3):
            axis = array.ndim - 3 + ax
            if array.strides[axis] < 0 and not _is_copy(maps[ax], shape[ax]):
                array = np.flip(array, axis)
                m = maps[ax]
                maps[ax] = AxisMap(m.n_out, shape[ax] - 1 - m.start, -m.step)
    mats, insides, crops = [], [], []
    for ax in range(3):
        m = maps[ax]
        if _is_copy(m, shape[ax]):
            mats.append(None)
            insides.append(np.ones(m.n_out, bool))
            crops.append(slice(int(m.start), int(m.start) + m.n_out))
            continue
        mat, inside = linear_weights(shape[ax], m, True)
        cols = np.flatnonzero(mat.any(axis=0))
        lo, hi = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 1)
        crops.append(slice(lo, hi))
        mats.append([(r, c, m_.to(device)) for r, c, m_ in _banded(mat[:, lo:hi])])
        insides.append(inside)
    lead = (slice(None),) * (len(array.shape) - 3)
    zc, yc, xc = crops
    plane = (yc.stop - yc.start) * (xc.stop - xc.start) * max(1, int(np.prod(array.shape[:-3])))
    slab = max(1, chunk_voxels // max(1, plane))
    inplane = sorted((1, 2), key=lambda a: maps[a].n_out / max(1, shape[a]))  # shrink most first
    parts = []
    for z0 in range(zc.start, zc.stop, slab):
        block = array[lead + (slice(z0, min(z0 + slab, zc.stop)), yc, xc)]
        if torch.is_tensor(block):
            block = block.to(device, torch.float32)
        else:
            forward = all(st >= 0 for st in block.strides)
            block = torch.from_numpy(block if forward else np.ascontiguousarray(block)).to(device, torch.float32)
        for ax in inplane:
            if mats[ax] is not None:
                block = _apply_banded(block, mats[ax], ax - 3)
        parts.append(block)
    x = torch.cat(parts, dim=-3) if len(parts) > 1 else parts[0]
    if mats[0] is not None:
        x = _apply_banded(x, mats[0], -3)
    if fill is not None and not all(i.all() for i in insides):
        for ax in range(3):
            bad = np.flatnonzero(~insides[ax])
            if bad.size:
                index = [slice(None)] * x.dim()
                index[x.dim() - 3 + ax] = torch.from_numpy(bad).to(device)
                x[tuple(index)] = fill
    return x.contiguous()


def nearest_to_stored(low: np.ndarray, maps: Sequence[AxisMap], reo: Reorientation) -> np.ndarray:
    """``from_canonical(resample_nearest(low, maps), ...)`` in one gather, written straight in the stored layout."""
    idx = []
    for ax in range(3):
        pos = np.floor(maps[ax].positions() + 0.5).astype(np.int64)
        if pos.size and (pos.min() < 0 or pos.max() >= low.shape[ax]):
            return np.ascontiguousarray(reo.invert(resample_nearest(low, maps)))
        idx.append(np.ascontiguousarray(pos[::-1]) if reo.flips[ax] else pos)
    order = np.argsort(reo.axes)                    # stored axis a holds canonical axis order[a]
    src = np.transpose(low, order)
    # the fastest-varying axis first, while the array is small; then rows; then whole planes (memcpy speed)
    for a in (2, 1, 0):
        src = np.take(src, idx[order[a]], axis=a)
    return np.ascontiguousarray(src)
