"""Device choice and Python dependencies of the Slicer module (issue #20, item 6): CUDA when usable, else the
CPU, MPS only where tested, plain refusals for a too-old PyTorch or an unusable GPU, one CPU retry after a GPU
out-of-memory error (told to the user, through the worker process too), and the dependency install: one
question, progress per step, *Reinstall dependencies* that never replaces Slicer's numpy."""
from __future__ import annotations

import types

import numpy as np
import pytest

from slicer_fixtures import case_files, needs_slicer_core  # noqa: F401 - fixtures
from BiSCSegmentationLib.inference_settings import InferenceSettings

pytestmark = [needs_slicer_core, pytest.mark.slicer]


class FakeCuda:
    def __init__(self, available, works=True):
        self.available, self.works, self.emptied = available, works, 0

    def is_available(self):
        return self.available

    def device_count(self):
        return 1 if self.available else 0

    def empty_cache(self):
        self.emptied += 1


def fake_torch(version="2.13.0", cuda=False, works=True, mps=False):
    t = types.SimpleNamespace(__version__=version, cuda=FakeCuda(cuda, works),
                              backends=types.SimpleNamespace(mps=types.SimpleNamespace(is_available=lambda: mps)))

    def zeros(*shape, device="cpu"):
        if device == "cuda" and not works:
            raise RuntimeError("CUDA error: no kernel image is available for execution on the device")
        return types.SimpleNamespace(add_=lambda v: None)
    t.zeros = zeros
    return t


def test_device_choice():
    from BiSCSegmentationSlicer.devices import MPS_NOTE, DeviceError, resolve

    assert resolve("auto", fake_torch(cuda=True)) == ("cuda", [])
    assert resolve("auto", fake_torch(cuda=False)) == ("cpu", [])
    assert resolve("auto", fake_torch(cuda=True, works=False)) == ("cpu", []), "a GPU torch cannot use is not used"
    assert resolve("auto", fake_torch(mps=True)) == ("cpu", [MPS_NOTE]), "MPS is untested: CPU, and say so"
    assert resolve("cpu", fake_torch(cuda=True)) == ("cpu", [])
    assert resolve("cuda", fake_torch(cuda=True)) == ("cuda", [])
    with pytest.raises(DeviceError, match="Choose device \"auto\" or \"cpu\""):
        resolve("cuda", fake_torch(cuda=False))
    with pytest.raises(DeviceError, match="MPS"):
        resolve("mps", fake_torch(mps=True))
    with pytest.raises(DeviceError, match=r"PyTorch 1\.13\.1\+cu117 is too old.*Reinstall dependencies"):
        resolve("auto", fake_torch(version="1.13.1+cu117", cuda=True))


