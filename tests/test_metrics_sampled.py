"""Row coherence with a bounded cost (stability.metrics.bounded_coherence) and tied weights.

References: a numpy float64 Gram matrix of exactly the rows used (brute force over all
pairs), found independently of the sampler by tagging every row with its own index.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from stability import Recorder
from stability import metrics as M
from stability.records.weights import weight_metric_values


def brute_coherence(rows: np.ndarray) -> tuple[float, float]:
    """(max, mean) |cos| over pairs of distinct nonzero rows, numpy float64."""
    rows = rows[np.any(rows != 0, axis=1)].astype(np.float64)
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cos = np.abs(unit @ unit.T)
    np.fill_diagonal(cos, np.nan)
    return float(np.nanmax(cos)), float(np.nanmean(cos))


def tagged(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """A float64 ``(n, d)`` weight whose column 0 is the row's index (sample readable)."""
    w = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w[:, 0] = torch.arange(n, dtype=torch.float64)
    return w


def sample_indices(weight: torch.Tensor, **options) -> np.ndarray:
    return M.sampled_rows(weight, **options)[..., 0].numpy().astype(np.int64)


def test_at_or_below_the_limit_equals_exact_coherence_bitwise():
    """Every row used (n <= limit, and n == limit): exactly metrics.coherence, also with a
    zero row, groups and a run dimension."""
    w = torch.randn(40, 7, dtype=torch.float64)
    w[3] = 0
    for limit in (40, 100):
        assert all(
            torch.equal(a, b)
            for a, b in zip(M.bounded_coherence([w], limit=limit), M.coherence([w]), strict=True)
        )
    conv = torch.randn(12, 3, 2, 2)
    got = M.bounded_coherence([conv], groups=3, limit=4)
    assert all(torch.equal(a, b) for a, b in zip(got, M.coherence([conv], groups=3), strict=True))
    runs = torch.randn(3, 10, 5)
    got = M.bounded_coherence([runs], run_dim=0, limit=10)
    assert all(torch.equal(a, b) for a, b in zip(got, M.coherence([runs], run_dim=0), strict=True))


def test_above_the_limit_equals_brute_force_of_the_sampled_rows():
    """n = 300 > limit = 25: max / mean are the brute-force coherence of exactly the 25
    sampled rows (distinct, sorted, the same at every call); max <= the true max."""
    w = tagged(300, 6)
    idx = sample_indices(w, limit=25)
    assert len(idx) == 25 and len(set(idx)) == 25 and np.all(np.diff(idx) > 0)
    assert np.array_equal(idx, sample_indices(w.clone(), limit=25))  # fixed sample
    got = M.bounded_coherence([w], limit=25)
    mx, mean = brute_coherence(w.numpy()[idx])
    assert float(got.max) == pytest.approx(mx, rel=1e-12)
    assert float(got.mean) == pytest.approx(mean, rel=1e-12)
    assert float(got.max) <= brute_coherence(w.numpy())[0]
    other = sample_indices(w, limit=25, seed=1)
    assert not np.array_equal(idx, other)


def test_zero_rows_count_the_whole_matrix_not_the_sample():
    w = tagged(200, 5)
    idx = set(sample_indices(w, limit=20).tolist())
    outside = [i for i in range(200) if i not in idx][:7]
    w[outside] = 0  # zero rows the sample does not contain
    got = M.bounded_coherence([w], limit=20)
    assert float(got.zero_rows) == 7
    mx, mean = brute_coherence(w.numpy()[sorted(idx)])
    assert float(got.mean) == pytest.approx(mean, rel=1e-12)


