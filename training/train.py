"""Training loop for one SC-UNet stage: Adam, Eq. 1 loss, exact resume, optional DistributedDataParallel.

Resume is exact: the checkpoint holds the weights, the optimizer, the iteration count and the random
state of the patch sampler, so an interrupted run continued from its last checkpoint ends with the same
weights as an uninterrupted one. Under ``torchrun`` each process samples its own patches (seed + rank),
gradients are averaged by DDP (gloo on CPU, nccl on CUDA), and rank 0 writes checkpoints and logs.
"""
from __future__ import annotations

import copy
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from BiSCSegmentationLib.losses import DEFAULT_THRESHOLD, sc_unet_loss
from BiSCSegmentationLib.model_file import KITS19_INTENSITY, StageModel, load_plain, save_model_file
from BiSCSegmentationLib.outputs import write_file, write_json
from BiSCSegmentationLib.network import SCUNet, SCUNetConfig

from .data import PatchSampler, PrepConfig

# The defaults that depend on the stage (a field left None takes its stage's value). inference_window: the
# block the network is run on (a larger ROI is covered by a Gaussian-blended sliding window); the fine one,
# between the training patch and a whole ROI, was chosen on training cases (docs/training.md).
STAGE_DEFAULTS = {"rough": {"patch_size": [48, 128, 128], "inference_window": [128, 128, 128], "roi_prob": 0.0},
                  "fine": {"patch_size": [48, 160, 160], "inference_window": [48, 128, 128], "roi_prob": 0.33}}
# Settings added after the first version, with the value every run had before: a checkpoint without one
# was made with that value.
BEFORE_THEY_EXISTED = {"roi_prob": 0.0, "lr_schedule": "constant", "mirror_axes": "zyx", "init_from": ""}


@dataclass
class TrainConfig:
    """One stage's training settings; the defaults are ``bisc-train stage``'s (its options read them)."""

    stage: str                                   # "rough" | "fine"
    cache_dir: str
    out_dir: str
    cases: List[str] = field(default_factory=list)
    widths: List[int] = field(default_factory=lambda: [16, 32, 64, 128])
    norm: str = "instance"
    loss: str = "bce"                            # "bce" (Eq. 1) | "ce"
    threshold: float = DEFAULT_THRESHOLD
    edge_weight: float = 1.0
    epochs: int = 20
    iterations: int = 4000                       # per epoch
    batch_size: int = 8                          # per process
    lr: float = 1e-4
    patch_size: Optional[List[int]] = None       # z, y, x (None: STAGE_DEFAULTS)
    fine_spacing: List[float] = field(default_factory=lambda: list(PrepConfig.fine_spacing))
    rough_grid: Dict = field(default_factory=lambda: {"inplane_size": PrepConfig.inplane_size,
                                                      "z_spacing": PrepConfig.rough_z_spacing})
    inference_window: Optional[List[int]] = None  # z, y, x (None: STAGE_DEFAULTS)
    mirror: bool = True
    mirror_axes: str = "zyx"                     # patch axes mirrored at random when ``mirror`` ("x": left-right only)
    roi_prob: Optional[float] = None             # fine: share of patches placed anywhere in the ROI region
    lr_schedule: str = "constant"                # "constant" | "poly" (nnU-Net's (1 - it/total)^0.9)
    prior_correction: bool = True                # bce: add the log class frequencies to the written model
    calibration_cases: int = 24                  # training cases that tune the correction's scale (calibrate.py)
    seed: int = 0
    device: str = "auto"
    amp: str = "off"                             # "off" | "bf16" (CPU/GPU autocast) | "fp16" (CUDA)
    threads: int = 0                             # torch threads per process (0: torch's default)
    checkpoint_every: int = 200                  # iterations
    log_every: int = 20
    init_from: str = ""                          # a model file whose weights start the run (warm start)
    command: str = ""

    def __post_init__(self):
        if self.stage not in STAGE_DEFAULTS:
            raise ValueError(f"stage must be 'rough' or 'fine', got {self.stage!r}")
        for name, value in STAGE_DEFAULTS[self.stage].items():
            if getattr(self, name) is None:
                setattr(self, name, copy.copy(value))

    def total_iterations(self) -> int:
        return self.epochs * self.iterations


