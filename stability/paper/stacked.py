r"""Many independent runs of the deep linear network trained as one stacked model.

A learning-rate x seed sweep of :func:`stability.paper.models.deep_linear` is hundreds of tiny
64 x 64 matrix products per step: launch-bound when run one network at a time. Here run
``r`` of ``R`` keeps its own weights ``W[r]`` and its own mini-batch ``x[r]``, and every
layer computes all runs at once with one batched matrix product,

    o[r] = x[r] W[r]^T            (``torch.bmm``),

so the runs never mix: the gradient of ``sum_r loss_r`` with respect to ``W[r]`` is the
gradient of ``loss_r`` alone. Weight normalization normalizes each row of each run,
``W[r, j] = g[r, j] V[r, j] / (||V[r, j]|| + eps)``; batch normalization uses each run's
own batch statistics. :class:`StackedSGD` is SGD with momentum and a learning rate per
run. Every module is built by stacking unbatched twins (:meth:`StackedDeepLinear.from_models`),
so run ``r`` starts exactly where its unbatched network starts; ``tests/test_stacked.py``
shows each stacked run follows its unbatched twin.

Layers keep the names of :class:`stability.paper.models.DeepLinear` (``layers.i``, ``norms.i``),
and a :class:`stability.Recorder` with ``run_dim=0`` records every metric per run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from stability.paper.models import DeepLinear
from stability.paper.normalization import WeightNorm


class StackedLinear(nn.Module):
    """``R`` bias-free linear layers: input ``(R, B, in)``, weight ``(R, out, in)``."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return torch.bmm(x, self.weight.transpose(1, 2))

    def extra_repr(self) -> str:
        runs, out_features, in_features = self.weight.shape
        return f"runs={runs}, in_features={in_features}, out_features={out_features}"


class StackedBatchNorm1d(nn.Module):
    r"""Batch normalization of each run over its own batch: input ``(R, B, C)``.

    Training: ``o[r] = gamma[r] (x[r] - mean_B x[r]) / sqrt(var_B x[r] + eps) + beta[r]``
    with the biased batch variance, as :class:`torch.nn.BatchNorm1d`; running statistics
    (unbiased variance, ``momentum``) are kept per run and used in eval mode.

    Layout: run ``r``'s channel ``c`` becomes channel ``r*C + c`` of a ``(1, R*C, B)``
    input, the batch lying along the length, so one :func:`torch.nn.functional.batch_norm`
    normalizes every column over its own batch (statistics over ``N*L = B`` values, as
    BatchNorm1d per run). That layout also fixes the order of the sums: torch's CPU kernel
    gives each channel of a contiguous ``(N, C, L)`` input to one thread whole, whereas for
    a ``(B, R*C)`` input it splits the batch between threads and adds the partial sums in a
    thread-dependent order, which made the divergence onsets depend on
    ``torch.set_num_threads`` (``tests/test_stacked.py`` checks they no longer do).
    """

    def __init__(self, bns: Sequence[nn.BatchNorm1d]) -> None:
        super().__init__()
        first = bns[0]
        self.eps, self.momentum = first.eps, first.momentum
        self.weight = nn.Parameter(torch.stack([bn.weight.detach() for bn in bns]))
        self.bias = nn.Parameter(torch.stack([bn.bias.detach() for bn in bns]))
        self.register_buffer("running_mean", torch.stack([bn.running_mean for bn in bns]))
        self.register_buffer("running_var", torch.stack([bn.running_var for bn in bns]))

    def forward(self, x: Tensor) -> Tensor:
        runs, batch, channels = x.shape
        flat = x.transpose(1, 2).reshape(1, runs * channels, batch)
        out = F.batch_norm(
            flat,
            self.running_mean.view(-1),
            self.running_var.view(-1),
            self.weight.view(-1),
            self.bias.view(-1),
            self.training,
            self.momentum,
            self.eps,
        )
        return out.view(runs, channels, batch).transpose(1, 2)


