"""Reference tests for :mod:`stability.metrics`.

Every expected value is computed independently in float64 numpy: norms by an explicit sum
of squares, row coherence by an explicit double loop over the pairs of distinct rows of the
layer's weight viewed as a dense matrix ``(out_features | out_channels, -1)``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stability import metrics as M

# --------------------------------------------------------------------------- references


def np64(t: torch.Tensor) -> np.ndarray:
    """Exact float64 copy of a tensor (any floating dtype upcasts exactly)."""
    return t.detach().to(torch.float64).cpu().numpy()


def ref_norm(a: np.ndarray) -> float:
    """||a||_2 by an explicit float64 sum of squares."""
    return math.sqrt(float(np.sum(np.asarray(a, dtype=np.float64) ** 2)))


def ref_coherence(rows: np.ndarray) -> tuple[float, float]:
    """(max, mean) over i != j of |w_i . w_j| / (||w_i|| ||w_j||): an explicit double loop."""
    rows = np.asarray(rows, dtype=np.float64)
    n = rows.shape[0]
    if n == 1:
        return 0.0, 0.0
    values = []
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            dot = float(np.dot(rows[i], rows[j]))
            values.append(abs(dot) / (ref_norm(rows[i]) * ref_norm(rows[j])))
    return max(values), sum(values) / len(values)


def dense_conv_rows(conv: nn.Conv2d) -> np.ndarray:
    """Rows of a (possibly grouped) conv as the layer's dense linear map.

    Output channel ``c`` of group ``g`` only reads input channels ``g*cin_g:(g+1)*cin_g``;
    its row over all ``in_channels * kh * kw`` inputs is zero elsewhere. For ``groups=1``
    this is exactly ``weight.reshape(out, -1)``.
    """
    w = np64(conv.weight)
    out_c, cin_g, kh, kw = w.shape
    cout_g = out_c // conv.groups
    dense = np.zeros((out_c, conv.in_channels, kh, kw))
    for c in range(out_c):
        g = c // cout_g
        dense[c, g * cin_g : (g + 1) * cin_g] = w[c]
    return dense.reshape(out_c, -1)


def layer_rows(layer: nn.Module) -> np.ndarray:
    """Reference rows: output units of a Linear, dense output-channel rows of a Conv2d."""
    if isinstance(layer, nn.Conv2d):
        return dense_conv_rows(layer)
    return np64(layer.weight)


def layer_input(layer: nn.Module, batch: int = 4) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return torch.randn(batch, layer.in_channels, 7, 6)
    return torch.randn(batch, layer.in_features)


LAYERS = {
    "linear": lambda: nn.Linear(7, 5),
    "linear_wide": lambda: nn.Linear(3, 9),
    "conv": lambda: nn.Conv2d(3, 6, 3),
    "conv_1x1": lambda: nn.Conv2d(5, 4, 1, bias=False),
    "conv_grouped": lambda: nn.Conv2d(4, 6, 3, groups=2),
    "conv_depthwise": lambda: nn.Conv2d(4, 4, 3, groups=4),
}
UNGROUPED = ["linear", "linear_wide", "conv", "conv_1x1"]
CHUNKS = [M.GRAM_CHUNK_ELEMENTS, 7, 1, 20, 10**9]


def test_dense_conv_rows_is_the_layers_linear_map():
    """Reference sanity: the dense rows reproduce F.conv2d of the grouped layer (torch ref)."""
    conv = nn.Conv2d(4, 6, 3, groups=2, bias=False).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    dense = torch.from_numpy(dense_conv_rows(conv)).reshape(6, 4, 3, 3)
    torch.testing.assert_close(F.conv2d(x, dense), conv(x), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- norms and gain


@pytest.mark.parametrize("kind", list(LAYERS))
def test_output_norm_rms_gain_match_numpy(kind):
    """output_norm, output_rms, gain on real layer outputs vs float64 numpy sums of squares."""
    layer = LAYERS[kind]()
    x = layer_input(layer)
    o = layer(x)
    o_np, x_np = np64(o), np64(x)
    norm = ref_norm(o_np)
    assert M.output_norm(o).item() == pytest.approx(norm, rel=1e-6)
    assert M.output_rms(o).item() == pytest.approx(norm / math.sqrt(o_np.size), rel=1e-6)
    assert M.gain(o, x).item() == pytest.approx(norm / ref_norm(x_np), rel=1e-6)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_weight_norm_matches_numpy(kind):
    """weight_norm vs the float64 numpy Frobenius norm of the weight."""
    layer = LAYERS[kind]()
    assert M.weight_norm(layer.weight).item() == pytest.approx(
        ref_norm(np64(layer.weight)), rel=1e-6
    )


def test_float64_inputs_stay_float64_and_exact():
    """float64 in -> float64 0-d out, equal to the numpy reference to ~1e-14."""
    o = torch.randn(3, 5, 4, dtype=torch.float64)
    x = torch.randn(3, 7, dtype=torch.float64)
    w = torch.randn(6, 3, 2, 2, dtype=torch.float64)
    for value in (M.output_norm(o), M.output_rms(o), M.gain(o, x), M.weight_norm(w)):
        assert value.dtype == torch.float64 and value.shape == ()
    assert M.output_norm(o).item() == pytest.approx(ref_norm(o.numpy()), rel=1e-13)
    assert M.output_rms(o).item() == pytest.approx(ref_norm(o.numpy()) / math.sqrt(60), rel=1e-13)
    assert M.gain(o, x).item() == pytest.approx(
        ref_norm(o.numpy()) / ref_norm(x.numpy()), rel=1e-13
    )
    mx, mean = M.row_coherence(w)
    ref = ref_coherence(w.numpy().reshape(6, -1))
    assert mx.dtype == torch.float64 and mean.dtype == torch.float64
    assert (mx.item(), mean.item()) == pytest.approx(ref, rel=1e-12)


def test_metrics_are_detached_zero_d():
    """Results carry no autograd graph (reference: requires_grad False, shape ())."""
    o = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(4, 2, requires_grad=True)
    w = torch.randn(5, 3, requires_grad=True)
    values = [M.output_norm(o), M.output_rms(o), M.gain(o, x), M.weight_norm(w)]
    values += list(M.row_coherence(w))
    for v in values:
        assert v.shape == () and not v.requires_grad and v.dtype == torch.float32


def test_output_rms_of_ideal_bn_output_is_one():
    """A per-channel standardised tensor has rms exactly 1 (analytic reference, paper 3.1)."""
    o = torch.randn(8, 4, 5, 5, dtype=torch.float64)
    mean = o.mean(dim=(0, 2, 3), keepdim=True)
    o = (o - mean) / (o - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True).sqrt()
    assert M.output_rms(o).item() == pytest.approx(1.0, rel=1e-12)
    assert M.output_norm(o).item() == pytest.approx(math.sqrt(o.numel()), rel=1e-12)


def test_empty_and_zero_edge_cases():
    """Empty output -> rms NaN; an all-zero input has no gain (NaN, not inf), no exception."""
    assert math.isnan(M.output_rms(torch.zeros(0, 3)).item())
    assert M.output_norm(torch.zeros(0, 3)).item() == 0.0
    assert math.isnan(M.gain(torch.ones(2, 2), torch.zeros(2, 2)).item())
    assert math.isnan(M.gain(torch.zeros(2, 2), torch.zeros(2, 2)).item())
    assert M.gain(torch.full((2, 2), 3.0), torch.ones(2, 2)).item() == 3.0
    per_run = M.gain(torch.ones(2, 3), torch.tensor([[0.0] * 3, [2.0] * 3]), run_dim=0)
    assert math.isnan(per_run[0].item()) and per_run[1].item() == 0.5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_accumulates_in_float32(dtype):
    """bf16/fp16 inputs: float32 results within 1e-4 of the float64 reference of the same values.

    200k elements: a half-precision accumulator would be off by percent, not 1e-4.
    """
    o = (torch.randn(200, 1000) * 3).to(dtype)
    x = torch.randn(200, 500).to(dtype)
    w = torch.randn(40, 16, 3, 3).to(dtype)
    norm = ref_norm(np64(o))
    assert M.output_norm(o).dtype == torch.float32
    assert M.output_norm(o).item() == pytest.approx(norm, rel=1e-4)
    assert M.output_rms(o).dtype == torch.float32
    assert M.output_rms(o).item() == pytest.approx(norm / math.sqrt(o.numel()), rel=1e-4)
    assert M.gain(o, x).dtype == torch.float32
    assert M.gain(o, x).item() == pytest.approx(norm / ref_norm(np64(x)), rel=1e-4)
    assert M.weight_norm(w).dtype == torch.float32
    assert M.weight_norm(w).item() == pytest.approx(ref_norm(np64(w)), rel=1e-4)
    mx, mean = M.row_coherence(w, chunk_elements=7)
    assert mx.dtype == torch.float32 and mean.dtype == torch.float32
    ref = ref_coherence(np64(w).reshape(40, -1))
    assert (mx.item(), mean.item()) == pytest.approx(ref, rel=1e-4, abs=1e-6)


# --------------------------------------------------------------------------- coherence


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("kind", UNGROUPED)
def test_row_coherence_matches_double_loop(kind, chunk):
    """row_coherence on Linear / Conv2d weights vs the explicit float64 double loop."""
    layer = LAYERS[kind]()
    mx, mean = M.row_coherence(layer.weight, chunk_elements=chunk)
    ref_max, ref_mean = ref_coherence(layer_rows(layer))
    assert mx.item() == pytest.approx(ref_max, rel=1e-5, abs=1e-7)
    assert mean.item() == pytest.approx(ref_mean, rel=1e-5, abs=1e-7)
    assert 0.0 <= mx.item() <= 1.0 and 0.0 <= mean.item() <= mx.item()


@pytest.mark.parametrize("chunk", [M.GRAM_CHUNK_ELEMENTS, 7])
@pytest.mark.parametrize("kind", ["conv_grouped", "conv_depthwise"])
def test_row_coherence_grouped_conv_matches_dense_rows(kind, chunk):
    """Grouped conv: rows are the layer's dense rows over in_channels*kh*kw (DESIGN.md).

    Reference: the explicit double loop over the zero-padded dense rows
    (:func:`dense_conv_rows`, checked against F.conv2d above). Channels of different groups
    read disjoint inputs, so their rows are orthogonal; a depthwise conv has coherence 0.
    """
    layer = LAYERS[kind]()
    mx, mean = M.row_coherence(layer.weight, chunk_elements=chunk, groups=layer.groups)
    ref_max, ref_mean = ref_coherence(dense_conv_rows(layer))
    assert mx.item() == pytest.approx(ref_max, rel=1e-5, abs=1e-7)
    assert mean.item() == pytest.approx(ref_mean, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("n", [2, 3, 5, 17, 64])
def test_row_coherence_many_chunk_sizes_agree_with_reference(n):
    """Every chunk size (1 row per chunk up to one chunk) gives the double-loop answer."""
    w = torch.randn(n, 11, dtype=torch.float64)
    ref = ref_coherence(w.numpy())
    for chunk in sorted({1, 7, n, 2 * n + 1, n * n - 1, n * n, 10 * n * n}):
        mx, mean = M.row_coherence(w, chunk_elements=chunk)
        assert (mx.item(), mean.item()) == pytest.approx(ref, rel=1e-12, abs=1e-14), chunk


def test_row_coherence_known_values():
    """Analytic references: orthogonal rows -> (0, 0); identical / opposite rows -> (1, 1)."""
    eye = torch.eye(6)
    assert M.row_coherence(eye, chunk_elements=7)[0].item() == 0.0
    assert M.row_coherence(eye)[1].item() == 0.0
    w = torch.tensor([[1.0, 2.0, -2.0], [-2.0, -4.0, 4.0]], dtype=torch.float64)
    mx, mean = M.row_coherence(w)
    assert mx.item() == pytest.approx(1.0, abs=1e-15)
    assert mean.item() == pytest.approx(1.0, abs=1e-15)
    # three rows: cos(r0, r1) = 0.6, cos(r0, r2) = 0, cos(r1, r2) = 0.8
    w = torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    mx, mean = M.row_coherence(w, chunk_elements=1)
    assert mx.item() == pytest.approx(0.8, abs=1e-15)
    assert mean.item() == pytest.approx((0.6 + 0.0 + 0.8) / 3, abs=1e-15)


def test_row_coherence_in_unit_interval_for_random_weights():
    """Coherence and its mean lie in [0, 1] (definition of |cos|) over many random weights."""
    for rows, cols in itertools.product([2, 3, 8, 33], [1, 2, 9, 100]):
        w = torch.randn(rows, cols)
        mx, mean = M.row_coherence(w, chunk_elements=7)
        assert 0.0 <= mean.item() <= mx.item() <= 1.0, (rows, cols)


def test_row_coherence_of_parallel_rows_does_not_exceed_one():
    """Exactly parallel float32 rows: |cos| = 1 by definition, so the max must be <= 1.

    Reference: the definition (a cosine is at most 1 in absolute value). Rounding in the
    Gram entry and the two norms can give 1 + 3.6e-7 unless the result is clamped.
    """
    worst = 0.0
    for i in range(200):
        w = torch.randn(2, 1000)
        w[1] = w[0] * (i + 1) * 0.37
        mx, mean = M.row_coherence(w)
        assert mx.item() == pytest.approx(1.0, abs=1e-6)
        worst = max(worst, mx.item(), mean.item())
    assert worst <= 1.0


def test_row_coherence_single_row_is_zero():
    """One row: no pair, (0, 0) by the documented convention, for Linear and Conv weights."""
    for w in (torch.randn(1, 5), torch.randn(1, 3, 2, 2), torch.randn(1, 4, dtype=torch.float64)):
        mx, mean = M.row_coherence(w)
        assert mx.item() == 0.0 and mean.item() == 0.0
        assert mx.shape == () and mean.shape == ()


def ref_coherence_without_zero_rows(rows: np.ndarray) -> tuple[float, float, int]:
    """(max, mean) over the pairs of distinct nonzero rows, and how many rows were zero."""
    rows = np.asarray(rows, dtype=np.float64)
    nonzero = rows[np.any(rows != 0, axis=1)]
    found = ref_coherence(nonzero) if len(nonzero) > 1 else (0.0, 0.0)
    return (*found, len(rows) - len(nonzero))


@pytest.mark.parametrize("chunk", [M.GRAM_CHUNK_ELEMENTS, 7, 1])
def test_coherence_leaves_zero_rows_out(chunk):
    """Zero rows (a padding embedding's tied decoder) have no direction: coherence is the
    max / mean over the pairs of nonzero rows (double-loop reference), zero_rows counts them,
    and nothing is NaN."""
    w = torch.randn(6, 4)
    w[[1, 4]] = 0.0
    found = M.coherence(w, chunk_elements=chunk)
    mx, mean, zero = ref_coherence_without_zero_rows(np64(w))
    assert (found.max.item(), found.mean.item()) == pytest.approx((mx, mean), rel=1e-6)
    assert found.zero_rows.item() == zero == 2
    assert tuple(M.row_coherence(w, chunk_elements=chunk)) == (found.max, found.mean)
    for nothing_left in (torch.zeros(2, 3, 2, 2), torch.eye(3)[:2] * torch.tensor([[1.0], [0.0]])):
        found = M.coherence(nothing_left, chunk_elements=chunk)  # < 2 nonzero rows: no pair
        assert (found.max.item(), found.mean.item()) == (0.0, 0.0)


def test_coherence_zero_rows_in_groups_and_runs():
    """Grouped conv with a zero output channel: the mean divides by the pairs of nonzero
    rows of the dense map (reference: dense rows, double loop); per run with run_dim."""
    conv = nn.Conv2d(4, 6, 3, groups=2, bias=False)
    with torch.no_grad():
        conv.weight[2] = 0.0
    mx, mean, zero = ref_coherence_without_zero_rows(dense_conv_rows(conv))
    found = M.coherence(conv.weight, groups=2, chunk_elements=5)
    assert (found.max.item(), found.mean.item()) == pytest.approx((mx, mean), rel=1e-6)
    assert found.zero_rows.item() == zero == 1
    runs = torch.randn(3, 5, 4)
    runs[1, 0] = 0.0
    found = M.coherence(runs, run_dim=0)
    for r in range(3):
        mx, mean, zero = ref_coherence_without_zero_rows(np64(runs[r]))
        assert (found.max[r].item(), found.mean[r].item()) == pytest.approx((mx, mean), rel=1e-6)
        assert found.zero_rows[r].item() == zero


def test_coherence_of_separate_maps_pairs_within_each():
    """Several linear maps of one layer (attention's q, k, v): pairs within each map only;
    the mean divides by the sum of the maps' pair counts (double-loop reference)."""
    maps = [torch.randn(4, 3), torch.randn(4, 5), torch.randn(3, 5)]
    maps[1][2] = 0.0
    values, zero = [], 0
    for w in maps:
        rows = np64(w)
        nonzero = rows[np.any(rows != 0, axis=1)]
        zero += len(rows) - len(nonzero)
        for i, j in itertools.permutations(range(len(nonzero)), 2):
            cos = abs(nonzero[i] @ nonzero[j]) / (ref_norm(nonzero[i]) * ref_norm(nonzero[j]))
            values.append(cos)
    found = M.coherence(maps, chunk_elements=3)
    assert found.max.item() == pytest.approx(max(values), rel=1e-6)
    assert found.mean.item() == pytest.approx(sum(values) / len(values), rel=1e-6)
    assert found.zero_rows.item() == zero == 1
    with pytest.raises(ValueError, match="groups=2 needs a single weight"):
        M.coherence(maps, groups=2)


def test_coherence_nan_weight_stays_nan():
    """A row holding NaN is not a zero row: its cosines, and so both values, are NaN."""
    w = torch.randn(4, 3)
    w[1, 0] = math.nan
    found = M.coherence(w)
    assert math.isnan(found.max.item()) and math.isnan(found.mean.item())
    assert found.zero_rows.item() == 0


def test_weight_norm_finite_for_huge_finite_weights():
    """||W||_F accumulates in float64: finite for float32 entries whose squares overflow
    float32 (reference: float64 numpy)."""
    w = torch.full((4, 3), 8e19)
    assert math.isinf(torch.linalg.vector_norm(w).item())  # what float32 accumulation gives
    assert M.weight_norm(w).item() == pytest.approx(ref_norm(np64(w)), rel=1e-6)
    assert M.weight_norm(w).dtype == torch.float32


@pytest.mark.parametrize("scale", [8e19, 1e30, 1e36])
def test_output_norm_is_finite_for_huge_finite_activations(scale):
    """A float32 sum of squares overflows above ||o|| ~1.8e19; output_norm (and rms, gain)
    stay finite and equal the float64 reference, per run too."""
    x = torch.randn(16, 3, 8, generator=torch.Generator().manual_seed(0)) * scale
    assert math.isinf(torch.linalg.vector_norm(x).item())  # the plain float32 norm
    assert M.output_norm(x).item() == pytest.approx(ref_norm(np64(x)), rel=1e-6)
    per_run = M.output_norm(x, run_dim=1)
    for run in range(3):
        assert per_run[run].item() == pytest.approx(ref_norm(np64(x[:, run])), rel=1e-6)
    assert M.output_rms(x).item() == pytest.approx(ref_norm(np64(x)) / math.sqrt(x.numel()))
    assert M.gain(x, x / scale).item() == pytest.approx(scale, rel=1e-6)
    half = (x / scale * 1e19).to(torch.bfloat16)  # bf16 has float32's range
    assert M.output_norm(half).item() == pytest.approx(ref_norm(np64(half)), rel=1e-6)


@pytest.mark.parametrize("scale", [1e20, 1e-30])
def test_coherence_of_huge_or_tiny_finite_weights_is_the_float64_one(scale):
    """Entries ~1e20 overflow a float32 Gram matrix (the old result was NaN), ~1e-30
    underflow it; the rows are scaled by a power of two first (reference: the double loop)."""
    w = torch.randn(7, 5, generator=torch.Generator().manual_seed(1)) * scale
    found = M.coherence(w)
    expected = ref_coherence(np64(w))
    assert found.max.item() == pytest.approx(expected[0], rel=1e-5)
    assert found.mean.item() == pytest.approx(expected[1], rel=1e-5)


def test_power_of_two_row_scaling_leaves_cosines_bitwise_unchanged():
    """Rows beyond the safe range are multiplied by an exact power of two (the path always
    taken off the CPU): the cosines are bitwise those of the unscaled weight."""
    w = torch.randn(9, 6, generator=torch.Generator().manual_seed(2))
    huge = torch.ldexp(w, torch.tensor(70))
    exponent = torch.frexp(w.abs().max()).exponent
    scaled, norms = M._overflow_safe(huge[None], torch.linalg.vector_norm(huge[None], dim=2))
    assert torch.equal(scaled[0], torch.ldexp(w, -exponent))
    assert torch.equal(norms, torch.linalg.vector_norm(scaled, dim=2))
    for got, unscaled in zip(M.coherence(huge), M.coherence(w), strict=True):
        assert torch.equal(got, unscaled)


def test_rescaled_norm_is_the_sync_free_accelerator_path():
    """The formula the accelerator path selects with torch.where (no host read): exact for
    huge values, 0 for zeros, NaN where the tensor holds inf or NaN (the plain norm is then
    kept: inf for inf, NaN for NaN)."""
    x = torch.randn(5, 7) * 1e30
    assert M._rescaled_norm(x, None).item() == pytest.approx(ref_norm(np64(x)), rel=1e-6)
    assert M._rescaled_norm(x, 0).numpy() == pytest.approx(
        [ref_norm(np64(row)) for row in x], rel=1e-6
    )
    assert M._rescaled_norm(torch.zeros(3, 2), None).item() == 0.0
    assert math.isnan(M._rescaled_norm(torch.tensor([1.0, math.inf]), None).item())
    assert math.isinf(M.output_norm(torch.tensor([1.0, math.inf])).item())
    assert math.isnan(M.output_norm(torch.tensor([1.0, math.nan])).item())


def test_weight_rows_rejects_vectors():
    """A 1-d weight (e.g. BatchNorm's) has no rows: ValueError, not a silent result."""
    with pytest.raises(ValueError, match="ndim >= 2"):
        M.row_coherence(torch.randn(5))
    with pytest.raises(ValueError):
        M.weight_rows(torch.randn(()))


def test_parametrized_effective_weight():
    """On a weight-normalised Linear the effective weight g*v/||v|| is used (numpy reference)."""
    layer = nn.utils.parametrizations.weight_norm(nn.Linear(6, 4))
    with torch.no_grad():
        layer.parametrizations.weight.original0.mul_(torch.tensor([[0.5], [2.0], [1.0], [3.0]]))
    v = np64(layer.parametrizations.weight.original1)
    g = np64(layer.parametrizations.weight.original0)
    effective = g * v / np.sqrt((v**2).sum(axis=1, keepdims=True))
    assert M.weight_norm(layer.weight).item() == pytest.approx(ref_norm(effective), rel=1e-6)
    mx, mean = M.row_coherence(layer.weight, chunk_elements=7)
    assert (mx.item(), mean.item()) == pytest.approx(ref_coherence(effective), rel=1e-5)
