"""The Recorder: forward and tensor hooks -> device buffers -> a tidy DataFrame.

Data flow. A forward hook on every selected module computes the norms of the output it
just produced and of its input (0-d tensors on the model's device) and, when gradients are
being recorded, registers a tensor hook on that output for ``grad_norm``. Values are
appended to a pending list together with their key ``(step, layer, call, code, aux)``;
``step()`` stacks the pending values into one device tensor; every ``flush_every`` steps
(and on ``to_frame``/``save``/``close``) the stacked tensors are concatenated and copied to
the host once. Nothing in a hook or in ``step()`` reads a tensor value on the host, so
recording never forces a host-device synchronisation.

Cost. The device only computes norms (one reduction per output, input and gradient, and
the weight metrics on weight steps); everything derived from norms is computed on the host
at flush time, vectorised over all rows: ``output_rms = ||o|| / sqrt(n)`` and
``gain = ||o|| / ||x||`` (the same float32/float64 divisions the device would do). A layer
whose input is the output the previous recorded layer just produced (a chain of layers,
e.g. the deep linear network), unchanged since (same tensor object, same version
counter), reuses that output's norm instead of computing it again.

Timing contract: call ``step()`` once per optimizer step, after ``backward()``. Values are
keyed by the step during whose forward they were produced, so a gradient hook that fires
late is still filed under its own step.

What counts as a layer's output and input: the first floating-point tensor of what the
module returns (depth first through tuples, lists and dicts) and of its positional, then
keyword, arguments. A view of a freshly computed product (``nn.Linear`` on a >2-d input)
gets its gradient hook on the product itself, so a later in-place change of the view does
not lose ``grad_norm``. Activation checkpointing's re-run of a forward inside backward is
not a new call. A ``copy.deepcopy`` of a recorded model (an EMA twin) records nothing.

Compilation: attach the Recorder *before* ``torch.compile``; the hooks are excluded from
tracing (``torch._dynamo.disable``), so the compiled model breaks its graph around each
recorded layer and the hooks run eagerly. Hooks attached to a model that was already
compiled and run are only seen after dynamo recompiles; attach first.
"""

from __future__ import annotations

import fnmatch
import numbers
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from stability import metrics as M
from stability.records.schema import (
    FORWARD_METRICS,
    LOSS_LAYER,
    LOSS_LAYER_IDX,
    LOSS_METRIC,
    METRICS,
    ROOT_NAME,
    WEIGHT_METRICS,
)

# Codes of the raw norms kept between a hook and flush(); they never reach the table.
_RAW_OUTPUT_NORM = len(METRICS)  # ||o||, aux = elements per run -> output_norm, output_rms
_RAW_INPUT_NORM = len(METRICS) + 1  # ||x||, right after its ||o|| row -> gain
_CODE = {m: i for i, m in enumerate(METRICS)}

Selector = str | Sequence[str] | Callable[[str, nn.Module], bool] | None

# Models that currently have an active Recorder (weak keys: no reference kept to the model).
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DataParallel (``module.``) and ``torch.compile`` (``_orig_mod.``) wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def owns_matrix_weight(module: nn.Module, run_dim: int | None = None) -> bool:
    """Default selection: the module has a ``weight`` tensor with ``ndim >= 2``.

    With a run dimension (stacked independent runs) the weight needs ``ndim >= 3``.
    """
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.ndim >= (2 if run_dim is None else 3)


def _first_tensor(value, floating_only: bool = True) -> torch.Tensor | None:
    """The first (floating) tensor in a tensor / tuple / list / dict, depth first."""
    if isinstance(value, torch.Tensor):
        return value if value.is_floating_point() or not floating_only else None
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        for item in value:
            found = _first_tensor(item, floating_only)
            if found is not None:
                return found
    return None


