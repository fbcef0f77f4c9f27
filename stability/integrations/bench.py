"""What the dashboard sinks cost, next to the Recorder's own cost (issue 15).

Four variants train four copies of one model in one process, interleaved round-robin
(the order rotates each round; round 0 is a warm-up and is discarded):

    no hooks                  plain training step
    recorder                  Recorder(model, flush_every=F)
    recorder + tensorboard    the same, TensorBoardSink.update() after every step
    recorder + wandb          the same, WandbSink.update() after every step (offline run)

One sample is the mean step time over a block of ``F`` steps (forward, backward,
``optimizer.step``, ``zero_grad``, ``rec.step()``, ``sink.update()``), so each block holds
exactly one flush and one sink write: the cost of the sink is in the block it belongs to.
Each variant keeps its Recorder and sink over all rounds, so the table grows as in a real
run and each sink look rebuilds a larger ``to_frame()``. The learning rate is 0 (SGD,
momentum 0.9): every step does a training step's work while the weights stay fixed.
Ratios are paired: a variant's block over the no-hooks block of the same round; the
summary gives their median and interquartile range, and the time spent inside
``sink.update()`` per step. The W&B service runs beside the process (on a 2-core machine
it takes CPU from every variant).

Workload: the paper's linear network (``--depth`` bias-free layers of width 64, batch
256, :func:`linear_network`), whose
many tiny layers make it launch/Python-bound: the worst case for per-layer logging.

    python analyses/bench_sinks.py --preset quick   # smoke run, under a minute
    python analyses/bench_sinks.py                  # the measurement of the README
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from stability.experiments.cli import (
    OneLineParser,
    config_from_args,
    one_line,
    parse_with_preset,
    positive_int,
)

VARIANTS = ("no hooks", "recorder", "recorder + tensorboard", "recorder + wandb")


@dataclass(frozen=True)
class BenchConfig:
    depth: int = 50
    batch: int = 256
    flush_every: int = 100
    rounds: int = 6
    threads: int = 1
    out: str | None = None


PRESETS = {"full": {}, "quick": {"depth": 10, "batch": 64, "flush_every": 20, "rounds": 3}}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Overhead of the TensorBoard and W&B sinks.")
    parser.add_argument(
        "--preset", choices=sorted(PRESETS), default="full", help=f"defaults: {PRESETS}"
    )
    parser.add_argument("--depth", type=positive_int, help="linear layers (default 50)")
    parser.add_argument("--batch", type=positive_int, help="batch size (default 256)")
    parser.add_argument(
        "--flush-every", type=positive_int, help="steps per flush = per timed block (100)"
    )
    parser.add_argument("--rounds", type=positive_int, help="timed rounds after a warm-up (6)")
    parser.add_argument("--threads", type=positive_int, help="torch threads (default 1)")
    parser.add_argument("--out", help="output folder (default runs/bench_sinks/<timestamp>)")
    return parser


def linear_network(depth: int):
    """``depth`` bias-free linear layers 784 -> 64 -> ... -> 64 -> 10, no activations (the
    paper's section-5 network without normalization)."""
    from torch import nn

    widths = [784] + [64] * (depth - 1) + [10]
    return nn.Sequential(
        *[nn.Linear(a, b, bias=False) for a, b in zip(widths[:-1], widths[1:], strict=True)]
    )


class _Variant:
    """One model copy with its optimizer, Recorder and sink, trained block by block."""

    def __init__(self, name: str, model, log_dir: Path, flush_every: int) -> None:
        import torch

        from stability import Recorder

        self.name, self.model = name, model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9)
        self.rec = None if name == "no hooks" else Recorder(model, flush_every=flush_every)
        self.sink = None
        if name.endswith("tensorboard"):
            from stability.integrations.tensorboard import TensorBoardSink

            self.sink = TensorBoardSink(log_dir / "tb", profile_every=1000).attach(self.rec)
        elif name.endswith("wandb"):
            from stability.integrations.wandb import WandbSink

            self.sink = WandbSink(mode="offline", dir=str(log_dir), project="bench")
            self.sink.attach(self.rec)

    def block(self, x, y, steps: int) -> tuple[float, float]:
        """Seconds per step over ``steps`` steps, and of that inside ``sink.update()``."""
        import torch.nn.functional as F

        in_sink = 0.0
        start = time.perf_counter()
        for _ in range(steps):
            F.cross_entropy(self.model(x), y).backward()
            self.opt.step()
            self.opt.zero_grad()
            if self.rec is not None:
                self.rec.step()
            if self.sink is not None:
                t = time.perf_counter()
                self.sink.update()
                in_sink += time.perf_counter() - t
        return (time.perf_counter() - start) / steps, in_sink / steps

    def close(self) -> None:
        if self.rec is not None:
            self.rec.close()
        if self.sink is not None:
            self.sink.close()


