r"""The divergence early-warning detector: one run, one recorded step at a time.

Both doors use this one detector: :func:`stability.fitting.early_warning` feeds it the steps
of a saved record table, :class:`stability.Monitor` the steps of a live run, so on the same
run they warn at the same step.

At every recorded step ``t`` (records are counted, so with ``Recorder(every=k)`` a "step"
below is a record) the detector computes, from the run's own history only:

* **jump**: the largest layer's ratio of its metric (``output_rms``) to its own trailing
  median, ``J(t) = max_l v_l(t) / median(v_l(t-W), ..., v_l(t-1))`` over the last
  ``W = window`` records (non-finite history values left out). A non-finite ``v_l(t)``
  counts as an infinite ratio; a layer whose trailing median is not finite and positive
  does not count.
* **loss ratio**: ``L(t) = loss(t) / median(loss(t-W), ..., loss(t-1))``; infinite for a
  non-finite loss; NaN when the trailing median is not finite and positive (a loss that is
  not positive has no ratio).
* **depth factor**: ``f(t) = exp(slope)`` of the OLS fit ``log v_l(t) = a + slope * k_l``
  over the layers' depth ranks ``k_l`` (finite, positive values only, at least
  ``min_layers`` of them), exactly :func:`stability.fitting.depth_growth`; and its **rise**
  ``f(t) - median(f(t-W), ..., f(t-1))``.

It warns at the first record ``t`` with at least ``warmup`` earlier records where

    J(t) >= jump   and   L(t) >= loss_ratio

(``loss_ratio=None`` drops the second condition). The thresholds are ratios to the run's
own trailing medians, so the detector calibrates itself on each run's history instead of
on absolute levels, which do not carry over between models and learning rates.

The warning says the **regime**: ``abrupt`` when the depth factor rose by at least
``abrupt_rise`` over its trailing median (the WN / unnormalized deep linear regime, where a
growth factor above one compounds over depth and the run dies within a few steps),
``slow`` otherwise (the BN regime: the depth factor stays flat while the weights grow and
the rows align, coherence -> 1), ``unknown`` without a depth fit. And it gives a
**lower-bound estimate of the steps left**: with ``v`` the jump layer's value and ``g`` the
largest per-record growth ``v(s) / v(s-1)`` of that layer over the window,
``steps_left = floor(log(threshold / v) / log g) + 1`` records until ``v > threshold``
(the divergence rule) if it kept growing at that fastest rate; 0 when ``v`` is already
non-finite or beyond the threshold or the loss is non-finite; None when the layer did not
grow. It is an estimate, not a guarantee: a divergence that accelerates beats it.

Defaults (:class:`WarningConfig`): ``jump=3``, ``loss_ratio=2`` and ``warmup=2`` over a
``window=30`` trailing median were chosen by ``analyses/warning_benchmark.py``
(:mod:`stability.experiments.warning_benchmark`, full run of 2026-12-03) on its tuning seeds
0-1 only: Fashion-MNIST, 150-step runs of 50-layer 64-wide linear nets without
normalization, with WN and with BN and of a 10-layer ReLU MLP with WN, 100-step runs of
cifar10-nv with WN at width 0.25, 8 learning rates each around the divergence edge (80
runs). Of the 300 ``(jump, loss_ratio, warmup)`` triples of its grid it is the benchmark's
pick: no false alarm and full recall on every workload, and the largest summed median lead
among those (``jump`` 4 and 5: 2 steps less in total; ``jump`` 2.5 alarmed on half of the BN
net's stable runs; a loss ratio of 1.5 or less, or no loss condition, alarmed on half of the
ReLU MLP's stable runs at every ``jump``). The warm-up of 2 records (10 before) matters most:
4 of the 7 / 6 / 12 diverged none / WN / ReLU-MLP runs and 3 of the 6 cifar10-nv runs of the
tuning seeds reach the onset within their first 10 records, before a 10-record warm-up lets
the detector fire (warm-up 1 scores the same as 2). The held-out seeds' numbers are in the
README's benchmark table.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from stability.fitting.regression import _ols_grouped
from stability.records.schema import DEFAULT_THRESHOLD, FORWARD_METRICS

#: The regimes a warning can name.
REGIMES: tuple[str, ...] = ("abrupt", "slow", "unknown")


@dataclass(frozen=True)
class WarningConfig:
    """The detector's parameters (defaults: see the module docstring for their data).

    Attributes:
        jump: Fire when the largest layer ``metric`` reaches this multiple of its own
            trailing median (3).
        loss_ratio: ... and the loss reaches this multiple of its trailing median (2: meant
            to remove the false alarms of ReLU MLPs, whose rms surges recover while the loss
            stays flat); None uses the rms jump alone (tables without a loss).
        window: Records in the trailing medians (30).
        warmup: Earlier records needed before the detector may fire (2: the trailing
            medians are then over the records seen so far, so an explosion relative to the
            first records already counts); runs that diverge sooner cannot be warned.
        abrupt_rise: Rise of the depth factor over its trailing median that marks the
            abrupt regime (0.05; on the benchmark it labels most diverged none/WN linear
            runs abrupt and most BN runs slow, not all of them).
        min_layers: Usable layers needed for a depth fit (>= 3).
        metric: The per-layer forward metric watched (``output_rms``: free of the batch
            and layer size).
        threshold: The divergence rule's magnitude threshold on ``output_rms``
            (:data:`~stability.records.schema.DEFAULT_THRESHOLD`): the onset for the lead
            and the target of the steps-left estimate.
    """

    jump: float = 3.0
    loss_ratio: float | None = 2.0
    window: int = 30
    warmup: int = 2
    abrupt_rise: float = 0.05
    min_layers: int = 3
    metric: str = "output_rms"
    threshold: float = DEFAULT_THRESHOLD

    def __post_init__(self) -> None:
        def bad(name: str, want: str) -> ValueError:
            return ValueError(f"WarningConfig.{name} must be {want}, got {getattr(self, name)!r}")

        if not _finite(self.jump) or self.jump <= 1:
            raise bad("jump", "a finite number > 1")
        if self.loss_ratio is not None and (not _finite(self.loss_ratio) or self.loss_ratio <= 0):
            raise bad("loss_ratio", "None or a finite number > 0")
        for name, low in (("window", 1), ("warmup", 1), ("min_layers", 3)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise bad(name, f"an integer >= {low}")
        if not _finite(self.abrupt_rise) or self.abrupt_rise < 0:
            raise bad("abrupt_rise", "a finite number >= 0")
        if self.metric not in FORWARD_METRICS:
            raise bad("metric", f"one of {list(FORWARD_METRICS)}")
        if not _finite(self.threshold) or self.threshold <= 0:
            raise bad("threshold", "a finite number > 0")


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class EarlyWarning:
    """A warning of the detector, from a saved table or from a live run.

    Attributes:
        warn_step: The step whose values raised the warning.
        factor: The depth factor ``exp(slope)`` at ``warn_step`` (NaN without a fit).
        onset_step: The divergence onset step (:func:`stability.fitting.divergence_onset`),
            or None: the run never diverged, or it is still alive (the live monitor).
        lead: ``onset_step - warn_step`` in optimizer steps, or None without an onset.
        regime: ``abrupt``, ``slow`` or ``unknown`` (see the module docstring).
        layer: The layer with the largest jump.
        jump: Its value over its trailing median.
        loss_ratio: The loss over its trailing median (NaN without a loss).
        coherence: The largest row coherence over layers at the latest weight record at or
            before ``warn_step`` (NaN when coherence is not recorded).
        steps_left_lower_bound: A lower-bound *estimate* of the steps left before the onset
            (see the module docstring), or None when the layer did not grow.
        seen_at_step: The step at which the warning was raised: ``warn_step`` offline and on
            CPU, up to one step later on CUDA (the values are read asynchronously).
    """

    warn_step: int
    factor: float
    onset_step: int | None
    lead: int | None
    regime: str
    layer: str
    jump: float
    loss_ratio: float
    coherence: float
    steps_left_lower_bound: int | None
    seen_at_step: int

    @property
    def step(self) -> int:
        """``warn_step`` (the name integrations look for)."""
        return self.warn_step

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """One line for a log."""
        left = self.steps_left_lower_bound
        left_text = "unknown" if left is None else f">= {left} (lower-bound estimate)"
        text = (
            f"divergence warning at step {self.warn_step} ({self.regime} regime): {self.layer} "
            f"at {self.jump:.3g}x its trailing median, loss at {self.loss_ratio:.3g}x, depth "
            f"factor {self.factor:.4g}, coherence {self.coherence:.3g}; steps left {left_text}"
        )
        if self.lead is not None:
            text += f"; onset at step {self.onset_step}, lead {self.lead}"
        return text


@dataclass(frozen=True)
class StepSignals:
    """What the detector computed at one record (see the module docstring).

    Attributes:
        step: The record's step.
        ready: At least ``warmup`` earlier records exist.
        jump: ``J(t)`` (NaN when no layer has a usable trailing median).
        layer: The layer reaching ``J(t)`` (the earliest in depth order on a tie), or None.
        loss_ratio: ``L(t)``.
        factor: The depth factor ``f(t)``.
        factor_rise: ``f(t)`` minus its trailing median.
        coherence: Latest largest row coherence (NaN if none recorded).
        steps_left_lower_bound: The steps-left estimate, or None.
    """

    step: int
    ready: bool
    jump: float
    layer: str | None
    loss_ratio: float
    factor: float
    factor_rise: float
    coherence: float
    steps_left_lower_bound: int | None


def regime_of(factor_rise: float, abrupt_rise: float) -> str:
    """``abrupt`` if ``factor_rise >= abrupt_rise``, ``slow`` if below, ``unknown`` if NaN."""
    if not math.isfinite(factor_rise):
        return "unknown"
    return "abrupt" if factor_rise >= abrupt_rise else "slow"


def _median(history: np.ndarray) -> np.ndarray:
    """NaN-aware median over axis 0 (NaN where a column holds no value), without warnings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(history, axis=0)


