"""Static checks of the 3D Slicer module that need no Slicer: the .ui file against the code that uses it, the
parameter node against the .ui bindings, CMake listings and extension metadata, Python 3.9 syntax, and that
the module and its logic import without torch (or scipy) installed.
"""
from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET

import pytest

from slicer_fixtures import HAVE_SLICER_CORE, MODULE_DIR, ROOT

MODULE_PY = MODULE_DIR / "BiSCSegmentation.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "BiSCSegmentation.ui"
PACKAGE = MODULE_DIR / "BiSCSegmentationSlicer"

# Signals (with their C++ argument lists) of the widget classes the .ui uses, inherited ones included,
# from the Qt 5 / CTK / Slicer MRML widgets documentation.
_BUTTON = {"clicked()", "clicked(bool)", "pressed()", "released()", "toggled(bool)"}
SIGNALS = {
    "QPushButton": _BUTTON,
    "QCheckBox": _BUTTON | {"stateChanged(int)"},
    "QComboBox": {"currentIndexChanged(int)", "currentIndexChanged(QString)", "currentTextChanged(QString)",
                  "activated(int)", "textActivated(QString)", "highlighted(int)", "editTextChanged(QString)"},
    "QLineEdit": {"textChanged(QString)", "textEdited(QString)", "editingFinished()", "returnPressed()"},
    "QDoubleSpinBox": {"valueChanged(double)", "valueChanged(QString)", "editingFinished()"},
    "QTableWidget": {"itemSelectionChanged()", "cellClicked(int,int)", "cellDoubleClicked(int,int)",
                     "cellChanged(int,int)", "currentCellChanged(int,int,int,int)", "itemChanged(QTableWidgetItem*)"},
    "ctkPathLineEdit": {"currentPathChanged(QString)", "validInputChanged(bool)"},
    "ctkCollapsibleButton": _BUTTON | {"contentsCollapsed(bool)"},
    "qMRMLNodeComboBox": {"currentNodeChanged(vtkMRMLNode*)", "currentNodeChanged(bool)",
                          "currentNodeIDChanged(QString)", "nodeAdded(vtkMRMLNode*)", "nodeActivated(vtkMRMLNode*)",
                          "nodeAddedByUser(vtkMRMLNode*)", "nodeAboutToBeRemoved(vtkMRMLNode*)"},
    "qMRMLWidget": {"mrmlSceneChanged(vtkMRMLScene*)"},
    "qMRMLTableView": {"selectionChanged()"},
}
KNOWN_CLASSES = set(SIGNALS) | {"QLabel", "QProgressBar"}
# parameterNodeWrapper type -> widget classes its GUI connectors accept
CONNECTABLE = {"bool": {"QCheckBox", "QPushButton"}, "float": {"QDoubleSpinBox", "ctkSliderWidget"},
               "int": {"QSpinBox", "QSlider"}, "str": {"QLineEdit", "QTextEdit"}, "enum": {"QComboBox"},
               "node": {"qMRMLNodeComboBox"}}


def ui_widgets():
    root = ET.parse(UI_FILE).getroot()
    widgets = {w.get("name"): w for w in root.iter("widget")}
    return root, widgets


def module_tree():
    return ast.parse(MODULE_PY.read_text(), str(MODULE_PY))


def test_ui_is_valid_and_uses_known_widgets():
    root, widgets = ui_widgets()
    assert root.tag == "ui" and root.findtext("class") == "BiSCSegmentation"
    assert widgets["BiSCSegmentation"].get("class") == "qMRMLWidget"
    unknown = {w.get("class") for w in widgets.values()} - KNOWN_CLASSES
    assert not unknown, f"widget classes without a signal table: {unknown}"
    # MRML widgets get the scene from the top-level widget
    receivers = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"}
    mrml = {n for n, w in widgets.items() if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}
    assert mrml <= receivers


