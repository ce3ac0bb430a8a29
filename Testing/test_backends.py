"""Inference backends against the torch eager reference, backend selection/fallback, and the fast glue.

Tolerances (stated here, used below): OpenVINO float32 logits within 1e-3 of the largest |logit| of torch
eager float32 (measured 1e-5 to 2e-4) and the same labels wherever torch's top two classes differ by more than 1e-3
in probability; OpenVINO bfloat16 logits within 5e-2 of the largest |logit| (measured ~1.5e-2) and at least
97% of voxels with the same label (random weights: many near-ties). OpenVINO tests skip only when the
``openvino`` package is not installed (``pip install -e ".[fast]"``).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from BiSCSegmentationLib import backends as B
from BiSCSegmentationLib.cascade import (CascadePredictor, fine_grid, label_argmax,
                                         nearest_to_stored, sliding_window)
from BiSCSegmentationLib.inference_settings import InferenceSettings
from BiSCSegmentationLib.model_file import StageModel, load_model_file, save_model_file
from BiSCSegmentationLib.network import SCUNetConfig
from BiSCSegmentationLib.resample import AxisMap, resample_linear, resample_nearest
from BiSCSegmentationLib.roi import rois_from_mask
from BiSCSegmentationLib.volume import Volume, from_canonical, to_canonical
from test_geometry import DIRECTIONS

F32_TOL, BF16_TOL = 1e-3, 5e-2

requires_openvino = pytest.mark.skipif(B.openvino_version() is None,
                                       reason="openvino is not installed (pip install -e \".[fast]\")")


def _models(tmp_path, widths=(8, 16, 32, 64), seed=0):
    """Random-weight rough/fine models of the bundled layout, saved to files (export cache keyed by SHA-256)."""
    torch.manual_seed(seed)
    out = []
    for stage, grid, window in (("rough", {"inplane_size": 64, "z_spacing": 6.0}, (32, 64, 64)),
                                ("fine", {"spacing": [1.5, 1.5, 3.0]}, (32, 96, 96))):
        m = StageModel(stage, SCUNetConfig(widths=list(widths)), grid, inference_window=window)
        m.build().eval()
        with torch.no_grad():  # spread the instance-norm affine parameters, as in trained networks
            for mod in m.network.modules():
                if isinstance(mod, torch.nn.InstanceNorm3d):
                    mod.weight.uniform_(0.5, 1.5)
                    mod.bias.uniform_(-0.3, 0.3)
        save_model_file(m, tmp_path / f"{stage}.pt")
        out.append(load_model_file(tmp_path / f"{stage}.pt", stage=stage))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return _models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def phantom_ct():
    """A small synthetic case (phantom anatomy at 1.5 x 1.5 x 3 mm, NIfTI-like RAS orientation)."""
    from BiSCSegmentationLib import phantom

    lab = phantom.procedural_labels(4, spacing=(1.5, 1.5, 3.0), shape_zyx=(40, 128, 128))
    ct = phantom.synthesize_ct(lab, 4)
    d = np.diag([-1.0, -1.0, 1.0])
    return (Volume(ct.array[:, ::-1, ::-1], ct.spacing, (95.25, 95.25, 0.0), d),
            Volume(lab.array[:, ::-1, ::-1], ct.spacing, (95.25, 95.25, 0.0), d))


def _normalised_block(ct: Volume, model: StageModel) -> torch.Tensor:
    canon, _ = to_canonical(ct)
    x = torch.from_numpy(np.ascontiguousarray(canon.array[:32, :64, 32:96])).float()
    return CascadePredictor._normalise(x, model)


def _same_labels_where_clear(ref: torch.Tensor, out: torch.Tensor, tol: float, min_clear: float = 0.9) -> None:
    """Same argmax wherever torch's top-two logits differ by more than twice the logit tolerance."""
    top2 = ref.topk(2, dim=0).values
    clear = (top2[0] - top2[1]) > 2 * tol * float(ref.abs().max())
    assert clear.float().mean() > min_clear
    assert torch.equal(out.argmax(0)[clear], ref.argmax(0)[clear])


