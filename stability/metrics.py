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
  the network's amplification.
* ``row_coherence(W) = (max_{i != j} |c_ij|, mean_{i != j} |c_ij|)`` with
  ``c_ij = w_i . w_j / (||w_i|| ||w_j||)``, rows ``w_i`` being output units (Linear) or
  output channels flattened over ``in_channels * kh * kw`` (Conv). The paper's footnote 2
  requires the maximum to be small for weight normalization to preserve the norm.

Edge cases of ``row_coherence``: a weight with a single row has no pair of rows, and is
by convention perfectly incoherent (both values 0). A row of zeros has no direction: every
``c_ij`` involving it is 0/0 = NaN, so both values are NaN (recorded, never an exception).
"""

from __future__ import annotations

import math

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


def output_norm(o: torch.Tensor, run_dim: int | None = None) -> torch.Tensor:
    """``||o||_2`` over all elements (per run along ``run_dim``), accumulated in >= float32."""
    dims = _reduce_dims(o, run_dim)
    return torch.linalg.vector_norm(o.detach(), dim=dims, dtype=_accumulation_dtype(o))


def output_rms(o: torch.Tensor, run_dim: int | None = None) -> torch.Tensor:
    """``||o||_2 / sqrt(n)``, ``n`` the number of elements (per run); NaN when ``n = 0``."""
    return rms_from_norm(output_norm(o, run_dim), o, run_dim)


def rms_from_norm(norm: torch.Tensor, o: torch.Tensor, run_dim: int | None = None) -> torch.Tensor:
    """``output_rms`` from an already computed ``output_norm(o, run_dim)``."""
    runs = 1 if run_dim is None else o.shape[run_dim]
    per_run = o.numel() // runs if runs else 0
    return norm / math.sqrt(per_run) if per_run else norm * math.nan


def gain(o: torch.Tensor, x: torch.Tensor, run_dim: int | None = None) -> torch.Tensor:
    """``||o||_2 / ||x||_2`` (inf or NaN when the input is all zeros, as IEEE division says)."""
    return output_norm(o, run_dim) / output_norm(x, run_dim)


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
    """Frobenius norm of the whole weight, ``||W||_F`` (per run along ``run_dim``)."""
    return output_norm(weight, run_dim)


def row_coherence(
    weight: torch.Tensor,
    chunk_elements: int = GRAM_CHUNK_ELEMENTS,
    run_dim: int | None = None,
    groups: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum and mean absolute cosine between distinct weight rows.

    ``C = D^-1 W W^T D^-1`` with ``D = diag(||w_i||)``; returns
    ``(max_{i != j} |C_ij|, sum_{i != j} |C_ij| / (n (n - 1)))``.

    A grouped convolution's rows live in the full ``in_channels * kh * kw`` input space,
    zero outside their group's inputs, so rows of different groups are orthogonal
    (``C_ij = 0``): only pairs within a group are computed, and the mean still divides by
    all ``n (n - 1)`` pairs. The Gram matrix is built ``chunk`` rows at a time
    (``chunk * n <= chunk_elements``), so a 2048-row layer never holds the full ``n x n``
    matrix nor a normalised copy of ``W``; the only full-size temporary is the float32
    view of ``W`` when ``W`` is half precision. Rounding can put ``|C_ij|`` a hair above 1;
    it is clamped to 1.

    Args:
        weight: a Linear or ConvNd weight (rows = output units / channels).
        chunk_elements: bound on the Gram entries materialised at once (per run).
        run_dim: the dimension indexing independent runs, if any (values are then per run).
        groups: the convolution's ``groups`` (1 for Linear and ordinary convolutions).

    Returns:
        Two tensors ``(max, mean)``, 0-d (or ``(runs,)``); see the module docstring for one
        row and zero rows.
    """
    rows = weight_rows(weight, run_dim).to(_accumulation_dtype(weight))
    if run_dim is None:
        rows = rows[None]
    runs, n, d = rows.shape
    if groups < 1 or n % groups:
        raise ValueError(f"{n} weight rows cannot form {groups} groups")
    if n <= 1:  # no pair of rows (a zero-width layer has no row at all)
        zero = rows.new_zeros(runs)
        coherence = (zero, zero.clone())
    else:
        norms = torch.linalg.vector_norm(rows, dim=2)
        blocks = rows.reshape(runs * groups, n // groups, d)
        block_norms = norms.reshape(runs * groups, n // groups)
        per_block_max, per_block_sum = _gram_max_and_sum(blocks, block_norms, chunk_elements)
        has_zero_row = (norms == 0).any(dim=1)
        nan = rows.new_full((), math.nan)
        coherence = tuple(
            torch.where(has_zero_row, nan, value)
            for value in (
                per_block_max.view(runs, groups).amax(dim=1),
                per_block_sum.view(runs, groups).sum(dim=1) / (n * (n - 1)),
            )
        )
    if run_dim is None:
        return coherence[0][0], coherence[1][0]
    return coherence


def _gram_max_and_sum(
    rows: torch.Tensor, norms: torch.Tensor, chunk_elements: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per batch ``b``: max and sum over ``i != j`` of ``|rows_bi . rows_bj| / (n_bi n_bj)``."""
    batch, n, _ = rows.shape
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