def run(config: BenchConfig, out: Path):
    """Blocks of every variant, round-robin; returns (blocks, summary) DataFrames."""
    import pandas as pd
    import torch

    torch.set_num_threads(config.threads)
    torch.manual_seed(0)
    base = linear_network(config.depth)
    x, y = torch.randn(config.batch, 784), torch.randint(0, 10, (config.batch,))
    with tempfile.TemporaryDirectory() as logs:
        variants = [
            _Variant(n, copy.deepcopy(base), Path(logs), config.flush_every) for n in VARIANTS
        ]
        rows = []
        for rnd in range(config.rounds + 1):
            order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]
            for v in order:
                step_s, sink_s = v.block(x, y, config.flush_every)
                table_rows = 0 if v.rec is None else len(v.rec.to_frame())
                rows.append((rnd, v.name, step_s, sink_s, table_rows))
        for v in variants:
            v.close()
    blocks = pd.DataFrame(rows, columns=["round", "variant", "step_s", "sink_s", "table_rows"])
    blocks = blocks[blocks["round"] > 0]
    blocks.to_csv(out / "blocks.csv", index=False)
    return blocks, summarize(blocks)


def summarize(blocks):
    """Per variant: median (IQR) of the paired ratio to no hooks, and ms per step."""
    import pandas as pd

    base = blocks[blocks["variant"] == "no hooks"].set_index("round")["step_s"]
    out = []
    for name in VARIANTS:
        part = blocks[blocks["variant"] == name].set_index("round")
        ratio = part["step_s"] / base
        out.append(
            {
                "variant": name,
                "ms_per_step": 1e3 * part["step_s"].median(),
                "ratio": ratio.median(),
                "ratio_q1": ratio.quantile(0.25),
                "ratio_q3": ratio.quantile(0.75),
                "sink_ms_per_step": 1e3 * part["sink_s"].median(),
                "table_rows_at_end": int(part["table_rows"].max()),
            }
        )
    return pd.DataFrame(out)


def report(summary, config: BenchConfig) -> str:
    head = (
        f"Deep linear {config.depth}x64, batch {config.batch}, flush every "
        f"{config.flush_every} steps, {config.rounds} rounds, {config.threads} thread(s)\n\n"
        "| variant | ms/step | / no hooks (IQR) | in sink.update, ms/step |\n|---|---:|---:|---:|\n"
    )
    lines = [
        f"| {r.variant} | {r.ms_per_step:.2f} | {r.ratio:.3f} ({r.ratio_q1:.3f}-{r.ratio_q3:.3f})"
        f" | {r.sink_ms_per_step:.2f} |"
        for r in summary.itertuples()
    ]
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    config = config_from_args(BenchConfig, parse_with_preset(parser, argv, PRESETS))
    from stability.records.runs import new_output_dir

    try:
        out = new_output_dir(config.out, "runs/bench_sinks")
    except OSError as error:
        parser.error(one_line(error))
    os.environ.setdefault("WANDB_SILENT", "true")
    _, summary = run(config, out)
    summary.to_csv(out / "summary.csv", index=False)
    text = report(summary, config)
    (out / "report.md").write_text(text)
    print(text + f"\nwritten to {out}")
    return 0
