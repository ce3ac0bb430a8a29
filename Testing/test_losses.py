"""Eq. 1 (balanced cross-entropy) against a hand computation; Canny edge targets; the SC-UNet's shape contract."""
import math

import numpy as np
import pytest
import torch

from BiSCSegmentationLib.losses import balanced_cross_entropy, cross_entropy, edge_labels, sc_unet_loss
from BiSCSegmentationLib.network import SCUNet, SCUNetConfig


def logits_from_probs(p):
    return torch.log(torch.tensor(p, dtype=torch.float64))


def test_eq1_matches_hand_computation():
    # one image, two classes, four pixels; p(class 1) per pixel, target labels
    p1 = [0.95, 0.6, 0.3, 0.5]
    probs = [[1 - v for v in p1], p1]                       # (C, P)
    logits = logits_from_probs(probs)[None]                 # (1, C, P)
    target = torch.tensor([[1, 1, 0, 0]])
    # class 0 pixels: p0 = 0.7, 0.5 -> both hard (|1-p| > 0.1); class 1: 0.95 is easy (skipped), 0.6 hard
    term0 = (math.log(0.7) + math.log(0.5)) / 2
    term1 = math.log(0.6) / 2
    expected = -(term0 + term1) / 2
    assert balanced_cross_entropy(logits, target, threshold=0.1).item() == pytest.approx(expected, rel=1e-6)


def test_eq1_threshold_selects_hard_pixels():
    logits = logits_from_probs([[0.05, 0.4], [0.95, 0.6]])[None]
    target = torch.tensor([[1, 1]])
    # T = 0.5: neither pixel is hard -> 0; T = 0.01: both count
    assert balanced_cross_entropy(logits, target, threshold=0.5).item() == pytest.approx(0.0)
    both = -((math.log(0.95) + math.log(0.6)) / 2) / 2
    assert balanced_cross_entropy(logits, target, threshold=0.01).item() == pytest.approx(both, rel=1e-6)


def test_eq1_empty_channel_does_not_divide_by_zero():
    # three classes but no tumor (class 2) pixel in the patch
    probs = [[0.2, 0.7, 0.1], [0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]  # (C, P): pixel columns sum to 1
    logits = logits_from_probs(probs)[None].requires_grad_(True)
    target = torch.tensor([[0, 1, 1]])
    loss = balanced_cross_entropy(logits, target, threshold=0.1)
    term0 = math.log(0.2) / 1
    term1 = (math.log(0.2) + math.log(0.1)) / 2
    assert loss.item() == pytest.approx(-(term0 + term1 + 0.0) / 3, rel=1e-6)  # empty channel: 0, still in 1/C
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_eq1_normalises_each_class_by_its_size():
    # a tiny class weighs as much as a big one: CE is dominated by the big class, Eq. 1 is not
    n_big, n_small = 1000, 2
    target = torch.tensor([[0] * n_big + [1] * n_small])
    p_true = torch.tensor([0.5] * n_big + [0.5] * n_small)
    probs = torch.stack([torch.where(target[0] == 0, p_true, 1 - p_true), torch.where(target[0] == 1, p_true, 1 - p_true)])
    logits = torch.log(probs)[None]
    bce = balanced_cross_entropy(logits, target, threshold=0.1).item()
    assert bce == pytest.approx(-math.log(0.5), rel=1e-6)  # each class term is log(0.5)
    assert cross_entropy(logits, target).item() == pytest.approx(-math.log(0.5), rel=1e-6)
    # now the small class is badly predicted: Eq. 1 moves by half its error, CE barely moves
    probs[1, n_big:] = 0.01
    probs[0, n_big:] = 0.99
    logits = torch.log(probs)[None]
    assert balanced_cross_entropy(logits, target).item() > 2.5
    assert cross_entropy(logits, target).item() < 0.72


def test_edges_are_thin_per_slice_contours():
    mask = np.zeros((3, 40, 40), bool)
    mask[:, 10:30, 10:30] = True  # a box three (thick) slices deep
    edges = edge_labels(mask)
    for z in range(3):
        # a contour, not the whole end slice (which a 3D boundary would mark)
        assert 0 < edges[z].sum() < 0.5 * mask[z].sum()
        ys, xs = np.nonzero(edges[z])
        assert ys.min() >= 8 and ys.max() <= 31 and xs.min() >= 8 and xs.max() <= 31
    assert edge_labels(np.zeros((2, 8, 8), bool)).sum() == 0


def test_sc_unet_has_three_branches_and_is_fully_convolutional():
    net = SCUNet(SCUNetConfig(widths=[4, 8, 16, 32]))
    for shape in [(1, 1, 8, 16, 24), (2, 1, 16, 32, 16)]:
        seg, kedge, tedge = net(torch.zeros(shape))
        assert seg.shape == (shape[0], 3) + shape[2:]
        assert kedge.shape == tedge.shape == (shape[0], 2) + shape[2:]
    # each branch has its own parameters (separate skips/up groups)
    assert net.label_branch.ups[0].conv[0].weight is not net.kidney_edge_branch.ups[0].conv[0].weight
    with pytest.raises(ValueError, match="multiples of 8"):
        net(torch.zeros(1, 1, 12, 16, 16))


def test_total_loss_is_the_sum_of_the_three_branches_and_teaches_all_three():
    torch.manual_seed(0)
    net = SCUNet(SCUNetConfig(widths=[4, 8, 16, 32]))
    x = torch.randn(1, 1, 8, 16, 16)
    lab = (x[:, 0] > 0.5).long() + (x[:, 0] > 1.5).long()
    kedge, tedge = (x[:, 0] > 1.0).long(), (x[:, 0] < -1.0).long()
    seg, ke, te = net(x)
    # Eq. 1 on each branch, summed (edge_weight scales the two edge terms)
    parts = [balanced_cross_entropy(seg, lab), balanced_cross_entropy(ke, kedge), balanced_cross_entropy(te, tedge)]
    assert sc_unet_loss((seg, ke, te), lab, kedge, tedge).item() == pytest.approx(sum(p.item() for p in parts))
    weighted = sc_unet_loss((seg, ke, te), lab, kedge, tedge, edge_weight=0.5).item()
    assert weighted == pytest.approx(parts[0].item() + 0.5 * (parts[1].item() + parts[2].item()))
    with pytest.raises(ValueError, match="loss must be one of"):
        sc_unet_loss((seg, ke, te), lab, kedge, tedge, kind="dice")
    # minimising it fits every branch's targets on a patch it sees (not merely "the loss went down")
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(150):
        loss = sc_unet_loss(net(x), lab, kedge, tedge)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        seg, ke, te = net(x)
    for out, target in ((seg, lab), (ke, kedge), (te, tedge)):
        for c in range(out.shape[1]):  # each class, also the rare ones, mostly right
            voxels = target[0] == c
            assert (out.argmax(1)[0][voxels] == c).float().mean() > 0.9, (out.shape[1], c)
