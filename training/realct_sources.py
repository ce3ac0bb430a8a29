"""Rebuild the small set of real (not synthesized) abdominal CT cases recorded in
``training/recipes/realct_sources.json``: each case is copied out of a public repository fetched
beside the project (a bare git mirror or a checkout) or out of a pip-downloaded wheel, its source
files are checked against the SHA-256 sums in the manifest, and it is written as ``ct.nii.gz``
(int16 HU) plus ``kidneys.nii.gz`` (uint8, 1 = kidney) where the source has a kidney reference.

The images are never committed: only the manifest (where, which commit, which licence, which use)
is. docs/realct-data.md says where every case comes from and why others were left out.

    python -m bisc_training.realct_sources --out runs/realct_sources [--mirror-root /work/.mirror]
        [--wheels DIR] [--only CASE_ID ...]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from BiSCSegmentationLib.quality import check_input
from BiSCSegmentationLib.volume import VolumeError, from_sitk

MANIFEST = Path(__file__).resolve().parent / "recipes" / "realct_sources.json"
DEFAULT_MIRROR_ROOT = Path("/work/.mirror")
USES = ("train", "validate")
FORMATS = ("nifti", "dicom_series")
SOURCE_KINDS = ("github", "pypi")
_SHA = re.compile(r"^[0-9a-f]{64}$")
_CASE_ID = re.compile(r"^[a-z0-9][a-z0-9_\-]{1,63}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
# Kept apart for independent checks (see docs/realct-data.md): never rebuild, train or tune on these.
_IRCADB = re.compile(r"ircad", re.I)
_KITS19_TEST = re.compile(r"case_00(16[89]|1[7-9]\d|20\d)\b")
PADDING_HU = -1500.0  # below this: scanner padding (-2048, -3024), not tissue or air


class ManifestError(ValueError):
    """The manifest breaks its schema or the exclusion rules; nothing is rebuilt from it."""


class SourceUnavailable(RuntimeError):
    """A case's source is not on this machine; the message says how to get it."""


class VerificationError(RuntimeError):
    """A source file's bytes or the CT it gives are not what the manifest promises."""


def validate_manifest(manifest: dict) -> None:
    """Raise ManifestError listing every problem, so a bad entry fails before any file is written."""
    problems: List[str] = []
    if manifest.get("schema") != 1:
        problems.append("schema must be 1")
    cases = manifest.get("cases")
    if not isinstance(cases, list) or not cases:
        raise ManifestError("manifest: 'cases' must be a non-empty list" + ("; " + "; ".join(problems) if problems else ""))
    seen = set()
    for n, case in enumerate(cases):
        cid = case.get("id", f"#{n}")
        p = [f"{cid}: {msg}" for msg in _case_problems(case)]
        if cid in seen:
            p.append(f"{cid}: duplicate id")
        seen.add(cid)
        problems += p
    if problems:
        raise ManifestError("manifest problems:\n  " + "\n  ".join(problems))


