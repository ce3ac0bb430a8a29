"""The decision rules: probabilities -> labels, the tumor component step, model files, set-decision."""
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from BiSCSegmentationLib.cascade import CascadePredictor, label_argmax
from BiSCSegmentationLib.decision import (ARGMAX, Decision, labels_from_differences, relabel_tumor_components,
                                         tumor_probability)
from BiSCSegmentationLib.inference_settings import InferenceSettings
from BiSCSegmentationLib.model_file import ModelFileError, load_model_file, save_model_file
from BiSCSegmentationLib.resample import AxisMap, resample_linear
from BiSCSegmentationLib.roi import KidneyROI, rois_from_mask
from BiSCSegmentationLib.volume import Volume, kits19_affine_volume, to_canonical
from conftest import tiny_stage_models
from test_cascade import INTENSITY, OracleNet, encode, oracle_models, two_kidney_labels


def _probs(seed=0, shape=(6, 9, 10)):
    g = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn((3,) + shape, generator=g) * 2, dim=0)


def _foreground_rule(p, bf, bt):
    """The rule as the module docstring states it, on three probabilities."""
    fg = (p[1] + p[2]) * math.exp(bf) > p[0]
    out = fg.to(torch.uint8)
    out[fg & (p[2] * math.exp(bt) > p[1])] = 2
    return out.numpy()


def test_argmax_rule_is_the_argmax():
    p = _probs()
    assert np.array_equal(labels_from_differences(p[1:] - p[:1]), label_argmax(p))
    assert np.array_equal(labels_from_differences(p[1:] - p[:1], ARGMAX), label_argmax(p))


@pytest.mark.parametrize("bf,bt", [(0.0, 0.0), (0.25, -0.125), (-0.5, 0.5)])
def test_foreground_rule_from_two_restored_differences_equals_the_rule_on_three_probabilities(bf, bt):
    p = _probs(seed=1)
    # restored through a real resampling onto a finer, shifted grid (what the cascade does per ROI)
    back = [AxisMap(11, 0.3, 0.45), AxisMap(17, 0.1, 0.5), AxisMap(13, 0.0, 0.7)]
    p3 = resample_linear(p, back, fill=None)
    got = labels_from_differences(
        resample_linear(p[1:] - p[:1], back, fill=None), Decision("foreground", foreground_bias=bf, tumor_bias=bt)
    )
    want = _foreground_rule(p3, bf, bt)
    # away from exact ties the two computations must agree voxel for voxel
    margin = torch.minimum(((p3[1] + p3[2]) * math.exp(bf) - p3[0]).abs(), (p3[2] * math.exp(bt) - p3[1]).abs())
    decided = (margin > 1e-5).numpy()
    assert decided.mean() > 0.99
    assert np.array_equal(got[decided], want[decided])


def test_foreground_rule_gives_the_foreground_a_split_vote_would_lose():
    # p0 = 0.4 beats p1 = p2 = 0.3 under argmax, but kidney+tumor together win
    p = torch.tensor([0.4, 0.3, 0.3]).reshape(3, 1, 1, 1)
    assert labels_from_differences(p[1:] - p[:1])[0, 0, 0] == 0
    assert labels_from_differences(p[1:] - p[:1], Decision("foreground"))[0, 0, 0] == 1  # tie -> kidney
    assert labels_from_differences(p[1:] - p[:1], Decision("foreground", tumor_bias=0.1))[0, 0, 0] == 2
    assert labels_from_differences(p[1:] - p[:1], Decision("foreground", foreground_bias=-0.5))[0, 0, 0] == 0


def _tumors():
    lab = np.zeros((10, 20, 20), np.uint8)
    lab[1:9, 1:19, 1:19] = 1
    lab[2:7, 2:8, 2:8] = 2       # 180 voxels: the largest tumor
    lab[2:4, 12:14, 12:14] = 2   # 8 voxels
    lab[7, 16, 16] = 2           # 1 voxel
    return lab


