"""The hook machinery of the Recorder: what a forward hook and a gradient hook record.

A forward hook on every selected module computes ``||o||`` of the output it just produced
and ``||x||`` of its input (0-d device tensors, never read on the host) and, when gradients
are recorded, registers a tensor hook on that output for ``grad_norm``. Each value is
queued with its key ``(step, layer, call, code, aux)`` by ``Recorder._put``; the raw
norms (codes :data:`RAW_OUTPUT_NORM`, :data:`RAW_INPUT_NORM`) become ``output_norm``,
``output_rms`` and ``gain`` rows at flush time.

What counts as a layer's output and input: the first floating-point tensor of what the
module returns (depth first through tuples, lists and dicts) and of its positional, then
keyword, arguments.
"""

from __future__ import annotations

import sys
import weakref
from collections import OrderedDict
from functools import partial

import torch
import torch.utils.checkpoint as _checkpoint
from torch import nn

from stability import metrics as M
from stability.records.schema import METRICS

#: Metric name -> code in the keys of queued values.
CODE = {m: i for i, m in enumerate(METRICS)}
# Codes of the raw norms kept between a hook and flush(); they never reach the table.
RAW_OUTPUT_NORM = len(METRICS)  # ||o||, aux = elements per run -> output_norm, output_rms
RAW_INPUT_NORM = len(METRICS) + 1  # ||x||, right after its ||o|| row -> gain
_GRAD_NORM = CODE["grad_norm"]

# Bound once: the hooks call these on every layer call.
_current_autograd_node = torch._C._current_autograd_node
_grad_enabled = torch.is_grad_enabled
_functorch_level = torch._C._functorch.maybe_current_level


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


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """``_first_tensor((args, kwargs))``: ``args[0]`` at once when it is a floating tensor."""
    if args:
        first = args[0]
        if isinstance(first, torch.Tensor) and first.is_floating_point():
            return first
    return _first_tensor((args, kwargs))


def _add_tensor_hook(tensor: torch.Tensor, hook) -> None:
    """``tensor.register_hook(hook)`` for a hook that is never removed, without building
    its removable handle.

    For a plain (not subclassed) non-leaf tensor it takes the very steps of
    ``Tensor.register_hook`` (the tensor's hook dict, connected to its ``grad_fn`` once),
    so the hook runs at the same point and in the same order among the tensor's hooks;
    its key, the hook itself, never collides with a handle's integer id. Anything else
    (a leaf, a tensor subclass, a torch whose internals differ: :data:`_DIRECT_HOOKS`)
    goes through ``register_hook``.
    """
    if _DIRECT_HOOKS and type(tensor) is torch.Tensor:
        grad_fn = tensor.grad_fn  # also materialises the node (avoids a torch crash on views)
        if grad_fn is not None:
            hooks = tensor._backward_hooks
            if hooks is None:
                hooks = tensor._backward_hooks = OrderedDict()
                grad_fn._register_hook_dict(tensor)
            hooks[hook] = hook
            return
    tensor.grad_fn  # noqa: B018 - materialise the node first (avoids a torch crash on views)
    tensor.register_hook(hook)


def _direct_hooks_work() -> bool:
    """Whether :func:`_add_tensor_hook`'s direct path works in this torch: a hook added
    that way and one added by ``register_hook`` after it each see the gradient once, in
    that order."""
    try:
        with torch.inference_mode(False), torch.enable_grad():
            leaf = torch.ones(2, requires_grad=True)
            out = leaf * 2
            seen: list[tuple[str, torch.Tensor]] = []
            hooks = out._backward_hooks
            if hooks is None:
                hooks = out._backward_hooks = OrderedDict()
                out.grad_fn._register_hook_dict(out)
            hooks["direct"] = lambda grad: seen.append(("direct", grad))
            out.register_hook(lambda grad: seen.append(("handle", grad)))
            out.sum().backward()
        return [name for name, _ in seen] == ["direct", "handle"] and all(
            torch.equal(grad, torch.ones(2)) for _, grad in seen
        )
    except (AttributeError, RuntimeError, TypeError):
        return False


#: Whether :func:`_add_tensor_hook` may skip ``register_hook`` (checked once at import).
_DIRECT_HOOKS = _direct_hooks_work()


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


def _grad_target(out: torch.Tensor, args: tuple, kwargs: dict) -> torch.Tensor:
    """The tensor whose gradient equals the gradient with respect to ``out``.

    A Linear on a >2-d input returns a view of its 2-d product; an in-place operation on
    that view afterwards would detach a hook registered on the view, so the hook goes on
    the view's base when it holds exactly the same elements (and is not an input).
    """
    base = out._base
    if base is None or base.numel() != out.numel() or not base.requires_grad:
        return out
    if any(base is x for x in _tensors((args, kwargs))):
        return out
    return base


