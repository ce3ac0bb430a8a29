"""The machine's limits for the cascade benchmark: FP32/bf16 FMA rate, GEMM rates, what the CPU is, and how
many FLOPs a network does per voxel (the denominators of its "% of peak")."""
from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict

import numpy as np
import torch

from BiSCSegmentationLib import backends as B
from BiSCSegmentationLib.network import SCUNet


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- machine
FMA_C = r"""
#include <immintrin.h>
#include <stdint.h>
#define REP16(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
__attribute__((target("avx512f"))) double fma512(int64_t n) {
#define D(i) __m512 a##i = _mm512_set1_ps(1.0f + i * 1e-3f);
  REP16(D)
  const __m512 b = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t k = 0; k < n; k++) {
#define F(i) a##i = _mm512_fmadd_ps(a##i, b, c);
    REP16(F)
  }
  __m512 s = _mm512_setzero_ps();
#define S(i) s = _mm512_add_ps(s, a##i);
  REP16(S)
  return _mm512_reduce_add_ps(s);
}
__attribute__((target("avx512f,avx512bf16"))) double dpbf16(int64_t n) {
#define E(i) __m512 a##i = _mm512_setzero_ps();
  REP16(E)
  const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80);
  for (int64_t k = 0; k < n; k++) {
#define G(i) a##i = _mm512_dpbf16_ps(a##i, b, b);
    REP16(G)
  }
  __m512 s = _mm512_setzero_ps();
  REP16(S)
  return _mm512_reduce_add_ps(s);
}
/* AVX2 has 16 vector registers: 12 accumulators + 2 constants fit (16 spill to memory); 12 still hide the
   FMA latency (4 cycles x 2 pipes needs 8). */
#define REP12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
__attribute__((target("avx2,fma"))) double fma256(int64_t n) {
#define H(i) __m256 a##i = _mm256_set1_ps(1.0f + i * 1e-3f);
  REP12(H)
  const __m256 b = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t k = 0; k < n; k++) {
#define I(i) a##i = _mm256_fmadd_ps(a##i, b, c);
    REP12(I)
  }
  __m256 s = _mm256_setzero_ps();
#define J(i) s = _mm256_add_ps(s, a##i);
  REP12(J)
  float t[8]; _mm256_storeu_ps(t, s);
  return t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
"""


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _kernel_rate(lib, fn: str, flop_per_iter: int, threads: int, seconds: float = 0.6) -> float:
    f = getattr(lib, fn)
    f.restype, f.argtypes = ctypes.c_double, [ctypes.c_int64]
    f(1000)
    n = 1 << 20
    while True:  # calibrate on one thread
        t = time.perf_counter()
        f(n)
        dt = time.perf_counter() - t
        if dt > 0.05:
            break
        n *= 4
    n = max(1, int(n * seconds / dt))
    best = 0.0
    for _ in range(3):
        ts = [threading.Thread(target=f, args=(n,)) for _ in range(threads)]  # ctypes releases the GIL
        t = time.perf_counter()
        for th in ts:
            th.start()
        for th in ts:
            th.join()
        best = max(best, threads * n * flop_per_iter / (time.perf_counter() - t))
    return best / 1e9


def fma_peaks(threads: int) -> Dict[str, object]:
    """FP32 / bf16 FMA rate (GFLOP/s) of a register-only kernel, all ``threads`` at once."""
    flags = cpu_flags()
    out: Dict[str, object] = {"kernel": None}
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        out["note"] = "no C compiler: peak taken from large GEMMs"
        return out
    with tempfile.TemporaryDirectory() as tmp:
        src, lib_path = Path(tmp) / "fma.c", Path(tmp) / "fma.so"
        src.write_text(FMA_C)
        r = subprocess.run([cc, "-O2", "-shared", "-fPIC", str(src), "-o", str(lib_path)], capture_output=True, text=True)
        if r.returncode:
            out["note"] = "FMA kernel did not compile: peak taken from large GEMMs"
            return out
        lib = ctypes.CDLL(str(lib_path))
        if "avx512f" in flags:
            out["f32"] = _kernel_rate(lib, "fma512", 16 * 16 * 2, threads)
            out["kernel"] = "AVX-512 FMA (16 x 16 lanes)"
        elif {"avx2", "fma"} <= flags:
            out["f32"] = _kernel_rate(lib, "fma256", 12 * 8 * 2, threads)
            out["kernel"] = "AVX2 FMA (12 x 8 lanes)"
        if "avx512_bf16" in flags:
            out["bf16"] = _kernel_rate(lib, "dpbf16", 16 * 16 * 2 * 2, threads)
            out["bf16_kernel"] = "AVX512-BF16 VDPBF16PS (16 x 32 bf16 pairs)"
    return out