def test_small_tumor_components_become_kidney_except_the_largest():
    lab = _tumors()
    changed = relabel_tumor_components(lab, voxel_ml=0.5, min_ml=4.5)  # 8 voxels = 4 mL < 4.5; 180 = 90 mL
    assert changed == 9
    assert np.count_nonzero(lab == 2) == 180 and lab[2, 12, 12] == 1 and lab[7, 16, 16] == 1
    lab = _tumors()
    assert relabel_tumor_components(lab, voxel_ml=0.5, min_ml=3.9) == 1 and lab[2, 12, 12] == 2
    lab = _tumors()
    assert relabel_tumor_components(lab, voxel_ml=0.5, min_ml=0) == 0 and np.array_equal(lab, _tumors())
    # a case whose only tumor is small keeps it
    lone = np.zeros((4, 4, 4), np.uint8)
    lone[1, 1, 1] = 2
    assert relabel_tumor_components(lone, voxel_ml=0.001, min_ml=100.0) == 0 and lone[1, 1, 1] == 2


def test_small_tumor_step_writes_through_a_reversed_view():
    stored = np.ascontiguousarray(_tumors()[::-1, :, ::-1])
    view = stored[::-1, :, ::-1]
    relabel_tumor_components(view, voxel_ml=0.5, min_ml=4.5)
    assert np.count_nonzero(stored == 2) == 180 and np.count_nonzero(stored == 1) == np.count_nonzero(_tumors() > 0) - 180


def test_uncertain_tumor_components_become_kidney_except_the_largest():
    lab = _tumors()
    p = np.full(lab.shape, 0.9, np.float32)
    p[2:4, 12:14, 12:14] = 0.55  # the 8-voxel tumor is unsure
    p[7, 16, 16] = 0.65
    assert relabel_tumor_components(lab, 0.5, probability=p, min_probability=0.6) == 8
    assert lab[2, 12, 12] == 1 and lab[7, 16, 16] == 2 and np.count_nonzero(lab == 2) == 181
    # the same map stored as uint8 (0..255), as the cascade keeps it
    lab = _tumors()
    assert relabel_tumor_components(lab, 0.5, probability=np.round(p * 255).astype(np.uint8),
                                    min_probability=0.7) == 9
    assert np.count_nonzero(lab == 2) == 180
    # the mean over the component decides, not single voxels
    lab = _tumors()
    p[2, 12, 12] = 0.99  # mean of the 8 voxels: (0.99 + 7 x 0.55) / 8 = 0.605
    assert relabel_tumor_components(lab, 0.5, probability=p, min_probability=0.6) == 0
    # the largest is kept however unsure; size and probability combine (either one drops a component)
    lab = _tumors()
    p[:] = 0.1
    assert relabel_tumor_components(lab, 0.5, min_ml=0.6, probability=p, min_probability=0.05) == 1
    lab = _tumors()
    assert relabel_tumor_components(lab, 0.5, probability=p, min_probability=0.5) == 9
    assert np.count_nonzero(lab == 2) == 180
    with pytest.raises(ValueError, match="needs a tumor probability map"):
        relabel_tumor_components(_tumors(), 0.5, probability=None, min_probability=0.5)


def test_large_tumors_take_their_connected_margin_and_nothing_else():
    from BiSCSegmentationLib.decision import grow_tumor_margins
    lab = np.zeros((12, 30, 30), np.uint8)
    lab[2:10, 2:14, 2:14] = 1
    lab[3:9, 4:10, 4:10] = 2          # 216 voxels = 108 mL at 0.5 mL
    lab[4:6, 20:22, 20:22] = 2        # 8 voxels = 4 mL
    cand = np.zeros(lab.shape, bool)
    cand[3:9, 10:12, 4:10] = True     # two layers of background beside the large tumor ...
    lab[3:9, 10:12, 4:10] = 0
    cand[3:9, 13:14, 4:10] = True     # ... a kidney layer between (kept kidney) ...
    cand[3:9, 15:17, 4:10] = True     # ... and candidates behind it, not connected through candidates
    cand[4:6, 22:24, 20:22] = True    # the margin of the small tumor
    cand[0, 0, 0] = True              # a lone candidate
    before = lab.copy()
    changed = grow_tumor_margins(lab, 0.5, 50.0, cand)
    expected = before.copy()
    expected[3:9, 10:12, 4:10] = 2
    assert changed == 72 and np.array_equal(lab, expected)
    lab = before.copy()
    assert grow_tumor_margins(lab, 0.5, 3.0, cand) == 72 + 8 and np.all(lab[4:6, 22:24, 20:22] == 2)
    lab = before.copy()
    assert grow_tumor_margins(lab, 0.5, 200.0, cand) == 0 and np.array_equal(lab, before)
    view = before.copy()[::-1, :, ::-1]   # the cascade passes reversed canonical views: writes go through
    assert grow_tumor_margins(view, 0.5, 50.0, cand[::-1, :, ::-1]) == 72
    assert np.array_equal(view, expected[::-1, :, ::-1])
    with pytest.raises(ValueError, match="shape"):
        grow_tumor_margins(before.copy(), 0.5, 50.0, cand[1:])