def _ui_uses(tree):
    """(widget name, signal or None, lineno) for every self.ui.NAME[.signal].connect(...) and self.ui.NAME use."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "ui" \
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self":
            uses.append((node.attr, None, node.lineno))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect":
            target = node.func.value
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute) \
                    and target.value.attr == "ui" and node.args and isinstance(node.args[0], ast.Constant):
                uses.append((target.attr, node.args[0].value, node.lineno))              # .connect("sig(args)", slot)
            elif isinstance(target, ast.Attribute) and isinstance(target.value, ast.Attribute) \
                    and isinstance(target.value.value, ast.Attribute) and target.value.value.attr == "ui":
                uses.append((target.value.attr, target.attr + "(*)", node.lineno))      # .signal.connect(slot)
    return uses


def test_every_widget_and_signal_the_module_uses_exists():
    _, widgets = ui_widgets()
    tree = module_tree()
    uses = _ui_uses(tree)
    assert len(uses) > 30
    # names built from MODEL_ROWS: NAME + "Label" and NAME + "ComboBox"/"LineEdit"
    rows = next(ast.literal_eval(n.value) for n in ast.walk(tree)
                if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "MODEL_ROWS")
    for names in rows.values():
        for name in names:
            uses.append((name + "Label", None, 0))
            uses.append((name + ("ComboBox" if name == "bundledModel" else "LineEdit"), None, 0))
    connected = 0
    for name, signal, line in uses:
        assert name in widgets, f"BiSCSegmentation.py:{line} uses self.ui.{name}, which the .ui does not have"
        if signal is None:
            continue
        cls = widgets[name].get("class")
        if signal.endswith("(*)"):
            assert any(s.startswith(signal[:-3] + "(") for s in SIGNALS[cls]), f"{cls} has no signal {signal}"
        else:
            assert signal.replace(" ", "") in SIGNALS[cls], f"line {line}: {cls} {name} has no signal {signal}"
        connected += 1
    assert connected >= 15


def test_qtimer_signals():
    text = MODULE_PY.read_text()
    signals = re.findall(r'Timer\.connect\("([^"]+)"', text)
    assert signals, "no QTimer connection found: the pattern no longer matches the module's code"
    assert set(signals) == {"timeout()"}


def _parameter_fields(tree):
    cls = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == "BiSCSegmentationParameterNode")
    assert any(getattr(d, "id", "") == "parameterNodeWrapper" for d in cls.decorator_list)
    enums = {n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)
             and any(getattr(b, "attr", getattr(b, "id", "")) == "Enum" for b in n.bases)}
    fields = {}
    for item in cls.body:
        if isinstance(item, ast.AnnAssign):
            ann = ast.unparse(item.annotation)
            base = ann.split("[", 1)[1].split(",")[0] if ann.startswith("Annotated[") else ann
            kind = "enum" if base in enums else "node" if base.startswith("vtkMRML") else base
            fields[item.target.id] = kind
    return fields


def test_parameter_node_bindings_match_the_ui():
    _, widgets = ui_widgets()
    fields = _parameter_fields(module_tree())
    bound = {}
    for name, w in widgets.items():
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = (name, w.get("class"))
    assert set(bound) <= set(fields), f"bound to unknown parameters: {set(bound) - set(fields)}"
    for param, (name, cls) in bound.items():
        assert cls in CONNECTABLE[fields[param]], f"{name} ({cls}) cannot show {param} ({fields[param]})"
    # the manual bindings of the module
    for param in ("bundledModel", "roughModelPath", "fineModelPath"):
        assert param in fields and param not in bound
    assert {"inputVolume", "modelSource", "device", "mirror", "minKidneyMl", "outputSegmentation"} <= set(bound)


def test_cmake_lists_every_script_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "WITH_GENERIC_TESTS" in text
    for folder in ("BiSCSegmentationSlicer", "BiSCSegmentationLib"):
        for py in sorted((MODULE_DIR / folder).glob("*.py")):
            assert f"{folder}/{py.name}" in text, f"{folder}/{py.name} is not in the module's CMakeLists.txt"
    listed_files = re.findall(r"^\s+(\S+\.(?:py|png|ui))\s*$", text, re.M)
    assert len(listed_files) >= 20, "the pattern for listed files no longer matches CMakeLists.txt"
    for listed in listed_files:
        path = MODULE_DIR / listed.replace("${MODULE_NAME}", "BiSCSegmentation")
        assert path.is_file(), f"CMakeLists.txt lists {listed}, which does not exist"


def test_extension_metadata():
    text = (ROOT / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(rf'set\({key} "[^"]+"\)', text), key
    assert re.search(r'set\(EXTENSION_DEPENDS "PyTorch"\)', text)
    assert "add_subdirectory(BiSCSegmentation)" in text
    shots = re.findall(r"Resources/Screenshots/[\w.-]+\.png", text)
    assert shots, "EXTENSION_SCREENSHOTURLS names no screenshot of Resources/Screenshots"
    for shot in shots:
        assert (ROOT / shot).is_file(), f"screenshot {shot} is missing"
    icon = MODULE_DIR / "Resources" / "Icons" / "BiSCSegmentation.png"
    assert icon.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(icon.read_bytes()[16:20], "big") == 128 == int.from_bytes(icon.read_bytes()[20:24], "big")


def _slicer_side_files():
    return [MODULE_PY] + sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", _slicer_side_files(), ids=lambda p: p.name)
def test_python39_syntax_and_no_qt_in_logic(path):
    source = path.read_text()
    tree = ast.parse(source, str(path), feature_version=(3, 9))
    assert not re.search(r"\bmatch\s+\S+:\s*$", source, re.M)
    assert "strict=" not in source and "slots=True" not in source and "kw_only" not in source
    if path.parent == PACKAGE:
        assert len(source.splitlines()) < 400, f"{path.name} is over 400 lines"
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name.split(".")[0] for n in top for a in n.names} | {
            (n.module or "").split(".")[0] for n in top if isinstance(n, ast.ImportFrom)}
        assert not names & {"qt", "ctk", "torch", "scipy", "skimage", "SimpleITK", "PythonQt"}, names
        if "from __future__ import annotations" not in source:
            assert not re.search(r"->\s*\w+\s*\|", source)


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys, types
    BLOCKED = set(sys.argv[1].split(","))
    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed (blocked by the test)")
    sys.meta_path.insert(0, Blocker())
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            del sys.modules[name]
    sys.path.insert(0, sys.argv[2])
""")