def _record_grad_norm(
    recorder: weakref.ref, step: int, code: int, call: int, grad: torch.Tensor
) -> None:
    """Tensor hook on a recorded output: ``grad_norm`` of the gradient flowing back into it."""
    alive = recorder()
    if alive is not None and alive._attached:
        alive._put(M.output_norm(grad, alive.run_dim), step, code, call, _GRAD_NORM)


def inside_function_transform() -> bool:
    """Whether the current code runs inside a ``torch.func`` transform (vmap, grad, jvp).

    The tensors a hook sees there are per-sample or dual wrappers that cannot be stacked
    with the step's other values, so the Recorder records nothing inside a transform.
    """
    return _functorch_level() is not None


def dispatch(method, recorder: weakref.ref, code: int, *hook_args):
    """Run ``method(recorder, code, *hook_args)`` if the recorder is alive and attached.

    Hooks reach their Recorder through this function only, by a weak reference: a model
    never keeps a Recorder alive, so one that is dropped without ``close()`` is collected
    and its hooks removed (``Recorder._finalizer``). Inside a ``torch.func`` transform
    nothing is recorded (one warning per Recorder).
    """
    alive = recorder()
    if alive is None or not alive._attached:
        return None
    if _functorch_level() is not None:  # inside_function_transform()
        alive._warn_function_transform()
        return None
    return method(alive, code, *hook_args)


class LayerHook:
    """A hook of one recorded layer: ``dispatch(method, recorder, code, *hook_args)``.

    Its call is excluded from ``torch.compile`` tracing (``torch._dynamo.disable``): the
    compiled model breaks its graph around it and the hook runs eagerly (dynamo would
    otherwise resolve the weak reference at trace time). A pre-hook (``pre=True``) passes
    ``(args, kwargs)`` without the module. A copy of the model (``copy.deepcopy``: an EMA or
    ``AveragedModel`` twin) or a pickled one (``torch.save``) gets an inert hook instead,
    so the copy never feeds this recorder and pickling never needs the recorder.
    """

    __slots__ = ("method", "recorder", "code", "pre")

    def __init__(self, method, recorder: weakref.ref, code: int, pre: bool = False) -> None:
        self.method, self.recorder, self.code, self.pre = method, recorder, code, pre

    @torch._dynamo.disable
    def __call__(self, module, *hook_args):
        if self.pre:
            return dispatch(self.method, self.recorder, self.code, *hook_args)
        return dispatch(self.method, self.recorder, self.code, module, *hook_args)

    def __deepcopy__(self, memo):
        return inert_hook(self.pre)

    def __reduce__(self):
        return (inert_hook, (self.pre,))


def _noop_hook(module, args, kwargs, output) -> None:
    return None


def _noop_pre_hook(module, args, kwargs) -> None:
    return None


def inert_hook(pre: bool):
    """The hook a copied or unpickled model holds in place of a :class:`LayerHook`."""
    return _noop_pre_hook if pre else _noop_hook


def overwrites_input(module: nn.Module) -> bool:
    """Whether ``module`` declares that it overwrites its input (``ReLU(inplace=True)``,
    ``Dropout(inplace=True)``, ...): its ``||x||`` must be read before its forward."""
    return getattr(module, "inplace", False) is True