def test_margin_candidates_are_unsure_tumor_voxels_above_the_lower_foreground_threshold():
    from BiSCSegmentationLib.decision import apply_case_steps, case_step_maps
    p = torch.tensor([[0.60, 0.55, 0.75, 0.60, 0.30],    # background
                      [0.10, 0.30, 0.05, 0.25, 0.20],    # kidney
                      [0.30, 0.15, 0.20, 0.15, 0.50]]).reshape(3, 1, 1, 5)
    diff = p[1:] - p[:1]
    d = Decision("foreground", foreground_bias=0.0, tumor_bias=0.0, tumor_margin_bias=1.0)
    _, margin = case_step_maps(diff, d)
    # p(fg) x e > p0 and p2 > p1: 0.4e > 0.6 yes; kidney wins in 2; 0.25e < 0.75; 0.4e > 0.6 but p1 > p2; 5 is
    # already foreground (the labels decide; candidates only matter on background)
    assert margin.ravel().tolist() == [True, False, False, False, True]
    assert case_step_maps(diff, Decision("foreground"))[1] is None
    assert case_step_maps(diff, Decision("foreground", min_tumor_probability=0.5))[0].dtype == np.uint8
    with pytest.raises(ValueError, match="margin candidates"):
        apply_case_steps(np.zeros((1, 1, 5), np.uint8), 1.0, d)
    assert "tumors of 0 mL or more take their margin at foreground bias +1" in d.describe()


def test_tumor_probability_from_the_two_differences():
    p = _probs(seed=4)
    assert torch.allclose(tumor_probability(p[1:] - p[:1]), p[2], atol=1e-6)


@pytest.mark.parametrize("bad,words", [({"rule": "vote"}, "rule must be one of"),
                                       ({"rule": "foreground", "min_tumor_probability": 1.0}, r"in \[0, 1\)"),
                                       ({"rule": "argmax", "min_tumor_probability": 0.5}, "argmax rule takes no"),
                                       ({"rule": "foreground", "min_tumor_ml": -1}, "min_tumor_ml must be >= 0"),
                                       ({"rule": "argmax", "tumor_bias": 0.5}, "argmax rule takes no biases"),
                                       ({"rule": "foreground", "tumor_bias": "a lot"}, "must be numbers"),
                                       ({"rule": "foreground", "tumor_bias": float("nan")}, "finite"),
                                       ({"rule": "foreground", "speed": 1}, "unknown decision settings"),
                                       ({"rule": "foreground", "min_island_fraction": 1.5},
                                        r"min_island_fraction must be in \[0, 1\]"),
                                       ({"rule": "argmax", "min_island_fraction": -0.1}, "min_island_fraction must be"),
                                       ({"rule": "foreground", "min_island_fraction": float("inf")}, "finite"),
                                       ({"rule": "foreground", "tumor_margin_bias": -1}, "tumor_margin_bias and"),
                                       ({"rule": "foreground", "tumor_margin_min_ml": -5}, "must be >= 0"),
                                       ({"rule": "argmax", "tumor_margin_bias": 1}, "or margin settings")])
def test_bad_decision_settings_are_clear_errors(bad, words):
    with pytest.raises(ValueError, match=words):
        Decision.from_dict(bad)


