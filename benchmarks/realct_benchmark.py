"""Real-CT benchmark: the models on every real CT with a kidney reference, scored as ``bisc-evaluate`` scores.

    python benchmarks/realct_benchmark.py [--model NAME | --rough-model F --fine-model F] [--cases DIR ...]
                                          [--realct DIR] [--out DIR] [--force]

A case is a folder holding ``ct.nii.gz`` and a reference: ``kidneys.nii.gz`` (1 = kidney, scored with
``--kidney-only-reference``: tumor Dice not applicable, all predicted tumor is false tumor) or
``labels.nii.gz`` / ``segmentation.nii.gz`` (0/1/2, tumor scored). Cases: every such subfolder of
``--realct`` (default ../shared/data/realct) and of each ``--cases DIR`` (or DIR itself when it is a case).
Each CT goes through ``bisc-segment`` itself (in this process, with ``--save-rois``); the label map and ROI
file it writes are scored by ``evaluation.score_labels``, the function behind ``bisc-evaluate``.

Writes ``realct.md`` (table) and ``realct.json`` (every number) into ``--out`` (default benchmarks/results).
The contrast phase comes from the case folder's README.md, else from the case's section (``## NAME/``) of
the README.md beside it, else 'unknown'. Validation only: never tune on these cases.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_limits import cpu_name  # noqa: E402 (one home for the machine's description)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REALCT = REPO.parent / "shared" / "data" / "realct"
NAMES = ("realct.md", "realct.json")
REFERENCES = (("kidneys.nii.gz", True), ("labels.nii.gz", False), ("segmentation.nii.gz", False))
SURFACE_TOLERANCE_MM = 1.0
# first match in the text wins; "non-contrast" before "contrast" words it contains
_PHASES = ((r"non-?contrast|unenhanced|without contrast|native phase", "non-contrast"),
           (r"cortico-?medullary", "corticomedullary"), (r"nephrographic", "nephrographic"),
           (r"portal[- ]venous|venous phase", "portal venous"), (r"arterial", "arterial"),
           (r"excretory|delayed|urographic", "excretory"))


@dataclass
class RealCase:
    name: str
    folder: Path
    reference: Path
    kidney_only: bool
    phase: str

    @property
    def ct(self) -> Path:
        return self.folder / "ct.nii.gz"


def contrast_phase(folder: Path) -> str:
    """The phase a README says the case was scanned in ('unknown' when none says)."""
    texts = []
    own = folder / "README.md"
    if own.is_file():
        texts.append(own.read_text(encoding="utf-8", errors="replace"))
    parent = folder.parent / "README.md"
    if parent.is_file():
        m = re.search(rf"^##\s+`?{re.escape(folder.name)}/?`?\s*$(.*?)(?=^##\s|\Z)",
                      parent.read_text(encoding="utf-8", errors="replace"), re.M | re.S)
        texts += [m.group(1)] if m else []
    for text in texts:
        hits = [(m.start(), phase) for pattern, phase in _PHASES for m in [re.search(pattern, text, re.I)] if m]
        if hits:
            return min(hits)[1]
    return "unknown"


def as_case(folder: Path) -> Optional[RealCase]:
    if not (folder / "ct.nii.gz").is_file():
        return None
    for name, kidney_only in REFERENCES:
        if (folder / name).is_file():
            return RealCase(folder.name, folder, folder / name, kidney_only, contrast_phase(folder))
    return None


def find_cases(roots: Sequence[Path]) -> List[RealCase]:
    """Cases in each root (the root itself when it is a case, else its subfolders), in name order."""
    cases: List[RealCase] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"{root}: no such folder of real CT cases")
        own = as_case(root)
        cases += [own] if own else [c for c in map(as_case, sorted(p for p in root.iterdir() if p.is_dir())) if c]
    names = [c.name for c in cases]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"two case folders are named {', '.join(dupes)}; rename one")
    return cases


def case_row(case: RealCase, pred, reference, rois, seconds: float, status: str = "ok") -> Dict[str, object]:
    """One table row: ``score_labels`` (bisc-evaluate's scoring) plus the ROI boxes' sizes and the run time."""
    from BiSCSegmentationLib.evaluation import score_labels

    scores = score_labels(pred, reference, (SURFACE_TOLERANCE_MM,), case.kidney_only, rois, case.name)
    return {"case": case.name, "phase": case.phase, "reference": case.reference.name, "status": status,
            **scores, "roi_sizes_mm": [[round(s, 1) for s in r.size] for r in rois], "seconds": round(seconds, 2)}


def run_case(case: RealCase, model_args: Sequence[str], work: Path) -> Dict[str, object]:
    """bisc-segment on the case's CT (its own code path, in this process), then the written files scored."""
    from BiSCSegmentationLib.cli import EXIT_NO_KIDNEY, run_segment_cli
    from BiSCSegmentationLib.evaluation import read_labels
    from BiSCSegmentationLib.roi import load_rois

    pred_path, roi_path = work / f"{case.name}.nii.gz", work / f"{case.name}.rois.json"
    summary_path = work / f"{case.name}.summary.json"
    t0 = time.perf_counter()
    code, _ = run_segment_cli([str(case.ct), "-o", str(pred_path), "--save-rois", str(roi_path), "--summary",
                               str(summary_path), "--quiet", *model_args])
    seconds = time.perf_counter() - t0
    reference = read_labels(case.reference, case.name, "ground truth")
    if code == EXIT_NO_KIDNEY:  # scored as an empty prediction, as the training evaluation does
        pred, rois, status = reference.with_array(np.zeros_like(reference.array)), [], "no kidney found"
    elif code != 0:
        raise RuntimeError(f"{case.name}: bisc-segment failed (exit {code}, message above)")
    else:
        pred, rois, status = read_labels(pred_path, case.name, "prediction"), load_rois(roi_path), "ok"
    row = case_row(case, pred, reference, rois, seconds, status)
    # the trust signals the user got (quality.py): a wrong result must come with them
    row["warnings"] = ([f"{w['code']} ({w['severity']})" for w in json.loads(summary_path.read_text())["warnings"]]
                       if summary_path.is_file() else [])
    return row


def _fmt(v, spec: str = ".3f", none: str = "n/a") -> str:
    return none if v is None else format(v, spec)


def markdown(rows: Sequence[Dict[str, object]], meta: Dict[str, object]) -> str:
    sd = f"kidney_surface_dice_{SURFACE_TOLERANCE_MM!r}mm"
    lines = [f"# Real-CT benchmark: {meta['model']}", "",
             f"`{meta['command']}` on {meta['date']} ({meta['machine']}). Time: bisc-segment in this process, "
             "model loading included. Kidney Dice and surface Dice count labels 1 and 2 together (KiTS); "
             "containment: share of each reference kidney inside the ROIs; false tumor: predicted tumor where "
             "the reference has no tumor label; warnings: the quality warnings bisc-segment raised "
             "(docs/quality.md). Validation only: never tune on these cases.", "",
             "| case | phase | kidney Dice | surface Dice 1 mm | tumor Dice | ROIs | ROI containment | "
             "ROI size (max side, mm) | kidney mL (pred / ref) | false tumor mL | time (s) | warnings |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- | --- | --- | ---: | ---: | --- |"]
    for r in rows:
        per_kidney = [f"{k[len('roi_containment_'):]} {100 * v:.0f}%" for k, v in r.items()
                      if k.startswith("roi_containment_") and v is not None]
        contain = ", ".join(per_kidney) or (f"{100 * r['roi_containment']:.0f}%"
                                            if r.get("roi_containment") is not None else "n/a")
        sizes = ", ".join(f"{max(s):.0f}" for s in r["roi_sizes_mm"]) or "none"
        status = "" if r["status"] == "ok" else f" ({r['status']})"
        lines.append(f"| {r['case']}{status} | {r['phase']} | {_fmt(r['kidney_dice'])} | {_fmt(r[sd])} | "
                     f"{_fmt(r['tumor_dice'], none='n/a (no tumor label)')} | {r['roi_count']} | {contain} | "
                     f"{sizes} | {_fmt(r.get('pred_kidney_ml'), '.0f')} / {_fmt(r.get('ref_kidney_ml'), '.0f')} | "
                     f"{_fmt(r.get('false_tumor_ml'), '.0f')} | {r['seconds']:.1f} | "
                     f"{', '.join(r.get('warnings', [])) or 'none'} |")
    return "\n".join(lines) + "\n"


def model_arguments(args) -> List[str]:
    out = ["--model", args.model] if args.model else []
    out += ["--rough-model", args.rough_model, "--fine-model", args.fine_model] if args.rough_model else []
    return out + ["--device", args.device, "--backend", args.backend]


def model_label(args) -> str:
    if args.rough_model:
        return f"{Path(args.rough_model).name} + {Path(args.fine_model).name}"
    from BiSCSegmentationLib.model_file import bundled_entry
    return f"bundled {bundled_entry(args.model)[0]}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", metavar="NAME", help="bundled model (default: the bundled default)")
    ap.add_argument("--rough-model", metavar="FILE", help="rough-stage model file (with --fine-model)")
    ap.add_argument("--fine-model", metavar="FILE", help="fine-stage model file (with --rough-model)")
    ap.add_argument("--realct", type=Path, default=DEFAULT_REALCT, help="folder of real CT cases (default "
                    "../shared/data/realct)")
    ap.add_argument("--cases", type=Path, action="append", default=[], metavar="DIR",
                    help="more cases: a case folder or a folder of them (same layout); repeatable")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results", help="where realct.md/.json go")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--backend", default="auto", help="as bisc-segment --backend (default auto)")
    ap.add_argument("--force", action="store_true", help="overwrite realct.md/.json")
    args = ap.parse_args(argv)
    from BiSCSegmentationLib.evaluation import check_outputs
    from BiSCSegmentationLib.outputs import OutputSet

    try:
        if (args.rough_model is None) != (args.fine_model is None) or (args.model and args.rough_model):
            raise ValueError("give --model NAME, or both --rough-model and --fine-model, or neither")
        md_path, json_path = check_outputs(args.out, args.force, NAMES)
        cases = find_cases([args.realct] + list(args.cases))
        if not cases:
            raise ValueError(f"no case folder (ct.nii.gz + kidneys.nii.gz or labels.nii.gz) in "
                             f"{', '.join(str(p) for p in [args.realct] + list(args.cases))}")
        label = model_label(args)
        load = os.getloadavg()[0]  # the times below are only as good as the machine was idle
        rows = []
        with tempfile.TemporaryDirectory(prefix="bisc-realct-") as work:
            for case in cases:
                print(f"{case.name}: segmenting {case.ct}", flush=True)
                rows.append(run_case(case, model_arguments(args), Path(work)))
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"realct_benchmark: error: {exc}", file=sys.stderr)
        return 2
    meta = {"model": label, "command": shlex.join(["python", "benchmarks/realct_benchmark.py",
                                                   *(sys.argv[1:] if argv is None else argv)]),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{cpu_name()}, {os.cpu_count()} CPU threads, load average {load:.1f} at the start, "
                       f"Python {platform.python_version()}",
            "surface_tolerance_mm": SURFACE_TOLERANCE_MM}
    text = markdown(rows, meta)
    out = OutputSet(args.force)  # the table and its data: both, or neither
    out.add_text(md_path, text, "real-CT table")
    out.add_json(json_path, {**meta, "cases": rows}, "real-CT results", indent=2)
    out.commit()
    print(text + f"wrote {md_path}, {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
