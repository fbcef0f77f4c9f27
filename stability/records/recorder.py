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
recorded layer and the hooks run eagerly. Outputs are then equal to those of the compiled
model without the Recorder up to float rounding, not bitwise: the graph breaks change
which operations are fused (eager models are bitwise identical). Hooks attached to a
model that was already compiled and run are never called by the code compiled before;
attaching then warns: attach first, or call ``torch.compiler.reset()`` after attaching.
Attaching turns on dynamo's guards on module hooks (``skip_nnmodule_hook_guards =
False``), so code compiled afterwards recompiles once when the hooks are removed.

Modules: :mod:`~stability.records.selection` chooses the layers,
:mod:`~stability.records.hooks` holds what a hook records per call,
:mod:`~stability.records.weights` the weight metrics; this module owns the lifecycle, the
buffers and the table.
"""

from __future__ import annotations

import gc
import numbers
import os
import warnings
import weakref
from collections.abc import Iterable
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from stability.records.hooks import (
    CODE,
    ForwardRecording,
    LayerHook,
    _record_grad_norm,
    overwrites_input,
)
from stability.records.rows import check_metrics, group_by_device_and_dtype, table_rows
from stability.records.schema import (
    FORWARD_METRICS,
    LOSS_LAYER,
    LOSS_LAYER_IDX,
    LOSS_METRIC,
    METRICS,
    WEIGHT_METRICS,
)
from stability.records.selection import (
    Selector,
    hook_modules,
    owns_matrix_weight,
    select_modules,
    unwrap_model,
)
from stability.records.weights import weight_metric_values, weight_parametrization

__all__ = ["Recorder", "Selector", "owns_matrix_weight", "select_modules", "unwrap_model"]

# Models that currently have an active Recorder (weak keys: no reference kept to the model).
_ACTIVE: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()


def _release(handles: list, model: weakref.ref) -> None:
    """Remove a Recorder's hooks and its model's active mark (close, or garbage collection)."""
    for handle in handles:
        handle.remove()
    handles.clear()
    alive = model()
    if alive is not None:
        _ACTIVE.pop(alive, None)


def _prepare_compile() -> None:
    """Make code that ``torch.compile`` compiles from now on guard on module hooks, and warn
    when graphs were compiled before this Recorder was attached.

    By default compiled code does not guard on module hooks
    (``torch._dynamo.config.skip_nnmodule_hook_guards``), and modules of the same structure
    share compiled code, so code compiled before the hooks existed would never call them:
    no rows, then a partial table after a recompile. With the guards on, adding or removing
    hooks recompiles; code compiled earlier has no such guard, hence the warning.
    """
    dynamo = torch._dynamo
    from torch._dynamo.utils import counters

    if dynamo.config.skip_nnmodule_hook_guards and counters["stats"]["unique_graphs"]:
        warnings.warn(
            "Recorder attached after torch.compile compiled graphs in this process: code "
            "compiled before the hooks existed may not run them (its layers would record "
            "nothing). Attach the Recorder before the first compiled call, or call "
            "torch.compiler.reset() after attaching",
            stacklevel=4,
        )
    dynamo.config.skip_nnmodule_hook_guards = False


class Recorder(ForwardRecording):
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
        record_no_grad: Record forwards that run with autograd disabled. ``False``
            (default): such a forward (under ``torch.no_grad()``, ``torch.inference_mode()``;
            :func:`~stability.records.hooks.evaluation_forward`) is an evaluation forward,
            not a call of the training step, and records nothing, so the common loop
            ``train step; rec.step(); with torch.no_grad(): validate`` gives the table of
            the training forwards alone. ``True``: every forward is a call (a Recorder that
            watches inference or evaluation on purpose); a validation forward is then one
            more call of the step that follows.

    Calls: ``call_idx`` numbers the recorded forwards of one module within one step, from
    0, in the order they run. With gradient accumulation over ``k`` micro-batches before
    ``step()`` they are calls ``0 .. k-1`` (call 0 = the first micro-batch); a module called
    twice per forward (weight sharing) has two calls per micro-batch. Weight metrics are
    recorded once per weight step, at call 0. Not calls: evaluation forwards (above),
    forwards inside :meth:`paused`, and activation checkpointing's re-run of a forward
    inside backward (reentrant checkpointing's first forward, which runs under no_grad, is
    a call). The fits (:mod:`stability.fitting`) read call 0 by default.

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
        record_no_grad: bool = False,
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
        self.metrics = check_metrics(metrics)
        self.every, self.weight_every = int(every), int(weight_every)
        self.flush_every = int(flush_every)
        self._forward = [m for m in FORWARD_METRICS if m in self.metrics]
        self._weight = [m for m in WEIGHT_METRICS if m in self.metrics]
        self._grad = "grad_norm" in self.metrics

        if not isinstance(record_no_grad, bool):
            raise TypeError(f"record_no_grad must be True or False, got {record_no_grad!r}")
        self.record_no_grad = record_no_grad
        self.run_dim = run_dim
        self._model = unwrap_model(model)
        self.layers = select_modules(self._model, include, exclude, run_dim)
        if not self.layers:
            warnings.warn(
                f"Recorder selected no layer of {type(self._model).__name__}: nothing will be "
                "recorded (no module owns a weight with ndim >= 2, or include/exclude removed all)",
                stacklevel=2,
            )
        self.layer_names = [name for name, _ in self.layers]
        self._layer_idx: dict[str, int] = {}  # depth order: layer name -> layer_idx
        self._depth_order: list[int] = []  # layer codes in depth order (hooks.py)
        self._depth_rank: dict[int, int] = {}  # layer code -> its place in _depth_order
        self._last_code: int | None = None  # the layer called last in this step

        self.step_count = 0
        self._calls = [0] * len(self.layers)  # calls so far this step, by layer code
        self._recompute_calls = [0] * len(self.layers)  # checkpointing re-runs this step
        self._grad_hooked: set[tuple[int, int]] = set()  # (layer, call) with a grad hook
        self._last_output: tuple | None = None  # (weakref, version, norm) of the last output
        self._input_before: dict[int, torch.Tensor] = {}  # ||x|| before an in-place forward
        self._fresh_weights: dict[int, torch.Tensor] = {}  # parametrized weights this forward
        self._tied_weights: dict = {}  # weight metrics of this step by tensor (weights.py)
        self._hook_modules = hook_modules(self._model, self.layers)
        # attention's out_proj: its record hangs on the attention module (weights only)
        layer_modules = [module for _, module in self.layers]
        self._weights_only = {
            code
            for code, target in enumerate(self._hook_modules)
            if target is not layer_modules[code]
        }
        self._pending: list[torch.Tensor] = []
        self._pending_keys: list[tuple[int, int, int, int, int]] = []
        self._stacked: list[torch.Tensor] = []
        self._stacked_keys: list[np.ndarray] = []
        self._host_values: list[np.ndarray] = []
        self._host_keys: list[np.ndarray] = []
        self._handles: list = []
        self._attached = False
        self._function_transform_warned = False
        self._depth = 0  # nesting of ``with`` blocks; construction attaches without entering
        self._paused = False
        self._silent_checked = False  # the first flush warns about layers without rows
        self._set_phase()
        self._attach()

    # ------------------------------------------------------------------ lifecycle
    def _attach(self) -> None:
        if self._attached:
            return  # attaching twice never records twice
        if self._model in _ACTIVE:
            gc.collect()  # a dropped Recorder caught in a reference cycle releases the model
        owner = _ACTIVE.get(self._model)
        if owner is not None:
            raise RuntimeError(
                f"{type(self._model).__name__} already has an active Recorder ({owner}); "
                "close it before attaching another"
            )
        _prepare_compile()
        me = weakref.ref(self)  # hooks never keep the recorder alive (see hooks.dispatch)
        self._grad_hook = partial(torch._dynamo.disable(_record_grad_norm), me)
        cls = type(self)
        for code, target in enumerate(self._hook_modules):
            hook = LayerHook(cls._forward_hook, me, code)
            self._handles.append(target.register_forward_hook(hook, with_kwargs=True))
            if overwrites_input(target):  # read ||x|| before the forward overwrites x
                pre = LayerHook(cls._pre_hook, me, code, pre=True)
                self._handles.append(target.register_forward_pre_hook(pre, with_kwargs=True))
            plist = weight_parametrization(self.layers[code][1])
            if plist is not None:  # keep the weight the forward computes (no second run)
                grab = LayerHook(cls._capture_weight, me, code)
                self._handles.append(plist.register_forward_hook(grab, with_kwargs=True))
        # Dropped without close(): remove the hooks and free the model for another Recorder.
        self._finalizer = weakref.finalize(self, _release, self._handles, weakref.ref(self._model))
        _ACTIVE[self._model] = f"Recorder at {id(self):#x}"
        self._attached = True

    def close(self) -> None:
        """Flush pending values and remove every hook (idempotent)."""
        self._commit_step()
        self.flush()
        if self._attached:
            self._finalizer()  # removes the hooks and the model's active mark, once
        self._attached = False

    def _warn_function_transform(self) -> None:
        """Say once that values inside ``torch.func`` transforms are not recorded."""
        if not self._function_transform_warned:
            self._function_transform_warned = True
            warnings.warn(
                "Recorder: layers ran inside a torch.func transform (vmap/grad/jvp); their "
                "per-sample values are not recorded (run the model outside the transform to "
                "record it)",
                stacklevel=3,
            )

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

    def _record_weights(self, module: nn.Module, code: int) -> None:
        fresh = self._fresh_weights.pop(code, None)  # the weight this forward computed
        values = weight_metric_values(
            module, self._weight, self.run_dim, fresh, shared=self._tied_weights
        )
        for metric, value in values.items():
            self._put(value, self.step_count, code, 0, CODE[metric])

    # ------------------------------------------------------------------ buffers
    def _commit_step(self) -> None:
        """Stack the pending 0-d values into one device tensor (no host copy)."""
        if not self._pending:
            return
        keys = np.asarray(self._pending_keys, dtype=np.int64)
        for positions in group_by_device_and_dtype(self._pending):
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
        self._last_code = None
        self._fresh_weights.clear()
        self._tied_weights.clear()
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
        self._put(value, self.step_count, len(self.layers), 0, CODE[LOSS_METRIC])

    def flush(self) -> None:
        """Copy the stacked device values to the host (one concatenation and copy per device)."""
        if not self._stacked:
            return
        for positions in group_by_device_and_dtype(self._stacked):
            values = torch.cat([self._stacked[i] for i in positions]).cpu().numpy()
            keys = np.concatenate([self._stacked_keys[i] for i in positions])
            values, keys = self._table_rows(values, keys)
            self._host_values.append(values)
            self._host_keys.append(keys)
        self._stacked.clear()
        self._stacked_keys.clear()
        if not self._silent_checked:
            self._silent_checked = True
            self._warn_silent_layers()

    def _warn_silent_layers(self) -> None:
        """At the first flush, one warning naming the selected layers whose forward hook
        never fired on a recorded step: a module its parent bypasses
        (``F.multi_head_attention_forward`` reads ``out_proj.weight`` without calling
        ``out_proj``), a branch not taken, a shared module called zero times."""
        silent = [n for code, n in enumerate(self.layer_names) if code not in self._depth_rank]
        if silent:
            warnings.warn(
                f"Recorder: selected layer(s) {', '.join(silent)} never ran up to step "
                f"{self.step_count} and have no rows: not called as modules "
                "(bypassed by their parent, a branch not taken); exclude them or select "
                "their parent",
                stacklevel=4,
            )

    def _table_rows(self, values: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Host side of a flush (:func:`stability.records.rows.table_rows`)."""
        return table_rows(values, keys, self._forward)

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
