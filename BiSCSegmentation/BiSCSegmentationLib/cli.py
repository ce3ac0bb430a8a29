"""Command-line tools: ``bisc-segment`` (CT file in, label map out) and ``bisc-phantom`` (synthetic KiTS cases).

Errors the user can fix print one line starting with ``error:`` and exit with status 2; "no kidney found"
exits 3 (pass hand-made ROIs with --rois); with --strict, a run that raised quality warnings exits 4 (its
outputs are written); Ctrl-C exits 130, SIGTERM 143 and SIGHUP 129, and none leaves a partial output behind
(all outputs of a run are written together or not at all: see ``outputs``).
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .errors import EXIT_CANCELLED, EXIT_NO_KIDNEY, EXIT_USAGE, BiSCError, InputError
from .inference_settings import BACKEND_CHOICES, InferenceSettings
from .outputs import Interrupted, OutputSet, check_targets, signals_as_interrupts
from .quality import QualityWarning, check_input, exit_status_text, merge
from .roi import KidneyROI, ROIError, check_roi, load_rois, rois_document
from .seg_nrrd import SEGMENTS, add_seg_nrrd, seg_nrrd_metadata, write_seg_nrrd  # noqa: F401 (re-export)
from .summary import summary_document
from .volume import WRITABLE_LABEL_SUFFIXES, Volume, VolumeError, read_volume

EXIT_WARNINGS = 4   # --strict: the run finished and wrote its outputs, but raised quality warnings
# EXIT_CANCELLED (130) is SIGINT's; SIGTERM exits 143 and SIGHUP 129 (128 + the signal's number)
DEFAULTS = InferenceSettings()
OVERWRITE_HINT = "pass --force to overwrite it"

# ------------------------------------------------------------------------------------------------- bisc-segment
def build_segment_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bisc-segment",
        description="Segment kidneys and renal tumors in a CT (BiSC-UNet cascade). Output labels: "
                    "0 background, 1 kidney, 2 tumor, on exactly the input's voxel grid. A folder of cases: "
                    "bisc-segment --batch INPUT_DIR OUTPUT_DIR (see bisc-segment --batch --help).")
    p.add_argument("input", help="CT: NIfTI (.nii/.nii.gz), NRRD, MHA/MHD, or a folder with one DICOM series")
    p.add_argument("-o", "--output", required=True, help="label map to write (.nii.gz, .nii, .nrrd or .mha)")
    p.add_argument("--seg-nrrd", metavar="PATH", help="also write a 3D Slicer segmentation (.seg.nrrd)")
    p.add_argument("--save-rois", metavar="PATH", help="also write the kidney ROIs (JSON, LPS mm) for editing")
    p.add_argument("--summary", metavar="PATH", help="also write a JSON summary: volumes, ROIs, quality warnings, "
                                                     "timings, model name and checksums")
    p.add_argument("--report", metavar="PATH", help="also write a PDF planning report: volumes, tumors with size "
                                                    "category and R.E.N.A.L. nephrometry, key images, warnings")
    p.add_argument("--plan-json", metavar="PATH", help="also write the planning numbers as JSON (as bisc-plan --json)")
    p.add_argument("--dicom-seg", metavar="PATH", help="also write a DICOM Segmentation (.dcm) referencing the input "
                                                       "series (input must be a DICOM folder; needs highdicom)")
    p.add_argument("--strict", action="store_true",
                   help="exit with code 4 when the run raises any quality warning (outputs are still written)")
    p.add_argument("--rois", metavar="PATH", help="ROI JSON (e.g. an edited --save-rois file): run only the fine "
                                                  "stage inside these boxes")
    p.add_argument("--rough-only", action="store_true", help="run only the rough stage; write its preview mask")
    p.add_argument("--model", metavar="NAME", help="bundled model name (default: the bundled default)")
    p.add_argument("--rough-model", metavar="FILE", help="rough-stage model file (needs --fine-model)")
    p.add_argument("--fine-model", metavar="FILE", help="fine-stage model file (needs --rough-model)")
    p.add_argument(
        "--device", default=DEFAULTS.device, choices=("auto", "cpu", "cuda"), help="where to run (default auto)"
    )
    p.add_argument("--mirror", action="store_true",
                   help="test-time mirroring: average over the mirrorings the model was trained with (up to 8x slower)")
    p.add_argument("--keep-small-tumors", action="store_true",
                   help="keep every tumor component (skip the fine model's step that turns separate tumor spots "
                        "that are small or that the network is unsure of into kidney, the largest tumor excepted)")
    p.add_argument("--plain-tumor-borders", action="store_true",
                   help="skip the fine model's step that grows large tumors into the voxels around them that the "
                        "network is unsure of (the network's own tumor border)")
    p.add_argument(
        "--roi-growth",
        type=int,
        default=DEFAULTS.roi_growth,
        metavar="N",
        help="grow an ROI whose kidney or tumor reaches its face through that face and run the fine stage "
        "again, at most N times (default 0: the boxes exactly as given; 2 recovers kidneys a box "
        "cut off, but also follows false kidney into neighbouring organs, see README). "
        "--save-rois writes the boxes used",
    )
    p.add_argument(
        "--backend",
        default=DEFAULTS.backend,
        choices=BACKEND_CHOICES,
        help="what runs the networks: auto = OpenVINO on the CPU when installed, else PyTorch (default); "
        "OpenVINO computes in bfloat16 on CPUs with bfloat16 instructions (AVX512-BF16, AMX), else in float32; "
        "openvino-f32 / openvino-bf16 choose the precision",
    )
    p.add_argument("--force", action="store_true", help="overwrite existing output files")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


@dataclass
class SegmentOutcome:
    """What one bisc-segment run produced (for callers such as bisc-demo)."""

    ct: Volume
    labels: Volume
    rois: List[KidneyROI]
    outputs: List[Path]
    timings: Dict[str, float] = field(default_factory=dict)
    warnings: List[QualityWarning] = field(default_factory=list)


class UsageError(InputError):
    """Bad combination of arguments or output paths."""


def _planned_outputs(args) -> List[Tuple[str, Path]]:
    outs = [("label map", Path(args.output))]
    if args.seg_nrrd:
        outs.append(("segmentation", Path(args.seg_nrrd)))
    if args.save_rois:
        outs.append(("ROI file", Path(args.save_rois)))
    if getattr(args, "summary", None):
        outs.append(("summary", Path(args.summary)))
    for what, key in (("report", "report"), ("planning JSON", "plan_json"), ("DICOM SEG", "dicom_seg")):
        if getattr(args, key, None):
            outs.append((what, Path(getattr(args, key))))
    return outs


def check_outputs(args) -> None:
    """Every output is checked before any work, so a refused run writes nothing."""
    if args.rois and args.rough_only:
        raise UsageError("--rois runs only the fine stage and --rough-only only the rough stage; pick one")
    if (args.rough_model is None) != (args.fine_model is None):
        raise UsageError("give both --rough-model and --fine-model (or neither, to use a bundled model)")
    if args.model and args.rough_model:
        raise UsageError("give either --model or --rough-model/--fine-model, not both")
    outs = _planned_outputs(args)
    if not outs[0][1].name.lower().endswith(WRITABLE_LABEL_SUFFIXES):
        raise UsageError(f"{outs[0][1]}: unsupported output format; use {', '.join(WRITABLE_LABEL_SUFFIXES)}")
    if getattr(args, "summary", None) and not args.summary.lower().endswith(".json"):
        raise UsageError(f"{args.summary}: the summary is a JSON file; give a name ending in .json")
    if args.seg_nrrd and not args.seg_nrrd.lower().endswith(".seg.nrrd"):
        raise UsageError(f"{args.seg_nrrd}: a Slicer segmentation file must end with .seg.nrrd")
    from .plan_cli import check_planning_options
    check_planning_options(args)
    resolved = [p.resolve() for _, p in outs]
    if len(set(resolved)) != len(resolved):
        raise UsageError("two outputs have the same file name; give each output its own path")
    inp = Path(args.input).resolve()
    extra = [Path(args.rois).resolve()] if args.rois else []
    for (what, p), r in zip(outs, resolved):
        if r == inp or r in extra:
            raise UsageError(f"{p}: the {what} would overwrite an input; choose another name")
    check_targets(outs, args.force, OVERWRITE_HINT)  # exists, is a folder, folder not writable


def load_predictor(args, progress=None):
    from .cascade import CascadePredictor
    from .model_file import ModelFileError, load_bundled, load_model_file

    if args.rough_model:
        rough = load_model_file(args.rough_model, stage="rough")
        fine = load_model_file(args.fine_model, stage="fine")
    else:
        try:
            rough, fine = load_bundled(args.model)
        except ModelFileError as exc:
            raise ModelFileError(f"{exc} (or pass --rough-model FILE --fine-model FILE)") from exc
    return CascadePredictor(rough, fine, settings_from_args(args), progress=progress)


class _ModelsLoading:
    """Loads the models and compiles the backend in a thread while the CT is read (neither needs the other),
    which hides most of a cold start's model load behind the read; ``get()`` waits and re-raises its error."""

    def __init__(self, args, stages: Tuple[str, ...]):
        self._out: Dict[str, object] = {}
        self._thread = threading.Thread(target=self._load, args=(args, stages), daemon=True,
                                        name="bisc-load-models")
        self._thread.start()

    def _load(self, args, stages) -> None:
        try:
            predictor = load_predictor(args)
            predictor.prepare(stages)  # convert/compile now (cached on disk), so the backend line is final
            self._out["predictor"] = predictor
        except BaseException as exc:  # noqa: BLE001 (handed to the main thread by get())
            self._out["error"] = exc

    def get(self):
        self._thread.join()
        if "error" in self._out:
            raise self._out["error"]
        return self._out["predictor"]


