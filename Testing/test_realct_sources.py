"""Real-CT source manifest: schema and exclusion rules, and rebuilding tiny synthetic sources (NIfTI,
DICOM series, git mirror, wheel) without network, so the rebuild script is trusted before real data."""
import copy
import hashlib
import json
import shutil
import subprocess
import zipfile

import numpy as np
import pytest
import SimpleITK as sitk

from bisc_training import realct_sources as R

COMMIT = "0" * 40


def _ct_and_kidneys(shape=(12, 24, 20)):
    """Air around a water-like body with two 'kidneys' (labels 2, 3) and a bone block."""
    z, y, x = np.indices(shape)
    ct = np.full(shape, -1000, np.int16)
    body = (y - shape[1] / 2) ** 2 / 80 + (x - shape[2] / 2) ** 2 / 60 < 1
    ct[body] = 40
    ct[body & (y > 16)] = 400
    lab = np.zeros(shape, np.uint8)
    lab[3:9, 9:13, 4:8] = 2
    lab[3:9, 9:13, 12:16] = 3
    ct[lab > 0] = 30
    return ct, lab


def _image(arr, spacing=(1.5, 1.5, 3.0)):
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing)
    im.SetOrigin((-10.0, 20.0, 5.0))
    return im


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _case(files, kidney_files=None, fmt="nifti", **over):
    case = {"id": "toy_case", "source": {"kind": "github", "repo": "someone/toydata", "commit": COMMIT},
            "ct": {"format": fmt, "files": files}, "kidneys": None,
            "license": {"spdx": "CC0-1.0", "statement": "test data made by this test"},
            "region": "abdomen", "phase": "non-contrast", "allowed_use": ["train"]}
    if kidney_files:
        case["kidneys"] = {"files": kidney_files, "labels": [2, 3]}
        case["allowed_use"] = ["validate"]
    case.update(over)
    return case


@pytest.fixture
def nifti_mirror(tmp_path):
    """A plain copy of a 'repository' holding ct.nii.gz and a multi-label map, as --mirror-root."""
    repo = tmp_path / "mirror" / "someone+toydata"
    (repo / "data").mkdir(parents=True)
    ct, lab = _ct_and_kidneys()
    sitk.WriteImage(_image(ct), str(repo / "data" / "ct.nii.gz"))
    sitk.WriteImage(_image(lab), str(repo / "data" / "labels.nii.gz"))
    files = {"data/ct.nii.gz": _sha(repo / "data" / "ct.nii.gz")}
    kid = {"data/labels.nii.gz": _sha(repo / "data" / "labels.nii.gz")}
    return tmp_path / "mirror", files, kid, (ct, lab)


def test_bundled_manifest_is_valid_and_keeps_validation_apart():
    manifest = R.load_manifest()
    for case in manifest["cases"]:
        assert case["license"]["statement"] and case["source"]["kind"] in R.SOURCE_KINDS
        assert ("validate" in case["allowed_use"]) == (case.get("kidneys") is not None and "train" not in case["allowed_use"])


@pytest.mark.parametrize("change, message", [
    (lambda c: c.pop("license"), "missing 'license'"),
    (lambda c: c["ct"]["files"].update({"data/ct.nii.gz": "abc"}), "not a SHA-256"),
    (lambda c: c.update(allowed_use=["train", "validate"]), "never both"),
    (lambda c: c.update(allowed_use=["validate"]), "needs a kidney reference"),
    (lambda c: c.update(allowed_use=["tune"]), "allowed_use"),
    (lambda c: c["source"].update(commit="main"), "40-hex"),
    (lambda c: c["source"].update(repo="someone/3Dircadb-mirror"), "IRCADb"),
    (lambda c: c["ct"].update(files={"kits19/data/case_00170/imaging.nii.gz": "0" * 64}), "168-209"),
])
def test_manifest_problems_are_refused(change, message):
    case = _case({"data/ct.nii.gz": "0" * 64})
    R.validate_manifest({"schema": 1, "cases": [copy.deepcopy(case)]})  # the unchanged case is fine
    change(case)
    with pytest.raises(R.ManifestError, match=message):
        R.validate_manifest({"schema": 1, "cases": [case]})


def test_kits19_training_cases_are_allowed():
    case = _case({"kits19/data/case_00042/imaging.nii.gz": "0" * 64})
    R.validate_manifest({"schema": 1, "cases": [case]})


def test_nifti_case_with_kidneys_from_a_plain_copy(nifti_mirror, tmp_path):
    root, files, kid, (ct, lab) = nifti_mirror
    row = R.build_case(_case(files, kid), tmp_path / "out", root, None)
    out = tmp_path / "out" / "toy_case"
    got = sitk.ReadImage(str(out / "ct.nii.gz"))
    assert got.GetPixelID() == sitk.sitkInt16 and np.array_equal(sitk.GetArrayFromImage(got), ct)
    assert got.GetSpacing() == (1.5, 1.5, 3.0)
    k = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "kidneys.nii.gz")))
    assert np.array_equal(k, (lab > 0).astype(np.uint8))
    assert row["status"] == "ok" and row["air_p1"] == "-1000"
    assert float(row["kidneys_ml"]) == pytest.approx(lab.astype(bool).sum() * 1.5 * 1.5 * 3.0 / 1000, abs=1)
    assert json.loads((out / "source.json").read_text())["license"]["spdx"] == "CC0-1.0"