def _case_problems(case: dict) -> List[str]:
    out: List[str] = []
    for key in ("id", "source", "ct", "license", "region", "phase", "allowed_use"):
        if key not in case:
            out.append(f"missing '{key}'")
    if out:
        return out
    if not _CASE_ID.match(str(case["id"])):
        out.append("id must be lower-case letters, digits, '_' or '-'")
    src = case["source"]
    kind = src.get("kind")
    if kind not in SOURCE_KINDS:
        out.append(f"source.kind must be one of {SOURCE_KINDS}")
    elif kind == "github":
        if not re.match(r"^[\w.\-]+/[\w.\-]+$", str(src.get("repo", ""))):
            out.append("source.repo must be owner/name")
        if not _COMMIT.match(str(src.get("commit", ""))):
            out.append("source.commit must be a full 40-hex commit")
    elif not (src.get("package") and src.get("version")):
        out.append("pypi source needs package and version")
    ct = case["ct"]
    if ct.get("format") not in FORMATS:
        out.append(f"ct.format must be one of {FORMATS}")
    out += _files_problems("ct", ct.get("files"))
    if ct.get("format") == "nifti" and isinstance(ct.get("files"), dict) and len(ct["files"]) != 1:
        out.append("a nifti CT is one file")
    kid = case.get("kidneys")
    if kid is not None:
        out += _files_problems("kidneys", kid.get("files"))
        labels = kid.get("labels")
        if not (isinstance(labels, list) and labels and all(isinstance(v, int) and v > 0 for v in labels)):
            out.append("kidneys.labels must be a non-empty list of positive label values")
    lic = case["license"]
    if not (lic.get("spdx") and lic.get("statement")):
        out.append("license needs 'spdx' and a quoted 'statement'")
    use = case["allowed_use"]
    if not (isinstance(use, list) and use and set(use) <= set(USES)):
        out.append(f"allowed_use must be a non-empty subset of {USES}")
    elif set(use) == set(USES):
        out.append("a case is either for training or for validation, never both")
    elif "validate" in use and kid is None:
        out.append("a validation case needs a kidney reference")
    kid_files = list((kid or {}).get("files") or {})
    text = json.dumps([src, list(ct.get("files") or {}), kid_files])  # where it comes from, not the notes
    if _IRCADB.search(text):
        out.append("3D-IRCADb material is excluded (kept for independent checks)")
    if "kits" in text.lower() and _KITS19_TEST.search(text):
        out.append("KiTS19 cases 168-209 are excluded")
    return out


def _files_problems(what: str, files) -> List[str]:
    if not isinstance(files, dict) or not files:
        return [f"{what}.files must map source paths to SHA-256 sums"]
    return [f"{what}.files[{p}]: not a SHA-256 hex digest" for p, s in files.items() if not _SHA.match(str(s))]


def load_manifest(path: Path = MANIFEST) -> dict:
    manifest = json.loads(Path(path).read_text())
    validate_manifest(manifest)
    return manifest


# ----------------------------------------------------------------------------------------- sources
def _mirror_candidates(root: Path, repo: str) -> List[Path]:
    owner, name = repo.split("/")
    base = root / f"{owner}+{name}"
    return [base / "repo", base, root / name]


def _is_git_dir(p: Path) -> bool:
    return (p / "HEAD").is_file() and (p / "objects").is_dir()


def read_github(src: dict, path: str, mirror_root: Path) -> bytes:
    """Bytes of ``path`` at the pinned commit, from a bare mirror, a git checkout or a plain copy."""
    repo, commit = src["repo"], src["commit"]
    for cand in _mirror_candidates(Path(mirror_root), repo):
        if not cand.is_dir():
            continue
        git = ["--git-dir", str(cand)] if _is_git_dir(cand) else (["-C", str(cand)] if (cand / ".git").exists() else None)
        if git is None:
            f = cand / path
            if f.is_file():  # a plain copy of the repository's files; the SHA-256 check vouches for it
                return f.read_bytes()
            continue
        r = subprocess.run(["git", *git, "show", f"{commit}:{path}"], capture_output=True)
        if r.returncode == 0:
            return r.stdout
        raise SourceUnavailable(f"{repo}: {path} is not readable at commit {commit[:12]} in {cand} "
                                f"({r.stderr.decode(errors='replace').strip()[:200]}); the mirror may be a shallow "
                                f"or newer snapshot, or the file is stored outside git (LFS, or 4 MiB and more)")
    raise SourceUnavailable(
        f"{repo} is not available under {mirror_root}. Get it with the search tool's fetch (github:{repo}), "
        f"which puts it at {Path(mirror_root) / (repo.replace('/', '+'))}/repo, or clone it there: "
        f"git clone https://github.com/{repo} {Path(mirror_root) / repo.replace('/', '+')} "
        f"(commit {commit}); then run again with --mirror-root {mirror_root}")


