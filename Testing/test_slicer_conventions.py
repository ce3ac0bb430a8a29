"""Slicer conventions of the module (issue #20, items 7-10): remembered settings with Reset to defaults, the
Sample Data phantom, honest help and licenses, Show 3D as a toggle."""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import textwrap
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from slicer_fixtures import MODULE_DIR, ROOT, ctx, ct_node, case_files, needs_slicer_core  # noqa: F401 - fixtures

pytestmark = [needs_slicer_core, pytest.mark.slicer]


class QSettingsLike:
    """A settings store that, like QSettings with an INI file, gives every value back as a string."""

    def __init__(self):
        self.data = {}

    def value(self, key, default=None):
        return self.data.get(key, default)

    def setValue(self, key, value):
        self.data[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)

    def remove(self, key):
        self.data.pop(key, None)


def parameter_defaults():
    """{field: default} of BiSCSegmentationParameterNode, enums as their values (from the module's source)."""
    tree = ast.parse((MODULE_DIR / "BiSCSegmentation.py").read_text())
    enums = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and any(getattr(b, "attr", "") == "Enum" for b in node.bases):
            enums[node.name] = {t.targets[0].id: t.value.value for t in node.body if isinstance(t, ast.Assign)}
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "BiSCSegmentationParameterNode")
    out = {}
    for item in cls.body:
        if isinstance(item, ast.AnnAssign) and item.value is not None:
            v = item.value
            out[item.target.id] = enums[v.value.id][v.attr] if isinstance(v, ast.Attribute) else ast.literal_eval(v)
    return out


def test_settings_round_trip_reset_and_bad_values():
    from BiSCSegmentationSlicer import settings

    store = QSettingsLike()
    assert settings.load(store) == settings.DEFAULTS
    chosen = {"device": "cuda", "backend": "torch", "modelSource": "files", "roughModelPath": "/m/r.pt",
              "fineModelPath": "/m/f.pt", "mirror": True, "growRois": True, "minKidneyMl": 25.5,
              "minLesionMl": 1.0, "lastOutputFolder": "/data/out", "unknown": 3}
    settings.save(store, chosen)
    assert all(k.startswith("BiSCSegmentation/") for k in store.data) and "BiSCSegmentation/unknown" not in store.data
    loaded = settings.load(store)                      # typed again although the store holds strings
    assert {k: loaded[k] for k in chosen if k != "unknown"} == {k: v for k, v in chosen.items() if k != "unknown"}
    assert loaded["keepSmallTumors"] is False and isinstance(loaded["minKidneyMl"], float)
    store.data["BiSCSegmentation/device"] = "tpu"      # values from another version or a hand-edited file
    store.data["BiSCSegmentation/minKidneyMl"] = "lots"
    store.data["BiSCSegmentation/mirror"] = "maybe"
    loaded = settings.load(store)
    assert (loaded["device"], loaded["minKidneyMl"], loaded["mirror"]) == ("auto", 10.0, False)
    assert settings.reset(store) == settings.DEFAULTS and store.data == {} and settings.load(store) == settings.DEFAULTS


def test_remembered_settings_are_the_parameter_node_fields_with_the_same_defaults():
    from BiSCSegmentationSlicer import settings

    defaults = parameter_defaults()
    tree = ast.parse((MODULE_DIR / "BiSCSegmentation.py").read_text())
    remembered = next(ast.literal_eval(n.value) for n in ast.walk(tree)
                      if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "REMEMBERED")
    assert set(remembered) | {"lastOutputFolder"} == set(settings.DEFAULTS)
    assert {"device", "backend", "modelSource", "bundledModel", "mirror", "keepSmallTumors", "growRois",
            "plainTumorBorders", "minKidneyMl", "minLesionMl"} <= set(remembered)
    for name in remembered:
        assert defaults[name] == settings.DEFAULTS[name], name


def test_the_module_applies_and_saves_settings_through_the_parameter_node(tmp_path):
    """With stand-ins for Qt (test_slicer_static): applySettings/currentSettings convert enums both ways."""
    from test_slicer_static import STUBS, _run

    out = _run(STUBS + textwrap.dedent("""
        import types
        import BiSCSegmentation as m
        from BiSCSegmentationSlicer import settings
        p = types.SimpleNamespace()
        values = dict(settings.DEFAULTS, device="cuda", backend="openvino", modelSource="url", minLesionMl=2.0)
        m.applySettings(p, values)
        assert p.device is m.Device.CUDA and p.backend is m.Backend.OPENVINO and p.modelSource is m.ModelSource.URL
        store = {}
        class Store:
            def setValue(self, k, v): store[k] = v
        settings.save(Store(), m.currentSettings(p))
        print(store["BiSCSegmentation/device"], store["BiSCSegmentation/backend"], store["BiSCSegmentation/minLesionMl"])
    """), "torch")
    assert out.split() == ["cuda", "openvino", "2.0"]


