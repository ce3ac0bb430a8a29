"""``bisc-segment --batch INPUT_DIR OUTPUT_DIR [options]``: every case of a folder, resumable.

Cases: image files directly in INPUT_DIR (NIfTI, NRRD, MHA/MHD), and sub-folders holding one DICOM series or
one image file (e.g. KiTS19's case_XXXXX/imaging.nii.gz). Each case writes OUTPUT_DIR/<case>/ labels.nii.gz,
summary.json and plan.json (plus report.pdf with --report, seg.dcm with --dicom-seg for DICOM cases), all
or nothing. A case whose summary.json exists is done and skipped, so a stopped batch resumes where it was;
a case that fails is recorded (OUTPUT_DIR/<case>/error.txt and the CSV) and the batch goes on; it is tried
again on the next run. OUTPUT_DIR/summary.csv (rewritten at the end of every run; it is the batch's own
file) has one row per case: volumes, tumor sizes, R.E.N.A.L., warnings, time. Exit status: 0 all cases done,
1 some failed, 2 a usage error, 130 stopped (the CSV still lists what was done).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .outputs import OutputError, OutputSet, write_file, text_output
from .volume import READABLE_SUFFIXES

DONE_FILE = "summary.json"
CSV_COLUMNS = ("case", "status", "input", "kidney_ml", "tumor_ml", "right_kidney_ml", "left_kidney_ml", "tumors",
               "largest_tumor_3d_mm", "largest_tumor_axial_mm", "size_category", "renal_score", "renal",
               "warnings", "seconds", "error")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bisc-segment --batch", description=__doc__.split("\n\n")[1],
                                epilog="Every other option (--model, --rough-model/--fine-model, --device, --backend, "
                                       "--mirror, ...) is passed to each case's bisc-segment run.")
    p.add_argument("input_dir", help="folder of cases (image files and/or DICOM series folders)")
    p.add_argument("output_dir", help="folder for the results, one sub-folder per case")
    p.add_argument("--report", action="store_true", help="also write report.pdf for each case")
    p.add_argument("--dicom-seg", action="store_true", help="also write seg.dcm for each DICOM case")
    p.add_argument("--force", action="store_true", help="redo cases already done (replacing their outputs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _image_name(path: Path) -> Optional[str]:
    name = path.name.lower()
    for ext in sorted(READABLE_SUFFIXES, key=len, reverse=True):
        if name.endswith(ext) and not name.endswith(".seg.nrrd"):
            return path.name[: -len(ext)]
    return None


def _is_dicom_series(folder: Path) -> bool:
    import SimpleITK as sitk

    return bool(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)))


def find_cases(input_dir: Path) -> List[Tuple[str, Path, bool]]:
    """(case name, input path, is DICOM) for every case, sorted by name; a folder that is neither a series nor
    holds exactly one image is left out with a note on stderr."""
    cases = []
    for path in sorted(input_dir.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and _image_name(path) is not None and not path.name.lower().endswith(".raw"):
            cases.append((_image_name(path), path, False))
        elif path.is_dir():
            images = [p for p in sorted(path.iterdir()) if p.is_file() and _image_name(p) in ("imaging", "ct", "image")]
            if _is_dicom_series(path):
                cases.append((path.name, path, True))
            elif len(images) == 1:
                cases.append((path.name, images[0], False))
            else:
                print(f"note: {path} is neither a DICOM series nor a folder with one imaging.* file; left out",
                      file=sys.stderr)
    names = [c[0] for c in cases]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise OutputError(f"{input_dir}: several inputs make the case name {clashes[0]} (e.g. a.nii and a.nrrd); "
                          f"rename one")
    return cases


def _segment_argv(name: str, path: Path, dicom: bool, out: Path, args, passthrough: Sequence[str]) -> List[str]:
    argv = [str(path), "-o", str(out / "labels.nii.gz"), "--summary", str(out / DONE_FILE),
            "--plan-json", str(out / "plan.json"), "--quiet"]
    if args.report:
        argv += ["--report", str(out / "report.pdf")]
    if args.dicom_seg and dicom:
        argv += ["--dicom-seg", str(out / "seg.dcm")]
    if args.force:
        argv.append("--force")
    return argv + list(passthrough)


def csv_row(name: str, out: Path, status: str, error: str = "", seconds: Optional[float] = None) -> Dict:
    """One CSV row from a case folder's summary.json and plan.json (whatever of them exists)."""
    row = {c: "" for c in CSV_COLUMNS}
    row.update(case=name, status=status, error=error)
    if seconds is not None:
        row["seconds"] = f"{seconds:.1f}"
    try:
        summary = json.loads((out / DONE_FILE).read_text(encoding="utf-8"))
        plan = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return row
    vol = summary.get("volumes") or {}
    row.update(input=summary["input"]["path"], kidney_ml=vol.get("kidney_ml", ""), tumor_ml=vol.get("tumor_ml", ""),
               warnings=";".join(w["code"] for w in summary.get("warnings", [])))
    if seconds is None:
        row["seconds"] = summary.get("timings_s", {}).get("total", "")
    for side in ("right", "left"):
        row[f"{side}_kidney_ml"] = round(sum(k["volume_ml"] for k in plan["kidneys"] if k["side"] == side), 2)
    row["tumors"] = len(plan["tumors"])
    if plan["tumors"]:
        big = plan["tumors"][0]
        renal = big.get("renal") or {}
        row.update(largest_tumor_3d_mm=big["diameter_3d_mm"], largest_tumor_axial_mm=big["diameter_axial_mm"],
                   size_category=big["size_category"], renal_score=renal.get("score") or "",
                   renal=renal.get("notation", ""))
    return row