def read_wheel(src: dict, path: str, wheels: Optional[Path]) -> bytes:
    package, version = src["package"], src["version"]
    norm = re.sub(r"[-_.]+", "_", package).lower()
    hint = f"pip download --no-deps {package}=={version} -d DIR, then run again with --wheels DIR"
    if wheels is None or not Path(wheels).is_dir():
        raise SourceUnavailable(f"{package}=={version} is needed and no --wheels folder was given: {hint}")
    for whl in sorted(Path(wheels).glob("*.whl")):
        name, ver = whl.name.split("-")[:2]
        if re.sub(r"[-_.]+", "_", name).lower() == norm and ver == version:
            with zipfile.ZipFile(whl) as z:
                try:
                    return z.read(path)
                except KeyError:
                    raise SourceUnavailable(f"{whl.name} has no {path}") from None
    raise SourceUnavailable(f"no wheel of {package}=={version} in {wheels}: {hint}")


def fetch_files(case: dict, files: Dict[str, str], mirror_root: Path, wheels: Optional[Path]) -> Dict[str, bytes]:
    """Read each file and check its SHA-256 against the manifest."""
    src = case["source"]
    out = {}
    for path, want in files.items():
        data = read_github(src, path, mirror_root) if src["kind"] == "github" else read_wheel(src, path, wheels)
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise VerificationError(f"{case['id']}: {path} has SHA-256 {got}, the manifest records {want}")
        out[path] = data
    return out


# -------------------------------------------------------------------------------------- conversion
def _suffix(path: str) -> str:
    name = Path(path).name.lower()
    for s in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if name.endswith(s):
            return s
    return ".dcm"


def image_from_blobs(blobs: Dict[str, bytes], fmt: str, tmp: Path) -> sitk.Image:
    tmp.mkdir(parents=True, exist_ok=True)
    if fmt == "nifti":
        (path, data), = blobs.items()
        f = tmp / ("image" + _suffix(path))
        f.write_bytes(data)
        return sitk.ReadImage(str(f))
    for n, data in enumerate(blobs.values()):
        (tmp / f"{n:05d}.dcm").write_bytes(data)
    reader = sitk.ImageSeriesReader()
    names = reader.GetGDCMSeriesFileNames(str(tmp))
    if len(names) != len(blobs):
        raise VerificationError(f"the DICOM files form one series of {len(names)} slices, not {len(blobs)}")
    reader.SetFileNames(names)
    return reader.Execute()


def check_hu(ct: sitk.Image) -> Dict[str, float]:
    """Refuse what bisc-segment would not take as a CT in Hounsfield units (``quality.check_input``), or one with
    no air near -1000 HU (its INPUT_NO_AIR: raw stored values, a wrong rescale, or cropped inside the body);
    returns the table's air (1st percentile of the non-padding voxels) and median HU."""
    try:
        warnings = check_input(from_sitk(ct))
    except VolumeError as exc:
        raise VerificationError(f"not a CT in HU: {exc}") from exc
    if any(w.code == "INPUT_NO_AIR" for w in warnings):
        raise VerificationError("no air near -1000 HU, so this is not a CT in HU (or it is cropped inside the body)")
    a = sitk.GetArrayViewFromImage(ct)
    real = a[a > PADDING_HU]
    if real.size < 0.5 * a.size:
        raise VerificationError("more than half of the voxels are padding (< -1500 HU)")
    p1, p50 = (float(v) for v in np.percentile(real, [1, 50]))
    return {"air_p1_hu": p1, "median_hu": p50}


def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-3)
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-2)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4))


