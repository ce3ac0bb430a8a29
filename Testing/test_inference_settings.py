"""The one settings object (inference_settings.py) and the one error hierarchy (errors.py), and that every entry
point uses them: the command line, the Slicer worker's requests, training's evaluation."""
import argparse
import json

import pytest

import slicer_fixtures  # noqa: F401 - puts BiSCSegmentation/ (the Slicer package) on sys.path
from BiSCSegmentationLib import errors
from BiSCSegmentationLib.decision import Decision
from BiSCSegmentationLib.inference_settings import BACKEND_CHOICES, InferenceSettings, SettingsError


def test_defaults_are_the_command_lines_and_round_trip_through_json():
    from BiSCSegmentationLib.cli import build_segment_parser, settings_from_args

    args = build_segment_parser().parse_args(["ct.nii.gz", "-o", "out.nii.gz"])
    assert settings_from_args(args) == InferenceSettings()
    changed = InferenceSettings(device="cpu", backend="openvino-bf16", mirror=True, min_component_ml=5,
                                roi_growth=2, roi_growth_min_mm2=100, roi_growth_label=2, keep_largest=False,
                                keep_small_tumors=True, plain_tumor_borders=True)
    assert InferenceSettings.from_dict(json.loads(json.dumps(changed.to_dict()))) == changed
    assert isinstance(changed.min_component_ml, float)  # a whole number given for a float is stored as a float
    assert InferenceSettings.from_dict({}) == InferenceSettings()
    assert changed.replace(mirror=False).mirror is False and changed.mirror is True
    with pytest.raises(Exception):
        changed.mirror = False  # immutable
    args = build_segment_parser().parse_args(["ct.nii.gz", "-o", "o.nii.gz", "--mirror", "--roi-growth", "2",
                                              "--keep-small-tumors", "--plain-tumor-borders", "--device", "cpu",
                                              "--backend", "torch"])
    assert settings_from_args(args) == InferenceSettings(device="cpu", backend="torch", mirror=True, roi_growth=2,
                                                         keep_small_tumors=True, plain_tumor_borders=True)


@pytest.mark.parametrize("bad, words", [
    ({"device": "gpu"}, "device 'gpu'"), ({"backend": "tensorrt"}, "backend 'tensorrt'"),
    ({"backend": "openvino-f8"}, "backend 'openvino-f8'"), ({"mirror": "yes"}, "mirror must be true or false"),
    ({"roi_growth": 1.5}, "roi_growth must be a whole number"), ({"roi_growth": True}, "whole number"),
    ({"min_component_ml": "10"}, "min_component_ml must be a number"), ({"min_component_ml": -1.0}, "0 or more"),
    ({"roi_growth": -1}, "ROI growth needs"), ({"roi_growth_label": 3}, "ROI growth needs"),
    ({"roi_growth_min_mm2": float("nan")}, "ROI growth needs"),
])
def test_bad_settings_are_refused_with_the_setting_named(bad, words):
    with pytest.raises(SettingsError, match=words):
        InferenceSettings(**bad)
    with pytest.raises(SettingsError, match=words):
        InferenceSettings.from_dict(bad)


def test_unknown_keys_are_refused_and_every_offered_backend_is_valid():
    with pytest.raises(SettingsError, match=r"unknown inference settings \['grow_rois'\]"):
        InferenceSettings.from_dict({"grow_rois": True})
    for choice in BACKEND_CHOICES:
        assert InferenceSettings(backend=choice).backend == choice
    assert InferenceSettings(device="cuda:1").device == "cuda:1"


def test_the_decision_switches_change_only_their_steps():
    rule = Decision(rule="foreground", foreground_bias=0.125, tumor_bias=0.125, min_tumor_ml=1.0,
                    min_tumor_probability=0.7, tumor_margin_bias=1.0, tumor_margin_min_ml=50.0)
    assert InferenceSettings().fine_decision(rule) == rule
    kept = InferenceSettings(keep_small_tumors=True).fine_decision(rule)
    assert kept == rule.without_small_tumor_step() and kept.min_tumor_ml == 0 and kept.tumor_margin_bias == 1.0
    plain = InferenceSettings(plain_tumor_borders=True).fine_decision(rule)
    assert plain == rule.without_tumor_margins() and plain.min_tumor_ml == 1.0 and plain.tumor_margin_bias == 0
    both = InferenceSettings(keep_small_tumors=True, plain_tumor_borders=True).fine_decision(rule)
    assert both == rule.without_small_tumor_step().without_tumor_margins()