def _csv_text(rows: Sequence[Dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def run_batch(args, passthrough: Sequence[str]) -> int:
    from .cli import build_segment_parser, run_segment

    input_dir, output_dir = Path(args.input_dir), Path(args.output_dir)
    if not input_dir.is_dir():
        raise OutputError(f"{input_dir}: no such folder; give the folder that holds the cases")
    if output_dir.resolve() == input_dir.resolve() or input_dir.resolve() in output_dir.resolve().parents:
        raise OutputError(f"{output_dir}: put the results outside the input folder")
    cases = find_cases(input_dir)
    if not cases:
        raise OutputError(f"{input_dir}: no cases found (image files, or folders with a DICOM series or one "
                          f"imaging.* file)")
    parser = build_segment_parser()
    # options for every case are checked once, before any work
    parser.parse_args(_segment_argv(*cases[0][:3], output_dir / cases[0][0], args, passthrough))
    rows: List[Dict] = []
    failed = 0
    bar = None
    if not args.quiet:
        from tqdm import tqdm
        bar = tqdm(total=len(cases), file=sys.stderr, unit="case", desc="batch")
    try:
        for name, path, dicom in cases:
            out = output_dir / name
            if (out / DONE_FILE).exists() and not args.force:
                rows.append(csv_row(name, out, "done earlier"))
            else:
                t = time.perf_counter()
                try:
                    run_segment(parser.parse_args(_segment_argv(name, path, dicom, out, args, passthrough)))
                    if (out / "error.txt").exists():
                        (out / "error.txt").unlink()
                    rows.append(csv_row(name, out, "done", seconds=time.perf_counter() - t))
                except (KeyboardInterrupt, MemoryError):
                    raise
                except Exception as exc:   # one bad case must not stop the batch: record it, go on
                    failed += 1
                    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    rows.append(csv_row(name, out, "failed", f"{type(exc).__name__}: {msg}",
                                        time.perf_counter() - t))
                    write_file(out / "error.txt", *text_output(f"{path}: {msg}\n"), force=True,
                               description="error note")
                    print(f"{name}: failed: {msg}", file=sys.stderr, flush=True)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{failed} failed" if failed else "", refresh=True)
    finally:
        if bar is not None:
            bar.close()
        done = {r["case"] for r in rows}
        rows += [csv_row(n, output_dir / n, "not run (stopped)") for n, _, _ in cases if n not in done]
        out_set = OutputSet(force=True)   # the batch's own file: replaced by each run
        out_set.add_text(output_dir / "summary.csv", _csv_text(rows), "summary CSV")
        out_set.commit()
    if not args.quiet:
        print(f"{len(cases)} cases: {sum(r['status'] == 'done' for r in rows)} done now, "
              f"{sum(r['status'] == 'done earlier' for r in rows)} done earlier, {failed} failed. "
              f"Wrote {output_dir / 'summary.csv'}")
    return 1 if failed else 0


def batch_main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse the batch's own options; every other option goes to each case's bisc-segment run."""
    from .outputs import signals_as_interrupts

    parser = build_parser()
    try:
        args, passthrough = parser.parse_known_args(None if argv is None else list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else 2
    with signals_as_interrupts():
        try:
            return run_batch(args, passthrough)
        except KeyboardInterrupt:
            print("\nStopped: finished cases are kept; run the same command again to go on.", file=sys.stderr)
            return 130
        except SystemExit as exc:   # argparse refused an option meant for bisc-segment
            return int(exc.code) if isinstance(exc.code, int) else 2
        except (OutputError, ValueError, FileExistsError) as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return 2


__all__ = ["batch_main", "run_batch", "find_cases", "csv_row", "CSV_COLUMNS"]
