"""A small run built to diverge (or not), recorded live through a Monitor."""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F

from stability import Recorder
from stability.monitor import Monitor
from stability.paper.models import deep_linear

RAMP_FROM = 25  # the learning rate grows by 1.25x a step from here: divergence ~step 38


@contextmanager
def no_host_sync(active: bool):
    """``torch.cuda.set_sync_debug_mode("error")`` inside (CUDA), nothing otherwise."""
    if not active:
        yield
        return
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def ramp_run(
    ramp: bool,
    steps: int = 50,
    device: str = "cpu",
    stop_at_warning: bool = False,
    actions=(),
    stop: bool = False,
    no_sync: bool = False,
):
    """An 8-layer linear net on fixed random data; ``ramp``: the lr explodes from step 25.

    ``no_sync``: the training loop runs under :func:`no_host_sync` (CUDA).
    Returns (record table, monitor, optimizer, lrs used at each step).
    """
    torch.manual_seed(0)
    model = deep_linear(8, 32, 20, 5, norm="none").to(device)
    x = torch.randn(64, 20, generator=torch.Generator().manual_seed(1)).to(device)
    y = torch.randint(0, 5, (64,), generator=torch.Generator().manual_seed(2)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    rec = Recorder(model, metrics=("output_rms", "loss", "coherence"), weight_every=5)
    monitor = Monitor(rec, on_warning=[a(optimizer) for a in actions], stop=stop)
    lrs = []
    with no_host_sync(no_sync):
        _train(model, x, y, optimizer, monitor, ramp, steps, stop_at_warning, lrs)
    monitor.close()
    rec.close()
    return rec.to_frame(), monitor, optimizer, lrs


def _train(model, x, y, optimizer, monitor, ramp, steps, stop_at_warning, lrs):
    for step in range(steps):
        if ramp and step >= RAMP_FROM:
            for group in optimizer.param_groups:
                group["lr"] *= 1.25
        lrs.append(optimizer.param_groups[0]["lr"])
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        monitor.step(loss)
        if monitor.should_stop or (stop_at_warning and monitor.warnings):
            break
