"""Shared test helpers: where the real KiTS19 label maps are, and tiny models built in place."""
import sys
from pathlib import Path

import atexit
import os
import shutil
import tempfile

import pytest
import SimpleITK as sitk
import torch

REPO = Path(__file__).resolve().parents[1]
KITS_DIR = REPO.parent / "shared" / "data" / "kits19"
# model exports made by tests go to a throwaway cache, never the user's ~/.cache; removed when the run ends
# (each run left ~14 MB in the temp folder before)
if "BISC_CACHE_DIR" not in os.environ:
    os.environ["BISC_CACHE_DIR"] = tempfile.mkdtemp(prefix="bisc-test-cache-")
    atexit.register(shutil.rmtree, os.environ["BISC_CACHE_DIR"], ignore_errors=True)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `from conftest import ...` in test modules

SHARED_DATA = REPO.parent / "shared" / "data"
SKIP_SHARED = os.environ.get("BISC_SKIP_SHARED") == "1"


def needs_shared(path: Path, what: str):
    """Mark a test that reads licensed data from ../shared (beside the repository, never in it). CI has it, so
    a missing file fails the test; on a machine without it, BISC_SKIP_SHARED=1 skips such tests instead."""
    return pytest.mark.shared_data(path=Path(path), what=what)


def pytest_runtest_setup(item):
    for mark in item.iter_markers("shared_data"):
        path, what = mark.kwargs["path"], mark.kwargs["what"]
        if not path.exists():
            text = (f"{what} not found at {path}: these tests read licensed data from ../shared beside the "
                    "repository (CI has it)")
            if SKIP_SHARED:
                pytest.skip(f"{text}; skipped because BISC_SKIP_SHARED=1")
            pytest.fail(f"{text}. On a machine without it, set BISC_SKIP_SHARED=1 to skip them.", pytrace=False)


requires_kits = needs_shared(KITS_DIR / "case_00000", "the real KiTS19 label maps")


def tiny_stage_models(rough_grid=None, fine_spacing=(1.5, 1.5, 3.0), widths=(4, 8, 16, 32), seed=0):
    """Random-weight rough and fine StageModels, small enough to run in a test."""
    from BiSCSegmentationLib.model_file import StageModel
    from BiSCSegmentationLib.network import SCUNetConfig

    torch.manual_seed(seed)
    rough = StageModel("rough", SCUNetConfig(widths=list(widths)), rough_grid or {"inplane_size": 64, "z_spacing": 6.0},
                       inference_window=(64, 64, 64))
    fine = StageModel("fine", SCUNetConfig(widths=list(widths)), {"spacing": list(fine_spacing)},
                      inference_window=(32, 64, 64))
    for m in (rough, fine):
        m.build().eval()
    return rough, fine


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Training sets torch's thread count for its process; a test that trains must not change the numerics
    (reduction order) of the tests after it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


UID = "1.2.826.0.1.3680043.2.1125.1.4243"


def write_dicom_series(vol, folder: Path, patient_id: str = "P123") -> None:
    """The tests' one DICOM writer: one CT slice per file (``vol``: a Volume) with patient, study, series and
    frame-of-reference tags, the way SimpleITK's DICOM series example writes them."""
    from BiSCSegmentationLib.volume import to_sitk

    folder.mkdir(parents=True)
    img = to_sitk(vol)
    d = img.GetDirection()
    common = {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0020|000d": UID + ".1",
              "0020|000e": UID + ".2", "0020|0052": UID + ".4", "0018|0050": str(vol.spacing[2]),
              "0028|1052": "0", "0028|1053": "1", "0010|0010": "Test^Patient", "0010|0020": patient_id,
              "0008|0020": "20260101", "0008|103e": "abdomen venous",
              "0020|0037": "\\".join(str(v) for v in (d[0], d[3], d[6], d[1], d[4], d[7]))}
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetDepth()):
        sl = img[:, :, k]
        for tag, value in common.items():
            sl.SetMetaData(tag, value)
        sl.SetMetaData("0008|0018", f"{UID}.3.{k + 1}")
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0020|0032", "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k))))
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