def gemm_rate(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def machine_info(threads: int) -> Dict[str, object]:
    flags = cpu_flags()
    info = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "threads": threads,
            "isa": " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags),
            "python": platform.python_version(), "torch": torch.__version__, "openvino": B.openvino_version()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)
    except (ValueError, OSError):
        pass
    info["loadavg_before"] = os.getloadavg()[0]
    log("measuring the FMA rate ...")
    one = fma_peaks(1)
    info["fma"] = fma_peaks(threads)
    info["fma_1thread"] = {k: v for k, v in one.items() if k in ("f32", "bf16")}
    log("measuring GEMM rates ...")
    # Without bf16 instructions (AVX512-BF16 or AMX) torch's bf16 GEMM is a scalar fallback that takes
    # minutes for one 2048^2 product and says nothing about the machine: not measured there.
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & set(flags))
    info["gemm_f32"] = gemm_rate(torch.float32)
    info["gemm_bf16"] = gemm_rate(torch.bfloat16) if native_bf16 else 0.0
    torch.set_num_threads(1)
    info["gemm_f32_1thread"] = gemm_rate(torch.float32)
    info["gemm_bf16_1thread"] = gemm_rate(torch.bfloat16) if native_bf16 else 0.0
    torch.set_num_threads(threads)
    # peak: all cores at the single-core rate (the nominal peak: cores x FLOP/cycle x clock), or the measured
    # all-thread rate if higher. bf16: the best of the vector kernel and a bf16 GEMM (AMX tiles where present).
    f32 = max(info["fma"].get("f32") or 0.0, threads * (one.get("f32") or 0.0)) or \
        max(info["gemm_f32"], threads * info["gemm_f32_1thread"])
    bf16 = max(info["fma"].get("bf16") or 0.0, threads * (one.get("bf16") or 0.0), info["gemm_bf16"],
               threads * info["gemm_bf16_1thread"]) or f32  # no bf16 instructions: bf16 runs as f32 at best
    info["peak"] = {"f32": f32, "bf16": bf16}
    return info


# -------------------------------------------------------------------------------------------------- FLOPs
def conv_flops(net: torch.nn.Module, x: torch.Tensor, forward=None) -> float:
    """Convolution FLOPs (2 per multiply-add) of one forward pass of ``net`` (or ``forward(x)``) on ``x``:
    3D convolutions and transposed convolutions, counted with forward hooks; the rest is not counted."""
    total = [0.0]

    def conv_hook(mod, inp, out):
        k = float(np.prod(mod.kernel_size))
        if isinstance(mod, torch.nn.ConvTranspose3d):
            total[0] += 2.0 * inp[0].numel() * mod.out_channels * k / mod.groups
        else:
            total[0] += 2.0 * out.numel() * (mod.in_channels / mod.groups) * k

    hooks = [m.register_forward_hook(conv_hook) for m in net.modules()
             if isinstance(m, (torch.nn.Conv3d, torch.nn.ConvTranspose3d))]
    try:
        with torch.no_grad():
            (forward or net)(x)
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def flops_per_voxel(net: SCUNet) -> float:
    """Convolution FLOPs (2 per multiply-add) of ``forward_labels`` per input voxel (exact for any input whose
    sizes are multiples of the divisor: every layer's size scales with the input)."""
    d = 2 * net.config.divisor
    return conv_flops(net, torch.zeros(1, net.config.in_channels, d, d, d), net.forward_labels) / d ** 3

