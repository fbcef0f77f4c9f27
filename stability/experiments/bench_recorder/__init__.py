"""How much does the Recorder slow training down? Overhead, host syncs and memory (issue 7).

``run(BenchConfig(...))`` times every variant of :mod:`.variants` on every workload of
:mod:`.workloads` with the harness of :mod:`.timing`, and writes the tables, figures and
report of :mod:`.report`. Every thread count of ``config.threads`` (default: 1 and
torch's default) is timed in the same interleaved rounds. Timed steps per block are a
multiple of 10, so a block of an
"every 10" variant holds exactly one recorded (or weight) step.

Writes into ``config.out`` (new or empty; default ``runs/bench/<timestamp>``; files are
never overwritten): ``blocks.csv`` (every timed block), ``summary.csv``, ``targets.csv``,
``memory.csv``, ``syncs.csv`` (CUDA), ``overhead.png`` and ``memory.png`` with the CSV
behind each panel, ``config.json`` and ``report.md`` (the Markdown performance table).

Importing this package is light (no torch): :func:`run` imports the measuring modules.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict

from stability.experiments.bench_recorder.config import (
    DEFAULT_PARENT,
    EXPERIMENT,
    LINEAR_BOUND,
    PRESETS,
    WORKLOADS,
    BenchConfig,
    BenchResult,
)

__all__ = ["PRESETS", "WORKLOADS", "BenchConfig", "BenchResult", "run"]


def run(config: BenchConfig, log: Callable[[str], None] = print) -> BenchResult:
    """Every measurement of the benchmark; writes the files and returns the tables.

    Args:
        config: What to measure and where to write it.
        log: Receives one progress line at a time.

    Raises:
        ValueError: cuda asked for but not available; ``compare_with`` defines no Recorder.
        FileNotFoundError: ``compare_with`` does not exist.
        FileExistsError, NotADirectoryError: ``out`` holds files, is a file or lies
            under one.
    """
    import pandas as pd
    import torch

    from stability.experiments.bench_recorder import report, timing
    from stability.experiments.bench_recorder.variants import (
        load_recorder_class,
        variant_factories,
    )
    from stability.experiments.bench_recorder.workloads import (
        build_trainer,
        chosen_workloads,
        resolve_device,
    )
    from stability.experiments.outputs import write_config
    from stability.records.runs import new_output_dir

    started = time.perf_counter()
    device = resolve_device(config.device)
    workloads = chosen_workloads(config, device)
    compare = None
    if config.compare_with is not None:
        compare = (config.compare_with.stem, load_recorder_class(config.compare_with))
    thread_counts = config.thread_counts(torch.get_num_threads())
    out = new_output_dir(config.out, DEFAULT_PARENT)
    torch.set_flush_denormal(True)
    factories = variant_factories(compare)
    machine = report.machine_info(device)
    blocks, syncs = [], []
    for workload in workloads.values():
        log(f"timing {workload.name}: {workload}")
        trainer = build_trainer(workload, device)
        begun = time.perf_counter()
        blocks.append(timing.time_workload(workload, trainer, factories, thread_counts, log))
        log(f"  {workload.name}: {time.perf_counter() - begun:.0f} s")
        if device.type == "cuda":
            counted = timing.count_syncs(trainer, factories, config.sync_steps)
            syncs.append(counted.assign(workload=workload.name))
        del trainer
    blocks = pd.concat(blocks, ignore_index=True)
    syncs = pd.concat(syncs, ignore_index=True) if syncs else pd.DataFrame()
    if device.type != "cuda":
        log("host-sync check skipped: it needs a CUDA device (on a CPU nothing waits)")
    memory, memory_stats = pd.DataFrame(), {}
    if config.memory_steps > 0:
        log(f"memory check: {config.memory_steps} steps, records kept / popped every 1000 steps")
        begun = time.perf_counter()
        memory, memory_stats = timing.memory_report(device, config.memory_steps)
        log(f"  memory: {time.perf_counter() - begun:.0f} s")
    summary = report.summarize(blocks)
    targets = report.evaluate_targets(summary, device, syncs, memory_stats, config.quick)
    blocks.to_csv(out / "blocks.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    targets.to_csv(out / "targets.csv", index=False)
    if len(syncs):
        syncs.to_csv(out / "syncs.csv", index=False)
    bounds = {"resnet50": 1.03 if device.type == "cuda" else 1.05, "deep_linear": LINEAR_BOUND}
    report.draw_overhead(summary, out, bounds)
    if len(memory):
        memory.to_csv(out / "memory.csv", index=False)
        report.draw_memory(memory, out)
    write_config(
        out,
        EXPERIMENT,
        config,
        machine=machine,
        workloads={name: asdict(w) for name, w in workloads.items()},
        variants=list(factories),
        thread_counts=list(thread_counts),
        memory=memory_stats,
        lr=0.0,
    )
    text = report.markdown_report(machine, summary, targets, memory_stats)
    (out / "report.md").write_text(text)
    return BenchResult(out, summary, targets, text, time.perf_counter() - started)
