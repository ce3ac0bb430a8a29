"""Bounded memory (limits.py): implausible sizes and work this machine cannot hold are refused before anything
large is allocated, duplicate ROIs are segmented once, and an allocation failure of any library becomes one
clear error (exit 2 on the command line). Nothing here allocates more than a few MB."""
from __future__ import annotations

import numpy as np
import pytest

from BiSCSegmentationLib.inference_settings import InferenceSettings
from BiSCSegmentationLib.volume import VolumeError
import torch

from conftest import tiny_stage_models

from BiSCSegmentationLib import cascade, limits
from BiSCSegmentationLib.cascade import Cancelled, CascadePredictor
from BiSCSegmentationLib.cli import segment_main
from BiSCSegmentationLib.limits import ResourceLimitError
from BiSCSegmentationLib.model_file import save_model_file
from BiSCSegmentationLib.roi import MAX_ROI_SIDE_MM, KidneyROI, check_roi, save_rois
from BiSCSegmentationLib.volume import Volume, write_volume

TORCH_OOM = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 26600000000 bytes. Error code 12"


def _ct(spacing=(1.5, 1.5, 3.0), shape=(24, 64, 64)) -> Volume:
    rng = np.random.default_rng(0)
    a = np.full(shape, -1000, np.int16)
    _, yy, xx = np.mgrid[: shape[0], : shape[1], : shape[2]]
    a[((yy - shape[1] / 2) / (shape[1] * 0.4)) ** 2 + ((xx - shape[2] / 2) / (shape[2] * 0.45)) ** 2 < 1] = 40
    return Volume(a + rng.integers(-20, 20, shape).astype(np.int16), spacing)


def _centre(ct: Volume):
    return tuple(ct.index_to_physical((np.array(ct.size_ijk) - 1) / 2.0))


@pytest.fixture(scope="module")
def predictor():
    rough, fine = tiny_stage_models()
    return CascadePredictor(rough, fine, InferenceSettings(device="cpu", backend="torch"))


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    rough, fine = tiny_stage_models()
    save_model_file(rough, d / "rough.pt")
    save_model_file(fine, d / "fine.pt")
    return ["--rough-model", str(d / "rough.pt"), "--fine-model", str(d / "fine.pt"), "--device", "cpu",
            "--backend", "torch"]


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("ct") / "ct.nii.gz"
    write_volume(_ct(), path)
    return path


def _cli(tmp_path, ct_file, model_files, capsys, rois):
    save_rois(rois, tmp_path / "rois.json")
    rc = segment_main([str(ct_file), "-o", str(tmp_path / "out.nii.gz"), "--rois", str(tmp_path / "rois.json"),
                       "--quiet"] + model_files)
    err = capsys.readouterr().err.strip()
    assert not (tmp_path / "out.nii.gz").exists()
    return rc, err


# ------------------------------------------------------------------------------------------ plausible sizes
def test_an_roi_larger_than_any_kidney_is_refused_in_python_and_by_the_cli_with_exit_2(predictor, tmp_path, ct_file,
                                                                                      model_files, capsys):
    ct = _ct()
    huge = KidneyROI(_centre(ct), (10000.0, 10000.0, 10000.0))  # 10 m: once 24 GB and a killed process
    assert any("too large" in p for p in check_roi(huge, ct))
    assert not check_roi(KidneyROI(_centre(ct), (MAX_ROI_SIDE_MM,) * 3), ct)
    with pytest.raises(ValueError, match=f"too large.*{MAX_ROI_SIDE_MM:.0f} mm"):
        predictor.segment(ct, [huge])
    rc, err = _cli(tmp_path, ct_file, model_files, capsys, [KidneyROI(_centre(_ct()), (10000.0, 10000.0, 10000.0))])
    assert rc == 2 and err.startswith("error: ") and "too large" in err and len(err.splitlines()) == 1