def test_out_of_memory_is_recognised_also_when_wrapped():
    from BiSCSegmentationLib.limits import ResourceLimitError, allocation_guard
    from BiSCSegmentationSlicer.devices import is_out_of_memory

    class OutOfMemoryError(RuntimeError):
        pass
    assert is_out_of_memory(OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    with pytest.raises(ResourceLimitError) as info:
        with allocation_guard("the fine stage"):
            raise OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert is_out_of_memory(info.value)
    assert not is_out_of_memory(MemoryError("DefaultCPUAllocator: can't allocate memory"))
    assert not is_out_of_memory(ValueError("bad ROI"))


def test_gpu_out_of_memory_falls_back_to_the_cpu_once(monkeypatch):
    import torch

    from BiSCSegmentationLib.phantom import make_case
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationSlicer import devices, worker
    from BiSCSegmentationLib.errors import error_record
    from BiSCSegmentationSlicer.logic import error_message

    ct, _ = make_case(seed=0)
    roi = KidneyROI(tuple(ct.index_to_physical(np.array(ct.size_ijk) / 2)), (80.0, 80.0, 80.0), "left")
    request = worker.make_request("segment", {}, InferenceSettings(device="auto"), rois=[roi])
    seen = []

    def run_on(settings, request, ct, progress, cancel):
        seen.append(settings.device)
        if settings.device == "cuda":
            raise RuntimeError("CUDA out of memory. Tried to allocate 3.50 GiB")
        return {"labels": np.zeros(ct.array.shape, np.uint8), "rois": [roi]}

    monkeypatch.setattr(worker, "_compute_on", run_on)
    monkeypatch.setattr(devices, "resolve", lambda requested, t: ("cuda", []))
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    result = worker.compute(request, ct, lambda s, f: None, lambda: False)
    assert seen == ["cuda", "cpu"] and result["notes"] == [devices.OOM_FALLBACK_NOTE] and emptied == [1]
    assert worker.Status(state="done", result=result).notes == [devices.OOM_FALLBACK_NOTE]

    # only once: the CPU failing as well is reported, in plain words
    def always(settings, request, ct, progress, cancel):
        seen.append(settings.device)
        raise RuntimeError(f"{'CUDA' if settings.device == 'cuda' else 'DefaultCPUAllocator:'} out of memory")

    monkeypatch.setattr(worker, "_compute_on", always)
    seen.clear()
    with pytest.raises(RuntimeError) as info:
        worker.compute(request, ct, lambda s, f: None, lambda: False)
    assert seen == ["cuda", "cpu"]
    text = error_message(worker.Status(**worker._failure(error_record(info.value))))
    assert "on the CPU too" in text
    # a device refusal reaches the user as it is
    monkeypatch.setattr(devices, "resolve", lambda requested, t: (_ for _ in ()).throw(devices.DeviceError("X")))
    with pytest.raises(devices.DeviceError) as refused:
        worker.compute(request, ct, lambda s, f: None, lambda: False)
    assert error_message(worker.Status(**worker._failure(error_record(refused.value)))) == "X"


def test_notes_cross_the_worker_process(case_files):
    """A real run in a separate process on device "auto": the result says which backend ran and carries the
    notes list (empty on this CPU-only machine)."""
    from BiSCSegmentationLib.volume import read_volume
    from BiSCSegmentationSlicer.models import ModelChoice
    from BiSCSegmentationSlicer.worker import ProcessJob, make_request

    choice = ModelChoice(kind="files", rough_path=case_files["rough"], fine_path=case_files["fine"]).to_dict()
    job = ProcessJob(
        make_request("locate", choice, InferenceSettings(device="auto", backend="torch")), read_volume(case_files["ct"])
    ).start()
    status = job.wait(600)   # generous: the VM may be shared with training runs
    assert status.state == "done", status.error + status.details
    assert status.notes == [] and "notes" in status.result and status.result["backend"].startswith("PyTorch")


def test_dependencies_too_old_torch_progress_and_reinstall(monkeypatch):
    from BiSCSegmentationSlicer import dependencies as deps

    state = {"torch": "1.12.1", "scipy": True}
    monkeypatch.setattr(deps, "installed", lambda name: bool(state.get(name, True)))
    monkeypatch.setattr(deps, "installed_version", lambda dist: state["torch"] if dist == "torch" else "1.0")
    assert deps.torch_missing() and "1.12.1 is too old" in deps.missing_summary()
    asked, pip, torch_calls, steps = [], [], [], []

    def install_torch(reinstall=False):
        torch_calls.append(reinstall)
        state["torch"] = "2.13.0"
        return object()

    ok = deps.ensure(lambda m: asked.append(m) or True, pip.append, install_torch,
                     progress=lambda text, step, total: steps.append((step, total)))
    assert ok and len(asked) == 1 and torch_calls == [False] and pip == [] and not deps.missing_summary()
    assert steps == [(0, 1), (1, 1)]

    # Reinstall dependencies: asks once even though nothing is missing; scipy without touching numpy
    asked.clear(), steps.clear()
    assert deps.ensure(lambda m: asked.append(m) or True, pip.append, install_torch,
                       progress=lambda text, step, total: steps.append((step, total)), reinstall=True)
    assert len(asked) == 1 and asked[0].startswith("Reinstall") and torch_calls == [False, True]
    assert pip == [f"--force-reinstall --no-deps {deps.requirement_lines()[0]}"]
    assert [s for s, _ in steps] == [0, 1, 2] and {t for _, t in steps} == {2}
    # declined: nothing happens
    assert deps.ensure(lambda m: False, pip.append, install_torch, reinstall=True) is False
    assert len(pip) == 1 and len(torch_calls) == 2
