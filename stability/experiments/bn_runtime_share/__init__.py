"""Where does a ResNet-50 training step spend its time? The analogue of the paper's Figure 1.

``run(ShareConfig(...))`` profiles ResNet-50 training steps with ``torch.profiler``, with
BN and with weight normalization (WN) (:mod:`.profiling`), and splits the time by
operator category: convolution, batch norm, weight norm, ReLU, add, pooling, fc,
optimizer, other (:mod:`.attribution`: every profiled microsecond is counted once).

Writes into ``config.out`` (new or empty; default ``runs/bench/bn_share/<timestamp>``;
never overwritten): ``runtime_share.png`` with ``runtime_share_<device>.csv`` per panel,
``runtime_share.csv`` (category, ms per step, share, device, norm), ``operators.csv``
(every op name with its category and time: the mapping, auditable), ``step_times.csv``,
``config.json`` and ``report.md`` (:mod:`.report`).

Importing this package is light (no torch): :func:`run` imports the profiling modules.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime

from stability.experiments.bn_runtime_share.config import (
    CATEGORIES,
    DEFAULT_PARENT,
    DEVICES,
    EXPERIMENT,
    NORMS,
    PRESETS,
    ShareConfig,
    ShareResult,
)

__all__ = ["CATEGORIES", "DEVICES", "NORMS", "PRESETS", "ShareConfig", "ShareResult", "run"]


def run(config: ShareConfig, log: Callable[[str], None] = print) -> ShareResult:
    """Profile every norm on every device; write the files and return the tables.

    Args:
        config: What to profile and where to write it.
        log: Receives one progress line at a time.

    Raises:
        ValueError: cuda asked for but not available.
        FileExistsError, NotADirectoryError: ``out`` holds files, is a file or lies
            under one.
    """
    import pandas as pd
    import torch

    from stability.experiments.bn_runtime_share import report
    from stability.experiments.bn_runtime_share.profiling import (
        resolve_devices,
        run_device,
        setup_for,
    )
    from stability.experiments.cli import cpu_name
    from stability.experiments.outputs import write_config
    from stability.records.runs import new_output_dir

    started = time.perf_counter()
    devices = resolve_devices(config.devices)
    out = new_output_dir(config.out, DEFAULT_PARENT)
    torch.set_num_threads(config.threads)
    torch.set_flush_denormal(True)
    results, setups = [], {}
    for device in devices:
        setup = setup_for(config, device)
        setups[device.type] = asdict(setup)
        results.append(run_device(device, config.norms, setup, log))
    shares, ops, step_times = (
        pd.concat(parts, ignore_index=True) for parts in zip(*results, strict=True)
    )
    meta = {
        "date": datetime.now().isoformat(timespec="seconds"),
        "machine": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "setups": setups,
        "norms": list(config.norms),
    }
    shares.to_csv(out / "runtime_share.csv", index=False)
    ops.to_csv(out / "operators.csv", index=False)
    step_times.to_csv(out / "step_times.csv", index=False)
    report.draw(shares, out)
    write_config(out, EXPERIMENT, config, **meta)
    text = report.markdown_report(shares, step_times, meta)
    (out / "report.md").write_text(text)
    return ShareResult(out, shares, ops, step_times, text, time.perf_counter() - started)
