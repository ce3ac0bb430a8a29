"""``bisc-plan LABELS [--ct CT] [--json out.json] [--report out.pdf]``: planning numbers, R.E.N.A.L.
nephrometry and the PDF report from an existing label map (0 background, 1 kidney, 2 tumor), without running a
network: a user's corrected segmentation, a KiTS19 label map, or bisc-segment's output.

Exit status: 0 done, 2 a problem the user can fix (one line starting with ``error:``), 130 cancelled.
Outputs are written together or not at all (``outputs.OutputSet``); existing files need --force.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .outputs import OutputError, OutputSet, check_targets, signals_as_interrupts
from .volume import Volume, VolumeError, read_volume

EXIT_USAGE = 2
EXIT_CANCELLED = 130
OVERWRITE_HINT = "pass --force to overwrite it"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bisc-plan",
        description="Kidney and tumor measurements, R.E.N.A.L. nephrometry and AJCC size category from a label "
                    "map (0 background, 1 kidney, 2 tumor); no network is run. Not for clinical use.")
    p.add_argument("labels", help="label map: NIfTI, NRRD (also .seg.nrrd with one layer) or MHA")
    p.add_argument("--ct", metavar="CT", help="the CT the label map belongs to (image file or DICOM folder): "
                                              "places the midline, is drawn under the report's images and "
                                              "identifies the case from its DICOM header")
    p.add_argument("--json", metavar="PATH", help="write every number as JSON (keys: docs/planning.md)")
    p.add_argument("--report", metavar="PATH", help="write a PDF report")
    p.add_argument("--min-tumor-ml", type=float, default=None, metavar="ML",
                   help="list tumors from this volume on (default 0.5 mL; smaller ones are counted as fragments)")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def identification(ct_path) -> Dict[str, str]:
    """Case and series identification: the DICOM header's fields for a DICOM folder, else the file name."""
    if ct_path is None:
        return {}
    path = Path(ct_path)
    if not path.is_dir():
        return {"file": path.name}
    from .dicom import series_identification

    return series_identification(path)


def check_output_names(args, inputs: Sequence[Optional[str]]) -> List:
    """Refuse, before any work, outputs with a wrong extension, that clash, or that exist (without --force)."""
    outs = []
    if args.json:
        if not args.json.lower().endswith(".json"):
            raise OutputError(f"{args.json}: the JSON output must end in .json")
        outs.append(("JSON file", Path(args.json)))
    if args.report:
        if not args.report.lower().endswith(".pdf"):
            raise OutputError(f"{args.report}: the report is a PDF; give a name ending in .pdf")
        outs.append(("report", Path(args.report)))
    resolved = [p.resolve() for _, p in outs]
    if len(set(resolved)) != len(resolved):
        raise OutputError("--json and --report name the same file; give each its own path")
    for (what, p), r in zip(outs, resolved):
        if any(i is not None and Path(i).resolve() == r for i in inputs):
            raise OutputError(f"{p}: the {what} would overwrite an input; choose another name")
    check_targets(outs, args.force, OVERWRITE_HINT)
    return outs


def summary_lines(plan) -> List[str]:
    """A few lines for the terminal: kidneys, then tumors with size category and R.E.N.A.L."""
    lines = []
    for n, k in enumerate(plan.kidneys, 1):
        lines.append(f"Kidney {n} ({k['side']}): {k['volume_ml']:.1f} mL with tumor, {k['parenchyma_ml']:.1f} mL "
                     f"parenchyma, {k['tumor_volume_ml']:.1f} mL tumor, {k['remaining_parenchyma_ml']:.1f} mL "
                     f"parenchyma remaining after excision with margin")
    for t in plan.tumors:
        r = t["renal"] or {}
        renal = (f", R.E.N.A.L. {r.get('notation')} ({r.get('complexity') or 'score not computed'})"
                 if r else "")
        lines.append(f"Tumor {t['index']} ({t['side']}): {t['volume_ml']:.1f} mL, largest diameter "
                     f"{t['diameter_3d_mm']:.1f} mm (axial {t['diameter_axial_mm']:.1f} mm), size category "
                     f"{t['size_category']}{renal}")
    if not plan.tumors:
        lines.append("No tumor of at least the listed size.")
    return lines