def test_the_worker_request_carries_the_settings_whole():
    from BiSCSegmentationSlicer.worker import make_request

    settings = InferenceSettings(device="cpu", mirror=True, roi_growth=2, plain_tumor_borders=True)
    request = make_request("segment", {"kind": "bundled"}, settings)
    assert InferenceSettings.from_dict(json.loads(json.dumps(request))["settings"]) == settings
    assert make_request("locate", {})["settings"] == InferenceSettings().to_dict()


def test_training_evaluation_builds_the_same_settings():
    from bisc_training.cli import eval_settings

    args = argparse.Namespace(device="cpu", mirror=True, roi_growth=2)
    assert eval_settings(args) == InferenceSettings(device="cpu", mirror=True, roi_growth=2)


def test_every_error_the_product_raises_is_in_the_hierarchy_with_its_kind_and_exit_code():
    from BiSCSegmentationLib.backends import BackendError
    from BiSCSegmentationLib.cli import UsageError
    from BiSCSegmentationLib.dicom import DicomError
    from BiSCSegmentationLib.evaluation import EvaluationError
    from BiSCSegmentationLib.limits import ResourceLimitError
    from BiSCSegmentationLib.model_file import ModelFileError
    from BiSCSegmentationLib.outputs import OutputError, OutputExistsError
    from BiSCSegmentationLib.roi import ROIError
    from BiSCSegmentationLib.volume import VolumeError

    expected = {VolumeError: "input", DicomError: "input", OutputError: "input", OutputExistsError: "input",
                UsageError: "input", EvaluationError: "input", BackendError: "input", SettingsError: "input",
                ROIError: "roi", ResourceLimitError: "resources", ModelFileError: "model",
                errors.NoKidneyFound: "no_kidney", errors.Cancelled: "cancelled"}
    for cls, kind in expected.items():
        exc = cls("what went wrong")
        assert isinstance(exc, errors.BiSCError) and exc.kind == kind, cls
        assert errors.error_record(exc) == {"kind": kind, "message": "what went wrong", "type": cls.__name__}
        assert exc.exit_code == {"no_kidney": 3, "cancelled": 130}.get(kind, 2), cls
    assert ROIError is errors.ROIError  # one class, not two of the same name
    assert "Add an ROI by hand" in str(errors.NoKidneyFound())
    # the kinds of errors from elsewhere
    assert errors.error_record(MemoryError())["kind"] == "memory"
    assert errors.error_record(RuntimeError("CUDA out of memory. Tried to allocate"))["kind"] == "memory"
    assert errors.error_record(ModuleNotFoundError("No module named 'torch'"))["kind"] == "missing_dependency"
    assert errors.error_record(FileNotFoundError("model.pt"))["kind"] == "input"
    assert errors.error_record(KeyError("x"))["kind"] == "internal"
    assert set(errors.USER_KINDS) < set(errors.KINDS)


def test_the_slicer_module_shows_each_kind_of_error_in_plain_words():
    from BiSCSegmentationSlicer.logic import CANCELLED_MESSAGE, NO_KIDNEY_MESSAGE, error_message
    from BiSCSegmentationSlicer.worker import Status, _failure

    def shown(exc):
        return error_message(Status(**_failure(errors.error_record(exc))))

    from BiSCSegmentationLib.model_file import ModelFileError
    assert shown(ModelFileError("model.pt is not a BiSC model file; choose the rough.pt")) == \
        "model.pt is not a BiSC model file; choose the rough.pt"
    assert shown(errors.ROIError("ROI 1 lies outside the image")) == "ROI 1 lies outside the image"
    assert shown(errors.NoKidneyFound()) == NO_KIDNEY_MESSAGE
    assert shown(errors.Cancelled("cancelled during the fine stage")) == CANCELLED_MESSAGE
    assert "Install dependencies" in shown(ModuleNotFoundError("No module named 'torch'"))
    assert "on the CPU too" in shown(MemoryError())
    internal = shown(KeyError("spacing"))
    assert internal.startswith("The computation failed (KeyError:") and "Python console" in internal
    assert Status(**_failure(errors.error_record(errors.Cancelled("x")))).state == "cancelled"