STUBS = textwrap.dedent("""
    # Qt, CTK and the Slicer application's Python pieces do not exist outside Slicer: minimal stand-ins
    import enum, sys, types, typing
    import slicer
    qt = types.ModuleType("qt"); ctk = types.ModuleType("ctk")
    sys.modules.update(qt=qt, ctk=ctk)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for n in ("ScriptedLoadableModule", "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest",
              "ScriptedLoadableModuleWidget"):
        setattr(slm, n, type(n, (), {}))
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    seen = {}
    def parameterNodeWrapper(cls):
        seen.update(typing.get_type_hints(cls, include_extras=True)); return cls
    pnw.parameterNodeWrapper = parameterNodeWrapper
    pnw.WithinRange = lambda lo, hi: ("WithinRange", lo, hi)
    sys.modules["slicer.ScriptedLoadableModule"] = slm; sys.modules["slicer.parameterNodeWrapper"] = pnw
    slicer.ScriptedLoadableModule = slm; slicer.parameterNodeWrapper = pnw
""")


def _run(code: str, blocked: str) -> str:
    out = subprocess.run([sys.executable, "-c", BLOCKER + code, blocked, str(MODULE_DIR)], capture_output=True,
                         text=True, timeout=120, cwd=str(ROOT))
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.skipif(not HAVE_SLICER_CORE, reason="needs PyPI's slicer-core")
def test_module_and_logic_import_without_torch_or_scipy():
    out = _run(STUBS + textwrap.dedent("""
        import BiSCSegmentation as m
        import BiSCSegmentationSlicer.dependencies as d
        from BiSCSegmentationSlicer import (dependencies, logic, models, planning, rois, scene,
                                            segmentation, selftest, terminology, worker)
        assert "torch" not in sys.modules and "scipy" not in sys.modules
        assert d.torch_missing() and [r.import_name for r in d.missing_pip()] == ["scipy"]
        print(sorted(seen))
        print(d.missing_summary())
    """), "torch,scipy,skimage,SimpleITK")
    assert "minKidneyMl" in out and "PyTorch" in out and "scipy==" in out


@pytest.mark.skipif(not HAVE_SLICER_CORE, reason="needs PyPI's slicer-core")
def test_logic_works_without_torch(tmp_path):
    """Everything but the computation runs without torch: ROIs, the output segmentation, the planning table."""
    out = _run(textwrap.dedent(f"""
        import numpy as np
        from BiSCSegmentationLib.phantom import procedural_labels
        from BiSCSegmentationLib.roi import rois_from_mask
        from BiSCSegmentationLib.volume import write_volume
        from BiSCSegmentationSlicer.logic import BiSCLogic
        from BiSCSegmentationSlicer.scene import load_volume, make_scene
        labels = procedural_labels(5, spacing=(4.0, 4.0, 8.0))
        ct = labels.with_array(np.where(labels.array > 0, 150, -100).astype(np.int16))
        write_volume(ct, r"{tmp_path / 'ct.nrrd'}")
        ctx = make_scene()
        node = load_volume(ctx, r"{tmp_path / 'ct.nrrd'}")
        logic = BiSCLogic(ctx)
        nodes, preview = logic.apply_rough(node, (labels.array > 0).astype(np.uint8), rois_from_mask(labels, (1.5, 1.5, 3.0)))
        seg = logic.apply_labels(node, labels.array, logic.rois(node))
        rows = logic.planning_rows(seg, node)
        assert "torch" not in sys.modules
        print([n.GetName() for n in nodes], [r.segment for r in rows])
    """), "torch")
    assert "Right kidney ROI" in out and "Right kidney" in out