class WarningDetector:
    """The detector's state for one run: feed it every record in step order.

    Args:
        config: The parameters (default :class:`WarningConfig`).
    """

    def __init__(self, config: WarningConfig | None = None) -> None:
        self.config = config if config is not None else WarningConfig()
        window = self.config.window
        self._column: dict[int, int] = {}  # layer_idx -> column
        self._names: list[str] = []
        self._depth: list[int] = []
        self._values = np.full((window, 0), np.nan)  # ring buffers, row = record % window
        self._growth = np.full((window, 0), np.nan)
        self._last = np.full(0, np.nan)
        self._loss = np.full(window, np.nan)
        self._factor = np.full(window, np.nan)
        self._coherence = math.nan
        self.records = 0

    def _columns(self, layer_idx: Sequence[int], layers: Sequence[str]) -> np.ndarray:
        added = 0
        for idx, name in zip(layer_idx, layers, strict=True):
            if int(idx) not in self._column:
                self._column[int(idx)] = len(self._names)
                self._names.append(str(name))
                self._depth.append(int(idx))
                added += 1
        if added:
            pad = np.full((self.config.window, added), np.nan)
            self._values = np.hstack([self._values, pad])
            self._growth = np.hstack([self._growth, pad])
            self._last = np.concatenate([self._last, np.full(added, np.nan)])
        return np.array([self._column[int(i)] for i in layer_idx], dtype=np.int64)

    def observe(
        self,
        step: int,
        layer_idx: Sequence[int],
        layers: Sequence[str],
        values: Sequence[float],
        loss: float | None = None,
        coherence: float | None = None,
    ) -> StepSignals:
        """Take one record and return its signals (then remember it).

        Args:
            step: The record's step (records must come in increasing step order).
            layer_idx: Depth index of each layer recorded at this step.
            layers: Their names.
            values: Their ``config.metric`` values.
            loss: The step's loss, or None when it was not recorded (a NaN loss is a
                non-finite loss: an infinite ratio).
            coherence: The largest row coherence at this step, or None when it was not
                recorded here (the latest one is kept).
        """
        cols = self._columns(layer_idx, layers)
        current = np.full(len(self._names), np.nan)
        current[cols] = np.asarray(values, dtype=np.float64)
        recorded = np.zeros(len(self._names), dtype=bool)
        recorded[cols] = True
        if coherence is not None:
            self._coherence = float(coherence)

        median = _median(self._values)
        finite = recorded & np.isfinite(current)
        usable = finite & np.isfinite(median) & (median > 0)
        ratio = np.full(len(self._names), np.nan)
        ratio[usable] = current[usable] / median[usable]
        ratio[recorded & ~finite] = np.inf
        with np.errstate(divide="ignore", invalid="ignore"):
            growth = np.where(finite, current / self._last, np.nan)

        order = np.argsort(np.asarray(self._depth, dtype=np.int64), kind="stable")
        top = None
        if np.any(~np.isnan(ratio)):
            top = int(order[int(np.nanargmax(ratio[order]))])  # earliest layer on a tie
        factor = self._depth_factor(np.where(finite, current, np.nan), order)
        signals = StepSignals(
            step=int(step),
            ready=self.records >= self.config.warmup,
            jump=math.nan if top is None else float(ratio[top]),
            layer=None if top is None else self._names[top],
            loss_ratio=self._loss_ratio(loss),
            factor=factor,
            factor_rise=factor - float(_median(self._factor)),
            coherence=self._coherence,
            steps_left_lower_bound=self._steps_left(top, current, growth, loss),
        )
        row = self.records % self.config.window
        self._values[row] = np.where(finite, current, np.nan)
        self._growth[row] = growth
        self._last = np.where(finite, current, np.nan)
        self._loss[row] = loss if loss is not None and math.isfinite(loss) else math.nan
        self._factor[row] = factor
        self.records += 1
        return signals

    def fires(self, signals: StepSignals) -> bool:
        """The rule: ready, ``jump >= config.jump`` and ``loss_ratio >= config.loss_ratio``."""
        cfg = self.config
        loss_ok = cfg.loss_ratio is None or signals.loss_ratio >= cfg.loss_ratio
        return bool(signals.ready and signals.jump >= cfg.jump and loss_ok)

    def warning(self, signals: StepSignals, seen_at_step: int | None = None) -> EarlyWarning:
        """The warning raised by ``signals`` (no onset known yet)."""
        return EarlyWarning(
            warn_step=signals.step,
            factor=signals.factor,
            onset_step=None,
            lead=None,
            regime=regime_of(signals.factor_rise, self.config.abrupt_rise),
            layer=str(signals.layer),
            jump=signals.jump,
            loss_ratio=signals.loss_ratio,
            coherence=signals.coherence,
            steps_left_lower_bound=signals.steps_left_lower_bound,
            seen_at_step=signals.step if seen_at_step is None else int(seen_at_step),
        )

    def _loss_ratio(self, loss: float | None) -> float:
        if loss is None:
            return math.nan
        if not math.isfinite(loss):
            return math.inf
        median = float(_median(self._loss))
        return loss / median if math.isfinite(median) and median > 0 else math.nan

    def _depth_factor(self, current: np.ndarray, order: np.ndarray) -> float:
        """``exp(slope)`` of log value on depth rank (the OLS of depth_growth), NaN if too few."""
        rank = np.empty(len(order), dtype=np.float64)
        rank[order] = np.arange(len(order), dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(current > 0, np.log(current), np.nan)[order]
        fit, _ = _ols_grouped(
            np.zeros(len(order), dtype=np.int64), 1, rank[order], y, self.config.min_layers, 0.95
        )
        return float(fit["factor"][0])

    def _steps_left(
        self, top: int | None, current: np.ndarray, growth: np.ndarray, loss: float | None
    ) -> int | None:
        if loss is not None and not math.isfinite(loss):
            return 0
        if top is None:
            return None
        value = current[top]
        if not math.isfinite(value) or value > self.config.threshold:
            return 0
        history = np.append(self._growth[:, top], growth[top])
        fastest = float(np.nanmax(history)) if np.any(np.isfinite(history)) else math.nan
        if not (math.isfinite(fastest) and fastest > 1 and value > 0):
            return None
        return int(math.floor(math.log(self.config.threshold / value) / math.log(fastest))) + 1
