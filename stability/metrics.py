"""Per-layer stability metrics as pure tensor functions.

Every function returns a 0-d ``float32`` tensor on the input's device (``float64`` for
``float64`` inputs) and never synchronises with the host: no ``.item()``, no Python
branching on tensor values. The :class:`stability.Recorder` calls these same functions
from its hooks; they are equally usable on their own.

Definitions (``o`` a layer output, ``x`` its input, ``W`` its weight):

* ``output_norm(o) = ||o||_2`` over every element of the batch output. For a BatchNorm
  output with unit gain and zero bias this is ``sqrt(D)``, ``D = m*H*W*C`` (paper, 3.1).
* ``output_rms(o) = ||o||_2 / sqrt(numel(o))``: batch-size free, 1 for an ideal BN output.
* ``gain(o, x) = ||o||_2 / ||x||_2``: the layer's amplification; its product over depth is
  the network's amplification. NaN for an all-zero input (undefined, not infinite).
* ``row_coherence(W) = (max_{i != j} |c_ij|, mean_{i != j} |c_ij|)`` over nonzero rows, with
  ``c_ij = w_i . w_j / (||w_i|| ||w_j||)``, rows ``w_i`` being output units (Linear) or
  output channels flattened over ``in_channels * kh * kw`` (Conv). The paper's footnote 2
  requires the maximum to be small for weight normalization to preserve the norm.

Edge cases of ``row_coherence``: a row of zeros has no direction, so every ``c_ij``
involving it is undefined (0/0). Coherence is the max / mean over the pairs of distinct
*nonzero* rows, and :func:`coherence` also returns how many zero rows it left out
(``nn.Embedding(padding_idx=...)``'s row, a tied decoder, a pruned unit). Fewer than two
nonzero rows leave no pair: both values are 0 by convention, as for a single row. A row
holding NaN or inf is not a zero row: its cosines, and so both values, are NaN.

Norms accumulate in float32 for half, bfloat16 and float32 tensors (float64 stays
float64) and are finite for every finite tensor whose norm the dtype can hold (float32:
below ~3.4e38): where the plain sum of squares overflows
(``||o||`` above ~1.8e19 in float32), :func:`output_norm` returns
``m * ||o / m||`` with ``m = max |o|``, whose terms are all at most 1. On a CPU tensor the
overflow is checked first (reading a CPU value is no device synchronisation), so the
rescue costs nothing unless needed; on an accelerator it is always computed and selected
with ``torch.where`` (no host sync: two more reductions and one division per norm).
Weight norms, which are cheap, accumulate in float64. Coherence multiplies a weight's rows
by an exact power of two when their norms leave ``2**-60 .. 2**60`` (the cosines are
bitwise unchanged), so a finite weight never overflows its Gram matrix.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

#: Largest number of Gram-matrix entries materialised at once by :func:`row_coherence`.
GRAM_CHUNK_ELEMENTS = 1 << 20


def _accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (fp16, bf16, fp32) accumulates in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _reduce_dims(t: torch.Tensor, run_dim: int | None) -> tuple[int, ...] | None:
    """All dimensions but ``run_dim`` (``None``: reduce over everything)."""
    if run_dim is None:
        return None
    run_dim = run_dim % t.ndim
    return tuple(d for d in range(t.ndim) if d != run_dim)


#: Dtypes that accumulate in their own precision (no ``dtype=`` argument needed).
_OWN_ACCUMULATION = (torch.float32, torch.float64)


def output_norm(o: torch.Tensor, run_dim: int | None = None) -> torch.Tensor:
    """``||o||_2`` over all elements (per run along ``run_dim``), accumulated in >= float32;
    finite whenever ``o`` is finite and its norm fits that dtype (see the module docstring)."""
    o = o.detach()
    norm = _plain_norm(o, run_dim)
    if o.device.type == "cpu" and not _any_inf(norm):
        return norm  # the hooks' hot path
    rescued = _rescaled_norm(o, run_dim)
    return torch.where(torch.isinf(norm) & torch.isfinite(rescued), rescued, norm)


def _any_inf(values: torch.Tensor) -> bool:
    """Whether a CPU tensor holds inf (``.item()`` of a 0-d tensor is the cheap read)."""
    return math.isinf(values.item()) if values.ndim == 0 else bool(torch.isinf(values).any())


def _plain_norm(o: torch.Tensor, run_dim: int | None) -> torch.Tensor:
    """``sqrt(sum o**2)`` in the accumulation dtype (overflows above ~1.8e19 in float32)."""
    if run_dim is None and o.dtype in _OWN_ACCUMULATION:
        return torch.linalg.vector_norm(o)
    return torch.linalg.vector_norm(o, dim=_reduce_dims(o, run_dim), dtype=_accumulation_dtype(o))


def _rescaled_norm(o: torch.Tensor, run_dim: int | None) -> torch.Tensor:
    """``m * ||o / m||`` with ``m = max |o|`` (per run): no term of the sum exceeds 1, so it
    cannot overflow; 0 for an all-zero ``o``; NaN where ``o`` holds inf or NaN."""
    dims = _reduce_dims(o, run_dim)
    o = o.to(_accumulation_dtype(o))
    peak = torch.linalg.vector_norm(o, ord=math.inf, dim=dims, keepdim=dims is not None)
    scaled = torch.linalg.vector_norm(o / torch.where(peak > 0, peak, 1.0), dim=dims)
    return scaled * peak.reshape(scaled.shape)


def output_rms(o: torch.Tensor, run_dim: int | None = None) -> torch.Tensor:
    """``||o||_2 / sqrt(n)``, ``n`` the number of elements (per run); NaN when ``n = 0``."""
    return rms_from_norm(output_norm(o, run_dim), o, run_dim)


def rms_from_norm(norm: torch.Tensor, o: torch.Tensor, run_dim: int | None = None) -> torch.Tensor:
    """``output_rms`` from an already computed ``output_norm(o, run_dim)``."""
    runs = 1 if run_dim is None else o.shape[run_dim]
    per_run = o.numel() // runs if runs else 0
    return norm / math.sqrt(per_run) if per_run else norm * math.nan


def gain(o: torch.Tensor, x: torch.Tensor, run_dim: int | None = None) -> torch.Tensor:
    """``||o||_2 / ||x||_2``; NaN when the input is all zeros (no amplification is defined:
    ``||x|| = 0`` is a dead input, not a divergence)."""
    return gain_from_norms(output_norm(o, run_dim), output_norm(x, run_dim))


def gain_from_norms(o_norm: torch.Tensor, x_norm: torch.Tensor) -> torch.Tensor:
    """``||o|| / ||x||`` from the two norms, NaN where ``||x|| = 0`` (see :func:`gain`)."""
    return torch.where(x_norm == 0, math.nan, o_norm / x_norm)


def weight_rows(weight: torch.Tensor, run_dim: int | None = None) -> torch.Tensor:
    """View a weight as rows: ``(out, -1)``, or ``(runs, out, -1)`` with a leading run dimension.

    A Linear weight is ``(out, in)`` and a ConvNd weight ``(out, in/groups, *k)``; with
    ``run_dim`` the weight carries one such matrix per independent run.
    """
    least = 2 if run_dim is None else 3
    if weight.ndim < least:
        shape = tuple(weight.shape)
        raise ValueError(f"weight rows need a weight with ndim >= {least}, got shape {shape}")
    if run_dim is None:
        return weight.detach().reshape(weight.shape[0], math.prod(weight.shape[1:]))
    w = weight.detach().movedim(run_dim, 0)
    return w.reshape(w.shape[0], w.shape[1], math.prod(w.shape[2:]))


def weight_norm(weight: torch.Tensor, run_dim: int | None = None) -> torch.Tensor:
    """Frobenius norm of the whole weight, ``||W||_F`` (per run along ``run_dim``).

    Accumulated in float64 (a weight is small, read rarely), returned in the dtype of
    :func:`output_norm`: finite for every finite weight below float32's range.
    """
    dims = _reduce_dims(weight, run_dim)
    norm = torch.linalg.vector_norm(weight.detach(), dim=dims, dtype=torch.float64)
    return norm.to(_accumulation_dtype(weight))


class Coherence(NamedTuple):
    """Row coherence of a weight: ``max`` and ``mean`` ``|cos|`` over the pairs of distinct
    nonzero rows, and ``zero_rows``, the number of rows left out for having no direction."""

    max: torch.Tensor
    mean: torch.Tensor
    zero_rows: torch.Tensor


def row_coherence(
    weight: torch.Tensor,
    chunk_elements: int = GRAM_CHUNK_ELEMENTS,
    run_dim: int | None = None,
    groups: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum and mean absolute cosine between distinct nonzero weight rows.

    ``(coherence.max, coherence.mean)`` of :func:`coherence` for one weight; see there.
    """
    found = coherence([weight], chunk_elements=chunk_elements, run_dim=run_dim, groups=groups)
    return found.max, found.mean