def _stack_linear(layers: Sequence[nn.Linear]) -> StackedLinear:
    """Stack the *effective* weights; re-apply weight normalization if the twins had it."""
    if any(layer.bias is not None for layer in layers):
        raise ValueError("stacked deep linear networks are bias-free (deep_linear(bias=False))")
    stacked = StackedLinear(torch.stack([layer.weight.detach() for layer in layers]))
    wn = getattr(getattr(layers[0], "parametrizations", None), "weight", None)
    if wn is not None:
        norm = next(p for p in wn if isinstance(p, WeightNorm))
        parametrize.register_parametrization(
            stacked, "weight", WeightNorm(gain=norm.gain, eps=norm.eps, run_dims=1)
        )
        with torch.no_grad():  # copy (g, v) exactly rather than re-deriving them
            plist = stacked.parametrizations.weight
            originals = [layer.parametrizations.weight for layer in layers]
            if norm.gain:
                plist.original0.copy_(torch.stack([p.original0 for p in originals]))
                plist.original1.copy_(torch.stack([p.original1 for p in originals]))
            else:
                plist.original.copy_(torch.stack([p.original for p in originals]))
    return stacked


class StackedDeepLinear(nn.Module):
    """``R`` deep linear networks in one module: input ``(R, B, ...)``, output ``(R, B, C)``."""

    def __init__(self, layers: Sequence[StackedLinear], norms: Sequence[nn.Module] | None) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norms = nn.ModuleList(norms) if norms is not None else None

    @classmethod
    def from_models(cls, models: Sequence[DeepLinear]) -> StackedDeepLinear:
        """Stack unbatched :class:`DeepLinear` twins (same depth, widths and norm)."""
        if not models:
            raise ValueError("from_models needs at least one model")
        depth = len(models[0].layers)
        if any(len(m.layers) != depth for m in models):
            raise ValueError("all stacked models need the same depth")
        layers = [_stack_linear([m.layers[i] for m in models]) for i in range(depth)]
        norms = None
        if models[0].norms is not None:
            count = len(models[0].norms)
            norms = [StackedBatchNorm1d([m.norms[i] for m in models]) for i in range(count)]
        return cls(layers, norms)

    @property
    def runs(self) -> int:
        return self.layers[0].weight.shape[0]

    @torch.no_grad()
    def keep_runs(self, keep: Tensor) -> None:
        """Keep only runs ``keep`` (indices along dimension 0), in place.

        Every parameter is replaced by a new ``nn.Parameter`` holding the kept runs (a
        parameter's shape cannot change under autograd), and every buffer is sliced. An
        optimizer over the old parameters must be rebuilt: see :func:`keep_runs`.
        """
        for module in self.modules():
            for name, p in module._parameters.items():
                if p is not None:
                    module._parameters[name] = nn.Parameter(p.detach()[keep])
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = buffer[keep]

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(x, 2)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if self.norms is not None and i < len(self.norms):
                x = self.norms[i](x)
        return x


class StackedSGD(torch.optim.Optimizer):
    r"""SGD with momentum and one learning rate per run (dimension 0 of every parameter).

    The update of :class:`torch.optim.SGD` without dampening or weight decay, run by run:
    ``b <- mu b + grad`` (``b = grad`` at the first step), ``p[r] <- p[r] - lr[r] b[r]``.
    """

    def __init__(self, params, lrs: Tensor, momentum: float = 0.9) -> None:
        lrs = torch.as_tensor(lrs, dtype=torch.float32)
        if lrs.ndim != 1 or not bool((lrs > 0).all()):
            raise ValueError(f"lrs must be a 1-d tensor of positive learning rates, got {lrs}")
        super().__init__(params, {"lrs": lrs, "momentum": momentum})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lrs, mu = group["lrs"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = p.grad.detach().clone()
                else:
                    state["momentum_buffer"].mul_(mu).add_(p.grad)
                lr = lrs.to(p.device, p.dtype).view(-1, *([1] * (p.ndim - 1)))
                p.sub_(state["momentum_buffer"] * lr)
        return None


def keep_runs(model: StackedDeepLinear, optimizer: StackedSGD, keep: Tensor) -> StackedSGD:
    """Drop every run but ``keep`` from a model and its optimizer.

    Returns:
        A new :class:`StackedSGD` over the model's new parameters, with the kept runs'
        learning rates and momentum buffers.
    """
    (group,) = optimizer.param_groups
    buffers = [optimizer.state.get(p, {}).get("momentum_buffer") for p in model.parameters()]
    model.keep_runs(keep)
    lrs = group["lrs"][keep.to(group["lrs"].device)]
    rebuilt = StackedSGD(model.parameters(), lrs, group["momentum"])
    for p, buffer in zip(model.parameters(), buffers, strict=True):
        if buffer is not None:
            rebuilt.state[p]["momentum_buffer"] = buffer[keep]
    return rebuilt
