"""Inference backends: what actually runs a stage's network on a block of CT.

* ``torch``: PyTorch eager, the reference every other backend is tested against. On a CUDA GPU it runs with
  mixed precision (autocast, float16) unless ``precision="f32"``; on the CPU in float32 (or bfloat16 autocast
  when asked for).
* ``openvino``: OpenVINO on the CPU (``pip install "bisc-segmentation[fast]"``). The label branch
  (``SCUNet.forward_labels``, as :class:`ExportLabelNet`) is converted once per model file with a dynamic spatial shape, saved as OpenVINO IR in
  the cache (``model_file.default_cache_dir()/openvino``, keyed by the model file's SHA-256 and the OpenVINO
  version, so it is not redone on the next run) and compiled with an explicit precision: ``bf16`` on CPUs that
  compute it natively (AVX512-BF16 or AMX) unless ``f32`` is asked for ("openvino-f32"), else ``f32``.
  The compiled networks (one per input shape and precision) are cached too, by OpenVINO itself (its
  ``CACHE_DIR``, ``.../openvino/compiled``, keyed by network, shape, settings and OpenVINO version; a damaged
  blob is recompiled), which halves the compile time of the next run; the folder is kept under
  ``COMPILED_CACHE_MB`` by dropping its oldest blobs.

``select_backend("auto")`` picks OpenVINO when it is installed and the computation runs on the CPU, else torch;
any network OpenVINO cannot take (or a failed conversion) falls back to torch for that network, and
``describe()`` says what was used, in words, for the user.

A backend's ``runner(model)`` is a function ``x -> logits``: ``x`` a float32 tensor ``(1, 1, D, H, W)`` (sizes
multiples of the network's divisor), the label logits a float32 tensor ``(1, C, D, H, W)``. A runner that
holds buffers between calls has a ``release()`` that frees them (the cascade calls it once a stage is done).
"""
from __future__ import annotations

import contextlib
from collections import OrderedDict
import os
import re
import threading
import warnings
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch

from .errors import InputError
from .inference_settings import BACKEND_CHOICES, BACKEND_NAMES, PRECISIONS  # noqa: F401 (re-export)
from .model_file import StageModel, default_cache_dir
from .network import SCUNet, UpGroup
from .outputs import replace_file

Runner = Callable[[torch.Tensor], torch.Tensor]
BACKENDS = BACKEND_NAMES
EXPORT_VERSION = 2  # bump when the export recipe changes: old cached exports are then ignored
COMPILED_CACHE_MB = 256  # OpenVINO's compiled-network blobs (~1.5 MB each) beyond this: the oldest are deleted


class BackendError(InputError, RuntimeError):
    """A backend that was asked for by name is not available."""


def parse_spec(spec: Optional[str], precision: Optional[str] = None) -> Tuple[str, str]:
    """``"openvino-bf16"`` -> ("openvino", "bf16"); an explicit ``precision`` wins over the suffix."""
    spec = (spec or "auto").strip().lower()
    name, _, suffix = spec.partition("-")
    prec = (precision or suffix or "auto").lower()
    prec = {"fp32": "f32", "float32": "f32", "bfloat16": "bf16", "fp16": "f16", "float16": "f16"}.get(prec, prec)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {spec!r}; choose one of {', '.join(BACKEND_CHOICES)}")
    if prec not in PRECISIONS:
        raise ValueError(f"unknown precision {prec!r}; choose one of {', '.join(PRECISIONS)}")
    return name, prec


def openvino_version() -> Optional[str]:
    """The installed OpenVINO version, or None when it is not installed (or does not load)."""
    try:
        import openvino
    except Exception:  # ImportError, or a broken install raising anything at import
        return None
    return str(getattr(openvino, "__version__", "unknown"))