def test_sample_data_phantom(ctx, tmp_path):
    from BiSCSegmentationLib.volume import read_volume
    from BiSCSegmentationSlicer import sampledata
    from BiSCSegmentationSlicer.scene import load_volume, volume_from_node

    args = sampledata.source_arguments(str(MODULE_DIR), downloader=lambda source: None)
    assert args["category"] == "BiSCSegmentation" and args["sampleName"] == "BiSCPhantomCT"
    assert os.path.isfile(args["thumbnailFileName"]) and callable(args["customDownloader"])
    thumbnail = (MODULE_DIR / "BiSCSegmentation.py").parent / sampledata.THUMBNAIL
    assert f"Resources/Icons/{thumbnail.name}" in (MODULE_DIR / "CMakeLists.txt").read_text()
    path = sampledata.make_sample_files(str(tmp_path / "a"))
    again = sampledata.make_sample_files(str(tmp_path / "b"))
    digest = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (path, again)]
    assert digest[0] == digest[1], "the phantom must be the same every time"
    stamp = os.stat(path).st_mtime_ns
    assert sampledata.make_sample_files(str(tmp_path / "a")) == path and os.stat(path).st_mtime_ns == stamp
    assert not [f for f in os.listdir(tmp_path / "a") if ".part" in f]
    node = load_volume(ctx, path, name=sampledata.NODE_NAME)
    ct = volume_from_node(node)
    labels = read_volume(path[:-len(".nrrd")] + "-labels.nrrd")
    assert ct.array.shape == labels.array.shape == (54, 465, 465) and ct.array.min() <= -1000 < 100 < ct.array.max()
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    kidney_ml, tumor_ml = (float((labels.array == v).sum()) * voxel_ml for v in (1, 2))
    assert 200 < kidney_ml < 400 and 20 < tumor_ml < 60
    x = labels.index_to_physical(np.argwhere(labels.array == 1)[:, ::-1].astype(float))[:, 0]
    assert x.min() < -40 and x.max() > 40, "both kidneys"


def test_help_text_and_licenses():
    from BiSCSegmentationSlicer import about, models

    text = about.help_text()
    assert 'href="https://github.com/"' not in text and about.DOCS_URL in text
    cmake = (ROOT / "CMakeLists.txt").read_text()
    assert re.search(r'set\(BISC_REPOSITORY_URL "([^"]+)"\)', cmake).group(1) == about.REPOSITORY_URL
    assert about.DOCS_URL.endswith("/docs/slicer.md") and (ROOT / "docs" / "slicer.md").is_file()
    name = models.default_bundled()
    assert name and name in text and "not for clinical use" in text
    assert "synthetic" in text and "KiTS19" in text and "CC BY-NC-SA 4.0" in text
    ack = about.acknowledgement_text()
    assert "Apache License 2.0" in ack and "CC BY-NC-SA 4.0" in ack and "not for clinical use" in ack
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert 'license = { text = "Apache-2.0" }' in (ROOT / "pyproject.toml").read_text()
    registry = json.loads(models.registry_path().read_text())
    for entry in registry["models"].values():
        assert "CC BY-NC-SA 4.0" in entry["license"] and "KiTS19" in entry["training_data"]
        assert "not for clinical use" in entry["intended_use"]
    weights = (models.registry_path().parent / "LICENSE-weights.md").read_text()
    assert "CC BY-NC-SA 4.0" in weights and "Apache License 2.0" in weights
    module = (MODULE_DIR / "BiSCSegmentation.py").read_text()
    assert "helpText = about.help_text()" in module and "acknowledgementText = about.acknowledgement_text()" in module
    assert "registerCustomSampleDataSource" in module and "startupCompleted()" in module


def test_show_3d_is_a_toggle(ctx, ct_node):
    from BiSCSegmentationSlicer import segmentation as segs
    from test_slicer_planning_updates import written

    _, seg, _ = written(ctx, ct_node)
    assert not segs.is_shown_3d(seg)
    assert segs.toggle_3d(seg, True) and seg.GetDisplayNode().GetVisibility3D()
    assert not segs.toggle_3d(seg, False) and not seg.GetDisplayNode().GetVisibility3D()
    assert seg.GetDisplayNode().GetVisibility(), "hiding the surfaces keeps the slice views"
    assert segs.toggle_3d(seg, True)
    # the panel's button is a checkable toggle wired to toggled(bool)
    button = next(w for w in ET.parse(MODULE_DIR / "Resources" / "UI" / "BiSCSegmentation.ui").getroot().iter("widget")
                  if w.get("name") == "show3DButton")
    assert any(p.get("name") == "checkable" and p.findtext("bool") == "true" for p in button.findall("property"))
    assert 'show3DButton.connect("toggled(bool)", self.onShow3D)' in (MODULE_DIR / "BiSCSegmentation.py").read_text()
