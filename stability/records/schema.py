"""The record table's schema: its columns, its metrics, and what each metric means for divergence.

One value per row (tidy):

======== ==========================================================================
column   meaning
======== ==========================================================================
step     optimizer step, from ``Recorder.step()`` (0-based)
layer    the module's qualified name (``module.`` and ``_orig_mod.`` stripped)
layer_idx  depth order: the rank of the layer's first forward call in the run
call_idx which call of that module within the step (shared modules, accumulation)
metric   one of :data:`METRICS`
value    float
======== ==========================================================================

The training loss given to ``Recorder.step(loss=...)`` is the metric ``loss`` of the
pseudo-layer ``(loss)`` at ``layer_idx`` -1 (:data:`LOSS_LAYER`, :data:`LOSS_LAYER_IDX`).

Tables of several runs (the stacked linear sweep) carry extra key columns such as
``run``, ``norm``, ``lr``, ``seed`` in front of these.

Every module that reads, writes, fits or judges a record table takes its names from here.
"""

from __future__ import annotations

#: The columns of the record table, in order.
COLUMNS: tuple[str, ...] = ("step", "layer", "layer_idx", "call_idx", "metric", "value")

#: Metrics of the forward pass: ``output_norm`` ``||o||_2``, ``output_rms``
#: ``||o||_2 / sqrt(numel(o))`` and ``gain`` ``||o|| / ||x||``.
FORWARD_METRICS: tuple[str, ...] = ("output_norm", "output_rms", "gain")
#: Metrics of the backward pass: ``grad_norm`` ``||dL/do||_2``.
GRAD_METRICS: tuple[str, ...] = ("grad_norm",)
#: Metrics of the effective weight, computed every ``weight_every`` steps: ``weight_norm``
#: ``||W||_F``, ``coherence`` ``max_{i!=j} |cos(w_i, w_j)|`` and ``coherence_mean``, the mean
#: of the same over ``i != j`` (rows ``w_i`` are the layer's output units).
WEIGHT_METRICS: tuple[str, ...] = ("weight_norm", "coherence", "coherence_mean")
#: The training loss, given to ``Recorder.step(loss=...)``: one row per recorded step (per
#: run with ``run_dim``), on the pseudo-layer :data:`LOSS_LAYER` at :data:`LOSS_LAYER_IDX`.
LOSS_METRIC: str = "loss"
#: The loss's metrics, as a group like the ones above.
LOSS_METRICS: tuple[str, ...] = (LOSS_METRIC,)
#: The layer name of the loss rows: parenthesised, so it can never be a module's name.
LOSS_LAYER: str = "(loss)"
#: The ``layer_idx`` of the loss rows: -1, before every layer, and never a depth. Depth fits
#: select one per-layer metric, so they never see these rows; the divergence rule judges a
#: non-finite loss a divergence (``loss`` is not in :data:`THRESHOLD_METRICS`: a loss has no
#: scale-free magnitude threshold).
LOSS_LAYER_IDX: int = -1
#: Every metric the Recorder can record, in its order.
METRICS: tuple[str, ...] = FORWARD_METRICS + GRAD_METRICS + WEIGHT_METRICS + LOSS_METRICS

#: Metrics to which the divergence rule's magnitude threshold applies: ``output_rms`` only.
#: It is the one norm free of the batch size and the layer size (1.0 for an ideal BN output),
#: so one threshold means the same on every model. ``output_norm`` grows with
#: ``sqrt(numel)`` (a healthy ResNet-50 layer at batch 256 has ``||o|| ~ 1e4``),
#: ``weight_norm`` with the layer size, ``grad_norm`` with the fp16 loss scale (65536 by
#: default), and ``gain`` is legitimately huge for a layer whose input is nearly zero
#: (dead ReLUs): these, and any other metric, are judged for non-finite values only.
THRESHOLD_METRICS: frozenset[str] = frozenset({"output_rms"})

#: Metrics the divergence rule ignores: row coherence is NaN for a weight with a zero row
#: (e.g. ``nn.Embedding(padding_idx=0)``, a zero-initialised classifier head), a healthy
#: state, and a diverging weight already shows in ``weight_norm``.
NOT_DIVERGENCE_METRICS: frozenset[str] = frozenset({"coherence", "coherence_mean"})

#: The divergence rule's default magnitude threshold on :data:`THRESHOLD_METRICS`.
DEFAULT_THRESHOLD: float = 1e6

#: The layer name of a model that is itself a single selected layer.
ROOT_NAME = "(model)"
