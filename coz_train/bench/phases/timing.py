"""The measured device and how a phase is timed: medians over `reps` runs after `warmup` runs, synchronised.

`peak_GB` is the device's peak allocated memory during the timed runs (GPU only). The device's matmul
FLOP/s and copy bandwidth are measured once per run, for the floors (`phases.floors`).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Device:
    device: torch.device
    dtype: torch.dtype
    peak_flops: float  # measured dense matmul FLOP/s in dtype
    bandwidth: float  # measured device-to-device copy bytes/s (read + write)

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize(self.device)


def measure_device(device: torch.device, dtype: torch.dtype) -> Device:
    """Matmul FLOP/s and copy bandwidth of this device, for the floors."""
    n, nbytes = (8192, 2 << 30) if device.type == "cuda" else (1536, 256 << 20)
    probe = Device(device, dtype, 0.0, 0.0)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    matmul = timed(probe, lambda: a @ b, warmup=2, reps=5)
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy = timed(probe, lambda: dst.copy_(src), warmup=2, reps=5)
    return Device(device, dtype, 2 * n**3 / matmul["s"], 2 * nbytes / copy["s"])


def timed(dev: Device, fn: Callable[[], Any], warmup: int, reps: int) -> dict:
    for _ in range(warmup):
        fn()
    dev.sync()
    if dev.is_cuda:
        torch.cuda.reset_peak_memory_stats(dev.device)
    times = []
    for _ in range(max(1, reps)):
        dev.sync()
        start = time.perf_counter()
        fn()
        dev.sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(dev.device) / 1e9 if dev.is_cuda else None
    return dict(s=statistics.median(times), times=[round(t, 4) for t in times],
                peak_GB=None if peak is None else round(peak, 2))


def free_memory(dev: Device) -> None:
    gc.collect()
    if dev.is_cuda:
        torch.cuda.empty_cache()