def kidneys_from_blobs(blobs: Dict[str, bytes], labels: Sequence[int], ct: sitk.Image, tmp: Path) -> sitk.Image:
    """Union of the listed label values over the reference files, on the CT's grid (nearest neighbour)."""
    union = None
    for n, (path, data) in enumerate(blobs.items()):
        lab = image_from_blobs({path: data}, "nifti", tmp / f"lab{n}")
        if not _same_grid(lab, ct):
            lab = sitk.Resample(lab, ct, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        mask = np.isin(sitk.GetArrayFromImage(lab), list(labels))
        union = mask if union is None else union | mask
    out = sitk.GetImageFromArray(union.astype(np.uint8))
    out.CopyInformation(ct)
    return out


def build_case(case: dict, out: Path, mirror_root: Path, wheels: Optional[Path]) -> Dict[str, object]:
    """Write <out>/<id>/ct.nii.gz (+ kidneys.nii.gz, source.json) and return the table row."""
    cdir = Path(out) / case["id"]
    with tempfile.TemporaryDirectory(prefix="realct-") as t:
        tmp = Path(t)
        ct = image_from_blobs(fetch_files(case, case["ct"]["files"], mirror_root, wheels), case["ct"]["format"], tmp / "ct")
        if ct.GetDimension() != 3:
            raise VerificationError(f"{case['id']}: the CT is {ct.GetDimension()}-D, not 3-D")
        if ct.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
            ct = sitk.Round(ct)  # float HU (e.g. a rescaled NIfTI): nearest integer, not truncation
        ct = sitk.Cast(sitk.Clamp(ct, lowerBound=-32768, upperBound=32767), sitk.sitkInt16)
        stats = check_hu(ct)
        kid = None
        if case.get("kidneys"):
            blobs = fetch_files(case, case["kidneys"]["files"], mirror_root, wheels)
            kid = kidneys_from_blobs(blobs, case["kidneys"]["labels"], ct, tmp / "kid")
        cdir.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(ct, str(cdir / "ct.nii.gz"), useCompression=True)
        voxel_ml = float(np.prod(ct.GetSpacing())) / 1000.0
        kidney_ml = None
        if kid is not None:
            sitk.WriteImage(kid, str(cdir / "kidneys.nii.gz"), useCompression=True)
            kidney_ml = float(sitk.GetArrayViewFromImage(kid).sum()) * voxel_ml
        elif (cdir / "kidneys.nii.gz").exists():
            (cdir / "kidneys.nii.gz").unlink()
        prov = {k: case[k] for k in ("id", "source", "license", "region", "phase", "allowed_use") if k in case}
        (cdir / "source.json").write_text(json.dumps(prov, indent=1) + "\n")
    return {"id": case["id"], "use": "+".join(case["allowed_use"]), "region": _short(case["region"]),
            "size": "x".join(str(s) for s in ct.GetSize()),
            "spacing": "x".join(f"{s:.2f}" for s in ct.GetSpacing()),
            "air_p1": f"{stats['air_p1_hu']:.0f}", "kidneys_ml": "-" if kidney_ml is None else f"{kidney_ml:.0f}",
            "status": "ok"}


def _short(text: str, n: int = 32) -> str:
    text = re.split(r"[;(]", text)[0].strip()
    return text if len(text) <= n else text[: n - 1] + "~"


def print_table(rows: List[Dict[str, object]]) -> None:
    cols = ["id", "use", "region", "size", "spacing", "air_p1", "kidneys_ml", "status"]
    width = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(width[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r.get(c, "")).ljust(width[c]) for c in cols))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for <case>/ct.nii.gz, kidneys.nii.gz")
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    ap.add_argument("--mirror-root", type=Path, default=DEFAULT_MIRROR_ROOT,
                    help="where fetched repositories are (owner+name/repo, a bare git mirror, or a checkout)")
    ap.add_argument("--wheels", type=Path, help="folder of pip-downloaded wheels, for pypi sources")
    ap.add_argument("--only", nargs="+", metavar="CASE_ID", help="rebuild only these cases")
    args = ap.parse_args(argv)
    try:
        manifest = load_manifest(args.manifest)
    except ManifestError as e:
        print(e, file=sys.stderr)
        return 2
    cases = [c for c in manifest["cases"] if not args.only or c["id"] in args.only]
    if args.only and len(cases) != len(set(args.only)):
        print(f"unknown case id among {args.only}", file=sys.stderr)
        return 2
    rows, failed = [], 0
    for case in cases:
        try:
            rows.append(build_case(case, args.out, args.mirror_root, args.wheels))
        except (SourceUnavailable, VerificationError) as e:
            failed += 1
            kind = "missing" if isinstance(e, SourceUnavailable) else "FAILED"
            print(f"{case['id']}: {kind}: {e}", file=sys.stderr)
            rows.append({"id": case["id"], "use": "+".join(case["allowed_use"]), "region": _short(case["region"]),
                         "status": kind})
    print_table(rows)
    index = {"manifest": str(args.manifest), "cases": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