def read_case(labels_path, ct_path=None):
    """(labels, ct or None): the CT's header wins when both are given and their grids agree up to rounding."""
    labels = read_volume(labels_path)
    ct = read_volume(ct_path) if ct_path else None
    if ct is not None and not ct.same_grid(labels) and ct.array.shape == labels.array.shape \
            and ct.same_grid(labels, tol=1e-2):
        labels = Volume(labels.array, ct.spacing, ct.origin, ct.direction)
    return labels, ct


def check_planning_options(args) -> None:
    """bisc-segment's --report / --plan-json / --dicom-seg, refused before any work when they cannot work."""
    if getattr(args, "report", None):
        if not args.report.lower().endswith(".pdf"):
            raise OutputError(f"{args.report}: the report is a PDF; give a name ending in .pdf")
        from .report import _matplotlib
        _matplotlib()
    if getattr(args, "plan_json", None) and not args.plan_json.lower().endswith(".json"):
        raise OutputError(f"{args.plan_json}: the planning JSON must end in .json")
    if getattr(args, "dicom_seg", None):
        if not args.dicom_seg.lower().endswith(".dcm"):
            raise OutputError(f"{args.dicom_seg}: a DICOM SEG file must end in .dcm")
        if not Path(args.input).is_dir():
            raise OutputError(f"--dicom-seg needs a DICOM series as input (a folder), got the file {args.input}; "
                              f"a DICOM SEG must reference the DICOM images it was drawn on")
        from .dicom import _require_highdicom
        _require_highdicom()


def add_planning_outputs(outputs: OutputSet, args, ct: Volume, labels: Volume, warnings: Sequence,
                         model: Optional[Dict]) -> List:
    """Add bisc-segment's planning outputs (report, planning JSON, DICOM SEG) to its set; returns the planning
    warnings (e.g. a third kidney), which join the run's."""
    from .planning import analyse, plan_document
    from .quality import merge

    plan = analyse(labels, ct)
    all_warnings = merge(warnings, plan.warnings)
    doc = plan_document(plan, args.output, args.input, identification(args.input))
    doc["warnings"] = [w.to_dict() for w in all_warnings]
    doc["model"] = model
    if getattr(args, "plan_json", None):
        outputs.add_json(args.plan_json, doc, "planning JSON")
    if getattr(args, "report", None):
        from .report import add_report
        add_report(outputs, args.report, plan, doc, all_warnings, model)
    if getattr(args, "dicom_seg", None):
        from .dicom import add_dicom_seg
        add_dicom_seg(outputs, args.dicom_seg, labels, args.input, model)
    return plan.warnings


def run_plan(args) -> Dict:
    from .planning import MIN_TUMOR_ML, analyse, plan_document

    check_output_names(args, [args.labels, args.ct])
    if args.min_tumor_ml is not None and not (args.min_tumor_ml >= 0):
        raise OutputError("--min-tumor-ml must be 0 or more (mL)")
    labels, ct = read_case(args.labels, args.ct)
    ident = identification(args.ct) or {"file": Path(args.labels).name}
    plan = analyse(labels, ct, MIN_TUMOR_ML if args.min_tumor_ml is None else args.min_tumor_ml)
    doc = plan_document(plan, args.labels, args.ct, ident)
    outputs = OutputSet(args.force, OVERWRITE_HINT)
    if args.json:
        outputs.add_json(args.json, doc, "JSON file")
    if args.report:
        from .report import add_report

        add_report(outputs, args.report, plan, doc, warnings=plan.warnings)
    written = outputs.commit()
    if not args.quiet:
        for line in summary_lines(plan):
            print(line)
        for p in written:
            print(f"Wrote {p}")
    for w in plan.warnings:
        print(str(w), file=sys.stderr, flush=True)
    return doc


def plan_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    with signals_as_interrupts():
        try:
            run_plan(args)
            return 0
        except KeyboardInterrupt:
            print("\nCancelled: nothing was written.", file=sys.stderr, flush=True)
            return EXIT_CANCELLED
        except (VolumeError, OutputError, FileExistsError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return EXIT_USAGE
        except MemoryError:
            print("error: out of memory while measuring; try a machine with more memory", file=sys.stderr)
            return EXIT_USAGE


__all__ = ["plan_main", "run_plan", "identification", "summary_lines", "read_case", "add_planning_outputs",
           "check_planning_options"]


if __name__ == "__main__":  # pragma: no cover - python -m BiSCSegmentationLib.plan_cli
    sys.exit(plan_main())
