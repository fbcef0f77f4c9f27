"""Every CUDA measurement the project claims, in one run on one GPU (about 10 minutes).

``run(GpuCheckConfig())`` measures, on the first CUDA device:

1. ResNet-50 training throughput (bf16 autocast, channels_last; images/s) with no hooks,
   with the default Recorder and with naive ``.item()`` hooks, interleaved in rounds
   (the harness of :mod:`stability.experiments.bench_recorder.timing`); the Recorder's
   and the naive hooks' throughput as a share of no hooks.
2. Host syncs per recorded step: ``steps`` training steps with each probe under
   ``torch.cuda.set_sync_debug_mode("error")``, where any synchronising call raises. The
   Recorder (flushing after the counted steps) and no hooks must run through; the naive
   hooks must raise (the control that the mode catches a sync).
3. The live monitor's latency: a 50-layer linear network (batch 256) under ``Monitor``; after
   each ``monitor.step`` the steps whose values have not yet been evaluated are counted
   (the latency in steps; 1 when the device keeps up), with the wall time per step.
4. The ``gpu``-marked tests (``pytest -m gpu``, in a subprocess).

``dry_run`` runs the same plan on the CPU at tiny sizes (fp32, the linear net at batch
32), without the sync-debug part (CUDA only) and collecting the gpu tests instead of
running them, so the script itself is
tested where there is no GPU. Writes ``gpu_check.csv`` (one row per measurement: part,
measurement, value, unit, ok, note), ``report.md`` (the table) and ``config.json`` into a
new or empty ``out`` (default ``runs/gpu_check/<timestamp>``).
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from stability.experiments.bench_recorder.config import ITEM_BASELINE, NO_HOOKS, RECORDER
from stability.experiments.bench_recorder.timing import synchronize, time_workload
from stability.experiments.bench_recorder.variants import variant_factories
from stability.experiments.bench_recorder.workloads import Workload, build_trainer

EXPERIMENT = "gpu_check"
DEFAULT_PARENT = "runs/gpu_check"
ROOT = Path(__file__).resolve().parents[2]
COLUMNS = ["part", "measurement", "value", "unit", "ok", "note"]


class NoCudaError(RuntimeError):
    """The check needs a CUDA device and there is none (and no dry run was asked)."""


@dataclass(frozen=True)
class GpuCheckConfig:
    """One GPU check (written into the output folder as ``config.json``).

    Attributes:
        out: Output folder, new or empty (default ``runs/gpu_check/<timestamp>``).
        dry_run: The same plan on the CPU at tiny sizes, no sync-debug part, gpu tests
            collected only.
        batch, image: ResNet-50 batch and input size (None: 256 at 224, dry run 2 at 32).
        steps: Timed steps per block (None: 20, dry run 2).
        rounds: Measured rounds (None: 5, dry run 1).
        sync_steps: Recorded steps under ``set_sync_debug_mode("error")``.
        monitor_steps: Steps of the monitor-latency run (None: 300, dry run 10).
        tests: Run the gpu-marked tests.
    """

    out: Path | None = None
    dry_run: bool = False
    batch: int | None = None
    image: int | None = None
    steps: int | None = None
    rounds: int | None = None
    sync_steps: int = 10
    monitor_steps: int | None = None
    tests: bool = True

    def pick(self, name: str, full: int, dry: int) -> int:
        """The value of field ``name``, or its default for this kind of run."""
        value = getattr(self, name)
        return value if value is not None else (dry if self.dry_run else full)


@dataclass(frozen=True)
class GpuCheckResult:
    """The table (also ``gpu_check.csv``), its Markdown, the folder and the seconds taken."""

    out: Path
    table: pd.DataFrame
    report: str
    seconds: float

    @property
    def failed(self) -> list[str]:
        """The measurements whose check failed."""
        return list(self.table.loc[self.table.ok == False, "measurement"])  # noqa: E712


def _row(part: str, measurement: str, value, unit: str, ok: bool | None, note: str = "") -> dict:
    return dict(zip(COLUMNS, (part, measurement, value, unit, ok, note), strict=True))


def throughput(config: GpuCheckConfig, device: torch.device, log) -> list[dict]:
    """ResNet-50 images/s with no hooks, the Recorder and naive ``.item()`` hooks."""
    workload = Workload(
        "resnet50",
        config.pick("batch", 256, 2),
        config.pick("image", 224, 32),
        config.pick("steps", 20, 2),
        config.pick("rounds", 5, 1),
        1,
        not config.dry_run,  # bf16 autocast: a CUDA claim (on a CPU it is 10x slower)
        True,
    )
    factories = {k: variant_factories()[k] for k in (NO_HOOKS, RECORDER, ITEM_BASELINE)}
    trainer = build_trainer(workload, device)
    threads = (torch.get_num_threads(),)
    blocks = time_workload(workload, trainer, factories, threads, progress=log)
    seconds = blocks.groupby("variant").seconds.median()
    size = f"bs{workload.batch}@{workload.image}, channels_last"
    size += ", bf16 autocast" if workload.amp else ", fp32"
    rows = [
        _row("throughput", f"ResNet-50 {v}", workload.batch / seconds[v], "images/s", None, size)
        for v in factories
    ]
    for variant in (RECORDER, ITEM_BASELINE):
        share = seconds[NO_HOOKS] / seconds[variant]
        rows.append(_row("throughput", f"{variant} / no hooks", share, "throughput ratio", None))
    return rows


def host_syncs(config: GpuCheckConfig, device: torch.device) -> list[dict]:
    """Run ``sync_steps`` steps per probe under ``set_sync_debug_mode("error")``."""
    workload = Workload("resnet50", 8, 64, 1, 1, 0, True, True)
    trainer = build_trainer(workload, device)
    factories = variant_factories()
    rows = []
    for variant, must_sync in ((NO_HOOKS, False), (RECORDER, False), (ITEM_BASELINE, True)):
        probe = factories[variant](trainer.model, config.sync_steps + 1)
        trainer.step()  # the first step of a probe may allocate; not counted
        if probe is not None:
            probe.step()
        synchronize(device)
        raised = ""
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(config.sync_steps):
                trainer.step()
                if probe is not None:
                    probe.step()
        except RuntimeError as error:
            raised = str(error).splitlines()[0]
        finally:
            torch.cuda.set_sync_debug_mode(0)
            if probe is not None:
                probe.close()
        note = f"raised: {raised}" if raised else f"{config.sync_steps} steps ran through"
        value = ">= 1" if raised else "0"
        rows.append(
            _row("host syncs", variant, value, "syncs per step", bool(raised) == must_sync, note)
        )
    return rows


def monitor_latency(config: GpuCheckConfig, device: torch.device) -> list[dict]:
    """Steps not yet evaluated after each ``monitor.step`` (the latency), and step times."""
    from stability import Monitor, Recorder
    from stability.paper.models import deep_linear

    torch.manual_seed(0)
    model = deep_linear(depth=50, width=64, norm="wn").to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    batch = 32 if config.dry_run else 256
    x = torch.randn(batch, 784, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    monitor = Monitor(Recorder(model))
    lags, times = [], []
    try:
        for _ in range(config.pick("monitor_steps", 300, 10)):
            start = time.perf_counter()
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            monitor.step(loss)
            times.append(time.perf_counter() - start)
            lags.append(len(monitor._in_flight))
    finally:
        monitor.close()
        monitor.recorder.close()
    warm = lags[len(lags) // 10 :] or lags
    bound = 0 if device.type == "cpu" else 1
    return [
        _row("monitor", "latency (median)", statistics.median(warm), "steps", None),
        _row(
            "monitor",
            "latency (max)",
            max(warm),
            "steps",
            max(warm) <= bound,
            f"expected <= {bound} when the device keeps up",
        ),
        _row(
            "monitor",
            "step time (median)",
            1e3 * statistics.median(times),
            "ms",
            None,
            f"50-layer linear net, batch {batch}, Recorder + Monitor",
        ),
    ]


def gpu_tests(config: GpuCheckConfig) -> list[dict]:
    """``pytest -m gpu`` in a subprocess (dry run: collected, not run)."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
    command += ["--collect-only"] if config.dry_run else []
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=540)
    lines = done.stdout.strip().splitlines()
    summary = lines[-1] if lines else done.stderr.strip()[-200:]
    if config.dry_run:
        counted = re.search(r"(\d+)(?:/\d+)? tests? collected", summary)
        ok = done.returncode == 0 and counted is not None
        return [
            _row(
                "tests",
                "gpu-marked tests collected",
                counted.group(1) if counted else 0,
                "tests",
                ok,
                summary,
            )
        ]
    counted = re.search(r"(\d+) passed", summary)
    failed = done.returncode != 0 or "skipped" in summary
    return [
        _row(
            "tests",
            "gpu-marked tests",
            counted.group(1) if counted else 0,
            "passed",
            not failed,
            summary,
        )
    ]