def test_model_file_keeps_its_decision_and_rejects_bad_ones(tmp_path):
    rough, fine = tiny_stage_models()
    save_model_file(fine, tmp_path / "argmax.pt")
    raw = torch.load(tmp_path / "argmax.pt", weights_only=True)
    assert "decision" not in raw  # files with the default rule look as they did before the rule existed
    assert load_model_file(tmp_path / "argmax.pt").decision == ARGMAX
    fine.decision = Decision("foreground", foreground_bias=0.125, tumor_bias=0.25, min_tumor_ml=3.0)
    save_model_file(fine, tmp_path / "fg.pt")
    assert load_model_file(tmp_path / "fg.pt").decision == Decision(
        "foreground", foreground_bias=0.125, tumor_bias=0.25, min_tumor_ml=3.0
    )
    raw = torch.load(tmp_path / "fg.pt", weights_only=True)
    raw["decision"]["min_tumor_ml"] = -2
    torch.save(raw, tmp_path / "bad.pt")
    with pytest.raises(ModelFileError, match="invalid decision settings .*min_tumor_ml must be >= 0"):
        load_model_file(tmp_path / "bad.pt")
    rough.decision = Decision("foreground", foreground_bias=0.5)
    save_model_file(rough, tmp_path / "rough.pt")
    assert load_model_file(tmp_path / "rough.pt").decision == Decision("foreground", foreground_bias=0.5)
    raw = torch.load(tmp_path / "rough.pt", weights_only=True)
    raw["decision"]["min_tumor_ml"] = 1.0
    torch.save(raw, tmp_path / "rough_bad.pt")
    with pytest.raises(ModelFileError, match="are fine-stage settings"):
        load_model_file(tmp_path / "rough_bad.pt")
    fine.decision = Decision(
        "foreground", foreground_bias=0.125, tumor_bias=0.25, min_tumor_ml=3.0, min_tumor_probability=0.7
    )
    save_model_file(fine, tmp_path / "fp.pt")
    assert load_model_file(tmp_path / "fp.pt").decision.min_tumor_probability == 0.7
    # the island fraction: kept in the file; a file written before it was a setting keeps the old 0.2
    fine.decision = Decision("foreground", foreground_bias=0.125, tumor_bias=0.25, min_tumor_ml=0.0,
                             min_tumor_probability=0.7, min_island_fraction=0.5, tumor_margin_bias=1.0,
                             tumor_margin_min_ml=50.0)
    save_model_file(fine, tmp_path / "island.pt")
    assert load_model_file(tmp_path / "island.pt").decision == fine.decision
    raw = torch.load(tmp_path / "island.pt", weights_only=True)
    for key in ("min_island_fraction", "tumor_margin_bias", "tumor_margin_min_ml"):
        del raw["decision"][key]
    torch.save(raw, tmp_path / "old.pt")
    assert load_model_file(tmp_path / "old.pt").decision == Decision("foreground", foreground_bias=0.125,
                                                                     tumor_bias=0.25, min_tumor_ml=0.0,
                                                                     min_tumor_probability=0.7,
                                                                     min_island_fraction=0.2, tumor_margin_bias=0.0,
                                                                     tumor_margin_min_ml=0.0)
    rough.decision = Decision("foreground", foreground_bias=0.5, min_island_fraction=0.5)
    with pytest.raises(ValueError, match="fine-stage settings"):
        save_model_file(rough, tmp_path / "rough_island.pt")
    assert not (tmp_path / "rough_island.pt").exists()


