"""Background runs of the Slicer module: the separate-process runner (Slicer's default) and the thread runner,
progress polling, cancel (cooperative, then kill), crashes and plain-language errors."""
from __future__ import annotations

import os
import stat
import time

import numpy as np
import pytest

from slicer_fixtures import case_files, ctx, needs_slicer_core  # noqa: F401 - fixtures
from BiSCSegmentationLib.inference_settings import InferenceSettings

pytestmark = [needs_slicer_core, pytest.mark.slicer]


def _choice(case):
    from BiSCSegmentationSlicer.models import ModelChoice
    return ModelChoice(kind="files", rough_path=case["rough"], fine_path=case["fine"]).to_dict()


def _poll_all(job, timeout=120.0):
    seen = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = job.poll()
        seen.append(status)
        if status.finished:
            return status, seen
        time.sleep(0.05)
    job.cancel()
    raise AssertionError("the job did not finish in time")


def test_process_job_locate_equals_in_process(case_files):
    from BiSCSegmentationLib.cascade import CascadePredictor
    from BiSCSegmentationLib.volume import read_volume
    from BiSCSegmentationSlicer.worker import ProcessJob, make_request

    ct = read_volume(case_files["ct"])
    job = ProcessJob(make_request("locate", _choice(case_files), InferenceSettings(device="cpu")), ct).start()
    status, seen = _poll_all(job)
    assert status.state == "done", status.error + status.details
    expected = CascadePredictor.from_files(
        case_files["rough"], case_files["fine"], InferenceSettings(device="cpu")
    ).locate(ct)
    assert np.array_equal(status.result["mask"], expected.mask.array)
    assert [r.to_dict() for r in status.result["rois"]] == [r.to_dict() for r in expected.rois]
    assert any(s.state == "running" for s in seen) and not os.path.exists(job.dir), "job folder not cleaned up"
    # the panel tells the user which backend ran and how long it took
    backend = CascadePredictor.from_files(
        case_files["rough"], case_files["fine"], InferenceSettings(device="cpu")
    ).backend_name
    assert status.result["backend"].split(",")[0] == backend.split(",")[0] and status.result["seconds"] > 0
    assert status.ran_on.startswith(" (" + backend.split(",")[0]) and status.ran_on.endswith(" s)")


def test_process_job_cancel_is_cooperative(case_files):
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationLib.volume import read_volume
    from BiSCSegmentationSlicer.logic import CANCELLED_MESSAGE, error_message
    from BiSCSegmentationSlicer.worker import ProcessJob, make_request

    ct = read_volume(case_files["ct"])
    roi = KidneyROI(tuple(ct.index_to_physical((np.array(ct.size_ijk) - 1) / 2)), (120, 120, 120), "right")
    job = ProcessJob(
        make_request("segment", _choice(case_files), InferenceSettings(device="cpu"), rois=[roi]), ct
    ).start()
    job.cancel()
    status, _ = _poll_all(job)
    assert status.state == "cancelled" and status.error_kind == "cancelled"
    assert error_message(status) == CANCELLED_MESSAGE


def _fake_python(tmp_path, body: str) -> str:
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_process_job_killed_when_it_ignores_cancel(tmp_path):
    from BiSCSegmentationLib.volume import Volume
    from BiSCSegmentationSlicer.worker import ProcessJob, make_request

    ct = Volume(np.zeros((4, 4, 4), np.int16) - 1000)
    job = ProcessJob(make_request("locate", {}), ct, python=_fake_python(tmp_path, "exec sleep 60"))
    job.start()
    job.cancel()
    t0 = time.monotonic()
    status, _ = _poll_all(job, timeout=20)
    assert status.state == "cancelled" and time.monotonic() - t0 < 2.5