class ForwardRecording:
    """The per-call half of :class:`~stability.records.recorder.Recorder` (a base class).

    It reads the Recorder's settings (``run_dim``, ``_forward``, ``_grad``, ``_recording``,
    ``_weights_due``, ``_paused``, ``record_no_grad``, ``step_count``), keeps the per-step
    state ``_calls``,
    ``_recompute_calls``, ``_grad_hooked``, ``_last_output``, ``_input_before`` and
    ``_layer_idx``, and queues values through ``_put`` / ``_record_weights``.

    Layers in ``_weights_only`` (an attention layer's ``out_proj``, whose own forward never
    runs: its hook sits on the attention module) record their weight metrics only.
    """

    def _capture_weight(self, code: int, parametrization, args, kwargs, weight) -> None:
        """Forward hook on a recorded layer's weight parametrization: on a weight step,
        keep the weight its first call computes, for ``_record_weights`` (reading
        ``module.weight`` again would run the parametrization again, e.g. one more
        spectral-norm power iteration)."""
        if self._weights_due and not self._paused and self._calls[code] == 0:
            if torch._C._current_autograd_node() is None and not self._evaluating():
                self._fresh_weights[code] = weight

    def _pre_hook(self, code: int, args, kwargs) -> None:
        """``||x||`` of a layer that will overwrite its input, taken before it does."""
        if self._paused or not self._recording or "gain" not in self._forward:
            return
        if self._evaluating():
            return
        if torch._C._current_autograd_node() is not None:
            return  # a re-run inside backward records nothing
        x = _first_tensor((args, kwargs))
        if x is not None:
            self._input_before[code] = self._input_norm(x)

    def _forward_hook(self, code: int, module: nn.Module, args, kwargs, output) -> None:
        if self._paused or not (self._recording or self._weights_due):
            return
        if _current_autograd_node() is not None:
            self._recomputed(code, output)  # a forward re-run inside backward (checkpointing)
            return
        if not _grad_enabled() and self._evaluating():
            return  # an evaluation forward is not a call of the training step
        call = self._calls[code]
        self._calls[code] = call + 1
        if code not in self._depth_rank:
            self._place_in_depth_order(code)
        self._last_code = code
        if self._recording and code not in self._weights_only:
            out = _first_tensor(output)
            if out is not None:
                self._record_output(out, args, kwargs, code, call)
        if self._weights_due and call == 0:
            # the layer's own module (not the hook's: attention holds out_proj's hook);
            # nothing for a module without a matrix weight
            self._record_weights(self.layers[code][1], code)

    def _evaluating(self) -> bool:
        """Whether the forward running now is an evaluation forward that is not recorded
        (:func:`evaluation_forward`, unless the Recorder has ``record_no_grad=True``)."""
        return not self.record_no_grad and evaluation_forward()

    def _place_in_depth_order(self, code: int) -> None:
        """The first call ever of layer ``code``: it goes into the depth order right after
        the layer called just before it in this step (first when it is the step's first
        call), so a layer skipped on the first steps (LayerDrop, a branch not taken) still
        lands at its depth, and its successors move down by one (``_layer_idx`` renumbered).
        """
        order = self._depth_order
        at = order.index(self._last_code) + 1 if self._last_code is not None else 0
        order.insert(at, code)
        self._depth_rank = {c: i for i, c in enumerate(order)}
        self._layer_idx = {self.layer_names[c]: i for i, c in enumerate(order)}

    def _record_output(
        self, out: torch.Tensor, args: tuple, kwargs: dict, code: int, call: int
    ) -> None:
        """``||o||`` (and ``||x||`` for the gain) now; ``grad_norm`` by a hook on ``out``."""
        step = self.step_count
        if self._forward:
            norm = M.output_norm(out, self.run_dim)
            self._put(norm, step, code, call, RAW_OUTPUT_NORM, self._elements_per_run(out))
            if "gain" in self._forward:
                x_norm = self._input_before.pop(code, None)
                if x_norm is None:
                    x = _first_input(args, kwargs)
                    x_norm = None if x is None else self._input_norm(x)
                if x_norm is not None:
                    self._record_input(x_norm, norm, step, code, call)
            self._remember_output(out, norm)
        if self._grad and out.requires_grad:
            self._grad_hooked.add((code, call))
            target = _grad_target(out, args, kwargs)
            _add_tensor_hook(target, partial(self._grad_hook, step, code, call))

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
            _add_tensor_hook(out, partial(self._grad_hook, self.step_count, code, call))

    def _record_input(
        self, x_norm: torch.Tensor, norm: torch.Tensor, step: int, code: int, call: int
    ) -> None:
        """``||x||`` as the row right after ``||o||`` (flush divides them); ``gain`` directly
        when the two norms cannot be stacked together (different device or dtype)."""
        if x_norm.dtype == norm.dtype and x_norm.device == norm.device:
            self._put(x_norm, step, code, call, RAW_INPUT_NORM)
        else:
            self._put(M.gain_from_norms(norm, x_norm), step, code, call, CODE["gain"])

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


def _inside_reentrant_checkpoint() -> bool:
    """Whether the caller runs inside the first forward of a reentrant activation checkpoint
    (``torch.utils.checkpoint.checkpoint(..., use_reentrant=True)``), found on the Python
    call stack: that forward runs under ``torch.no_grad`` and its re-run inside backward
    builds the graph, so it is a training call, not an evaluation."""
    target = _checkpoint.CheckpointFunction.forward.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is target:
            return True
        frame = frame.f_back
    return False


def evaluation_forward() -> bool:
    """Whether a forward running now is an *evaluation forward*: autograd is disabled
    (``torch.no_grad()``, ``torch.inference_mode()``, ``torch.set_grad_enabled(False)``)
    and it is not the first forward of a reentrant activation checkpoint. Such a forward
    builds no graph, so it cannot be part of an optimizer step: it is no call of the
    training step, and a Recorder with ``record_no_grad=False`` (the default) records
    nothing of it (see :class:`~stability.records.recorder.Recorder`)."""
    return not torch.is_grad_enabled() and not _inside_reentrant_checkpoint()