def select_modules(
    model: nn.Module,
    include: Selector = None,
    exclude: Selector = None,
    run_dim: int | None = None,
):
    """Return ``[(name, module)]`` chosen by ``include`` / ``exclude``.

    Candidates are the modules owning a matrix ``weight`` (:func:`owns_matrix_weight`).
    Glob patterns (one or several) filter those candidates by qualified name. A callable
    ``(name, module) -> bool`` is applied to *every* named module instead, so it can select
    modules without weights (activations, residual blocks). An include glob that matches no
    candidate raises ``ValueError`` listing the candidates.
    """
    named = [(name or ROOT_NAME, m) for name, m in model.named_modules()]
    candidates = [(name, m) for name, m in named if owns_matrix_weight(m, run_dim)]
    chosen = _apply(include, named, candidates, keep=True) if include is not None else candidates
    if exclude is not None:
        dropped = {name for name, _ in _apply(exclude, named, chosen, keep=True, check=False)}
        chosen = [(name, m) for name, m in chosen if name not in dropped]
    return chosen


def _apply(selector, named, candidates, keep: bool, check: bool = True):
    if callable(selector):
        return [(name, m) for name, m in named if selector(name, m)]
    if not isinstance(selector, str | list | tuple | set | frozenset):
        raise TypeError(f"include/exclude must be glob string(s) or a callable, got {selector!r}")
    patterns = [selector] if isinstance(selector, str) else list(selector)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(f"include/exclude must be glob string(s) or a callable, got {selector!r}")
    chosen = []
    for pattern in patterns:
        hits = [(n, m) for n, m in candidates if fnmatch.fnmatchcase(n, pattern)]
        if check and not hits:
            names = ", ".join(n for n, _ in candidates[:40]) or "(none)"
            more = f" ... ({len(candidates)} in all)" if len(candidates) > 40 else ""
            raise ValueError(
                f"include pattern {pattern!r} matches no recordable layer; available: {names}{more}"
            )
        chosen.extend(hit for hit in hits if hit[0] not in {n for n, _ in chosen})
    return chosen


def _group_by_device_and_dtype(tensors: list[torch.Tensor]) -> list[list[int]]:
    """Indices of ``tensors`` grouped so each group can be stacked (usually one group)."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return list(groups.values())


def _record_grad_norm(
    recorder: weakref.ref, step: int, code: int, call: int, grad: torch.Tensor
) -> None:
    """Tensor hook on a recorded output: ``grad_norm`` of the gradient flowing back into it."""
    alive = recorder()
    if alive is not None and alive._attached:
        alive._put(M.output_norm(grad, alive.run_dim), step, code, call, _CODE["grad_norm"])


def _check_metrics(metrics) -> tuple[str, ...]:
    """``metrics`` as a tuple of known metric names (one name may be given as a string)."""
    if metrics is None:
        return METRICS
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, Iterable):
        raise TypeError(f"metrics must be metric name(s) from {list(METRICS)}, got {metrics!r}")
    metrics = tuple(metrics)
    unknown = [m for m in metrics if not isinstance(m, str) or m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown!r}; choose from {list(METRICS)}")
    return metrics


def _grad_target(out: torch.Tensor, args) -> torch.Tensor:
    """The tensor whose gradient equals the gradient with respect to ``out``.

    A Linear on a >2-d input returns a view of its 2-d product; an in-place operation on
    that view afterwards would detach a hook registered on the view, so the hook goes on
    the view's base when it holds exactly the same elements (and is not an input).
    """
    base = out._base
    if base is None or base.numel() != out.numel() or not base.requires_grad:
        return out
    if any(base is x for x in _tensors(args)):
        return out
    return base


def _tensors(value):
    """Every tensor in nested tuples / lists / dicts."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


class _ForwardHook:
    """The forward hook of one recorded layer.

    A copy of the model (``copy.deepcopy``, e.g. an EMA or ``AveragedModel`` twin) copies
    its hooks too; the copy gets a hook that does nothing, so it never feeds this recorder.
    """

    def __init__(self, hook, code: int) -> None:
        self.hook, self.code = hook, code

    def __call__(self, module, args, kwargs, output):
        return self.hook(self.code, module, args, kwargs, output)

    def __deepcopy__(self, memo):
        return _noop_hook


def _noop_hook(module, args, kwargs, output) -> None:
    return None