def test_process_crash_is_reported_with_its_log(tmp_path):
    from BiSCSegmentationLib.volume import Volume
    from BiSCSegmentationSlicer.logic import error_message
    from BiSCSegmentationSlicer.worker import ProcessJob, make_request

    ct = Volume(np.zeros((4, 4, 4), np.int16) - 1000)
    job = ProcessJob(make_request("locate", {}), ct,
                     python=_fake_python(tmp_path, "echo 'Segmentation fault in libtorch' >&2; exit 139"))
    status, _ = _poll_all(job.start(), timeout=20)
    assert status.state == "failed" and status.error_kind == "process"
    assert "exit code 139" in status.error and "libtorch" in status.details
    assert "Python console" in error_message(status)


def test_model_errors_come_back_in_plain_words(tmp_path, case_files):
    from BiSCSegmentationLib.volume import read_volume
    from BiSCSegmentationSlicer.logic import error_message
    from BiSCSegmentationSlicer.models import ModelChoice
    from BiSCSegmentationSlicer.worker import ProcessJob, make_request

    bad = tmp_path / "not-a-model.pt"
    bad.write_text("hello")
    choice = ModelChoice(kind="files", rough_path=str(bad), fine_path=case_files["fine"]).to_dict()
    status, _ = _poll_all(ProcessJob(make_request("locate", choice), read_volume(case_files["ct"])).start())
    assert status.state == "failed" and status.error_kind == "model"
    assert error_message(status) == status.error and "not-a-model.pt" in status.error


def test_thread_job_progress_and_cancel(case_files):
    from BiSCSegmentationLib.volume import read_volume
    from BiSCSegmentationSlicer.worker import ThreadJob, make_request

    ct = read_volume(case_files["ct"])
    job = ThreadJob(make_request("locate", _choice(case_files), InferenceSettings(device="cpu")), ct).start()
    status, seen = _poll_all(job)
    assert status.state == "done" and status.fraction == 1.0
    fractions = [s.fraction for s in seen if s.stage == "rough"]
    assert fractions == sorted(fractions)
    job = ThreadJob(make_request("locate", _choice(case_files), InferenceSettings(device="cpu")), ct).start()
    job.cancel()
    status, _ = _poll_all(job)
    assert status.state == "cancelled"


def test_slicer_requests_keep_small_tumors_and_plain_tumor_borders_reach_the_fine_stage(tmp_path, monkeypatch):
    from BiSCSegmentationLib.cascade import CascadePredictor
    from BiSCSegmentationLib.phantom import make_case
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationSlicer.models import ModelChoice
    from BiSCSegmentationSlicer.worker import compute, make_request
    from BiSCSegmentationLib.decision import Decision
    from test_decision import RULE, _rule_files
    rough, fine = _rule_files(tmp_path)
    seen = []
    monkeypatch.setattr(CascadePredictor, "segment", lambda self, ct, rois: seen.append(self.decision) or ct)
    choice = ModelChoice(kind="files", rough_path=rough, fine_path=fine).to_dict()
    ct, _ = make_case(seed=0)
    roi = KidneyROI(tuple(ct.index_to_physical(np.array(ct.size_ijk) / 2)), (80.0, 80.0, 80.0), "left")
    for keep, plain in ((False, False), (True, False), (False, True)):
        compute(
            make_request(
                "segment",
                choice,
                InferenceSettings(device="cpu", keep_small_tumors=keep, plain_tumor_borders=plain),
                rois=[roi],
            ),
            ct,
            lambda s, f: None,
            lambda: False,
        )
    assert seen == [
        RULE,
        Decision("foreground", foreground_bias=0.125, tumor_bias=0.25, min_tumor_ml=0.0, min_tumor_probability=0.0,
                 min_island_fraction=0.5, tumor_margin_bias=1.0, tumor_margin_min_ml=50.0),
        Decision("foreground", foreground_bias=0.125, tumor_bias=0.25, min_tumor_ml=4.0, min_tumor_probability=0.7,
                 min_island_fraction=0.5),
    ]


