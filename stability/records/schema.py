"""The record table's schema: its columns, its metrics, and what each metric means for divergence.

One value per row (tidy):

=========  ========================================================================
column     meaning
=========  ========================================================================
step       optimizer step, from ``Recorder.step()`` (0-based)
layer      the module's qualified name (``module.`` and ``_orig_mod.`` stripped)
layer_idx  depth order: the order of first forward calls, merged over the steps (a layer
           first seen late, e.g. skipped by LayerDrop at step 0, goes right after the
           layer called before it); one value per layer for the whole table
call_idx   which call of that module within the step, from 0 in the order they ran: the
           micro-batches of gradient accumulation (call 0 = the first), the repeated calls
           of a shared module; evaluation forwards (autograd disabled) are no calls and
           have no rows unless ``Recorder(record_no_grad=True)``; weight metrics: call 0
metric     one of :data:`METRICS`
value      float
=========  ========================================================================

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
#: ``||o||_2 / sqrt(numel(o))`` and ``gain`` ``||o|| / ||x||`` (NaN when ``||x|| = 0``).
FORWARD_METRICS: tuple[str, ...] = ("output_norm", "output_rms", "gain")
#: Metrics of the backward pass: ``grad_norm`` ``||dL/do||_2``.
GRAD_METRICS: tuple[str, ...] = ("grad_norm",)
#: Metrics of the effective weight, computed every ``weight_every`` steps: ``weight_norm``
#: ``||W||_F``, ``coherence`` ``max_{i!=j} |cos(w_i, w_j)|`` and ``coherence_mean``, the mean
#: of the same over ``i != j``, both over the pairs of distinct *nonzero* rows, and
#: ``zero_rows``, the number of zero rows they left out (a padding embedding's tied decoder,
#: a pruned unit; a zero row has no direction), recorded only where it is not 0. Rows
#: ``w_i`` are the layer's output units whatever the storage layout (see
#: :mod:`stability.records.weights`). Above ``metrics.COHERENCE_ROW_LIMIT`` (4096) rows, e.g.
#: a vocabulary-sized decoder, both are estimated on a fixed seeded sample of that many rows
#: (:func:`stability.metrics.bounded_coherence`: the max a lower bound, the mean unbiased).
WEIGHT_METRICS: tuple[str, ...] = ("weight_norm", "coherence", "coherence_mean", "zero_rows")
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
#: (dead ReLUs): these, and any other metric outside :data:`NOT_DIVERGENCE_METRICS`, are
#: judged for non-finite values only.
THRESHOLD_METRICS: frozenset[str] = frozenset({"output_rms"})

#: Metrics the divergence rule ignores. Row coherence: a diverging weight already shows in
#: ``weight_norm``, and ``zero_rows`` is a count. ``gain = ||o|| / ||x||`` is NaN for an
#: all-zero input (a dead input, not a divergence), and whenever it is non-finite for a
#: nonzero finite input, ``||o||`` itself is non-finite and the layer's ``output_norm`` /
#: ``output_rms`` rows already report the divergence at the same step.
NOT_DIVERGENCE_METRICS: frozenset[str] = frozenset(
    {"coherence", "coherence_mean", "zero_rows", "gain"}
)

#: The divergence rule's default magnitude threshold on :data:`THRESHOLD_METRICS`.
DEFAULT_THRESHOLD: float = 1e6

#: The layer name of a model that is itself a single selected layer.
ROOT_NAME = "(model)"