def test_sha_mismatch_and_missing_source_are_clear(nifti_mirror, tmp_path):
    root, files, _, _ = nifti_mirror
    bad = {p: "f" * 64 for p in files}
    with pytest.raises(R.VerificationError, match="SHA-256"):
        R.build_case(_case(bad), tmp_path / "out", root, None)
    with pytest.raises(R.SourceUnavailable, match="fetch .*github:someone/toydata"):
        R.build_case(_case(files), tmp_path / "out", tmp_path / "nowhere", None)
    with pytest.raises(R.SourceUnavailable, match="pip download --no-deps toypkg==1.0"):
        R.build_case(_case(files, source={"kind": "pypi", "package": "toypkg", "version": "1.0"}),
                     tmp_path / "out", root, None)


def test_raw_values_are_not_taken_for_hu(tmp_path):
    ct, _ = _ct_and_kidneys()
    repo = tmp_path / "m" / "someone+toydata"
    repo.mkdir(parents=True)
    sitk.WriteImage(_image((ct.astype(np.int32) + 1024).astype(np.int16)), str(repo / "ct.nii.gz"))  # stored values
    with pytest.raises(R.VerificationError, match="not a CT in HU.*stored without its rescale"):
        R.build_case(_case({"ct.nii.gz": _sha(repo / "ct.nii.gz")}), tmp_path / "out", tmp_path / "m", None)


def _write_dicom_series(folder, ct, spacing=(0.8, 0.8, 2.5)):
    """One CT slice per file with position tags; GDCM picks the stored values and rescale itself."""
    folder.mkdir(parents=True)
    series = "1.2.826.0.1.3680043.2.1125.1.99999"
    for k in range(ct.shape[0]):
        sl = sitk.GetImageFromArray(ct[k])
        sl.SetSpacing(spacing[:2])
        for tag, value in {"0008|0060": "CT", "0020|000e": series, "0020|000d": series + ".1",
                           "0020|0037": "1\\0\\0\\0\\1\\0", "0020|0032": f"0\\0\\{k * spacing[2]}",
                           "0020|0013": str(k + 1),
                           "0018|0050": str(spacing[2]), "0008|0018": f"{series}.{k + 1}"}.items():
            sl.SetMetaData(tag, value)
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetImageIO("GDCMImageIO")  # scanner-style names without a .dcm suffix
        w.SetFileName(str(folder / f"IM{k:03d}"))
        w.Execute(sl)


def test_dicom_series_case(tmp_path):
    ct, _ = _ct_and_kidneys(shape=(6, 24, 20))
    repo = tmp_path / "m" / "someone+toydata"
    _write_dicom_series(repo / "dicom", ct)
    files = {f"dicom/{p.name}": _sha(p) for p in sorted((repo / "dicom").iterdir())}
    row = R.build_case(_case(files, fmt="dicom_series"), tmp_path / "out", tmp_path / "m", None)
    got = sitk.ReadImage(str(tmp_path / "out" / "toy_case" / "ct.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(got), ct)
    assert got.GetSpacing() == pytest.approx((0.8, 0.8, 2.5))
    assert row["size"] == "20x24x6" and not (tmp_path / "out" / "toy_case" / "kidneys.nii.gz").exists()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_bare_git_mirror_at_a_pinned_commit(nifti_mirror, tmp_path):
    root, files, _, (ct, _) = nifti_mirror
    work = root / "someone+toydata"
    git = ["git", "-C", str(work), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "data"], check=True)
    commit = subprocess.run(git + ["rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    bare = tmp_path / "bare" / "someone+toydata" / "repo"
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(bare)], check=True)
    case = _case(files, source={"kind": "github", "repo": "someone/toydata", "commit": commit})
    R.build_case(case, tmp_path / "out", tmp_path / "bare", None)
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "toy_case" / "ct.nii.gz")))
    assert np.array_equal(got, ct)
    case["source"]["commit"] = "1" * 40  # not in the mirror: a clear error, not a crash
    with pytest.raises(R.SourceUnavailable, match="not readable at commit"):
        R.build_case(case, tmp_path / "out", tmp_path / "bare", None)


def test_wheel_source(nifti_mirror, tmp_path):
    root, files, _, (ct, _) = nifti_mirror
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "toy_pkg-1.0-py3-none-any.whl", "w") as z:
        z.write(root / "someone+toydata" / "data" / "ct.nii.gz", "toy_pkg/data/ct.nii.gz")
    case = _case({"toy_pkg/data/ct.nii.gz": next(iter(files.values()))},
                 source={"kind": "pypi", "package": "toy-pkg", "version": "1.0"})
    R.build_case(case, tmp_path / "out", root, wheels)
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / "toy_case" / "ct.nii.gz")))
    assert np.array_equal(got, ct)


def test_cli_reports_missing_sources(tmp_path, capsys):
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"schema": 1, "cases": [_case({"data/ct.nii.gz": "0" * 64})]}))
    rc = R.main(["--out", str(tmp_path / "out"), "--manifest", str(manifest), "--mirror-root", str(tmp_path)])
    captured = capsys.readouterr()
    assert rc == 1 and "toy_case: missing" in captured.err and "missing" in captured.out
    assert json.loads((tmp_path / "out" / "index.json").read_text())["cases"][0]["status"] == "missing"
