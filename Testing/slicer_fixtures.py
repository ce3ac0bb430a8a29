"""Shared fixtures for the 3D Slicer module tests on PyPI's slicer-core (real MRML, no Slicer application).

Import them into a test module (``from slicer_fixtures import *``). The module's code lives in
BiSCSegmentation/ (BiSCSegmentationSlicer, BiSCSegmentationLib), which is put on sys.path here, as Slicer
puts a scripted module's folder on its path.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULE_DIR = ROOT / "BiSCSegmentation"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

try:  # CI installs slicer-core; only where it is genuinely absent are these tests skipped
    import slicer as _slicer
    HAVE_SLICER_CORE = hasattr(_slicer, "vtkMRMLScene")
except ImportError:  # pragma: no cover
    HAVE_SLICER_CORE = False

needs_slicer_core = pytest.mark.skipif(not HAVE_SLICER_CORE, reason="needs PyPI's slicer-core (pip install slicer-core)")


def check(condition, message=None):
    """The selftest's assertion callback under pytest."""
    assert condition, message


@pytest.fixture
def ctx():
    """A fresh MRML scene with the module logics registered on an application logic."""
    from BiSCSegmentationSlicer.scene import make_scene

    context = make_scene()
    yield context
    context.scene.Clear(1)


@pytest.fixture(scope="session")
def case_files(tmp_path_factory):
    """Phantom CT with an oblique LPS header (NRRD), its labels, and tiny random-weight rough/fine models."""
    from BiSCSegmentationSlicer.selftest import make_case_files

    folder = tmp_path_factory.mktemp("slicer-case")
    return make_case_files(str(folder))


def in_study(ctx, node, patient="Phantom patient", study="CT study"):
    """Put ``node`` in a patient/study folder of the subject hierarchy, as DICOM loading does."""
    from BiSCSegmentationSlicer.scene import sh_item

    sh = ctx.subject_hierarchy
    item = sh_item(ctx, node)
    patient_item = sh.CreateSubjectItem(sh.GetSceneItemID(), patient)
    study_item = sh.CreateStudyItem(patient_item, study)
    sh.SetItemParent(item, study_item)
    return study_item


@pytest.fixture
def ct_node(ctx, case_files):
    """The phantom CT loaded from its file into the scene, inside a patient/study."""
    from BiSCSegmentationSlicer.scene import load_volume

    node = load_volume(ctx, case_files["ct"], name="Phantom CT")
    in_study(ctx, node)
    return node


__all__ = ["ctx", "case_files", "ct_node", "check", "in_study", "needs_slicer_core", "HAVE_SLICER_CORE",
           "MODULE_DIR", "ROOT"]