# ---------------------------------------------------------------------------------------------- OpenVINO
@requires_openvino
def test_openvino_f32_matches_torch_logits_and_labels(models, phantom_ct, tmp_path):
    fine = models[1]
    x = _normalised_block(phantom_ct[0], fine)[None, None]
    ref = B.TorchBackend("cpu", "f32").runner(fine)(x)
    be = B.OpenVINOBackend("f32", cache_dir=tmp_path)
    out = be.runner(fine)(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err < F32_TOL, f"OpenVINO f32 logits differ by {err:.2e} of the largest logit"
    _same_labels_where_clear(ref[0], out[0], F32_TOL)
    assert "OpenVINO" in be.describe() and "float32" in be.describe()


@requires_openvino
def test_openvino_bf16_within_tolerance(models, phantom_ct, tmp_path):
    fine = models[1]
    x = _normalised_block(phantom_ct[0], fine)[None, None]
    ref = B.TorchBackend("cpu", "f32").runner(fine)(x)
    be = B.OpenVINOBackend("bf16", cache_dir=tmp_path)
    out = be.runner(fine)(x)
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err < BF16_TOL, f"OpenVINO bf16 logits differ by {err:.2e} of the largest logit"
    assert (out.argmax(1) == ref.argmax(1)).float().mean() > 0.97
    if "BF16" in be._capabilities():
        assert be.precision == "bf16" and ", bfloat16, CPU" in be.describe()
    else:  # OpenVINO computes in f32 there: the backend says so instead of claiming bf16
        assert be.precision == "f32" and ", float32, CPU" in be.describe()
        assert "no bfloat16 instructions" in be.describe()


@requires_openvino
def test_openvino_cascade_same_labels_as_torch_on_phantom(models, phantom_ct, tmp_path):
    ct, lab = phantom_ct
    rough, fine = models
    rois = rois_from_mask(lab, fine.fine_spacing, min_component_ml=1.0)
    assert rois
    ref_p = CascadePredictor(rough, fine, InferenceSettings(device="cpu", backend="torch"))
    ov_p = CascadePredictor(
        rough, fine, InferenceSettings(device="cpu"), backend=B.OpenVINOBackend("f32", cache_dir=tmp_path)
    )
    assert "PyTorch" in ref_p.backend_name and "OpenVINO" in ov_p.backend_name
    a, b = ref_p.segment(ct, rois).array, ov_p.segment(ct, rois).array
    assert a.shape == b.shape == ct.array.shape
    # random weights put label boundaries everywhere (speckle), so a few near-ties flip: < 0.05% of voxels
    assert np.count_nonzero(a != b) <= 5e-4 * a.size
    ra, rb = ref_p.locate(ct).lowres.array, ov_p.locate(ct).lowres.array
    assert np.count_nonzero(ra != rb) <= 1e-3 * ra.size
    # the fine stage's probabilities on each ROI grid: the same labels wherever torch is not at a near-tie
    canon, _ = to_canonical(ct)
    for roi in rois:
        grid, _ = fine_grid(canon, roi, fine)
        image = CascadePredictor._normalise(resample_linear(canon.array, grid, fill=-1024.0), fine)
        probs = [sliding_window(fine, image, torch.device("cpu"), False, lambda f: None, runner=p._runner(fine))
                 for p in (ref_p, ov_p)]
        logits = [torch.log(q.clamp_min(1e-30)) for q in probs]  # log-softmax: same margins as the logits
        _same_labels_where_clear(logits[0], logits[1], F32_TOL)


@requires_openvino
def test_export_is_cached_by_sha256_and_version(models, tmp_path):
    rough = models[0]
    be = B.OpenVINOBackend("f32", cache_dir=tmp_path)
    be.runner(rough)
    assert be.last_export[rough.sha256] == "converted"
    files = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert len(files) == 2 and files[0].startswith(rough.sha256[:24]) and B.EXPORT_VERSION
    assert any(f.endswith(".xml") for f in files) and any(f.endswith(".bin") for f in files)
    again = B.OpenVINOBackend("f32", cache_dir=tmp_path)
    x = torch.randn(1, 1, 16, 32, 32)
    y = again.runner(rough)(x)
    assert again.last_export[rough.sha256] == "cached"
    ref = B.TorchBackend("cpu").runner(rough)(x)
    assert float((y - ref).abs().max() / ref.abs().max()) < F32_TOL
    # a damaged cache entry is converted again, not fatal
    for p in tmp_path.iterdir():
        if p.is_file():
            p.write_bytes(b"garbage")
    third = B.OpenVINOBackend("f32", cache_dir=tmp_path)
    third.runner(rough)(x)
    assert third.last_export[rough.sha256] == "converted"


@requires_openvino
def test_compiled_networks_are_cached_pruned_and_optional(models, tmp_path):
    """OpenVINO keeps one blob per compiled shape in cache/compiled; a damaged blob is recompiled, the folder is
    pruned to COMPILED_CACHE_MB (oldest first), and an unusable folder costs only the compile time."""
    rough = models[0]
    x = torch.randn(1, 1, 16, 32, 32)
    ref = B.TorchBackend("cpu").runner(rough)(x)
    for _ in range(2):   # converted, then read back from the export cache (the IR the next runs compile)
        B.OpenVINOBackend("f32", cache_dir=tmp_path).runner(rough)(x)
    blobs = list((tmp_path / "compiled").glob("*.blob"))
    assert blobs, "no compiled network was cached"
    for blob in blobs:
        blob.chmod(0o644)
        blob.write_bytes(b"garbage")
    y = B.OpenVINOBackend("f32", cache_dir=tmp_path).runner(rough)(x)   # damaged: compiled again
    assert float((y - ref).abs().max() / ref.abs().max()) < F32_TOL
    assert any(b.stat().st_size > 1000 for b in blobs), "a damaged blob was not compiled again"
    old = tmp_path / "compiled" / "0-old.blob"
    old.write_bytes(b"x" * 2 ** 20)
    os.utime(old, (1, 1))
    limit = B.COMPILED_CACHE_MB
    try:
        B.COMPILED_CACHE_MB = 1
        B.OpenVINOBackend("f32", cache_dir=tmp_path)
    finally:
        B.COMPILED_CACHE_MB = limit
    assert not old.exists() and sum(f.stat().st_size for f in (tmp_path / "compiled").glob("*")) <= 2 ** 20
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    be = B.OpenVINOBackend("f32", cache_dir=blocked)
    y = be.runner(rough)(x)
    assert float((y - ref).abs().max() / ref.abs().max()) < F32_TOL
    assert "not cached" in be.describe()


@requires_openvino
def test_dynamic_shapes_and_mirroring(models, tmp_path):
    fine = models[1]
    be = B.OpenVINOBackend("f32", cache_dir=tmp_path)
    run = be.runner(fine)
    ref = B.TorchBackend("cpu").runner(fine)
    for shape in [(8, 16, 24), (16, 64, 32), (8, 16, 24)]:
        x = torch.randn(1, 1, *shape)
        assert float((run(x) - ref(x)).abs().max() / ref(x).abs().max()) < F32_TOL
    image = torch.randn(20, 40, 72)  # two windows in x, each run with 8 mirrorings
    p_ref = sliding_window(fine, image, torch.device("cpu"), True, lambda f: None, runner=ref)
    p_ov = sliding_window(fine, image, torch.device("cpu"), True, lambda f: None, runner=run)
    assert float((p_ref - p_ov).abs().max()) < 1e-3


@requires_openvino
def test_non_scunet_network_falls_back_to_torch(tmp_path):
    from test_cascade import oracle_models

    rough, fine = oracle_models((1.5, 1.5, 1.5))
    p = CascadePredictor(
        rough, fine, InferenceSettings(device="cpu"), backend=B.OpenVINOBackend("f32", cache_dir=tmp_path)
    ).prepare()
    assert "runs with torch" in p.backend_name


# ------------------------------------------------------------------------------------------------ selection
def test_select_backend_and_fallback(monkeypatch):
    assert B.parse_spec("openvino-bf16") == ("openvino", "bf16")
    assert B.parse_spec("auto", "fp32") == ("auto", "f32")
    with pytest.raises(ValueError):
        B.parse_spec("tensorrt")
    t = B.select_backend("torch", device="cpu")
    assert isinstance(t, B.TorchBackend) and t.precision == "f32" and "PyTorch" in t.describe()
    auto = B.select_backend("auto", device="cpu")
    if B.openvino_version() is None:
        assert isinstance(auto, B.TorchBackend)
    else:
        # bf16 exactly where the CPU computes it natively; f32 on request anyway
        native = "BF16" in auto._capabilities(strict=True)
        assert isinstance(auto, B.OpenVINOBackend) and auto.precision == ("bf16" if native else "f32")
        assert B.select_backend("openvino-f32", device="cpu").precision == "f32"
        monkeypatch.setattr(B.OpenVINOBackend, "_capabilities", lambda self, strict=False: [] if strict else ["BF16"])
        assert B.select_backend("auto", device="cpu").precision == "f32"  # unknown: never bf16 by itself
        assert B.select_backend("openvino-bf16", device="cpu").precision == "bf16"  # asked for: trusted
        monkeypatch.setattr(B.OpenVINOBackend, "_capabilities", lambda self, strict=False: ["FP32", "BF16"])
        assert B.select_backend("auto", device="cpu").precision == "bf16"
    monkeypatch.setattr(B, "openvino_version", lambda: None)
    assert isinstance(B.select_backend("auto", device="cpu"), B.TorchBackend)
    with pytest.raises(B.BackendError, match="not installed"):
        B.select_backend("openvino", device="cpu")


def test_torch_bf16_autocast_close(models):
    fine = models[1]
    x = torch.randn(1, 1, 16, 32, 32)
    ref = B.TorchBackend("cpu", "f32").runner(fine)(x)
    out = B.TorchBackend("cpu", "bf16").runner(fine)(x)
    assert out.dtype == torch.float32
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.1


# ----------------------------------------------------------------------------------------------------- glue
@pytest.mark.parametrize("name", list(DIRECTIONS))
def test_to_canonical_is_a_view_with_every_voxel_in_its_place(name):
    a = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    v = Volume(a, (0.7, 0.8, 2.5), (3.0, -4.0, 5.0), DIRECTIONS[name])
    c1, r1 = to_canonical(v)
    assert np.shares_memory(c1.array, a)  # no copy of the whole CT
    assert np.all(np.diag(c1.direction) > 0.5)  # i, j, k point (roughly) L, P, S
    kji = np.argwhere(np.ones(c1.array.shape, bool))
    stored = np.rint(v.physical_to_index(c1.index_to_physical(kji[:, ::-1]))).astype(int)[:, ::-1]
    assert np.array_equal(a[tuple(stored.T)], c1.array[tuple(kji.T)])  # same voxel at the same patient position
    low = (np.arange(3 * 4 * 5) % 3).astype(np.uint8).reshape(3, 4, 5)
    maps = [AxisMap(n, (n_low / n - 1) / 2, n_low / n) for n, n_low in zip(c1.array.shape, low.shape)]
    expected = from_canonical(resample_nearest(low, maps), v, r1).array
    assert np.array_equal(nearest_to_stored(low, maps, r1), expected)
    maps[0] = AxisMap(maps[0].n_out, -2.0, 1.0)  # partly outside: filled with 0 like resample_nearest
    expected = from_canonical(resample_nearest(low, maps), v, r1).array
    assert np.array_equal(nearest_to_stored(low, maps, r1), expected)


def test_label_argmax_matches_torch_including_ties():
    p = torch.rand(3, 20, 30, 40)
    p[:, 0, 0, :4] = torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.5, 0.2, 0.5, 0.3], [0.0, 0.5, 0.5, 0.3]])
    assert np.array_equal(label_argmax(p), p.argmax(0).to(torch.uint8).numpy())
    p2 = torch.rand(4, 5, 6, 7)
    assert np.array_equal(label_argmax(p2), p2.argmax(0).to(torch.uint8).numpy())


@pytest.mark.parametrize("norm,branch_levels", [("instance", 1), ("none", 2), ("batch", 1)])
def test_export_module_equals_label_branch(norm, branch_levels):
    from BiSCSegmentationLib.network import SCUNet

    torch.manual_seed(0)
    net = SCUNet(SCUNetConfig(widths=[4, 8, 16], norm=norm, branch_levels=branch_levels)).eval()
    x = torch.randn(1, 1, 8, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(B.ExportLabelNet(net)(x), net.forward_labels(x), rtol=1e-4, atol=1e-5)