def cpu_has_fast_bf16() -> bool:
    """Does this CPU run bfloat16 math natively (AVX-512 with BF16, or AMX)? Without it PyTorch's bf16
    convolutions fall back to scalar code: measured 20x+ slower than float32 on an AVX2-only AMD EPYC."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - private API moved or missing: judge by the vector ISA
        return "AVX512" in str(torch.backends.cpu.get_cpu_capability())


def _threads() -> int:
    return max(1, int(torch.get_num_threads()))


# ----------------------------------------------------------------------------------------------------- torch
class TorchBackend:
    """PyTorch eager (the reference). CUDA: autocast float16 by default; CPU: float32 by default."""

    name = "torch"

    def __init__(self, device="cpu", precision: str = "auto"):
        self.device = torch.device(device)
        if precision == "auto":
            precision = "f16" if self.device.type == "cuda" else "f32"
        if precision == "f16" and self.device.type == "cpu":
            raise ValueError("float16 is for GPUs; on the CPU use f32 or bf16")
        self.precision = precision
        self.notes: List[str] = []
        if precision == "bf16" and self.device.type == "cpu" and not cpu_has_fast_bf16():
            self.notes.append("this CPU has no bfloat16 instructions: bf16 runs many times slower than f32 here")

    def _autocast(self):
        if self.precision == "f32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def runner(self, model: StageModel) -> Runner:
        net = model.network

        @torch.no_grad()
        def run(x: torch.Tensor) -> torch.Tensor:
            with self._autocast():
                out = net.forward_labels(x.to(self.device))
            return out.float()

        return run

    def describe(self) -> str:
        where = self.device.type
        if where == "cpu":
            where = f"CPU, {_threads()} thread(s)"
        elif where == "cuda":
            where = f"CUDA GPU ({torch.cuda.get_device_name(self.device)})"
        prec = {"f32": "float32", "bf16": "bfloat16 autocast", "f16": "mixed precision (float16 autocast)"}
        text = f"PyTorch {torch.__version__.split('+')[0]} eager, {prec[self.precision]}, {where}"
        return text + (" (" + "; ".join(self.notes) + ")" if self.notes else "")


# -------------------------------------------------------------------------------------------------- openvino
class _SplitUp(torch.nn.Module):
    """An UpGroup without the concatenation: conv(cat(up, skip)) == conv_a(up) + conv_b(skip), the weights split
    along the input channels. Same result; saves writing and re-reading the widest tensors (3-5% faster)."""

    def __init__(self, group: UpGroup):
        super().__init__()
        conv0, c = group.conv[0], group.up.out_channels
        self.up = group.up
        self.a = torch.nn.Conv3d(c, conv0.out_channels, 3, padding=1, bias=conv0.bias is not None)
        self.b = torch.nn.Conv3d(conv0.in_channels - c, conv0.out_channels, 3, padding=1, bias=False)
        with torch.no_grad():
            self.a.weight.copy_(conv0.weight[:, :c])
            self.b.weight.copy_(conv0.weight[:, c:])
            if conv0.bias is not None:
                self.a.bias.copy_(conv0.bias)
        self.rest = torch.nn.Sequential(*list(group.conv)[1:])

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.rest(self.a(self.up(x)) + self.b(skip))


class ExportLabelNet(torch.nn.Module):
    """``SCUNet.forward_labels`` as one module for export, with the up groups' concatenations split away
    (see :class:`_SplitUp`)."""

    def __init__(self, net: SCUNet):
        super().__init__()
        self.net = net
        self.shared = torch.nn.ModuleList([_SplitUp(u) for u in net.shared_up])
        self.ups = torch.nn.ModuleList([_SplitUp(u) for u in net.label_branch.ups])
        self.head = net.label_branch.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, skips = self.net.encode(x)
        remaining = skips[::-1]  # deepest first, as SCUNet.decode_shared
        for up in self.shared:
            x = up(x, remaining.pop(0))
        for up, skip in zip(self.ups, remaining):
            x = up(x, skip)
        return self.head(x)


def model_key(model: StageModel) -> Optional[str]:
    """Identity of a model's weights for the export cache: the model file's SHA-256 (None if not from a file)."""
    return model.sha256 if model.sha256 else None


class OpenVINOBackend:
    """OpenVINO CPU inference of the label branch, converted once per model and cached on disk."""

    name = "openvino"

    def __init__(self, precision: str = "auto", cache_dir=None, threads: Optional[int] = None,
                 disk_cache: bool = True):
        version = openvino_version()
        if version is None:
            raise BackendError("OpenVINO is not installed; install it with: pip install \"bisc-segmentation[fast]\" "
                               "(or use the torch backend)")
        import openvino as ov

        self.ov = ov
        self.version = version
        self.core = ov.Core()
        if precision == "auto":
            # bf16 where the CPU computes it natively (AVX512-BF16, AMX): 1.75x faster with the same mean Dice on
            # 6 held-out phantoms (docs/performance.md); f32 elsewhere, and "openvino-f32" asks for f32 anyway
            precision = "bf16" if "BF16" in self._capabilities(strict=True) else "f32"
        if precision not in ("f32", "bf16"):
            raise ValueError(f"OpenVINO runs f32 or bf16 here, not {precision}")
        self.precision = precision
        self.threads = threads
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "openvino"
        self.disk_cache = disk_cache
        self.notes: List[str] = []
        if precision == "bf16" and "BF16" not in self._capabilities():
            # OpenVINO then quietly computes in f32: say so rather than claim bf16
            self.precision = "f32"
            self.notes.append("bfloat16 was asked for, but this CPU has no bfloat16 instructions")
        if disk_cache:
            self._use_compiled_cache(self.cache_dir / "compiled")
        self._models: Dict[int, object] = {}
        self.max_shapes = 4  # compiled input shapes kept per network (each holds its own scratch memory)
        self._lock = threading.Lock()
        self.fallback = TorchBackend("cpu", self.precision)
        self.last_export: Dict[str, str] = {}   # model key -> "cached" | "converted" (for reports)

    def _use_compiled_cache(self, folder: Path) -> None:
        """Let OpenVINO keep compiled networks in ``folder`` (pruned to COMPILED_CACHE_MB, oldest first); a
        folder that cannot be made or used only costs the compile time, with a note."""
        try:
            folder.mkdir(parents=True, exist_ok=True)
            blobs = sorted(folder.glob("*.blob"), key=lambda f: f.stat().st_mtime)
            total = sum(f.stat().st_size for f in blobs)
            while blobs and total > COMPILED_CACHE_MB * 2 ** 20:
                old = blobs.pop(0)
                total -= old.stat().st_size
                old.unlink()
            self.core.set_property({"CACHE_DIR": str(folder)})
        except Exception as exc:  # noqa: BLE001 (OSError, or OpenVINO's RuntimeError for an unusable folder)
            self.notes.append(f"compiled networks not cached ({exc.__class__.__name__})")

    # ------------------------------------------------------------------------------------------ conversion
    def _paths(self, key: str) -> Tuple[Path, Path]:
        tag = re.sub(r"[^0-9A-Za-z.]+", "_", self.version)
        stem = self.cache_dir / f"{key[:24]}-ov{tag}-e{EXPORT_VERSION}"
        return stem.with_suffix(".xml"), stem.with_suffix(".bin")

    def convert(self, model: StageModel):
        """The model as an OpenVINO model with input ``(1, 1, ?, ?, ?)`` (not compiled)."""
        from openvino.frontend import FrontEndManager
        from openvino.frontend.pytorch.ts_decoder import TorchScriptPythonDecoder

        ov = self.ov
        div = model.config.divisor
        wrapper = ExportLabelNet(model.network).eval()
        example = torch.zeros(1, model.config.in_channels, 2 * div, 2 * div, 2 * div)
        # The conversion API (ov.convert_model) would also send usage telemetry; the front end does not.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about the (constant) input-size check
            decoder = TorchScriptPythonDecoder(wrapper, example_input=(example,), shared_memory=False)
            fe = FrontEndManager().load_by_framework("pytorch")
            ov_model = fe.convert(fe.load(decoder))
        ov_model.reshape({ov_model.inputs[0]: ov.PartialShape([1, model.config.in_channels, -1, -1, -1])})
        return ov_model

    def _load_or_convert(self, model: StageModel):
        key = model_key(model)
        if key is not None and self.disk_cache:
            xml, binf = self._paths(key)
            if xml.is_file() and binf.is_file():
                try:
                    m = self.core.read_model(str(xml))
                    self.last_export[key] = "cached"
                    return m
                except Exception:  # damaged cache entry: convert again below
                    pass
            m = self.convert(model)
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)

                def save(tmp_xml: Path) -> None:  # the IR's weights sit beside it: placed first, then the .xml
                    weights = tmp_xml.with_suffix(".bin")
                    try:
                        self.ov.save_model(m, str(tmp_xml), compress_to_fp16=False)
                        replace_file(binf, lambda tmp_bin: os.replace(weights, tmp_bin))
                    finally:
                        with contextlib.suppress(FileNotFoundError):
                            weights.unlink()

                replace_file(xml, save)
            except OSError as exc:  # read-only or full cache: still usable, just not cached
                self.notes.append(f"export not cached ({exc.__class__.__name__})")
            self.last_export[key] = "converted"
            return m
        return self.convert(model)

    def compile(self, ov_model, shape: Optional[Tuple[int, ...]] = None):
        """Compile for one input shape (static shapes run ~15% faster than the dynamic model), or dynamic."""
        if shape is not None:
            ov_model = ov_model.clone()
            ov_model.reshape({ov_model.inputs[0]: self.ov.PartialShape(list(shape))})
        config = {"INFERENCE_PRECISION_HINT": self.precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                  "INFERENCE_NUM_THREADS": int(self.threads or _threads())}
        return self.core.compile_model(ov_model, "CPU", config)

    # ------------------------------------------------------------------------------------------------ running
    def runner(self, model: StageModel) -> Runner:
        if not isinstance(model.network, SCUNet):
            self._note(f"{model.stage} network is not an SC-UNet: runs with torch")
            return self.fallback.runner(model)
        with self._lock:
            ov_model = self._models.get(id(model.network))
            if ov_model is None:
                try:
                    ov_model = self._load_or_convert(model)
                    self.compile(ov_model, (1, model.config.in_channels) + (model.config.divisor,) * 3)  # check
                except Exception as exc:  # any conversion problem: the reference still works
                    self._note(f"{model.stage} network could not be converted ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:120] if str(exc) else ''}): runs with torch")
                    return self.fallback.runner(model)
                self._models[id(model.network)] = ov_model
        requests: "OrderedDict[Tuple[int, ...], object]" = OrderedDict()

        def run(x: torch.Tensor) -> torch.Tensor:
            x = x.detach().to("cpu", torch.float32).contiguous()
            shape = tuple(x.shape)
            request = requests.pop(shape, None)
            if request is None:  # a new shape: compile for it (~0.1 s), keep the last few
                request = self.compile(ov_model, shape).create_infer_request()
                while len(requests) >= self.max_shapes:
                    requests.popitem(last=False)
            requests[shape] = request
            request.infer({0: x.numpy()})
            return torch.from_numpy(request.get_output_tensor(0).data.copy())

        run.release = requests.clear  # frees the compiled shapes' buffers; the next call compiles again (~0.3 s)
        return run

    def _capabilities(self, strict: bool = False) -> List[str]:
        """OpenVINO's CPU capabilities; an OpenVINO without the property: trust an explicit request, but do not
        pick bf16 by itself (``strict``)."""
        try:
            return list(self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
        except Exception:  # noqa: BLE001
            return [] if strict else ["BF16"]

    def _note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def describe(self) -> str:
        prec = {"f32": "float32", "bf16": "bfloat16"}[self.precision]
        text = f"OpenVINO {self.version.split('-')[0]}, {prec}, CPU, {int(self.threads or _threads())} thread(s)"
        return text + (" (" + "; ".join(self.notes) + ")" if self.notes else "")


# ----------------------------------------------------------------------------------------------- selection
def select_backend(spec: Optional[str] = "auto", precision: Optional[str] = None, device="cpu", cache_dir=None):
    """A backend object for ``spec`` ("auto", "torch", "openvino", optionally "-bf16"/"-f32").

    "auto": OpenVINO when installed and ``device`` is the CPU, else torch (mixed precision on CUDA).
    Naming "openvino" when it is missing raises :class:`BackendError`; "auto" falls back to torch and says so.
    """
    name, prec = parse_spec(spec, precision)
    device = torch.device(device)
    if name == "openvino" and device.type != "cpu":
        raise BackendError(f"the OpenVINO backend runs on the CPU; use --device cpu or the torch backend for "
                           f"{device.type}")
    if name == "auto":
        if device.type == "cpu" and openvino_version() is not None:
            try:
                return OpenVINOBackend(prec, cache_dir=cache_dir)
            except Exception as exc:  # noqa: BLE001 - a broken install must not stop segmentation
                backend = TorchBackend(device, "f32" if prec == "auto" else prec)
                backend.notes.append(f"OpenVINO unusable: {type(exc).__name__}")
                return backend
        return TorchBackend(device, prec)
    if name == "openvino":
        return OpenVINOBackend(prec, cache_dir=cache_dir)
    return TorchBackend(device, prec)


__all__ = ["select_backend", "TorchBackend", "OpenVINOBackend", "ExportLabelNet", "BackendError", "BACKENDS", "BACKEND_CHOICES",
           "PRECISIONS", "parse_spec", "openvino_version"]
