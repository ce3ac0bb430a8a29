"""Training targets and losses of the paper: Canny edge labels and the balanced cross-entropy (Eq. 1).

Eq. 1:  L_BCE = -(1/C) sum_c  1/(sum_n y_cn)  sum_n  [|y_cn - p_cn| > T] * y_cn * log p_cn

- ``y`` is the one-hot target, ``p`` the softmax probability; only "hard" pixels (whose probability for
  their true class is further than T from 1) contribute.
- Each channel is normalised by its own size (number of its pixels), so a 1 mL tumor weighs as much as a
  400 mL kidney; channels are then averaged.
- An empty channel (e.g. no tumor in the patch) contributes 0 and is still counted in C (Eq. 1's 1/C),
  so no division by zero happens and the loss stays finite.
- The paper writes the equation without the minus sign; the minus makes it a loss to minimise.
The loss is computed per image, then averaged over the batch ("image-wise loss value").
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_THRESHOLD = 0.1  # T in Eq. 1; the paper gives no value


def balanced_cross_entropy(logits: torch.Tensor, target: torch.Tensor, threshold: float = DEFAULT_THRESHOLD
                           ) -> torch.Tensor:
    """Eq. 1 for logits ``(N, C, ...)`` and integer targets ``(N, ...)``; returns a scalar."""
    if logits.shape[0] != target.shape[0] or logits.shape[2:] != target.shape[1:]:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} do not match")
    n, c = logits.shape[:2]
    logp = F.log_softmax(logits.float(), dim=1).reshape(n, c, -1)
    onehot = F.one_hot(target.long().reshape(n, -1), c).permute(0, 2, 1).to(logp.dtype)  # (N, C, P)
    with torch.no_grad():
        hard = ((onehot - logp.exp()).abs() > threshold).to(logp.dtype)
    per_pixel = hard * onehot * logp                               # (N, C, P), <= 0
    size = onehot.sum(dim=2)                                       # (N, C)
    per_channel = per_pixel.sum(dim=2) / size.clamp(min=1.0)       # empty channel -> 0 / 1 = 0
    return -(per_channel.mean(dim=1)).mean()


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Plain voxel-averaged cross-entropy: the baseline of the paper's Table 1."""
    return F.cross_entropy(logits.float(), target.long())


LOSSES = {"bce": balanced_cross_entropy, "ce": lambda lo, t, threshold=None: cross_entropy(lo, t)}


def sc_unet_loss(outputs, labels: torch.Tensor, kidney_edge: torch.Tensor, tumor_edge: torch.Tensor,
                 kind: str = "bce", threshold: float = DEFAULT_THRESHOLD, edge_weight: float = 1.0
                 ) -> torch.Tensor:
    """Sum of the loss on the three branches; the paper treats edges 'as important as' the labels."""
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {kind!r}")
    fn = LOSSES[kind]
    seg, kedge, tedge = outputs
    return (fn(seg, labels, threshold=threshold)
            + edge_weight * (fn(kedge, kidney_edge, threshold=threshold) + fn(tedge, tumor_edge, threshold=threshold)))


def edge_labels(mask: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Canny edges of a binary mask, slice by slice along axis 0 (axial slices in canonical orientation).

    Per-slice 2D Canny gives thin contours straddling the boundary; a 3D boundary would mark whole end
    slices as edge on 5 mm data.
    """
    from skimage.feature import canny

    mask = np.asarray(mask, dtype=bool)
    out = np.zeros(mask.shape, dtype=np.uint8)
    for z in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        out[z] = canny(mask[z].astype(np.float32), sigma=sigma)
    return out


def kidney_and_tumor_edges(labels: np.ndarray, sigma: float = 1.0):
    """(kidney edge, tumor edge) targets from a 0/1/2 label map: kidney = label>0, tumor = label==2."""
    labels = np.asarray(labels)
    return edge_labels(labels > 0, sigma), edge_labels(labels == 2, sigma)