def settings_from_args(args) -> InferenceSettings:
    """The inference settings of a parsed bisc-segment command line (the one place its options become them)."""
    return InferenceSettings(
        device=args.device,
        backend=args.backend,
        mirror=bool(args.mirror),
        roi_growth=int(args.roi_growth),
        keep_small_tumors=bool(args.keep_small_tumors),
        plain_tumor_borders=bool(args.plain_tumor_borders),
    )


class _Progress:
    """One tqdm bar on stderr for the whole run; the description names the current stage."""

    def __init__(self, enabled: bool, weights: Dict[str, Tuple[float, float]]):
        self.weights = weights
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=100, file=sys.stderr, leave=False, unit="%", desc="starting",
                            bar_format="{desc:>14}: {percentage:3.0f}%|{bar}| {elapsed}")

    def __call__(self, stage: str, fraction: float) -> None:
        if self.bar is None:
            return
        lo, hi = self.weights.get(stage, (0.0, 1.0))
        value = round(100 * (lo + fraction * (hi - lo)), 1)
        label = {"rough": "rough stage", "fine": "fine stage"}.get(stage, stage)
        if self.bar.desc != label:
            self.bar.set_description_str(label, refresh=False)
        self.bar.n = max(self.bar.n, value)
        self.bar.refresh()

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _say(args, msg: str) -> None:
    if not args.quiet:
        print(msg, flush=True)


