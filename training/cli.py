"""``bisc-train``: prepare KiTS19 data, train the rough and fine SC-UNets, evaluate the cascade.

    bisc-train all --kits DIR --out DIR [--synthesize]     # everything, one command
    bisc-train prepare --kits DIR --cache DIR [--synthesize]
    bisc-train stage {rough,fine} --cache DIR --split FILE --out DIR   (also under torchrun for DDP)
    bisc-train evaluate --kits DIR --split FILE --models DIR
    bisc-train set-window MODEL --window Z,Y,X -o OUT | set-decision MODEL --rule ... -o OUT
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

from tqdm import tqdm

from BiSCSegmentationLib.decision import ISLAND_FRACTION
from BiSCSegmentationLib.inference_settings import InferenceSettings
from BiSCSegmentationLib.model_file import load_model_file, save_model_file, sha256_of, window_problem
from BiSCSegmentationLib.outputs import signals_as_interrupts

from . import data as D
from .train import STAGE_DEFAULTS, TrainConfig, default_config, train


def _ints(text: str) -> List[int]:
    return [int(v) for v in text.replace("x", ",").split(",") if v]


def _floats(text: str) -> List[float]:
    return [float(v) for v in text.replace("x", ",").split(",") if v]


def _mirror_axes(text: str) -> str:
    try:
        D.mirror_axis_numbers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))
    return text


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kits", type=Path, help="KiTS19 folder: case_XXXXX/segmentation.nii.gz (+ imaging.nii.gz)")
    p.add_argument("--synthesize", action="store_true",
                   help="build phantom CT around each label map (for folders of label maps without CT images)")
    p.add_argument("--max-cases", type=int, default=0, help="use only the first N cases (0: all)")
    p.add_argument("--workers", type=int, default=1, help="processes working on cases in parallel (prepare, evaluate)")
    p.add_argument("--inplane-size", type=int, default=D.PrepConfig.inplane_size)
    p.add_argument("--rough-z-spacing", type=float, default=D.PrepConfig.rough_z_spacing)
    p.add_argument("--fine-spacing", type=_floats, default=list(D.PrepConfig.fine_spacing),
                   help="x,y,z mm (paper 0.78,0.78,3)")


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--widths", type=_ints, default=default_config().widths,
                   help="channels per level, e.g. 16,32,64,128")
    p.add_argument("--norm", choices=["instance", "batch", "none"], default=default_config().norm)
    p.add_argument("--loss", choices=["bce", "ce"], default=default_config().loss,
                   help="bce: balanced cross-entropy (Eq. 1)")
    p.add_argument("--threshold", type=float, default=default_config().threshold, help="T of Eq. 1")
    p.add_argument("--epochs", type=int, default=default_config().epochs)
    p.add_argument("--iterations", type=int, default=default_config().iterations, help="iterations per epoch")
    p.add_argument("--batch-size", type=int, default=default_config().batch_size)
    p.add_argument("--lr", type=float, default=default_config().lr)
    p.add_argument("--patch-size", type=_ints, default=None, help="z,y,x voxels")
    p.add_argument("--rough-patch-size", type=_ints, default=None)
    p.add_argument("--fine-patch-size", type=_ints, default=None)
    p.add_argument("--no-mirror", action="store_true", help="no random mirroring")
    p.add_argument("--mirror-axes", type=_mirror_axes, default=default_config().mirror_axes, metavar="AXES",
                   help="axes mirrored at random (letters of zyx; 'x': left-right only, keeping front/back and "
                        "head/feet as in a real scan); test-time mirroring then uses only these")
    p.add_argument("--roi-prob", type=float, default=default_config("fine").roi_prob,
                   help="fine stage: share of patches placed anywhere in the ROI region (the rest centred "
                        "on kidney/tumor); teaches what is not kidney near the kidney")
    p.add_argument("--lr-schedule", choices=["constant", "poly"], default=default_config().lr_schedule,
                   help="constant (paper) or poly decay to 0 at the last iteration (nnU-Net)")
    p.add_argument("--no-prior-correction", action="store_true",
                   help="bce: write the network as trained (no log class frequencies added to its label logits)")
    p.add_argument("--calibration-cases", type=int, default=default_config().calibration_cases,
                   help="bce: training cases that tune the prior correction's scale at the end of training")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default=default_config().amp)
    p.add_argument("--threads", type=int, default=default_config().threads)
    p.add_argument("--device", default=default_config().device)
    p.add_argument("--seed", type=int, default=default_config().seed)
    p.add_argument("--checkpoint-every", type=int, default=default_config().checkpoint_every)
    p.add_argument("--inference-window", type=_ints, default=None, metavar="Z,Y,X",
                   help="block the written model is run on at inference (default: rough 128,128,128, fine "
                        "48,128,128); change it later with 'bisc-train set-window'")
    p.add_argument("--init-from", type=Path, default=None, metavar="MODEL.pt",
                   help="start from this model file's weights (same widths/norm; its prior correction is taken "
                        "off) instead of random ones, e.g. to train a bundled model further")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bisc-train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="preprocess cases into a cache folder and write the split")
    _add_data(p)
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--split", type=Path, help="split file (default CACHE/split.json)")
    p = sub.add_parser("stage", help="train one stage from a prepared cache")
    p.add_argument("stage", choices=["rough", "fine"])
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--split", type=Path, help="default CACHE/split.json")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fine-spacing", type=_floats, default=list(D.PrepConfig.fine_spacing))
    _add_train(p)
    p = sub.add_parser("evaluate", help="run the cascade on the split's test cases, KiTS19 metric")
    _add_data(p)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("--models", type=Path, required=True, help="folder with rough.pt and fine.pt")
    p.add_argument("--out", type=Path, help="default MODELS/evaluation")
    p.add_argument("--device", default="auto")
    p.add_argument("--mirror", action="store_true", help="test-time mirroring: average over 8 mirrorings per stage "
                                                        "(as bisc-segment --mirror; 8x slower)")
    p.add_argument("--roi-growth", type=int, default=0, metavar="N",
                   help="grow ROIs the fine foreground reaches the face of, at most N times (as bisc-segment "
                        "--roi-growth; default 0: off)")
    p = sub.add_parser("prior-correct", help="add the training patches' log class frequencies, scaled, to the "
                                             "label logits of a model trained with Eq. 1 (done by 'stage' itself)")
    p.add_argument("model", type=Path, help="a rough.pt or fine.pt trained with --loss bce")
    p.add_argument("--cache", type=Path, required=True)
    p.add_argument("--split", type=Path, required=True)
    p.add_argument("-o", "--out", type=Path, required=True, help="the corrected model file")
    p.add_argument("--scale", default="auto", help="share of the correction, 0..1, or 'auto': the share with the "
                                                   "best mean Dice on training cases (default)")
    p.add_argument("--calibration-cases", type=int, default=default_config().calibration_cases,
                   help="training cases that tune the scale")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p = sub.add_parser("set-window", help="write a copy of a model file that is run on other blocks at "
                                          "inference (same weights; recorded in the file)")
    p.add_argument("model", type=Path, help="a rough.pt or fine.pt")
    p.add_argument("--window", type=_ints, required=True, metavar="Z,Y,X",
                   help="block size in voxels, each a multiple of the network's divisor")
    p.add_argument("-o", "--out", type=Path, required=True, help="the new model file")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p = sub.add_parser("set-decision", help="write a copy of a model file with another decision rule (how "
                                            "probabilities become labels; same weights; recorded in the file)")
    p.add_argument("model", type=Path, help="a rough.pt or fine.pt")
    p.add_argument("--rule", choices=["argmax", "foreground"], required=True,
                   help="argmax, or foreground: kidney+tumor against background first, then tumor against kidney")
    p.add_argument("--foreground-bias", type=float, default=0.0, help="foreground rule: log-odds added to the "
                                                                      "foreground (>0: more kidney+tumor)")
    p.add_argument("--tumor-bias", type=float, default=0.0, help="foreground rule: log-odds added to tumor "
                                                                 "against kidney")
    p.add_argument("--min-tumor-ml", type=float, default=0.0, help="foreground rule, fine stage: tumor components "
                                                                   "under this many mL become kidney, except the largest")
    p.add_argument("--min-tumor-probability", type=float, default=0.0,
                   help="foreground rule, fine stage: tumor components whose mean p(tumor) is under this become "
                        "kidney, except the largest")
    p.add_argument("--tumor-margin-bias", type=float, default=0.0,
                   help="foreground rule, fine stage: foreground bias added in the margin of large tumors, where "
                        "p(tumor) > p(kidney) (0: no margin step)")
    p.add_argument("--tumor-margin-min-ml", type=float, default=0.0,
                   help="foreground rule, fine stage: only tumors of at least this many mL take their margin")
    p.add_argument("--min-island-fraction", type=float, default=ISLAND_FRACTION,
                   help="fine stage, either rule: per ROI, kidney+tumor islands smaller than this fraction of the "
                        f"ROI's largest are dropped (0: keep all; default {ISLAND_FRACTION})")
    p.add_argument("-o", "--out", type=Path, required=True, help="the new model file")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p = sub.add_parser("all", help="prepare, train rough and fine, tune their decision rules on training cases, "
                                   "evaluate on the held-out fifth")
    _add_data(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tune-cases", type=int, default=24,
                   help="training cases that tune the decision rules (python -m bisc_training.tune_decision, "
                        "default grid; written into OUT/rough.pt and OUT/fine.pt); 0: keep the argmax")
    _add_train(p)
    return ap


def _prep_config(args) -> D.PrepConfig:
    return D.PrepConfig(inplane_size=args.inplane_size, rough_z_spacing=args.rough_z_spacing,
                        fine_spacing=tuple(args.fine_spacing), synthesize=args.synthesize)


def _cases(args) -> List[str]:
    if args.kits is None:
        raise SystemExit("bisc-train: --kits DIR is required")
    cases = D.list_cases(args.kits)
    return cases[: args.max_cases] if args.max_cases else cases


def cmd_prepare(args, cache: Path, split_path: Path) -> dict:
    cases = _cases(args)
    split = D.make_split(cases, split_path)
    bar = tqdm(total=len(cases), desc="prepare", unit="case")
    t0 = time.perf_counter()
    D.prepare_cache(args.kits, cases, cache, _prep_config(args),
                    progress=lambda n, total, case: (bar.update(1), bar.set_postfix_str(case)), workers=args.workers)
    bar.close()
    print(f"prepared {len(cases)} cases in {time.perf_counter() - t0:.0f} s -> {cache} "
          f"(train {len(split['train'])}, test {len(split['test'])}; split {split_path})")
    return split


def check_split_sizes(split: dict, tune_cases: int, source) -> None:
    """'all' trains and tunes on the split's training cases and evaluates its held-out ones: refuse a split
    with an empty part before preparing and training (which would take hours and then fail)."""
    n_train, n_test = len(split["train"]), len(split["test"])
    problems = (["no training case"] if n_train < 1 else []) + \
               (["no case to tune the decision rules on"] if n_train < 1 and tune_cases > 0 else []) + \
               (["no held-out case to evaluate"] if n_test < 1 else [])
    if problems:
        tuning = f", tuning {min(tune_cases, n_train)}" if tune_cases > 0 else ""
        raise ValueError(f"{source}: {n_train + n_test} case(s) split into training {n_train}, held-out {n_test}"
                         f"{tuning}: {'; '.join(problems)}. 'all' needs at least 2 cases (training and tuning "
                         "on 4/5, evaluation on 1/5); add cases, or train without evaluation with 'bisc-train "
                         "prepare' then 'bisc-train stage rough|fine' (nothing was written)")


def cmd_stage(args, stage: str, cache: Path, split: dict, out: Path) -> Path:
    patch = getattr(args, f"{stage}_patch_size", None) or args.patch_size or STAGE_DEFAULTS[stage]["patch_size"]
    cfg = TrainConfig(stage=stage, cache_dir=str(cache), out_dir=str(out), cases=list(split["train"]),
                      widths=args.widths, norm=args.norm, loss=args.loss, threshold=args.threshold,
                      epochs=args.epochs, iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
                      patch_size=list(patch), fine_spacing=list(args.fine_spacing),
                      rough_grid={"inplane_size": getattr(args, "inplane_size", D.PrepConfig.inplane_size),
                                  "z_spacing": getattr(args, "rough_z_spacing", D.PrepConfig.rough_z_spacing)},
                      inference_window=list(getattr(args, "inference_window", None)
                                            or STAGE_DEFAULTS[stage]["inference_window"]), mirror=not args.no_mirror,
                      mirror_axes=args.mirror_axes,
                      roi_prob=args.roi_prob if stage == "fine" else 0.0, lr_schedule=args.lr_schedule,
                      prior_correction=not args.no_prior_correction, calibration_cases=args.calibration_cases,
                      seed=args.seed, device=args.device, amp=args.amp, threads=args.threads,
                      checkpoint_every=args.checkpoint_every,
                      init_from=str(args.init_from) if getattr(args, "init_from", None) else "",
                      command="bisc-train " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    bar = tqdm(total=cfg.total_iterations(), desc=f"train {stage}", unit="it")

    def progress(it, total, loss):
        bar.n = it
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.refresh()

    t0 = time.perf_counter()
    try:
        path = train(cfg, progress)
    except KeyboardInterrupt as exc:
        bar.close()
        print(f"\ninterrupted: checkpoint saved in {out}; run the same command again to resume", file=sys.stderr)
        raise SystemExit(128 + getattr(exc, "signum", 2))
    bar.close()
    print(f"{stage} model: {path} (sha256 {sha256_of(path)}), {time.perf_counter() - t0:.0f} s")
    return path


def cmd_prior_correct(args) -> Path:
    """The correction ``stage`` applies at the end of an Eq. 1 training, for a model file made without it
    or with an older one (the file's own correction is taken off first, so the result is the same)."""
    from .train import apply_prior, label_log_prior, without_prior
    model = load_model_file(args.model)
    t = model.training
    if t.get("loss") != "bce":
        raise ValueError(f"{args.model}: trained with loss {t.get('loss')!r}; the correction is for Eq. 1 (bce)")
    split = json.loads(args.split.read_text())
    log_prior = without_prior(model)  # corrected before: back to the network as trained
    if log_prior is None:
        sampler = D.PatchSampler(args.cache, split["train"], model.stage, t["patch_size"],
                                 tuple(model.grid.get("spacing", (0.78, 0.78, 3.0))),
                                 roi_prob=float(t.get("roi_prob", 0.0)))
        log_prior = label_log_prior(sampler, int(t.get("seed", 0)))
    scale = None if args.scale == "auto" else float(args.scale)
    if scale is not None and not 0.0 <= scale <= 1.0:
        raise ValueError(f"--scale must be 'auto' or a number in [0, 1], got {args.scale}")
    apply_prior(model, log_prior, args.cache, split["train"], args.calibration_cases, scale)
    save_model_file(model, args.out, force=args.force)
    scores = model.training.get("prior_scale_scores")
    how = (f"tuned on {model.training['prior_calibration_cases']} training cases, mean Dice "
           f"{scores[model.training['prior_scale']]:.3f} against {scores[1.0]:.3f} at scale 1") if scores else "as given"
    print(f"{args.out}: label logits + {model.training['prior_scale']:g} x log class frequencies "
          f"{[round(v, 3) for v in log_prior]} ({how}; sha256 {sha256_of(args.out)})")
    return args.out


def _record_previous(model, key: str, entry: dict) -> list:
    """Append what a model file had (``entry`` + its SHA-256) to ``model.training[key]`` before a setting of it
    is changed; returns that history."""
    history = list(model.training.get(key, [])) + [{**entry, "sha256": model.sha256}]
    model.training = {**model.training, key: history}
    return history


def cmd_set_window(args) -> Path:
    """The same network run on other blocks: the window is part of how a model is used, so it lives in the
    file (and changes its SHA-256); the previous windows are kept in the training record."""
    model = load_model_file(args.model)
    window = tuple(int(w) for w in args.window)
    problem = window_problem(window, model.config.divisor)
    if problem:
        raise ValueError(f"--window: {problem}")
    history = _record_previous(model, "inference_window_history", {"window": list(model.inference_window)})
    model.inference_window = window
    save_model_file(model, args.out, force=args.force)
    print(f"{args.out}: {model.stage} model run on {'x'.join(map(str, window))} blocks (was "
          f"{'x'.join(map(str, history[-1]['window']))}); sha256 {sha256_of(args.out)}")
    return args.out


def cmd_set_decision(args) -> Path:
    """The same network with another decision rule (as ``python -m bisc_training.tune_decision`` writes it);
    the previous rules are kept in the training record."""
    from BiSCSegmentationLib.decision import Decision
    model = load_model_file(args.model)
    decision = Decision(args.rule, foreground_bias=args.foreground_bias, tumor_bias=args.tumor_bias,
                        min_tumor_ml=args.min_tumor_ml, min_tumor_probability=args.min_tumor_probability,
                        min_island_fraction=args.min_island_fraction, tumor_margin_bias=args.tumor_margin_bias,
                        tumor_margin_min_ml=args.tumor_margin_min_ml)
    problem = decision.problem(model.stage)
    if problem:
        raise ValueError(problem)
    history = _record_previous(model, "decision_history", {"decision": model.decision.to_dict()})
    model.decision = decision
    save_model_file(model, args.out, force=args.force)
    print(f"{args.out}: decision {decision.describe()} (was {history[-1]['decision']['rule']}); "
          f"sha256 {sha256_of(args.out)}")
    return args.out


class LazyCases:
    """Test cases built on access (a synthesized CT is large: never hold them all)."""

    def __init__(self, kits, cases, synthesize):
        self.kits, self.cases, self.synthesize = kits, list(cases), synthesize

    def __len__(self):
        return len(self.cases)

    def __getitem__(self, n):
        ct, gt = D.read_case(self.kits, self.cases[n], self.synthesize)
        return self.cases[n], ct, gt


def _predictor(models: Path, settings: InferenceSettings):
    """The product's predictor on a training run's model files (rough.pt, fine.pt in ``models``)."""
    from BiSCSegmentationLib.cascade import CascadePredictor
    return CascadePredictor(
        load_model_file(models / "rough.pt", stage="rough"), load_model_file(models / "fine.pt", stage="fine"), settings
    )


def eval_settings(args) -> InferenceSettings:
    """The inference settings of ``bisc-train evaluate`` (its --device, --mirror and --roi-growth)."""
    return InferenceSettings(
        device=args.device,
        mirror=bool(getattr(args, "mirror", False)),
        roi_growth=int(getattr(args, "roi_growth", 0) or 0),
    )


_WORKER = {}


def _worker_init(models: str, settings: InferenceSettings, kits: str, synthesize: bool, threads: int) -> None:
    import torch
    torch.set_num_threads(threads)
    _WORKER.update(predictor=_predictor(Path(models), settings), kits=kits, synthesize=synthesize)


def _worker_case(case_id: str) -> dict:
    from .evaluate_cascade import score_case
    ct, gt = D.read_case(_WORKER["kits"], case_id, _WORKER["synthesize"])
    return score_case(_WORKER["predictor"], case_id, ct, gt)


def cmd_evaluate(args, split: dict, models: Path, out: Path) -> dict:
    """The cascade on the held-out cases; with ``--workers N`` N cases at a time (each its own process,
    the cores shared between them): synthesizing a phantom is single-threaded, so this is ~N times faster."""
    from .evaluate_cascade import evaluate_cascade, report
    from BiSCSegmentationLib.evaluation import check_outputs

    workers = max(1, int(getattr(args, "workers", 1) or 1))
    settings = eval_settings(args)
    if workers == 1:
        return evaluate_cascade(_predictor(models, settings), LazyCases(args.kits, split["test"], args.synthesize), out)
    import multiprocessing as mp
    check_outputs(out, False)
    threads = max(1, (os.cpu_count() or 1) // workers)
    rows = []
    init = (str(models), settings, str(args.kits), bool(args.synthesize), threads)
    with mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=init) as pool:
        for row in tqdm(pool.imap_unordered(_worker_case, split["test"]), total=len(split["test"]),
                        desc="evaluating cascade", unit="case"):
            rows.append(row)
    order = {c: n for n, c in enumerate(split["test"])}
    return report(sorted(rows, key=lambda r: order[r["case"]]), out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM/SIGHUP (a job scheduler, a closed terminal, kill) stop a training like Ctrl-C: the checkpoint is
    # saved first, so the same command resumes; a background job ignores SIGINT, so this is how it is stopped
    with signals_as_interrupts():
        return _run(args)


def _run(args) -> int:
    try:
        if args.command == "prepare":
            cmd_prepare(args, args.cache, args.split or args.cache / "split.json")
        elif args.command == "stage":
            split_path = args.split or args.cache / "split.json"
            if not split_path.is_file():
                raise SystemExit(f"bisc-train: {split_path}: no split file; run 'bisc-train prepare' first")
            cmd_stage(args, args.stage, args.cache, json.loads(split_path.read_text()), args.out)
        elif args.command == "prior-correct":
            cmd_prior_correct(args)
        elif args.command == "set-window":
            cmd_set_window(args)
        elif args.command == "set-decision":
            cmd_set_decision(args)
        elif args.command == "evaluate":
            cmd_evaluate(args, json.loads(args.split.read_text()), args.models, args.out or args.models / "evaluation")
        else:
            cache, split_path = args.out / "cache", args.out / "split.json"
            check_split_sizes(D.make_split(_cases(args), split_path, write=False), args.tune_cases, args.kits)
            split = cmd_prepare(args, cache, split_path)
            for stage in ("rough", "fine"):
                cmd_stage(args, stage, cache, split, args.out)
            if args.tune_cases > 0:
                from . import tune_decision
                tune = ["--kits", str(args.kits), "--split", str(split_path), "--models", str(args.out),
                        "--n", str(args.tune_cases), "--workers", str(max(1, args.workers)),
                        "--rough-foreground-bias", "0.5,1", "--out", str(args.out / "tuning.json"),
                        "--write", str(args.out), "--force"] + (["--synthesize"] if args.synthesize else [])
                if tune_decision.main(tune) != 0:
                    raise ValueError("tuning the decision rules failed (see above)")
            cmd_evaluate(args, split, args.out, args.out / "evaluation")
    except (OSError, ValueError) as exc:  # missing/existing files, bad settings: one clear line
        print(f"bisc-train: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