def default_config(stage: str = "fine") -> TrainConfig:
    """A stage's default settings (no data, no output folder)."""
    return TrainConfig(stage, cache_dir="", out_dir="")


def _device(name: str, rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", rank % max(1, torch.cuda.device_count()))
    return torch.device(name)


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.amp == "off":
        return nullcontext()
    dtype = torch.bfloat16 if cfg.amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _save_atomic(obj, path: Path) -> None:
    """Whole or not at all (see ``outputs``); holds only tensors and plain data, so it loads without pickle code."""
    write_file(path, lambda tmp: torch.save(obj, tmp), force=True, description="checkpoint")


def load_checkpoint(path: Path) -> Dict:
    """A checkpoint, loaded without running code from it (``weights_only=True``), with its fields checked."""
    ck = load_plain(path, ValueError)
    if not isinstance(ck, dict) or not {"config", "model", "optimizer", "iteration", "history", "rng"} <= set(ck):
        raise ValueError(f"{path}: not a training checkpoint of this program; delete it to start over")
    return ck


def learning_rate(cfg: TrainConfig, it: int, total: int) -> float:
    """The learning rate at iteration ``it`` (poly decays to 0 at ``total``, as nnU-Net)."""
    if cfg.lr_schedule == "poly":
        return cfg.lr * (1.0 - it / max(total, 1)) ** 0.9
    return cfg.lr


def label_log_prior(sampler: PatchSampler, seed: int = 0, patches: int = 300) -> List[float]:
    """log of the mean class fractions of training patches (its own random stream: training is unchanged).

    Eq. 1 divides each class's loss by its size, so a network trained with it learns p(c|x) / p(c): it
    marks every voxel that is even slightly more tumor-like than usual as tumor (high recall, many false
    positives, see README). Adding log p(c) to its label logits gives back p(c|x) (logit adjustment,
    Menon et al., ICLR 2021) while keeping the balanced training; the written model carries a share of it,
    tuned on training cases (``apply_prior``, ``calibrate.py``).
    """
    rng = np.random.default_rng([seed, 7919])
    frac = np.zeros(3)
    for _ in range(patches):
        lab = sampler.sample(rng)[1]
        frac += np.bincount(lab.ravel(), minlength=3)[:3] / lab.size
    frac = np.maximum(frac / patches, 1e-6)
    return [float(v) for v in np.log(frac / frac.sum())]


def with_prior(net: SCUNet, log_prior: Optional[Sequence[float]]) -> SCUNet:
    """A copy of ``net`` whose label logits carry ``log_prior`` (the training network is left as is)."""
    if log_prior is None:
        return net
    out = copy.deepcopy(net)
    with torch.no_grad():
        out.label_branch.head.bias += torch.tensor(log_prior, dtype=out.label_branch.head.bias.dtype,
                                                   device=out.label_branch.head.bias.device)
    return out


def stage_model(cfg: TrainConfig, net: SCUNet, history: Dict, log_prior: Optional[Sequence[float]] = None,
                calibration_cases: Optional[int] = None) -> StageModel:
    """The model file's content. With ``log_prior`` (Eq. 1 models) the label logits carry ``scale *
    log_prior``, the scale tuned on ``calibration_cases`` training cases (default: the config's)."""
    grid = dict(cfg.rough_grid) if cfg.stage == "rough" else {"spacing": list(cfg.fine_spacing)}
    model = StageModel(cfg.stage, net.config, grid, copy.deepcopy(KITS19_INTENSITY), tuple(cfg.inference_window),
                       training={"command": cfg.command, "loss": cfg.loss, "threshold": cfg.threshold,
                                 "epochs": cfg.epochs, "iterations_per_epoch": cfg.iterations,
                                 "batch_size": cfg.batch_size, "lr": cfg.lr, "patch_size": cfg.patch_size,
                                 "seed": cfg.seed, "amp": cfg.amp,
                                 "mirror_axes": cfg.mirror_axes if cfg.mirror else "",
                                 "roi_prob": cfg.roi_prob, "lr_schedule": cfg.lr_schedule, "cases": len(cfg.cases), **history})
    model.network = copy.deepcopy(net).cpu().eval()
    if log_prior is not None:
        n = cfg.calibration_cases if calibration_cases is None else calibration_cases
        apply_prior(model, log_prior, cfg.cache_dir, cfg.cases, n)
    return model


PRIOR_KEYS = ("label_log_prior", "prior_scale", "prior_scale_scores", "prior_calibration_cases")


def without_prior(model: StageModel) -> Optional[List[float]]:
    """Take a model's own prior correction off (the network as trained) and drop its record; returns the
    log prior it carried (None if it had none)."""
    t = dict(model.training)
    if "label_log_prior" not in t:
        return None
    log_prior = [float(v) for v in t["label_log_prior"]]
    model.network = with_prior(model.network, [-float(t.get("prior_scale", 1.0)) * v for v in log_prior])
    model.training = {k: v for k, v in t.items() if k not in PRIOR_KEYS}
    return log_prior


def apply_prior(model: StageModel, log_prior: Sequence[float], cache, cases: Sequence[str],
                calibration_cases: int = TrainConfig.calibration_cases, scale: Optional[float] = None) -> StageModel:
    """Add ``scale * log_prior`` to an uncorrected model's label logits and record both in its training
    dict; ``scale`` None: tuned on the training cases (``calibrate.calibrate_prior_scale``)."""
    from .calibrate import calibrate_prior_scale
    scores = None
    if scale is None:
        scale, scores = calibrate_prior_scale(model, log_prior, cache, cases, max_cases=calibration_cases)
    model.network = with_prior(model.network, [scale * v for v in log_prior])
    model.training = {**model.training, "label_log_prior": [round(v, 6) for v in log_prior],
                      "prior_scale": float(scale)}
    if scores is not None:
        model.training.update(prior_scale_scores=scores, prior_calibration_cases=min(calibration_cases, len(cases)))
    return model


def warm_start(net: SCUNet, cfg: TrainConfig) -> Dict:
    """Load the weights of the model file ``cfg.init_from`` into ``net`` (the network as trained: a prior
    correction the file carries is taken off first), e.g. to train a bundled model further after its
    checkpoint is gone. The optimizer starts afresh. Returns what is recorded in the new model file."""
    from BiSCSegmentationLib.model_file import load_model_file
    model = load_model_file(cfg.init_from, stage=cfg.stage)
    if model.config.to_dict() != net.config.to_dict():
        raise ValueError(f"{cfg.init_from}: its network ({model.config.to_dict()}) differs from this run's "
                         f"({net.config.to_dict()}); give the same --widths and --norm")
    without_prior(model)
    net.load_state_dict(model.network.state_dict())
    return {"path": str(cfg.init_from), "sha256": model.sha256,
            "iterations_done": model.training.get("iterations_done")}


def train(cfg: TrainConfig, progress: Optional[Callable[[int, int, float], None]] = None,
          stop_after: Optional[int] = None) -> Path:
    """Train (or resume) one stage; returns the path of the final model file.

    Running again with the same settings resumes from the checkpoint; with more ``epochs`` it extends a
    finished run.

    ``stop_after`` stops after that many iterations with a checkpoint, as an interruption would
    (used by the resume test).
    """
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = _device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    if distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.amp == "bf16" and device.type == "cpu" and rank == 0:
        from BiSCSegmentationLib.backends import cpu_has_fast_bf16
        if not cpu_has_fast_bf16():
            warnings.warn("--amp bf16 on a CPU without bfloat16 instructions (AVX512-BF16 or AMX): each step runs "
                          "many times slower than float32 here (measured 20x+ on an AVX2 AMD EPYC); use --amp off")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / f"{cfg.stage}_checkpoint.pt"
    final_path = out / f"{cfg.stage}.pt"

    torch.manual_seed(cfg.seed)
    net = SCUNet(SCUNetConfig(widths=list(cfg.widths), norm=cfg.norm)).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    rng = np.random.default_rng([cfg.seed, rank])
    start_it, history = 0, {"loss_log": []}
    if cfg.init_from and not ckpt_path.is_file():
        history["init_from"] = warm_start(net, cfg)
    if ckpt_path.is_file():
        ck = load_checkpoint(ckpt_path)
        # what may differ on resume: where it runs, and how many epochs (to extend a finished run)
        free = ("command", "device", "threads", "epochs", "checkpoint_every", "log_every", "out_dir",
                "prior_correction", "calibration_cases")
        saved = {k: v for k, v in {**BEFORE_THEY_EXISTED, **ck["config"]}.items() if k not in free}
        mine = {k: v for k, v in asdict(cfg).items() if k not in free}
        if saved != mine:
            diff = sorted(k for k in mine if saved.get(k) != mine[k])
            raise ValueError(f"{ckpt_path} was made with other settings ({', '.join(diff)}); "
                             f"use another output folder or the same settings to resume")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        start_it, history = ck["iteration"], ck["history"]
        rng.bit_generator.state = ck["rng"][rank]
    model = torch.nn.parallel.DistributedDataParallel(net) if distributed else net
    sampler = PatchSampler(cfg.cache_dir, cfg.cases, cfg.stage, cfg.patch_size, tuple(cfg.fine_spacing),
                           mirror=cfg.mirror, roi_prob=cfg.roi_prob, mirror_axes=cfg.mirror_axes)
    total = cfg.total_iterations()
    lo, hi = KITS19_INTENSITY["clip"]
    log_prior = label_log_prior(sampler, cfg.seed) if cfg.loss == "bce" and cfg.prior_correction else None

    def checkpoint(it: int) -> None:
        states = [rng.bit_generator.state]
        if distributed:
            gathered = [None] * world
            dist.all_gather_object(gathered, rng.bit_generator.state)
            states = gathered
        if rank == 0:
            _save_atomic({"config": asdict(cfg), "model": net.state_dict(), "optimizer": opt.state_dict(),
                          "iteration": it, "history": history, "rng": states}, ckpt_path)

    warm = {"init_from": history["init_from"]} if "init_from" in history else {}  # recorded in the model file
    net.train()
    t0, running = time.perf_counter(), []
    it = start_it
    try:
        while it < total:
            ct, lab, ke, te = sampler.batch(rng, cfg.batch_size)
            x = torch.from_numpy(ct).float().clamp_(lo, hi).sub_(KITS19_INTENSITY["mean"]).div_(KITS19_INTENSITY["std"])
            x = x[:, None].to(device)
            targets = [torch.from_numpy(a).long().to(device) for a in (lab, ke, te)]
            for group in opt.param_groups:
                group["lr"] = learning_rate(cfg, it, total)
            with _autocast(cfg, device):
                outputs = model(x)
            loss = sc_unet_loss(outputs, *targets, kind=cfg.loss, threshold=cfg.threshold,
                                edge_weight=cfg.edge_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            it += 1
            running.append(float(loss.detach()))
            if it % cfg.log_every == 0 or it == total:
                history["loss_log"].append([it, float(np.mean(running)), round(time.perf_counter() - t0, 2)])
                running = []
            if progress and rank == 0:
                progress(it, total, float(loss.detach()))
            if it % cfg.checkpoint_every == 0 or it == total or (stop_after is not None and it - start_it >= stop_after):
                checkpoint(it)
            if it % cfg.iterations == 0 and it < total and rank == 0:
                # a usable model after every epoch: a long run can be stopped and still used
                # (its prior-correction scale tuned on fewer cases than the final model's, to stay quick)
                save_model_file(stage_model(cfg, net, {"iterations_done": it, "loss_log": history["loss_log"],
                                                       **warm},
                                            log_prior, max(4, cfg.calibration_cases // 4)), final_path, force=True)
                net.train()
            if stop_after is not None and it - start_it >= stop_after:
                return ckpt_path
    except KeyboardInterrupt:
        checkpoint(it)
        raise
    history["train_seconds"] = history.get("train_seconds", 0.0) + time.perf_counter() - t0
    if rank == 0:
        history["final_loss"] = history["loss_log"][-1][1] if history["loss_log"] else None
        net.eval()
        save_model_file(stage_model(cfg, net, {"train_seconds": round(history["train_seconds"], 1),
                                                "iterations_done": it, "loss_log": history["loss_log"], **warm},
                                    log_prior), final_path, force=True)
        write_json(out / f"{cfg.stage}_history.json", history, force=True, description="training history",
                   indent=None)
    if distributed:
        dist.barrier()
    return final_path