class Recorder:
    """Record per-layer output norms, gains, gradient norms and weight coherence.

    Args:
        model: any ``nn.Module`` (DDP- or compile-wrapped models are unwrapped for naming).
        include: glob pattern(s) on qualified module names, or ``(name, module) -> bool``.
        exclude: the same, removing modules from the selection.
        metrics: subset of :data:`METRICS` (default: all).
        every: record forward/backward metrics every ``every`` steps (steps 0, every, ...).
        weight_every: record weight metrics every ``weight_every`` steps.
        flush_every: copy device buffers to the host every ``flush_every`` steps.
        run_dim: for a model that stacks independent runs (every output and weight has a
            leading run dimension, e.g. :mod:`stability.paper.stacked`), the dimension indexing
            the runs. Every metric is then computed per run and the table gains a ``run``
            column after ``step``. ``None`` (default): one run, the table of DESIGN.md.

    The Recorder attaches on construction and detaches on ``close()`` or when its ``with``
    block ends; the records stay available after detaching.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        include: Selector = None,
        exclude: Selector = None,
        metrics: Iterable[str] | None = None,
        every: int = 1,
        weight_every: int = 100,
        flush_every: int = 100,
        run_dim: int | None = None,
    ) -> None:
        for arg, value in (
            ("every", every),
            ("weight_every", weight_every),
            ("flush_every", flush_every),
        ):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{arg} must be a positive integer, got {value!r}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"Recorder needs an nn.Module, got {type(model).__name__}")
        self.metrics = _check_metrics(metrics)
        self.every, self.weight_every = int(every), int(weight_every)
        self.flush_every = int(flush_every)
        self._forward = [m for m in FORWARD_METRICS if m in self.metrics]
        self._weight = [m for m in WEIGHT_METRICS if m in self.metrics]
        self._grad = "grad_norm" in self.metrics

        self.run_dim = run_dim
        self._model = unwrap_model(model)
        self.layers = select_modules(self._model, include, exclude, run_dim)
        if not self.layers:
            import warnings

            warnings.warn(
                f"Recorder selected no layer of {type(self._model).__name__}: nothing will be "
                "recorded (no module owns a weight with ndim >= 2, or include/exclude removed all)",
                stacklevel=2,
            )
        self.layer_names = [name for name, _ in self.layers]
        self._layer_idx: dict[str, int] = {}

        self.step_count = 0
        self._calls = [0] * len(self.layers)  # calls so far this step, by layer code
        self._recompute_calls = [0] * len(self.layers)  # checkpointing re-runs this step
        self._grad_hooked: set[tuple[int, int]] = set()  # (layer, call) with a grad hook
        self._last_output: tuple | None = None  # (weakref, version, norm) of the last output
        self._pending: list[torch.Tensor] = []
        self._pending_keys: list[tuple[int, int, int, int, int]] = []
        self._stacked: list[torch.Tensor] = []
        self._stacked_keys: list[np.ndarray] = []
        self._host_values: list[np.ndarray] = []
        self._host_keys: list[np.ndarray] = []
        self._handles: list = []
        self._attached = False
        self._depth = 0  # nesting of ``with`` blocks; construction attaches without entering
        self._paused = False
        self._set_phase()
        self._attach()

    # ------------------------------------------------------------------ lifecycle
    def _attach(self) -> None:
        if self._attached:
            return  # attaching twice never records twice
        owner = _ACTIVE.get(self._model)
        if owner is not None:
            raise RuntimeError(
                f"{type(self._model).__name__} already has an active Recorder ({owner}); "
                "close it before attaching another"
            )
        hook = torch._dynamo.disable(self._forward_hook)
        # the autograd graph must not keep the recorder alive: grad hooks hold a weak reference
        self._grad_hook = partial(torch._dynamo.disable(_record_grad_norm), weakref.ref(self))
        for code, (_, module) in enumerate(self.layers):
            handle = module.register_forward_hook(_ForwardHook(hook, code), with_kwargs=True)
            self._handles.append(handle)
        _ACTIVE[self._model] = f"Recorder at {id(self):#x}"
        self._attached = True

    def close(self) -> None:
        """Flush pending values and remove every hook (idempotent)."""
        self._commit_step()
        self.flush()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        if self._attached:
            _ACTIVE.pop(self._model, None)
        self._attached = False

    def __enter__(self) -> Recorder:
        self._attach()
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.close()

    @contextmanager
    def paused(self):
        """Context in which forward passes are not recorded (e.g. evaluation)."""
        previous, self._paused = self._paused, True
        try:
            yield self
        finally:
            self._paused = previous

    # ------------------------------------------------------------------ hooks
    def _set_phase(self) -> None:
        self._recording = self.step_count % self.every == 0
        self._weights_due = self.step_count % self.weight_every == 0 and bool(self._weight)

    def _put(
        self, value: torch.Tensor, step: int, layer: int, call: int, code: int, aux: int = 0
    ) -> None:
        self._pending.append(value)
        self._pending_keys.append((step, layer, call, code, aux))

    def _forward_hook(self, code: int, module: nn.Module, args, kwargs, output) -> None:
        if self._paused or not (self._recording or self._weights_due):
            return
        if torch._C._current_autograd_node() is not None:
            self._recomputed(code, output)  # a forward re-run inside backward (checkpointing)
            return
        call = self._calls[code]
        self._calls[code] = call + 1
        self._layer_idx.setdefault(self.layer_names[code], len(self._layer_idx))
        if self._recording:
            out = _first_tensor(output)
            if out is not None:
                self._record_output(out, (args, kwargs), code, call)
        if self._weights_due and call == 0 and owns_matrix_weight(module, self.run_dim):
            self._record_weights(module, code)

    def _record_output(self, out: torch.Tensor, args, code: int, call: int) -> None:
        """``||o||`` (and ``||x||`` for the gain) now; ``grad_norm`` by a hook on ``out``."""
        step = self.step_count
        if self._forward:
            norm = M.output_norm(out, self.run_dim)
            self._put(norm, step, code, call, _RAW_OUTPUT_NORM, self._elements_per_run(out))
            if "gain" in self._forward:
                x = _first_tensor(args)
                if x is not None:
                    self._record_input(x, norm, step, code, call)
            self._remember_output(out, norm)
        if self._grad and out.requires_grad:
            self._grad_hooked.add((code, call))
            target = _grad_target(out, args)
            target.grad_fn  # noqa: B018 - materialise the node first (avoids a torch crash on views)
            target.register_hook(partial(self._grad_hook, step, code, call))

    def _recomputed(self, code: int, output) -> None:
        """Activation checkpointing re-runs a layer's forward inside backward: it is not a
        new call and records nothing, except the ``grad_norm`` hook when the original call
        ran without autograd (reentrant checkpointing runs the first forward under no_grad)."""
        call = self._recompute_calls[code]
        self._recompute_calls[code] = call + 1
        out = _first_tensor(output)
        if not (self._recording and self._grad) or out is None or not out.requires_grad:
            return
        if (code, call) not in self._grad_hooked:
            self._grad_hooked.add((code, call))
            out.grad_fn  # noqa: B018 - materialise the node first (avoids a torch crash on views)
            out.register_hook(partial(self._grad_hook, self.step_count, code, call))

    def _record_input(
        self, x: torch.Tensor, norm: torch.Tensor, step: int, code: int, call: int
    ) -> None:
        """``||x||`` as the row right after ``||o||`` (flush divides them); ``gain`` directly
        when the two norms cannot be stacked together (different device or dtype)."""
        x_norm = self._input_norm(x)
        if x_norm.dtype == norm.dtype and x_norm.device == norm.device:
            self._put(x_norm, step, code, call, _RAW_INPUT_NORM)
        else:
            self._put(norm / x_norm, step, code, call, _CODE["gain"])

    def _input_norm(self, x: torch.Tensor) -> torch.Tensor:
        """``||x||``, reusing the norm of the last recorded output when ``x`` is that very
        tensor and no in-place operation has changed it since (same version counter)."""
        last = self._last_output
        if last is not None and last[0]() is x and last[1] == x._version:
            return last[2]
        return M.output_norm(x, self.run_dim)

    def _remember_output(self, out: torch.Tensor, norm: torch.Tensor) -> None:
        # a weak reference: remembering must not keep the activation alive; inference
        # tensors have no version counter, so they are never reused
        self._last_output = None if out.is_inference() else (weakref.ref(out), out._version, norm)

    def _elements_per_run(self, out: torch.Tensor) -> int:
        """Elements of ``out`` per run (all of them without ``run_dim``), for ``output_rms``."""
        if self.run_dim is None:
            return out.numel()
        runs = out.shape[self.run_dim]
        return out.numel() // runs if runs else 0

    def _record_weights(self, module: nn.Module, code: int) -> None:
        with torch.no_grad():
            weight = module.weight
            values = {"weight_norm": M.weight_norm(weight, self.run_dim)}
            if "coherence" in self._weight or "coherence_mean" in self._weight:
                groups = getattr(module, "groups", 1)
                coherence = M.row_coherence(weight, run_dim=self.run_dim, groups=groups)
                values["coherence"], values["coherence_mean"] = coherence
        for metric in self._weight:
            self._put(values[metric], self.step_count, code, 0, _CODE[metric])

    # ------------------------------------------------------------------ buffers
    def _commit_step(self) -> None:
        """Stack the pending 0-d values into one device tensor (no host copy)."""
        if not self._pending:
            return
        keys = np.asarray(self._pending_keys, dtype=np.int64)
        for positions in _group_by_device_and_dtype(self._pending):
            self._stacked.append(torch.stack([self._pending[i] for i in positions]))
            self._stacked_keys.append(keys[positions])
        self._pending.clear()
        self._pending_keys.clear()

    def step(self, loss: torch.Tensor | float | None = None) -> None:
        """Mark the end of one optimizer step (call after ``backward()``).

        Args:
            loss: The step's training loss. On the steps that record forward metrics (and
                when ``loss`` is among ``metrics``) it becomes the row of metric ``loss`` of
                the pseudo-layer ``(loss)`` at ``layer_idx`` -1, kept on the device like
                every other value (no host sync). One value without ``run_dim``; one per
                run (a vector over the runs) with it.
        """
        if loss is not None and self._recording and LOSS_METRIC in self.metrics:
            self._put_loss(loss)
        self._commit_step()
        self.step_count += 1
        self._calls = [0] * len(self.layers)
        self._recompute_calls = [0] * len(self.layers)
        self._grad_hooked.clear()
        self._last_output = None
        if self.step_count % self.flush_every == 0:
            self.flush()
        self._set_phase()

    def _put_loss(self, loss: torch.Tensor | float) -> None:
        """Queue the loss under the layer code ``len(layers)`` (named ``(loss)`` by to_frame)."""
        value = loss.detach() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss))
        value = value if value.is_floating_point() else value.float()
        if self.run_dim is None:
            if value.numel() != 1:
                raise ValueError(f"loss must be one value, got shape {tuple(value.shape)}")
            value = value.reshape(())
        else:
            value = value.reshape(-1)
            runs = self._pending[0].numel() if self._pending else value.numel()
            if value.numel() != runs:
                raise ValueError(
                    f"loss must hold one value per run ({runs} runs), got shape "
                    f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else ()}"
                )
        self._put(value, self.step_count, len(self.layers), 0, _CODE[LOSS_METRIC])

    def flush(self) -> None:
        """Copy the stacked device values to the host (one concatenation and copy per device)."""
        if not self._stacked:
            return
        for positions in _group_by_device_and_dtype(self._stacked):
            values = torch.cat([self._stacked[i] for i in positions]).cpu().numpy()
            keys = np.concatenate([self._stacked_keys[i] for i in positions])
            values, keys = self._table_rows(values, keys)
            self._host_values.append(values)
            self._host_keys.append(keys)
        self._stacked.clear()
        self._stacked_keys.clear()

    def _table_rows(self, values: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Host side of a flush: raw norms -> table rows, keys ``(step, layer, call, metric)``.

        ``output_norm`` is the raw ``||o||``; ``output_rms = ||o|| / sqrt(n)`` (NaN for
        ``n = 0``, as :func:`stability.metrics.rms_from_norm`); ``gain = ||o|| / ||x||`` from
        each ``||x||`` row and the ``||o||`` row just before it. The divisions run in the
        values' dtype, exactly as they would on the device.
        """
        code = keys[:, 3]
        direct = code < len(METRICS)
        outputs = np.flatnonzero(code == _RAW_OUTPUT_NORM)
        inputs = np.flatnonzero(code == _RAW_INPUT_NORM)
        parts = [(values[direct], keys[direct, :4])]

        def rows(value: np.ndarray, at: np.ndarray, metric: str) -> None:
            metric_keys = keys[at, :4].copy()
            metric_keys[:, 3] = _CODE[metric]
            parts.append((value, metric_keys))

        with np.errstate(divide="ignore", invalid="ignore"):
            if "output_norm" in self._forward:
                rows(values[outputs], outputs, "output_norm")
            if "output_rms" in self._forward:
                root_n = np.sqrt(keys[outputs, 4].astype(np.float64)).astype(values.dtype)
                rows(
                    values[outputs] / root_n.reshape(-1, *[1] * (values.ndim - 1)),
                    outputs,
                    "output_rms",
                )
            if "gain" in self._forward:
                rows(values[inputs - 1] / values[inputs], inputs, "gain")
        return np.concatenate([v for v, _ in parts]), np.concatenate([k for _, k in parts])

    @property
    def pending_device_tensors(self) -> int:
        """Number of device tensors waiting for a flush (bounded by ``flush_every``)."""
        return len(self._pending) + len(self._stacked)

    # ------------------------------------------------------------------ output
    def to_frame(self) -> pd.DataFrame:
        """All records so far as a tidy DataFrame with columns :data:`COLUMNS`.

        With ``run_dim`` set, a ``run`` column follows ``step``. Rows are sorted by step,
        (run,) depth order (``layer_idx``), call and metric order.
        """
        self._commit_step()
        self.flush()
        keys = np.concatenate(self._host_keys) if self._host_keys else np.zeros((0, 4), np.int64)
        values = np.concatenate(self._host_values) if self._host_values else np.zeros(0)
        runs = values.shape[1] if values.ndim == 2 else 1
        keys = np.repeat(keys, runs, axis=0)
        depth = np.array(
            [self._layer_idx.get(n, -1) for n in self.layer_names] + [LOSS_LAYER_IDX],
            dtype=np.int64,
        )
        run = np.tile(np.arange(runs), len(keys) // runs)
        columns = {
            "step": keys[:, 0],
            "run": run,
            "layer": np.array(self.layer_names + [LOSS_LAYER], dtype=object)[keys[:, 1]],
            "layer_idx": depth[keys[:, 1]],
            "call_idx": keys[:, 2],
            "metric": np.array(METRICS, dtype=object)[keys[:, 3]],
            "value": values.reshape(-1).astype(np.float64),
        }
        if self.run_dim is None:
            del columns["run"]
        frame = pd.DataFrame(columns)
        sort_keys = [keys[:, 3], keys[:, 2], columns["layer_idx"], run, keys[:, 0]]
        return frame.iloc[np.lexsort(sort_keys)].reset_index(drop=True)

    def pop_frame(self) -> pd.DataFrame:
        """Like :meth:`to_frame`, then forget those rows (bounded host memory for long runs).

        Use it to stream records to disk in parts, e.g. one parquet file per epoch.
        """
        frame = self.to_frame()
        self._host_values.clear()
        self._host_keys.clear()
        return frame

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write :meth:`to_frame` to ``path`` (``.parquet`` or ``.csv``), atomically.

        An existing file is never replaced unless ``overwrite=True``.
        """
        path = Path(path)
        if path.suffix not in (".parquet", ".csv"):
            raise ValueError(f"save path must end in .parquet or .csv, got {str(path)!r}")
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        frame = self.to_frame()
        try:
            if path.suffix == ".parquet":
                frame.to_parquet(tmp, index=False)
            else:
                frame.to_csv(tmp, index=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def __repr__(self) -> str:
        state = "attached" if self._handles else "closed"
        return (
            f"Recorder({len(self.layers)} layers, step={self.step_count}, every={self.every}, "
            f"weight_every={self.weight_every}, {state})"
        )