def test_more_rois_than_kidneys_are_refused(predictor, tmp_path, ct_file, model_files, capsys):
    c = np.array(_centre(_ct()))
    five = [KidneyROI(tuple(c + (dx, 0, 0)), (30.0, 30.0, 30.0)) for dx in (-40, -20, 0, 20, 40)]
    with pytest.raises(ResourceLimitError, match=f"5 ROIs.*at most {limits.MAX_ROIS}"):
        predictor.segment(_ct(), five)
    rc, err = _cli(tmp_path, ct_file, model_files, capsys, five)
    assert rc == 2 and "at most 4" in err and len(err.splitlines()) == 1


def test_a_wrong_slice_spacing_and_a_grid_of_billions_are_refused_before_allocating():
    rough, fine = tiny_stage_models(fine_spacing=(0.01, 0.01, 0.01))
    p = CascadePredictor(rough, fine, InferenceSettings(device="cpu", backend="torch"))
    with pytest.raises(VolumeError, match="spacing .* is outside what a CT has"):
        p.locate(_ct(spacing=(100.0, 100.0, 100.0), shape=(40, 64, 64)))  # the header said 100 mm (input check)
    ct = _ct()
    with pytest.raises(ResourceLimitError, match="fine grid of Kidney ROI.*billion voxels"):
        p.segment(ct, [KidneyROI(_centre(ct), (100.0, 100.0, 100.0))])  # 10000^3 voxels at 0.01 mm


# ------------------------------------------------------------------------------------------------ duplicates
def test_duplicate_and_nested_rois_are_segmented_once_with_a_note(predictor, monkeypatch):
    ct = _ct()
    c = np.array(_centre(ct))
    one = KidneyROI(tuple(c), (60.0, 60.0, 45.0))
    alone = predictor.segment(ct, [one]).array
    rng = np.random.default_rng(1)
    small = [KidneyROI(tuple(c + rng.uniform(-10, 10, 3)), tuple(rng.uniform(16, 20, 3))) for _ in range(100)]
    calls = []
    real = CascadePredictor.restored_differences
    monkeypatch.setattr(CascadePredictor, "restored_differences",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    merged = predictor.segment(ct, [one, KidneyROI(one.center, one.size)] + small).array
    np.testing.assert_array_equal(merged, alone)
    assert len(calls) == 1, "100 ROIs inside one must not be 100 runs"
    assert predictor.used_rois == [one]
    assert len(predictor.notes) == 101 and "#2" in predictor.notes[0] and "the same as" in predictor.notes[0]


# ---------------------------------------------------------------------------------------------------- memory
def test_work_that_exceeds_the_available_memory_is_refused_before_it_starts(predictor, monkeypatch):
    ct = _ct()
    roi = KidneyROI(_centre(ct), (60.0, 60.0, 45.0))
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: 2 << 20)  # 2 MiB left
    monkeypatch.setattr(cascade, "resample_linear", lambda *a, **k: pytest.fail("allocated before the check"))
    with pytest.raises(ResourceLimitError, match=r"the rough stage needs about \d+ MiB .* only 2 MiB is available"):
        predictor.locate(ct)
    with pytest.raises(ResourceLimitError, match=r"the fine stage needs about \d+ MiB .* only 2 MiB is available"):
        predictor.segment(ct, [roi])
    monkeypatch.undo()
    monkeypatch.setattr(limits, "available_memory_bytes", lambda: None)  # unreadable: only the size limits apply
    assert predictor.segment(ct, [roi]).array.shape == ct.array.shape