def test_sampled_mean_is_unbiased_over_seeds():
    """The mean over seeds of the sampled mean |cos| approaches the exact mean (standard
    error of that average from the seeds themselves; 4 sigma)."""
    w = torch.randn(60, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = brute_coherence(w.numpy())[1]
    estimates = np.array(
        [float(M.bounded_coherence([w], limit=8, seed=s).mean) for s in range(400)]
    )
    error = estimates.std(ddof=1) / np.sqrt(len(estimates))
    assert abs(estimates.mean() - exact) < 4 * error
    assert estimates.std() > 0  # the seeds do draw different samples


def test_groups_sample_the_same_positions_in_every_group():
    """A grouped weight with more rows per group than the limit: ``limit`` rows per group,
    the same offsets in each; values = brute force within each group over those rows, the
    mean over all m (m - 1) sampled pairs (cross-group pairs are orthogonal: cosine 0)."""
    groups, per_group = 3, 50
    w = tagged(groups * per_group, 4)
    idx = sample_indices(w, limit=6, groups=groups)
    offsets = idx.reshape(groups, 6) - np.arange(groups)[:, None] * per_group
    assert (offsets == offsets[0]).all() and offsets.min() >= 0 and offsets.max() < per_group
    got = M.bounded_coherence([w], limit=6, groups=groups)
    rows = w.numpy()[idx].reshape(groups, 6, 4)
    maxes, sums = [], 0.0
    for block in rows:
        unit = block / np.linalg.norm(block, axis=1, keepdims=True)
        cos = np.abs(unit @ unit.T)
        np.fill_diagonal(cos, 0)
        maxes.append(cos.max())
        sums += cos.sum()
    m = groups * 6
    assert float(got.max) == pytest.approx(max(maxes), rel=1e-12)
    assert float(got.mean) == pytest.approx(sums / (m * (m - 1)), rel=1e-12)


def test_bad_limit_is_rejected():
    with pytest.raises(ValueError, match="row limit must be >= 2"):
        M.bounded_coherence([torch.randn(5, 3)], limit=1)


def test_recorder_samples_a_vocabulary_sized_decoder_and_its_tied_embedding():
    """A tied embedding / decoder with more tokens than COHERENCE_ROW_LIMIT: the decoder's
    rows (one per token) are sampled (brute force of the sampled rows), the embedding's
    ``dim`` feature rows over the vocabulary are exact; weight_norm is the same."""
    tokens, dim = M.COHERENCE_ROW_LIMIT + 200, 6
    torch.manual_seed(0)
    embed = nn.Embedding(tokens, dim)
    decoder = nn.Linear(dim, tokens, bias=False)
    decoder.weight = embed.weight
    model = nn.Sequential(embed, decoder)
    with Recorder(model, weight_every=1, metrics=["weight_norm", "coherence"]) as rec:
        model(torch.randint(tokens, (2, 3))).sum().backward()
        rec.step()
    frame = rec.to_frame().set_index(["layer", "metric"]).value
    w = embed.weight.detach().double()
    idx = M.sampled_rows(torch.arange(tokens, dtype=torch.float64)[:, None].expand(tokens, 2))
    idx = idx[:, 0].numpy().astype(np.int64)
    assert len(idx) == M.COHERENCE_ROW_LIMIT
    assert frame["1", "coherence"] == pytest.approx(brute_coherence(w.numpy()[idx])[0], rel=1e-5)
    assert frame["0", "coherence"] == pytest.approx(brute_coherence(w.numpy().T)[0], rel=1e-5)
    assert frame["0", "weight_norm"] == frame["1", "weight_norm"]


def test_a_tied_weight_read_the_same_way_is_computed_once_per_weight_step():
    """``b.weight = a.weight``: with the step's shared dict the second layer gets the very
    values of the first (no second computation), equal to brute force; a changed weight
    (new version) is computed again."""
    a, b = nn.Linear(5, 5), nn.Linear(5, 5)
    b.weight = a.weight
    shared: dict = {}
    wanted = ["weight_norm", "coherence", "coherence_mean"]
    first = weight_metric_values(a, wanted, shared=shared)
    second = weight_metric_values(b, wanted, shared=shared)
    assert second is first and len(shared) == 1
    mx, mean = brute_coherence(a.weight.detach().numpy())
    assert float(first["coherence"]) == pytest.approx(mx, rel=1e-6)
    assert float(first["coherence_mean"]) == pytest.approx(mean, rel=1e-6)
    with torch.no_grad():
        a.weight.mul_(2)
    third = weight_metric_values(b, wanted, shared=shared)
    assert third is not first and len(shared) == 2
    model = nn.Sequential(a, nn.Tanh(), b)
    with Recorder(model, weight_every=1) as rec:
        model(torch.randn(3, 5)).sum().backward()
        rec.step()
    frame = rec.to_frame()
    weights = frame[frame.metric.isin(wanted)].pivot(index="metric", columns="layer")
    assert (weights.value["0"] == weights.value["2"]).all()


def test_zero_rows_above_the_limit_counts_only_exact_zero_rows():
    """A row of 1e-30 entries is tiny, not zero (its float32 sum of squares underflows to
    0, which the count must not read as a zero row); reference: the rows themselves."""
    w = torch.randn(40, 3)
    w[5] = 0.0
    w[7] = 1e-30
    found = M.bounded_coherence([w], limit=8)
    assert found.zero_rows.item() == 1