def coherence(
    weights: Sequence[torch.Tensor],
    *,
    chunk_elements: int = GRAM_CHUNK_ELEMENTS,
    run_dim: int | None = None,
    groups: int = 1,
) -> Coherence:
    """Row coherence of one layer whose output units are the rows of ``weights``.

    ``C = D^-1 W W^T D^-1`` with ``D = diag(||w_i||)``, over the ``m`` nonzero rows:
    ``max_{i != j} |C_ij|`` and ``sum_{i != j} |C_ij| / P`` with ``P`` the number of pairs.

    ``weights`` holds one matrix, or several separate linear maps of one layer (the
    query / key / value projections of attention): pairs are then formed within each
    matrix only, ``P = sum_b m_b (m_b - 1)``. A grouped convolution's rows live in the full
    ``in_channels * kh * kw`` input space, zero outside their group's inputs, so rows of
    different groups are orthogonal (``C_ij = 0``): only pairs within a group are
    computed, and the mean divides by all ``P = m (m - 1)`` pairs of nonzero rows.

    The Gram matrix is built ``chunk`` rows at a time (``chunk * n <= chunk_elements``),
    so a 2048-row layer never holds the full ``n x n`` matrix nor a normalised copy of
    ``W``; the only full-size temporary is the float32 view of ``W`` when ``W`` is half
    precision. Rounding can put ``|C_ij|`` a hair above 1; it is clamped to 1.

    Args:
        weights: the matrices, each with its output units along dimension 0 (after the
            run dimension): ``(out, -1)`` or ``(runs, out, -1)`` once flattened.
        chunk_elements: bound on the Gram entries materialised at once (per run).
        run_dim: the dimension indexing independent runs, if any (values are then per run).
        groups: the convolution's ``groups`` (1 for Linear and ordinary convolutions).

    Returns:
        :class:`Coherence` of 0-d (or ``(runs,)``) tensors in >= float32; ``zero_rows`` is
        a count in the same dtype.
    """
    if isinstance(weights, torch.Tensor):
        weights = [weights]
    if groups != 1 and len(weights) != 1:
        raise ValueError(f"groups={groups} needs a single weight, got {len(weights)}")
    parts = []
    for weight in weights:
        rows = weight_rows(weight, run_dim).to(_accumulation_dtype(weight))
        rows = rows if run_dim is not None else rows[None]
        runs, n, d = rows.shape
        if groups < 1 or n % groups:
            raise ValueError(f"{n} weight rows cannot form {groups} groups")
        rows, norms = _overflow_safe(rows, torch.linalg.vector_norm(rows, dim=2))
        zero = norms == 0
        safe = torch.where(zero, torch.inf, norms)  # a zero row's cosines become 0 / inf = 0
        blocks = rows.reshape(runs * groups, n // groups, d)
        block_max, block_sum = _gram_max_and_sum(
            blocks, safe.reshape(runs * groups, n // groups), chunk_elements
        )
        nonzero = (~zero).sum(dim=1).to(rows.dtype)
        pairs = nonzero * (nonzero - 1)  # pairs across groups are orthogonal: cosine 0
        block_max, block_sum = block_max.view(runs, groups), block_sum.view(runs, groups)
        parts.append((block_max.amax(dim=1), block_sum.sum(dim=1), pairs, n - nonzero))
    largest = torch.stack([p[0] for p in parts]).amax(dim=0)
    total = torch.stack([p[1] for p in parts]).sum(dim=0)
    pairs = torch.stack([p[2] for p in parts]).sum(dim=0)
    zero_rows = torch.stack([p[3] for p in parts]).sum(dim=0)
    mean = torch.where(pairs > 0, total / pairs.clamp(min=1), 0.0)
    found = Coherence(largest, mean, zero_rows)
    if run_dim is None:
        return Coherence(*(value[0] for value in found))
    return found


#: Row norms in ``[2**-SAFE_EXPONENT, 2**SAFE_EXPONENT]`` need no scaling: a Gram entry
#: is at most ``||w_i|| ||w_j|| <= 2**120``, inside float32's ``2**128``.
SAFE_EXPONENT = 60


def _overflow_safe(rows: torch.Tensor, norms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, norms)`` (``(runs, n, d)``, ``(runs, n)``), the rows times ``2**-e`` per run
    when their norms leave the safe range, ``2**e`` the binary magnitude of the run's
    largest entry, so Gram entries cannot overflow (nor squares underflow).

    Scaling by a power of two is exact, so every cosine is bitwise the unscaled one. On a
    CPU tensor the decision reads the row norms coherence needs anyway (no extra pass over
    the weight in the usual case); off the CPU the rows are always scaled (no host sync)."""
    if rows.numel() == 0:
        return rows, norms
    if rows.device.type == "cpu":
        largest = float(norms.max())
        if 2.0**-SAFE_EXPONENT <= largest <= 2.0**SAFE_EXPONENT:
            return rows, norms
        if largest == 0.0 and not bool(rows.any()):  # truly zero, not underflowed squares
            return rows, norms
        if math.isnan(largest):
            return rows, norms  # a NaN entry: its cosines are NaN whatever the scale
    peak = torch.linalg.vector_norm(rows, ord=math.inf, dim=(1, 2), keepdim=True)
    _, exponent = torch.frexp(peak)
    rows = torch.ldexp(rows, -exponent)
    return rows, torch.linalg.vector_norm(rows, dim=2)


def _gram_max_and_sum(
    rows: torch.Tensor, norms: torch.Tensor, chunk_elements: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per batch ``b``: max and sum over ``i != j`` of ``|rows_bi . rows_bj| / (n_bi n_bj)``."""
    batch, n, _ = rows.shape
    if n <= 1:  # no pair of rows (a zero-width layer has no row at all)
        return rows.new_zeros(batch), rows.new_zeros(batch)
    chunk = max(1, min(n, chunk_elements // n))
    running_max = rows.new_zeros(batch)
    running_sum = rows.new_zeros(batch)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        cos = torch.matmul(rows[:, start:stop], rows.transpose(1, 2)).abs_()
        cos /= norms[:, start:stop, None] * norms[:, None, :]
        cos.clamp_(max=1.0)
        diagonal = torch.arange(stop - start, device=rows.device)
        cos[:, diagonal, diagonal + start] = 0.0
        running_max = torch.maximum(running_max, cos.amax(dim=(1, 2)))
        running_sum = running_sum + cos.sum(dim=(1, 2))
    return running_max, running_sum


#: Rows per group above which :func:`bounded_coherence` samples rows instead of taking
#: all pairs: every layer of ResNet-50, BERT-large and GPT-2 is exact, a vocabulary-sized
#: decoder (GPT-2's tied ``lm_head``, 50257 rows) is sampled.
COHERENCE_ROW_LIMIT = 4096
#: Seed of the row sample: the same rows at every weight step, in every run.
COHERENCE_SAMPLE_SEED = 0


@functools.lru_cache(maxsize=64)
def _row_sample(rows: int, size: int, seed: int, device: torch.device) -> torch.Tensor:
    """``size`` distinct row indices out of ``rows``, uniform without replacement, sorted;
    a function of ``(rows, size, seed)`` only (drawn on the CPU), kept on ``device``."""
    generator = torch.Generator().manual_seed(seed)
    picked = torch.randperm(rows, generator=generator)[:size].sort().values
    return picked.to(device)


def sampled_rows(
    weight: torch.Tensor,
    *,
    limit: int = COHERENCE_ROW_LIMIT,
    seed: int = COHERENCE_SAMPLE_SEED,
    run_dim: int | None = None,
    groups: int = 1,
) -> torch.Tensor:
    """The rows :func:`bounded_coherence` uses, as :func:`weight_rows` gives them: all of
    them when every group has at most ``limit`` rows, else the same ``limit`` positions
    (:func:`_row_sample` of the group size) in every group, group after group."""
    rows = weight_rows(weight, run_dim)
    n = rows.shape[-2]
    if groups < 1 or n % groups:
        raise ValueError(f"{n} weight rows cannot form {groups} groups")
    per_group = n // groups
    if per_group <= limit:
        return rows
    offsets = _row_sample(per_group, limit, seed, rows.device)
    starts = torch.arange(groups, device=rows.device)[:, None] * per_group
    return rows.index_select(rows.ndim - 2, (starts + offsets).reshape(-1))


def bounded_coherence(
    weights: Sequence[torch.Tensor],
    *,
    limit: int = COHERENCE_ROW_LIMIT,
    seed: int = COHERENCE_SAMPLE_SEED,
    chunk_elements: int = GRAM_CHUNK_ELEMENTS,
    run_dim: int | None = None,
    groups: int = 1,
) -> Coherence:
    """:func:`coherence` with a bounded cost: exact up to ``limit`` rows per group, an
    estimate from a fixed row sample above.

    A matrix with ``n`` rows (per group) costs ``O(n^2 d)``: about 90 s for GPT-2's
    50257-row decoder on a CPU. Above ``limit`` rows per group, ``max`` and ``mean`` are
    :func:`coherence` of ``limit`` rows per group drawn uniformly without replacement
    (:func:`sampled_rows`; seeded, so the same rows at every weight step and the values
    of one layer form a series over steps), at most ``groups * limit^2 * d`` work:

    * ``max`` is the max ``|cos|`` over the sampled pairs, a *lower bound* of the true max;
    * ``mean`` is the mean ``|cos|`` over the pairs of distinct nonzero sampled rows, an
      *unbiased* estimate of the true mean for ``groups = 1`` (the nonzero rows of a
      uniform sample are a uniform sample of the nonzero rows, and the pairs of a uniform
      sample are uniform pairs), with a standard error that shrinks like ``1 / limit``;
      for ``groups > 1`` it is the mean of the sampled layer, whose share of orthogonal
      cross-group pairs differs slightly from the full layer's;
    * ``zero_rows`` is exact: it counts the zero rows of the whole matrix (cheap).

    At or below ``limit`` rows per group every row is used and the result is exactly
    :func:`coherence`. Arguments as there, plus ``limit`` and ``seed``.
    """
    if isinstance(weights, torch.Tensor):
        weights = [weights]
    if int(limit) < 2:
        raise ValueError(f"coherence row limit must be >= 2 (a pair of rows), got {limit}")
    if all(weight_rows(w, run_dim).shape[-2] // max(groups, 1) <= limit for w in weights):
        return coherence(weights, chunk_elements=chunk_elements, run_dim=run_dim, groups=groups)
    axis = None if run_dim is None else 0  # sampled_rows puts the runs first
    samples = [
        sampled_rows(w, limit=limit, seed=seed, run_dim=run_dim, groups=groups) for w in weights
    ]
    found = coherence(samples, chunk_elements=chunk_elements, run_dim=axis, groups=groups)
    zero_rows = sum(  # exact: no sum of squares to underflow a tiny row to zero
        (~(weight_rows(w, run_dim) != 0).any(dim=-1)).sum(dim=-1) for w in weights
    )
    return Coherence(found.max, found.mean, zero_rows.to(found.zero_rows.dtype))