def test_slicer_request_roi_growth_reaches_the_fine_stage_and_the_boxes_used_come_back(tmp_path, monkeypatch):
    from BiSCSegmentationLib.cascade import CascadePredictor
    from BiSCSegmentationLib.phantom import make_case
    from BiSCSegmentationLib.roi import KidneyROI, grow_roi
    from BiSCSegmentationSlicer.models import ModelChoice
    from BiSCSegmentationSlicer.worker import compute, make_request
    from test_decision import _rule_files
    rough, fine = _rule_files(tmp_path)
    seen = []

    def fake_segment(self, ct, rois):
        seen.append(self.settings.roi_growth)
        self.used_rois = [grow_roi(r, [(2, 1)]) if self.settings.roi_growth else r for r in rois]
        return ct
    monkeypatch.setattr(CascadePredictor, "segment", fake_segment)
    choice = ModelChoice(kind="files", rough_path=rough, fine_path=fine).to_dict()
    ct, _ = make_case(seed=0)
    roi = KidneyROI(tuple(ct.index_to_physical(np.array(ct.size_ijk) / 2)), (80.0, 80.0, 80.0), "left")
    results = [
        compute(
            make_request("segment", choice, InferenceSettings(device="cpu", roi_growth=n), rois=[roi]),
            ct,
            lambda s, f: None,
            lambda: False,
        )
        for n in (0, 2)
    ]
    assert seen == [0, 2]
    assert results[0]["rois"] == [roi] and results[1]["rois"] == [grow_roi(roi, [(2, 1)])]


def test_quality_warnings_cross_the_process_and_travel_with_the_segmentation(case_files, ctx):
    """A CT with 7 mm slices is readable but doubtful: the warning the cascade raises reaches the panel (through
    the worker process) and is stored on the segmentation node it writes."""
    from BiSCSegmentationLib.quality import CRITICAL, QualityWarning
    from BiSCSegmentationLib.roi import KidneyROI
    from BiSCSegmentationLib.volume import Volume, read_volume
    from BiSCSegmentationSlicer.logic import BiSCLogic, Run, stored_warnings, warnings_text
    from BiSCSegmentationSlicer.scene import load_volume
    from BiSCSegmentationSlicer.worker import ProcessJob, make_request

    base = read_volume(case_files["ct"])
    ct = Volume(base.array, (base.spacing[0], base.spacing[1], 7.0), base.origin, base.direction)
    roi = KidneyROI(tuple(ct.index_to_physical((np.array(ct.size_ijk) - 1) / 2)), (100, 100, 100), "right")
    job = ProcessJob(
        make_request("segment", _choice(case_files), InferenceSettings(device="cpu"), rois=[roi]), ct
    ).start()
    status, _ = _poll_all(job)
    assert status.state == "done", status.error + status.details
    codes = [w.code for w in status.warnings]
    assert "INPUT_THICK_SLICES" in codes and all(isinstance(w, QualityWarning) for w in status.warnings)

    node = load_volume(ctx, case_files["ct"], name="CT")
    logic = BiSCLogic(ctx)
    seg = logic.finish_segment(Run("segment", node, read_volume(case_files["ct"]), job, [roi]), status, mode="new")
    assert [w.code for w in stored_warnings(seg)] == codes
    # the model the run used travels too (the report and the DICOM SEG name it)
    import hashlib

    from BiSCSegmentationSlicer.export import recorded_model
    model = recorded_model(seg)
    assert model["name"] == "custom files" and not model.get("edited")
    for stage in ("rough", "fine"):
        with open(case_files[stage], "rb") as f:
            assert model[stage]["sha256"] == hashlib.sha256(f.read()).hexdigest()
    text = warnings_text(status.warnings)
    assert "7 mm" in text and text.splitlines()[0].startswith(f"{len(codes)} quality warning")
    critical = QualityWarning("KIDNEY_VOLUME", CRITICAL, "a kidney of 4000 mL")
    assert warnings_text([status.warnings[0], critical]).splitlines()[1].startswith("- a kidney of 4000 mL")
    assert warnings_text([]) == ""
