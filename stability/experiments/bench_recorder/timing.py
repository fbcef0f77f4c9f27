"""The timing harness of the Recorder overhead benchmark: blocks of training steps,
host-sync counts and the memory check.

One sample is the mean step time over a block of ``steps`` training steps (forward,
backward, ``optimizer.step``, ``zero_grad``, ``probe.step()``), timed after one untimed
step on a freshly attached probe. Every variant trains the same model instance in one
process, interleaved round-robin (the order rotates each round; the first rounds are a
warm-up and are discarded), at every thread count in the same rounds. The default
Recorder flushes every 100 steps; blocks are
shorter, so the flush (one concatenation and copy per 100 steps) is not in the timed
blocks.

Host syncs per recorded step are counted on CUDA with
``torch.cuda.set_sync_debug_mode("warn")``. The memory check trains a small network
under the default Recorder and follows the device tensors waiting for a flush, host
memory (tracemalloc, RSS) and ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import gc
import math
import os
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from stability.experiments.bench_recorder.config import WEIGHT_EVERY
from stability.experiments.bench_recorder.variants import Probe, ProbeFactory
from stability.experiments.bench_recorder.workloads import Trainer, Workload, small_network
from stability.records.recorder import Recorder


def synchronize(device: torch.device) -> None:
    """Wait for the device (CUDA); nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(trainer: Trainer, probe: Probe | None, steps: int) -> float:
    """Mean seconds per training step over ``steps`` steps, after one untimed step."""

    def one_step() -> None:
        trainer.step()
        if probe is not None:
            probe.step()

    one_step()
    device = trainer.x.device
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def rotated(names: list[str], round_index: int) -> list[str]:
    """The variant order of one round: shifted by one each round, so none always goes first."""
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def time_workload(
    workload: Workload,
    trainer: Trainer,
    factories: dict[str, ProbeFactory],
    thread_counts: tuple[int, ...] = (1,),
    progress: Callable[[str], None] = print,
) -> pd.DataFrame:
    """One row per measured block: workload, threads, variant, round, steps, seconds.

    Each round times every thread count (``torch.set_num_threads``) and, within it, every
    variant in rotated order; a ratio is only ever taken within one round and one thread
    count, so a change of load between rounds cancels.
    """
    names = list(factories)
    rows = []
    total = workload.warmup_rounds + workload.rounds
    try:
        for round_index in range(total):
            for threads in thread_counts:
                torch.set_num_threads(threads)
                for name in rotated(names, round_index):
                    probe = factories[name](trainer.model, 100)
                    try:
                        seconds = time_block(trainer, probe, workload.steps)
                    finally:
                        if probe is not None:
                            probe.close()
                    if round_index >= workload.warmup_rounds:
                        row = (workload.name, threads, name, round_index, workload.steps, seconds)
                        rows.append(row)
            progress(f"  {workload.name}: round {round_index + 1}/{total} done")
    finally:
        torch.set_num_threads(thread_counts[-1])
    columns = ["workload", "threads", "variant", "round", "steps", "seconds"]
    return pd.DataFrame(rows, columns=columns)


def count_syncs(trainer: Trainer, factories: dict[str, ProbeFactory], steps: int) -> pd.DataFrame:
    """Host syncs per step for each variant, counted by ``set_sync_debug_mode("warn")``.

    The Recorder is built with ``flush_every`` above ``steps``, so the copy to the host (a
    sync by design, once per flush) is outside the counted steps.
    """
    rows = []
    for name, factory in factories.items():
        probe = factory(trainer.model, steps + 1)
        synchronize(trainer.x.device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(steps):
                    trainer.step()
                    if probe is not None:
                        probe.step()
            finally:
                torch.cuda.set_sync_debug_mode(0)
                if probe is not None:
                    probe.close()
        count = sum("synchroniz" in str(w.message) for w in caught)
        rows.append({"variant": name, "steps": steps, "syncs_per_step": count / steps})
    return pd.DataFrame(rows)


def _rss_bytes() -> int | None:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def memory_trace(device: torch.device, steps: int, pop_every: int | None) -> pd.DataFrame:
    """Train a 3-layer network ``steps`` steps under the default Recorder (flush every 100).

    Every 100 steps: the most device tensors that waited for a flush in those steps, the
    host memory traced by tracemalloc since the first flush, RSS, and CUDA memory. With
    ``pop_every`` the records are taken out with ``pop_frame()`` (and dropped) that often.
    """
    torch.manual_seed(0)
    model = small_network(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(32, 32, device=device), torch.randint(0, 10, (32,), device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rec = Recorder(model, flush_every=100, weight_every=WEIGHT_EVERY)
    gc.collect()
    tracemalloc.start()
    rows, peak, base, popped = [], 0, None, 0
    try:
        for i in range(1, steps + 1):
            F.cross_entropy(model(x), y).backward()
            peak = max(peak, rec.pending_device_tensors)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            rec.step()
            if pop_every and i % pop_every == 0:
                popped += len(rec.pop_frame())
            if i % 100 == 0:
                traced = tracemalloc.get_traced_memory()[0]
                base = traced if base is None else base
                rows.append(_memory_row(i, peak, rec, traced - base, device))
                peak = 0
    finally:
        tracemalloc.stop()
        rec.close()
    frame = pd.DataFrame(rows)
    frame.insert(0, "mode", "pop_frame" if pop_every else "keep")
    frame.attrs["rows"] = popped + len(rec.to_frame())
    return frame


def _memory_row(step: int, peak: int, rec: Recorder, traced: int, device: torch.device) -> dict:
    cuda = device.type == "cuda"
    return {
        "step": step,
        "pending_peak": peak,
        "pending_after_step": rec.pending_device_tensors,
        "traced_host_bytes": traced,
        "rss_bytes": _rss_bytes(),
        "cuda_allocated_bytes": torch.cuda.memory_allocated(device) if cuda else None,
        "cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
    }


def memory_report(device: torch.device, steps: int) -> tuple[pd.DataFrame, dict]:
    """Both traces (records kept / popped every 1000 steps) and the numbers they give."""
    keep = memory_trace(device, steps, None)
    popped = memory_trace(device, steps, 1000)
    rows_total = keep.attrs["rows"]
    rows_per_step = rows_total / steps
    span = keep["step"].iloc[-1] - keep["step"].iloc[0]
    growth = keep["traced_host_bytes"].iloc[-1]
    per_layer_step = 3 * 4 + 3 * 3  # 3 layers x (3 forward + grad) + weight metrics
    stats = {
        "steps": steps,
        "rows": int(rows_total),
        "bytes_per_row": growth / (rows_per_step * span) if span else math.nan,
        "host_growth_keep_bytes": int(growth),
        "host_growth_pop_frame_bytes": int(popped["traced_host_bytes"].iloc[-1]),
        "host_max_pop_frame_bytes": int(popped["traced_host_bytes"].max()),
        "pending_max": int(max(keep["pending_peak"].max(), popped["pending_peak"].max())),
        "pending_bound": 100 + per_layer_step,
        "cuda_max_allocated_bytes": keep["cuda_max_allocated_bytes"].max(),
    }
    return pd.concat([keep, popped], ignore_index=True), stats