def test_the_estimates_fit_a_laptop_for_a_large_ct_and_grow_with_the_work():
    """A 1100-slice CT's rough stage and two large kidney ROIs stay well under 4 GiB (measured whole run:
    1.9 GiB, benchmarks/benchmark_memory.py), so an ordinary run is never refused on an 8 GB machine."""
    from BiSCSegmentationLib.model_file import load_bundled

    rough, fine = load_bundled()
    in_shape, grid = (1100, 512, 512), (293, 128, 128)
    fine_grid, box = (72, 256, 256), (250, 256, 256)
    r = limits.rough_stage_bytes(in_shape, grid, rough)
    f = limits.fine_stage_bytes([fine_grid] * 2, [box] * 2, int(np.prod(in_shape)), fine, True)
    assert 0.1 * limits.GIB < r < 2 * limits.GIB and 0.3 * limits.GIB < f < 2 * limits.GIB
    assert limits.fine_stage_bytes([fine_grid], [box], 0, fine, False) < limits.fine_stage_bytes(
        [fine_grid], [tuple(2 * b for b in box)], 0, fine, False)


def test_available_memory_is_read_or_none_never_an_error(monkeypatch):
    got = limits.available_memory_bytes()
    assert got is None or got > 0
    for name in ("_meminfo_available", "_cgroup_available", "_sysconf_available", "_windows_available"):
        monkeypatch.setattr(limits, name, lambda: (_ for _ in ()).throw(OSError("not here")))
    assert limits.available_memory_bytes() is None
    limits.check_memory(1e18, "anything")  # cannot tell: not refused


# ------------------------------------------------------------------------------------------ allocation failures
@pytest.mark.parametrize("error", [MemoryError(), RuntimeError(TORCH_OOM), RuntimeError("CUDA out of memory.")])
def test_an_allocation_failure_of_any_library_becomes_one_clear_error(predictor, monkeypatch, error):
    ct = _ct()

    def fail(*a, **k):
        raise error

    monkeypatch.setattr(cascade, "sliding_window", fail)
    with pytest.raises(ResourceLimitError, match="the rough stage ran out of memory"):
        predictor.locate(ct)
    with pytest.raises(ResourceLimitError, match="the fine stage ran out of memory"):
        predictor.segment(ct, [KidneyROI(_centre(ct), (60.0, 60.0, 45.0))])


def test_other_errors_pass_through_the_allocation_guard(predictor, monkeypatch):
    for error in (RuntimeError("the network is broken"), Cancelled("cancelled during the rough stage")):
        monkeypatch.setattr(cascade, "sliding_window", lambda *a, **k: (_ for _ in ()).throw(error))
        with pytest.raises(type(error)) as got:
            predictor.locate(_ct())
        assert got.type is type(error) and got.value is error


def test_the_cli_reports_an_allocation_failure_in_one_line_with_exit_2(tmp_path, ct_file, model_files, capsys,
                                                                        monkeypatch):
    monkeypatch.setattr(cascade, "sliding_window", lambda *a, **k: (_ for _ in ()).throw(RuntimeError(TORCH_OOM)))
    rc = segment_main([str(ct_file), "-o", str(tmp_path / "out.nii.gz"), "--quiet"] + model_files)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: the rough stage ran out of memory (RuntimeError: DefaultCPUAllocator")
    assert not (tmp_path / "out.nii.gz").exists()


def test_the_rough_networks_buffers_are_released_before_the_fine_stage(monkeypatch):
    """OpenVINO keeps each compiled shape's buffers (~260 MB for the bundled rough network's 128^3 window) for the
    next call; the cascade frees the rough network's once it has its ROIs, and a later call compiles again."""
    from BiSCSegmentationLib.backends import TorchBackend

    released = []

    class Spy(TorchBackend):
        def runner(self, model):
            run = super().runner(model)

            def wrapped(x):
                return run(x)

            wrapped.release = lambda: released.append(model.stage)
            return wrapped

    rough, fine = tiny_stage_models()
    CascadePredictor(rough, fine, InferenceSettings(device="cpu"), backend=Spy("cpu")).locate(_ct())
    assert released == ["rough"]
    pytest.importorskip("openvino")
    from BiSCSegmentationLib.backends import OpenVINOBackend

    run = OpenVINOBackend(disk_cache=False).runner(rough)
    x = torch.zeros(1, 1, 16, 16, 16)
    first = run(x)
    run.release()
    torch.testing.assert_close(run(x), first)

