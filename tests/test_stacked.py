"""Stacked runs equal their unbatched twins (the licence for batching the sweep).

Reference: each run trained on its own as a plain :func:`deep_linear` network with
``torch.optim.SGD(momentum=0.9)``, and recorded by its own Recorder.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stability import Recorder
from stability.paper.models import deep_linear
from stability.paper.stacked import StackedDeepLinear, StackedSGD, keep_runs

LRS = (0.01, 0.05, 0.2)
SEEDS = (3, 4, 5)


def _twins(norm: str):
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(deep_linear(depth=6, width=8, in_features=12, num_classes=4, norm=norm))
    return models


def _batches(steps: int):
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(steps, len(SEEDS), 16, 12, generator=g)
    ys = torch.randint(0, 4, (steps, len(SEEDS), 16), generator=g)
    return xs, ys


def _train_twins(models, xs, ys, runs):
    """Reference: every run alone, torch's SGD, its own Recorder."""
    losses, frames = [], []
    for r in runs:
        model = models[r]
        opt = torch.optim.SGD(model.parameters(), lr=LRS[r], momentum=0.9)
        run_losses = []
        with Recorder(model, weight_every=1) as rec:
            for step in range(xs.shape[0]):
                loss = F.cross_entropy(model(xs[step, r]), ys[step, r])
                opt.zero_grad()
                loss.backward()
                opt.step()
                rec.step()
                run_losses.append(loss.item())
        losses.append(run_losses)
        frames.append(rec.to_frame())
    return np.array(losses), frames


@pytest.mark.parametrize("norm", ["none", "wn", "bn"])
def test_each_stacked_run_follows_its_twin(norm):
    """Losses, effective weights and every recorded metric agree run by run (5 steps)."""
    xs, ys = _batches(5)
    stacked = StackedDeepLinear.from_models(_twins(norm))
    opt = StackedSGD(stacked.parameters(), torch.tensor(LRS), momentum=0.9)
    losses = []
    with Recorder(stacked, run_dim=0, weight_every=1) as rec:
        for step in range(xs.shape[0]):
            logits = stacked(xs[step])
            loss = F.cross_entropy(logits.flatten(0, 1), ys[step].flatten(), reduction="none")
            loss = loss.view(len(SEEDS), -1).mean(1)
            opt.zero_grad()
            loss.sum().backward()
            opt.step()
            rec.step()
            losses.append(loss.detach().numpy())
    twins = _twins(norm)
    ref_losses, ref_frames = _train_twins(twins, xs, ys, range(len(SEEDS)))
    np.testing.assert_allclose(np.array(losses).T, ref_losses, rtol=1e-5, atol=1e-6)
    for i, layer in enumerate(stacked.layers):
        for r, twin in enumerate(twins):
            torch.testing.assert_close(layer.weight[r], twin.layers[i].weight, rtol=1e-4, atol=1e-6)
    frame = rec.to_frame()
    for r, ref in enumerate(ref_frames):
        mine = frame[frame["run"] == r].drop(columns="run").reset_index(drop=True)
        assert mine[["step", "layer", "metric"]].equals(ref[["step", "layer", "metric"]])
        np.testing.assert_allclose(mine["value"], ref["value"], rtol=1e-4, atol=1e-6)


def test_keep_runs_drops_runs_and_the_rest_continue():
    """After dropping run 1 at step 2, runs 0 and 2 still follow their twins."""
    xs, ys = _batches(5)
    stacked = StackedDeepLinear.from_models(_twins("wn"))
    opt = StackedSGD(stacked.parameters(), torch.tensor(LRS), momentum=0.9)
    active = [0, 1, 2]
    losses = {0: [], 2: []}
    for step in range(xs.shape[0]):
        if step == 2:
            opt = keep_runs(stacked, opt, torch.tensor([0, 2]))
            active = [0, 2]
        logits = stacked(xs[step, active])
        loss = F.cross_entropy(logits.flatten(0, 1), ys[step, active].flatten(), reduction="none")
        loss = loss.view(len(active), -1).mean(1)
        opt.zero_grad()
        loss.sum().backward()
        opt.step()
        for k, r in enumerate(active):
            if r in losses:
                losses[r].append(loss[k].item())
    assert stacked.runs == 2
    ref, _ = _train_twins(_twins("wn"), xs, ys, [0, 2])
    np.testing.assert_allclose(np.array([losses[0], losses[2]]), ref, rtol=1e-5, atol=1e-6)


def test_stacked_sgd_rejects_bad_learning_rates():
    """A non-positive learning rate is a clear error."""
    stacked = StackedDeepLinear.from_models(_twins("none"))
    with pytest.raises(ValueError, match="positive"):
        StackedSGD(stacked.parameters(), torch.tensor([0.1, 0.0, 0.1]))


def _bn_forward_backward(threads: int):
    """Output, input gradient, weight gradient and running stats of one StackedBatchNorm1d
    training step over 3 runs x 256 samples x 64 channels at ``threads`` intra-op threads."""
    from stability.paper.stacked import StackedBatchNorm1d

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        bns = [torch.nn.BatchNorm1d(64) for _ in range(3)]
        for bn in bns:
            torch.nn.init.uniform_(bn.weight, 0.5, 2.0)
        stacked = StackedBatchNorm1d(bns)
        x = (torch.randn(3, 256, 64) * 3 + 1).requires_grad_()
        out = stacked(x)
        out.backward(torch.randn(3, 256, 64))
        return [out.detach(), x.grad, stacked.weight.grad, stacked.running_var.clone()]
    finally:
        torch.set_num_threads(previous)


def test_batch_norm_is_the_same_at_any_thread_count():
    """Bitwise: torch's (B, R*C) batch-norm kernel split the batch between threads (a
    ~1e-6 difference that moved the lr-1 divergence onset of the sweep by several steps)."""
    one, two = _bn_forward_backward(1), _bn_forward_backward(2)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


def test_stacked_batch_norm_matches_batch_norm_1d_per_run():
    """Reference: torch.nn.BatchNorm1d applied to each run's (B, C) slice, train and eval."""
    from stability.paper.stacked import StackedBatchNorm1d

    torch.manual_seed(1)
    bns = [torch.nn.BatchNorm1d(5) for _ in range(2)]
    stacked = StackedBatchNorm1d([torch.nn.BatchNorm1d(5) for _ in range(2)])
    x = torch.randn(2, 32, 5) * 2 + 3
    out = stacked(x)
    for r, bn in enumerate(bns):
        torch.testing.assert_close(out[r], bn(x[r]))
        torch.testing.assert_close(stacked.running_var[r], bn.running_var)
        torch.testing.assert_close(stacked.running_mean[r], bn.running_mean)
    stacked.eval()
    for r, bn in enumerate(bns):
        torch.testing.assert_close(stacked(x)[r], bn.eval()(x[r]))