def test_cascade_drops_islands_under_the_fine_files_fraction_of_the_rois_largest():
    # one ROI over two equal kidneys and a detached block 0.3 times as large (a neighbouring organ)
    labels = Volume(two_kidney_labels((24, 64, 64)), (1.5, 1.5, 1.5))
    truth = labels.array.copy()
    organ = np.zeros(truth.shape, bool)
    organ[2:9, 4:13, 26:36] = True
    assert not ndimage.binary_dilation(organ, np.ones((3, 3, 3), bool))[truth > 0].any()
    noisy = truth.copy()
    noisy[organ] = 1
    ct = labels.with_array(encode(noisy))
    rough, fine = oracle_models((1.5, 1.5, 1.5))
    roi = KidneyROI(labels.index_to_physical([31.5, 31.5, 11.5]), (96, 96, 36), "both")
    kidney = int(np.count_nonzero(truth)) // 2
    assert 0.25 < organ.sum() / kidney < 0.35
    for fraction, want in ((0.2, noisy), (0.5, truth), (1.0, truth)):  # equal kidneys: both are the largest
        fine.decision = Decision("foreground", min_island_fraction=fraction)
        out = CascadePredictor(rough, fine, InferenceSettings(device="cpu")).segment(ct, [roi]).array
        assert np.array_equal(out, want), fraction
    assert Decision("foreground", min_island_fraction=0.5).describe().endswith(
        "islands under 0.5 of an ROI's largest dropped")


def test_cascade_applies_the_fine_model_files_decision_over_the_whole_case():
    # KiTS19 header (reversed canonical view), oracle network: the small tumor in the other kidney goes
    lab = two_kidney_labels((24, 64, 64))
    lab[10:13, 34:37, 14:17] = 2  # 27 voxels in the other kidney
    labels = kits19_affine_volume(lab, (3.0, 1.5, 1.5))
    ct = labels.with_array(encode(labels.array))
    rough, fine = oracle_models((1.5, 1.5, 3.0))
    rois = rois_from_mask(labels, fine.fine_spacing, min_component_ml=0.01)
    plain = CascadePredictor(rough, fine, InferenceSettings(device="cpu")).segment(ct, rois).array
    assert np.array_equal(plain, labels.array)
    fine.decision = Decision("foreground", min_tumor_ml=27 * 6.75 / 1000 + 0.01)  # voxel: 1.5 x 1.5 x 3 mm
    out = CascadePredictor(rough, fine, InferenceSettings(device="cpu")).segment(ct, rois).array
    expected = lab.copy()
    expected[10:13, 34:37, 14:17] = 1
    assert np.array_equal(out, kits19_affine_volume(expected, (3.0, 1.5, 1.5)).array)
    # the caller may override the file's rule
    again = CascadePredictor(rough, fine, InferenceSettings(device="cpu"), decision=ARGMAX).segment(ct, rois).array
    assert np.array_equal(again, labels.array)


class UnsureOracleNet(OracleNet):
    """The oracle, except that CT value 300 gets fixed (background, kidney, tumor) probabilities: a network that
    is unsure there (default: tumor at p = 0.6, kidney 0.4)."""

    def __init__(self, probabilities=(0.0, 0.4, 0.6)):
        super().__init__()
        self.unsure = torch.log(torch.clamp(torch.tensor(probabilities), min=1e-9)).reshape(1, 3, 1, 1, 1)

    def forward_labels(self, x):
        hu = x * INTENSITY["std"] + INTENSITY["mean"]
        code = torch.clamp(torch.round(hu / 100.0), 0, 3).long()[:, 0]
        logits = torch.nn.functional.one_hot(torch.clamp(code, max=2), 3).permute(0, 4, 1, 2, 3).float() * 20.0
        return torch.where((code == 3).unsqueeze(1), self.unsure, logits)