def markdown(table: pd.DataFrame, where: str) -> str:
    """The table as Markdown, headed by where it was measured."""
    lines = [
        f"GPU check, {where}",
        "",
        "| part | measurement | value | unit | ok | note |",
        "|---|---|---:|---|---|---|",
    ]
    for row in table.itertuples():
        value = f"{row.value:.3f}" if isinstance(row.value, float) else str(row.value)
        ok = {True: "yes", False: "**FAILED**", None: ""}[row.ok]
        lines.append(
            f"| {row.part} | {row.measurement} | {value} | {row.unit} | {ok} | {row.note} |"
        )
    return "\n".join(lines) + "\n"


def run(config: GpuCheckConfig, log: Callable[[str], None] = print) -> GpuCheckResult:
    """Every part of the plan; writes the table and returns it.

    Raises:
        NoCudaError: no CUDA device and ``dry_run`` not set (nothing is written).
        FileExistsError, NotADirectoryError: ``out`` holds files, is a file or lies under one.
    """
    from stability.experiments.outputs import write_config
    from stability.records.runs import new_output_dir

    if not config.dry_run and not torch.cuda.is_available():
        raise NoCudaError(
            "CUDA is not available (torch.cuda.is_available() is False): run this on a GPU "
            "machine, or pass --dry-run to rehearse the plan on the CPU"
        )
    started = time.perf_counter()
    device = torch.device("cpu" if config.dry_run else "cuda")
    out = new_output_dir(config.out, DEFAULT_PARENT)
    where = "CPU dry run (tiny sizes)" if config.dry_run else torch.cuda.get_device_name(device)
    log(f"gpu check on {where}: throughput")
    rows = throughput(config, device, log)
    if config.dry_run:
        rows.append(
            _row("host syncs", "sync_debug_mode='error'", "n/a", "", None, "dry run: CUDA only")
        )
    else:
        log("host syncs under set_sync_debug_mode('error')")
        rows += host_syncs(config, device)
    log("monitor latency")
    rows += monitor_latency(config, device)
    if config.tests:
        log("gpu-marked tests")
        rows += gpu_tests(config)
    table = pd.DataFrame(rows, columns=COLUMNS)
    table.to_csv(out / "gpu_check.csv", index=False)
    text = markdown(table, f"{where}, torch {torch.__version__}")
    (out / "report.md").write_text(text)
    write_config(out, EXPERIMENT, config, device=where)
    return GpuCheckResult(out, table, text, time.perf_counter() - started)