def run_segment(args) -> SegmentOutcome:
    """Do the work of bisc-segment for parsed ``args``; raises on any problem (see ``segment_main``)."""
    t_start = time.perf_counter()
    timings: Dict[str, float] = {}
    check_outputs(args)

    loading = _ModelsLoading(args, ("rough",) if args.rough_only else ("fine",) if args.rois else ("rough", "fine"))
    t = time.perf_counter()
    ct = read_volume(args.input)
    check_input(ct)  # an unreadable CT is refused before waiting for the models
    timings["read input"] = time.perf_counter() - t
    _say(args, f"Read {args.input}: {' x '.join(map(str, ct.size_ijk))} voxels, spacing "
               f"{' x '.join(f'{s:.3g}' for s in ct.spacing)} mm")
    rois: List[KidneyROI] = []
    if args.rois:
        rois = load_rois(args.rois)
        if not rois:
            raise ROIError(f"{args.rois}: the ROI file holds no ROIs; add one box around each kidney")
        problems = [msg for r in rois for msg in check_roi(r, ct)]
        if problems:
            raise ROIError(f"{args.rois}: " + "; ".join(problems))

    if args.rough_only:
        weights = {"rough": (0.0, 1.0)}
    elif args.rois:
        weights = {"fine": (0.0, 1.0)}
    else:
        weights = {"rough": (0.0, 0.3), "fine": (0.3, 1.0)}
    progress = _Progress(not args.quiet, weights)
    try:
        progress("loading models", 0.0)
        t = time.perf_counter()
        predictor = loading.get()
        predictor.progress = progress
        timings["load models"] = time.perf_counter() - t  # what the read did not hide
        if not args.quiet:
            progress.write(f"Backend: {predictor.backend_name}")
            rules = ([] if args.rois else [f"rough: {predictor.rough_decision.describe()}"]) + \
                    ([] if args.rough_only else [f"fine: {predictor.decision.describe()}"])
            progress.write("Decision rule, " + "; ".join(rules))
        warnings: List[QualityWarning] = []
        if args.rois:
            labels = predictor.segment(ct, rois)
        else:
            rough = predictor.locate(ct)
            warnings = list(predictor.warnings)
            rois = rough.rois
            if args.rough_only:
                labels = rough.mask
            else:
                from .cascade import NoKidneyFound
                if not rois:
                    raise NoKidneyFound()
                labels = predictor.segment(ct, rois)
        warnings = merge(warnings, predictor.warnings)
        if not args.rough_only:
            paired = len(rois) == len(predictor.used_rois)  # not when duplicate ROIs were left out
            grown = [(a, b) for a, b in zip(rois, predictor.used_rois) if a != b] if paired else []
            for note in predictor.notes if not args.quiet else []:  # e.g. duplicate ROIs left out
                progress.write(note)
            rois = list(predictor.used_rois)  # what the labels come from (and what --save-rois writes)
            for before, after in (grown if not args.quiet else []):
                progress.write(f"{after.name} grown from {_mm(before.size)} to {_mm(after.size)}: the kidney "
                               f"reached its face")
        for stage, key in (("rough", "rough stage"), ("locate", "find ROIs"), ("fine", "fine stage")):
            if stage in predictor.timings:
                timings[key] = predictor.timings[stage]
    finally:
        progress.close()

    t = time.perf_counter()
    labels = labels.with_array(np.asarray(labels.array).astype(np.uint8, copy=False))
    if not labels.same_grid(ct):  # the output must carry the input's grid exactly
        raise VolumeError("internal error: the label map's grid differs from the CT's; nothing was written")
    outputs = OutputSet(args.force, OVERWRITE_HINT)  # all of them, complete, or none
    outputs.add_image(args.output, labels, "label map")
    if args.seg_nrrd:
        add_seg_nrrd(outputs, labels, args.seg_nrrd)
    if args.save_rois:
        outputs.add_json(args.save_rois, rois_document(rois), "ROI file")
    if args.report or args.plan_json or args.dicom_seg:
        from .plan_cli import add_planning_outputs
        warnings = merge(warnings, add_planning_outputs(outputs, args, ct, labels, warnings,
                                                        _model_info(predictor, args)))
    if args.summary:  # written with the others, so its timings end before the writing
        timings["total"] = time.perf_counter() - t_start
        doc = summary_document(args.input, ct, labels, rois, warnings, timings, _model_info(predictor, args),
                               _settings(args, predictor))
        outputs.add_json(args.summary, doc, "summary", indent=2)
    written = outputs.commit()
    timings["write outputs"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start

    if not args.quiet:
        counts = np.bincount(labels.array.ravel(), minlength=3)
        ml = labels.voxel_volume_ml
        print(f"Found {len(rois)} ROI(s): " + ", ".join(r.name for r in rois))
        print(f"Kidney {counts[1] * ml:.1f} ml, tumor {counts[2] * ml:.1f} ml")
        for p in written:
            print(f"Wrote {p}")
        print("Timings:")
        for key, value in timings.items():
            print(f"  {key:<14} {value:8.2f} s")
    # warnings go to stderr even with --quiet: a doubtful result must not pass unnoticed
    for w in warnings:
        print(str(w), file=sys.stderr, flush=True)
    if warnings or not args.quiet:
        print(exit_status_text(warnings), file=sys.stderr if warnings else sys.stdout, flush=True)
    return SegmentOutcome(ct, labels, rois, written, timings, warnings)


def _model_info(predictor, args) -> Dict:
    from .model_file import bundled_entry

    name = "custom files" if args.rough_model else bundled_entry(args.model)[0]
    return {"name": name, **{stage: {"file": str(m.path) if m.path else None, "sha256": m.sha256}
                             for stage, m in (("rough", predictor.rough_model), ("fine", predictor.fine_model))}}


def _settings(args, predictor) -> Dict:
    """The summary's record of how the run went: the settings as given, what ran them, and the run's mode."""
    return {
        **predictor.settings.to_dict(),
        "device": str(predictor.device),
        "backend": predictor.backend_name,
        "rois_from": args.rois,
        "rough_only": bool(args.rough_only),
    }


def _mm(size) -> str:
    return " x ".join(f"{v:.0f}" for v in size) + " mm"


def _error(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)


def run_segment_cli(argv: Optional[Sequence[str]] = None) -> Tuple[int, Optional[SegmentOutcome]]:
    """Parse, run, and turn every expected failure into (exit code, None) with a one-line message."""
    from .errors import Cancelled, NoKidneyFound

    parser = build_segment_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:  # argparse already printed usage
        return (int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE), None
    try:
        outcome = run_segment(args)
        return (EXIT_WARNINGS if args.strict and outcome.warnings else 0), outcome
    except NoKidneyFound as exc:
        _error(f"{exc} Nothing was written.")  # the advice is in the message, once
        return EXIT_NO_KIDNEY, None
    except (Cancelled, KeyboardInterrupt) as exc:
        if isinstance(exc, Interrupted) and exc.outputs_written:
            print(f"\nStopped by {exc.name} after all outputs were written.", file=sys.stderr, flush=True)
        else:
            print("\nCancelled: nothing was written.", file=sys.stderr, flush=True)
        return (exc.exit_code if isinstance(exc, Interrupted) else EXIT_CANCELLED), None
    except BiSCError as exc:  # errors.py: the message says what was wrong and what to do
        _error(str(exc))
        return exc.exit_code, None
    except (FileExistsError, ValueError) as exc:  # from a library, about the user's input
        _error(str(exc))
        return EXIT_USAGE, None
    except MemoryError:
        _error("out of memory; try --device cpu, a smaller inference window, or a machine with more memory")
        return EXIT_USAGE, None


def segment_main(argv: Optional[Sequence[str]] = None) -> int:
    """The console script: SIGTERM and SIGHUP end the run like Ctrl-C, leaving no partial output.
    ``--batch INPUT_DIR OUTPUT_DIR`` runs every case of a folder (see ``batch``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if "--batch" in args:
        from .batch import batch_main
        return batch_main([a for a in args if a != "--batch"])
    with signals_as_interrupts():
        return run_segment_cli(argv)[0]


# ------------------------------------------------------------------------------------------------- bisc-phantom
def label_case_name(path) -> str:
    """The case a label map belongs to: its KiTS19 folder (case_XXXXX/segmentation.nii.gz), else its file name
    without the image extension."""
    path = Path(path)
    if re.fullmatch(r"case_\d{5}", path.parent.name):
        return path.parent.name
    name = path.name
    for ext in (".nii.gz", ".seg.nrrd", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(ext):
            return name[: -len(ext)] or "case"
    return path.stem or "case"


def build_phantom_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bisc-phantom",
        description="Write synthetic kidney/tumor CT cases in the KiTS19 layout (case_XXXXX/imaging.nii.gz + "
                    "segmentation.nii.gz), for trying out and testing the pipeline without patient data.")
    p.add_argument("outdir", help="folder to write the cases into")
    p.add_argument("--count", type=int, default=1, help="number of cases (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first case; case N uses seed+N (default 0)")
    p.add_argument("--from-label", metavar="PATH", help="build the CT around this label map (0/1/2) instead of "
                                                       "a procedural one; the case is named after the label map "
                                                       "(its case_XXXXX folder, else its file name), with _seedN "
                                                       "added when --count is over 1")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("X", "Y", "Z"),
                   help="voxel spacing in mm of procedural cases (default 0.78 0.78 3)")
    p.add_argument("--force", action="store_true", help="overwrite existing case folders")
    return p


def phantom_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_phantom_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        from . import phantom

        if args.count < 1:
            raise UsageError("--count must be at least 1")
        if args.seed < 0:
            raise UsageError("--seed must be 0 or more")
        if args.spacing is not None and not all(math.isfinite(v) and 0.3 <= v <= 10 for v in args.spacing):
            raise UsageError(f"--spacing needs three numbers from 0.3 to 10 (mm), got "
                             f"{' '.join(f'{v:g}' for v in args.spacing)}")
        if args.from_label and args.spacing:
            raise UsageError("--spacing applies to procedural cases; a --from-label case keeps the label map's grid")
        outdir = Path(args.outdir)
        if outdir.exists() and not outdir.is_dir():
            raise UsageError(f"{outdir} is a file; give a folder")
        seeds = [args.seed + n for n in range(args.count)]
        if args.from_label:  # named after its anatomy, so that it is not taken for another KiTS19 case
            source = label_case_name(args.from_label)
            cases = [(s, source if args.count == 1 else f"{source}_seed{s}") for s in seeds]
        else:
            cases = [(s, f"case_{s:05d}") for s in seeds]
        if not args.force:
            existing = [c for _, c in cases if (outdir / c).exists()]
            if existing:
                raise UsageError(f"{outdir / existing[0]} exists; pass --force to overwrite (nothing was written)")
        if args.from_label:
            values = np.unique(read_volume(args.from_label).array)
            if not np.all(np.isin(values, (0, 1, 2))):
                raise VolumeError(f"{args.from_label}: a label map must hold only 0, 1 and 2, got "
                                  f"{', '.join(str(v) for v in values[:8])}")
        spacing = tuple(args.spacing) if args.spacing else None
        for seed, case_id in cases:
            t = time.perf_counter()
            ct, labels = phantom.make_case(seed, from_label=args.from_label, spacing=spacing)
            path = phantom.write_kits_case(outdir, case_id, ct, labels, force=args.force)
            counts = np.bincount(np.asarray(labels.array).astype(np.int64).ravel(), minlength=3)
            source = f", anatomy of {args.from_label}" if args.from_label else ""
            print(f"Wrote {path} (seed {seed}{source}): {' x '.join(map(str, ct.size_ijk))} voxels, spacing "
                  f"{' x '.join(f'{s:.3g}' for s in ct.spacing)} mm, kidney {counts[1] * ct.voxel_volume_ml:.1f} "
                  f"ml, tumor {counts[2] * ct.voxel_volume_ml:.1f} ml ({time.perf_counter() - t:.1f} s)",
                  flush=True)
        return 0
    except KeyboardInterrupt:
        print("\nCancelled.", file=sys.stderr, flush=True)
        return EXIT_CANCELLED
    except (VolumeError, UsageError, FileExistsError, ValueError) as exc:
        _error(str(exc))
        return EXIT_USAGE


__all__ = ["segment_main", "phantom_main", "run_segment", "run_segment_cli", "write_seg_nrrd",
           "seg_nrrd_metadata", "SEGMENTS", "SegmentOutcome"]