def test_cascade_drops_unsure_tumors_over_the_whole_case_by_their_mean_probability():
    lab = two_kidney_labels((24, 64, 64))
    lab[10:13, 34:37, 14:17] = 2  # 27 voxels in the other kidney, where the network is unsure
    labels = kits19_affine_volume(lab, (3.0, 1.5, 1.5))
    unsure = np.zeros_like(lab)
    unsure[10:13, 34:37, 14:17] = 1
    code = encode(labels.array)
    code[kits19_affine_volume(unsure, (3.0, 1.5, 1.5)).array > 0] = 300
    ct = labels.with_array(code)
    rough, fine = oracle_models((1.5, 1.5, 3.0))
    fine.network = UnsureOracleNet()
    rois = rois_from_mask(labels, fine.fine_spacing, min_component_ml=0.01)
    plain = CascadePredictor(rough, fine, InferenceSettings(device="cpu")).segment(ct, rois).array
    assert np.array_equal(plain, labels.array)  # argmax: p(tumor) 0.6 is tumor
    expected = lab.copy()
    expected[10:13, 34:37, 14:17] = 1
    for threshold, want in ((0.59, lab), (0.61, expected)):
        fine.decision = Decision("foreground", min_tumor_probability=threshold)
        out = CascadePredictor(rough, fine, InferenceSettings(device="cpu")).segment(ct, rois).array
        assert np.array_equal(out, kits19_affine_volume(want, (3.0, 1.5, 1.5)).array), threshold
    # the only tumor is kept however unsure
    lab2 = lab.copy()
    lab2[lab2 == 2] = 1
    lab2[10:13, 34:37, 14:17] = 2
    labels2 = kits19_affine_volume(lab2, (3.0, 1.5, 1.5))
    code2 = encode(labels2.array)
    code2[labels2.array == 2] = 300
    out = CascadePredictor(rough, fine, InferenceSettings(device="cpu")).segment(labels2.with_array(code2), rois).array
    assert np.array_equal(out, labels2.array)


def test_cascade_grows_large_tumors_into_their_unsure_margin_in_kits19_orientation():
    lab = two_kidney_labels((24, 64, 64))
    tumor = lab == 2
    shell = ndimage.binary_dilation(tumor, np.ones((3, 3, 3), bool)) & ~tumor
    shell[:, :, :52] = False  # its outer half only: the tumor stays joined to its kidney (no island step)
    labels = kits19_affine_volume(lab, (3.0, 1.5, 1.5))
    code = encode(labels.array)
    code[kits19_affine_volume(shell.astype(np.uint8), (3.0, 1.5, 1.5)).array > 0] = 300
    ct = labels.with_array(code)
    rough, fine = oracle_models((1.5, 1.5, 3.0))
    fine.network = UnsureOracleNet((0.55, 0.1, 0.35))  # an unsure tumor margin
    rois = rois_from_mask(labels, fine.fine_spacing, min_component_ml=0.01)
    tumor_ml = tumor.sum() * 6.75 / 1000
    without, grown = lab.copy(), lab.copy()
    without[shell] = 0  # p(kidney + tumor) = 0.45 < p(background); 0.45 x exp(0.5) = 0.74 beats it
    grown[shell] = 2
    for decision, want in ((Decision("foreground"), without),
                           (Decision("foreground", tumor_margin_bias=0.5, tumor_margin_min_ml=tumor_ml - 0.01), grown),
                           (Decision("foreground", tumor_margin_bias=0.5, tumor_margin_min_ml=tumor_ml + 0.01),
                            without)):
        fine.decision = decision
        out = CascadePredictor(rough, fine, InferenceSettings(device="cpu")).segment(ct, rois).array
        assert np.array_equal(out, kits19_affine_volume(want, (3.0, 1.5, 1.5)).array), decision


def test_set_decision_changes_only_the_decision_and_records_it(tmp_path, capsys):
    from bisc_training.cli import main
    rough, fine = tiny_stage_models()
    save_model_file(fine, tmp_path / "fine.pt")
    save_model_file(rough, tmp_path / "rough.pt")
    before = load_model_file(tmp_path / "fine.pt")
    assert main(["set-decision", str(tmp_path / "fine.pt"), "--rule", "foreground", "--foreground-bias", "0.125",
                 "--min-tumor-ml", "3", "-o", str(tmp_path / "d.pt")]) == 0
    after = load_model_file(tmp_path / "d.pt")
    assert after.decision == Decision("foreground", foreground_bias=0.125, tumor_bias=0.0, min_tumor_ml=3.0)
    assert after.training["decision_history"] == [{"decision": ARGMAX.to_dict(), "sha256": before.sha256}]
    for k, v in before.network.state_dict().items():
        assert torch.equal(v, after.network.state_dict()[k])
    assert after.inference_window == before.inference_window
    capsys.readouterr()
    assert main(["set-decision", str(tmp_path / "fine.pt"), "--rule", "argmax", "-o", str(tmp_path / "d.pt")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["set-decision", str(tmp_path / "fine.pt"), "--rule", "argmax", "--tumor-bias", "1",
                 "-o", str(tmp_path / "e.pt")]) == 2
    assert "argmax rule takes no biases" in capsys.readouterr().err and not (tmp_path / "e.pt").exists()
    assert main(["set-decision", str(tmp_path / "rough.pt"), "--rule", "foreground", "--min-tumor-ml", "2",
                 "-o", str(tmp_path / "f.pt")]) == 2
    assert "fine-stage settings" in capsys.readouterr().err and not (tmp_path / "f.pt").exists()
    assert main(["set-decision", str(tmp_path / "fine.pt"), "--rule", "foreground", "--min-tumor-probability", "0.7",
                 "-o", str(tmp_path / "h.pt")]) == 0
    assert load_model_file(tmp_path / "h.pt").decision == Decision("foreground", min_tumor_probability=0.7)
    assert main(["set-decision", str(tmp_path / "rough.pt"), "--rule", "foreground", "--foreground-bias", "0.5",
                 "-o", str(tmp_path / "g.pt")]) == 0
    assert load_model_file(tmp_path / "g.pt").decision == Decision("foreground", foreground_bias=0.5)
    assert main(["set-decision", str(tmp_path / "fine.pt"), "--rule", "foreground", "--min-island-fraction", "0.5",
                 "-o", str(tmp_path / "i.pt")]) == 0
    assert load_model_file(tmp_path / "i.pt").decision == Decision("foreground", min_island_fraction=0.5)
    assert main(["set-decision", str(tmp_path / "fine.pt"), "--rule", "foreground", "--min-island-fraction", "2",
                 "-o", str(tmp_path / "j.pt")]) == 2
    assert "min_island_fraction must be in [0, 1]" in capsys.readouterr().err and not (tmp_path / "j.pt").exists()
    assert main(["set-decision", str(tmp_path / "fine.pt"), "--rule", "foreground", "--tumor-margin-bias", "1",
                 "--tumor-margin-min-ml", "50", "-o", str(tmp_path / "k.pt")]) == 0
    assert load_model_file(tmp_path / "k.pt").decision == Decision("foreground", tumor_margin_bias=1.0,
                                                                   tumor_margin_min_ml=50.0)
    assert main(["set-decision", str(tmp_path / "rough.pt"), "--rule", "foreground", "--tumor-margin-bias", "1",
                 "-o", str(tmp_path / "l.pt")]) == 2
    assert "fine-stage settings" in capsys.readouterr().err and not (tmp_path / "l.pt").exists()


@pytest.mark.slow
def test_tuning_scores_are_those_of_the_cascade_run_with_each_rule():
    from BiSCSegmentationLib.metrics import kits19_case_scores
    from BiSCSegmentationLib.phantom import make_case
    from bisc_training.tune_decision import case_scores, restored_differences

    ct, gt = make_case(seed=3)
    predictor = CascadePredictor.bundled(settings=InferenceSettings(device="cpu"))
    canon, rois = restored_differences(predictor, ct)
    assert rois
    decisions = [
        ARGMAX,
        Decision("foreground", foreground_bias=0.25, tumor_bias=0.125, min_tumor_ml=3.0),
        Decision("foreground", foreground_bias=0.25, tumor_bias=0.125, min_tumor_ml=0.0, min_tumor_probability=0.7),
        Decision("foreground", foreground_bias=0.0, tumor_bias=0.125, min_tumor_ml=2.0, min_tumor_probability=0.65),
        Decision("foreground", foreground_bias=0.25, tumor_bias=0.125, min_tumor_ml=0.0, min_tumor_probability=0.7,
                 min_island_fraction=1.0),
        Decision("foreground", foreground_bias=0.25, tumor_bias=0.125, min_tumor_ml=0.0, min_tumor_probability=0.7,
                 min_island_fraction=0.0),
        Decision("foreground", foreground_bias=0.125, tumor_bias=0.125, min_tumor_ml=0.0, min_tumor_probability=0.7,
                 min_island_fraction=0.5, tumor_margin_bias=1.0),
        Decision("foreground", foreground_bias=0.125, tumor_bias=0.125, min_tumor_ml=0.0, min_tumor_probability=0.7,
                 min_island_fraction=0.5),
        Decision("foreground", foreground_bias=0.0, tumor_bias=0.0, min_tumor_ml=0.0, min_tumor_probability=0.0,
                 min_island_fraction=0.2, tumor_margin_bias=3.0, tumor_margin_min_ml=5.0),
    ]
    scores = case_scores(canon, to_canonical(gt)[0].array, rois, decisions)
    assert scores[decisions[6]] != scores[decisions[7]]  # the margin step changes this case's labels
    boxes = predictor.locate(ct).rois
    for d in decisions:
        predictor.decision = d
        labels = predictor.segment(ct, boxes).array
        want = kits19_case_scores(labels, gt.array)
        assert scores[d] == pytest.approx((want["kidney_dice"], want["tumor_dice"]), abs=1e-12), d


def test_rough_stage_uses_its_model_files_decision():
    # a random rough network: a larger foreground bias can only add kidney to the rough labels, and the
    # foreground rule at bias 0 keeps every argmax kidney voxel (kidney + tumor together beat background)
    from BiSCSegmentationLib.phantom import make_case
    ct, _ = make_case(seed=1)
    rough, fine = tiny_stage_models(seed=2)
    found = {}
    for name, d in (
        ("argmax", ARGMAX),
        ("fg0", Decision("foreground")),
        ("fg3", Decision("foreground", foreground_bias=3.0)),
    ):
        rough.decision = d
        predictor = CascadePredictor(
            rough, fine, InferenceSettings(device="cpu", backend="torch", min_component_ml=0.0)
        )
        found[name] = predictor.locate(ct).lowres.array > 0
    assert np.all(found["fg0"][found["argmax"]]) and np.all(found["fg3"][found["fg0"]])
    assert found["fg3"].sum() > found["fg0"].sum() >= found["argmax"].sum()
    predictor = CascadePredictor(rough, fine, InferenceSettings(device="cpu", backend="torch"), rough_decision=ARGMAX)
    assert np.array_equal(predictor.locate(ct).lowres.array > 0, found["argmax"])


RULE = Decision("foreground", foreground_bias=0.125, tumor_bias=0.25, min_tumor_ml=4.0, min_tumor_probability=0.7,
                min_island_fraction=0.5, tumor_margin_bias=1.0, tumor_margin_min_ml=50.0)  # every step on


def _rule_files(tmp_path):
    rough, fine = tiny_stage_models()
    fine.decision = RULE
    save_model_file(rough, tmp_path / "rough.pt")
    save_model_file(fine, tmp_path / "fine.pt")
    return str(tmp_path / "rough.pt"), str(tmp_path / "fine.pt")


def test_bisc_segment_keep_small_tumors_and_plain_tumor_borders_turn_off_only_their_step(tmp_path):
    from BiSCSegmentationLib.cli import build_segment_parser, load_predictor
    rough, fine = _rule_files(tmp_path)
    base = ["ct.nii.gz", "-o", "out.nii.gz", "--rough-model", rough, "--fine-model", fine, "--backend", "torch"]
    assert load_predictor(build_segment_parser().parse_args(base)).decision == RULE
    kept = load_predictor(build_segment_parser().parse_args(base + ["--keep-small-tumors"]))
    assert kept.decision == Decision("foreground", foreground_bias=0.125, tumor_bias=0.25, min_tumor_ml=0.0,
                                     min_tumor_probability=0.0, min_island_fraction=0.5, tumor_margin_bias=1.0,
                                     tumor_margin_min_ml=50.0)
    plain = load_predictor(build_segment_parser().parse_args(base + ["--plain-tumor-borders"]))
    assert plain.decision == Decision("foreground", foreground_bias=0.125, tumor_bias=0.25, min_tumor_ml=4.0,
                                      min_tumor_probability=0.7, min_island_fraction=0.5)
    both = load_predictor(build_segment_parser().parse_args(base + ["--plain-tumor-borders", "--keep-small-tumors"]))
    assert both.decision == Decision("foreground", foreground_bias=0.125, tumor_bias=0.25, min_island_fraction=0.5)
