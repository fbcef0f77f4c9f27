"""Tests of :mod:`stability.records.weights`: the weight metrics of the effective weight.

References: the effective weight rebuilt by hand from a parametrization's originals, and the
explicit double loop over pairs of output-unit rows (``records_support.ref_coherence``).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from records_support import lookup, ref_weight_metrics
from torch import nn
from torch.nn.utils import parametrize

from stability import Recorder
from stability.records.weights import effective_weight


def test_weight_metrics_use_effective_parametrized_weight():
    """Weight-normalised layers (torch parametrizations): one record per layer (no
    ``parametrizations.*`` names) and weight metrics of g * v / ||v|| (numpy reference)."""
    wn = nn.utils.parametrizations.weight_norm
    model = nn.Sequential(wn(nn.Linear(5, 6)), nn.Tanh(), wn(nn.Conv2d(6, 4, 1)))
    with torch.no_grad():
        model[0].parametrizations.weight.original0.mul_(torch.rand(6, 1) + 0.5)
        model[2].parametrizations.weight.original0.mul_(torch.rand(4, 1, 1, 1) + 0.5)

    def effective(layer):
        g = layer.parametrizations.weight.original0.detach().double()
        v = layer.parametrizations.weight.original1.detach().double()
        rows = v.reshape(v.shape[0], -1)
        return g.reshape(-1, 1) * rows / rows.norm(dim=1, keepdim=True)

    x = torch.randn(3, 5)
    with Recorder(model, weight_every=1) as rec:
        out = model[2](model[1](model[0](x))[:, :, None, None])
        out.sum().backward()
        rec.step()
    frame = rec.to_frame()
    assert set(frame.layer) == {"0", "2"}
    for name in ("0", "2"):
        for metric, value in ref_weight_metrics(effective(model.get_submodule(name))).items():
            assert lookup(frame, name, metric) == pytest.approx(value, rel=1e-5), (name, metric)


def weight_frame(model, x, **kwargs):
    """One recorded step (weight metrics on) of ``model(x)``; the frame."""
    with Recorder(model, weight_every=1, **kwargs) as rec:
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        out.float().pow(2).mean().backward()
        rec.step()
    return rec.to_frame()


def assert_weight_rows(frame, layer, rows: torch.Tensor, rel=1e-5):
    """The layer's weight metrics equal the double-loop reference over ``rows``, given as
    (output units, fan-in) built by hand from the layer's definition."""
    for metric, value in ref_weight_metrics(rows).items():
        assert lookup(frame, layer, metric) == pytest.approx(value, rel=rel), (layer, metric)


def test_spectral_norm_state_and_training_unchanged_by_recording():
    """torch spectral_norm: outputs, gradients and the power-iteration vectors _u / _v are
    bitwise those of the same model trained without a Recorder, over 5 steps; the weight
    metrics are those of W / sigma the forward used (recomputed from the saved u, v)."""
    sn = nn.utils.parametrizations.spectral_norm

    def make():
        torch.manual_seed(0)
        return nn.Sequential(sn(nn.Linear(6, 8)), nn.Tanh(), sn(nn.Linear(8, 3)))

    x = torch.randn(4, 6)
    plain, recorded = make(), make()
    rec = Recorder(recorded, weight_every=1)
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (plain, recorded)]
    for _ in range(5):
        outs = []
        for model, opt in zip((plain, recorded), optimizers, strict=True):
            opt.zero_grad()
            out = model(x)
            out.pow(2).mean().backward()
            outs.append(out)
            opt.step()
        rec.step()
        assert torch.equal(*outs)
        for a, b in zip(plain.parameters(), recorded.parameters(), strict=True):
            assert torch.equal(a.grad, b.grad)
        for i in (0, 2):
            sa, sb = plain[i].parametrizations.weight[0], recorded[i].parametrizations.weight[0]
            assert torch.equal(sa._u, sb._u) and torch.equal(sa._v, sb._v)
    rec.close()
    frame = rec.to_frame()
    assert set(frame.step) == set(range(5))


def test_spectral_norm_weight_metrics_are_the_forwards_weight():
    """The recorded weight metrics are those of the weight the forward used (captured by a
    test-owned hook on the parametrization), not of one more power iteration."""
    sn = nn.utils.parametrizations.spectral_norm
    torch.manual_seed(1)
    model = nn.Sequential(sn(nn.Linear(5, 7)), nn.Tanh(), nn.Linear(7, 2))
    x = torch.randn(3, 5)
    seen = []
    with Recorder(model, weight_every=1) as rec:
        model[0].parametrizations.weight.register_forward_hook(
            lambda m, a, out: seen.append(out.detach().clone())
        )
        model(x).pow(2).mean().backward()
        rec.step()
    frame = rec.to_frame()
    assert len(seen) == 1  # recording ran no second parametrization forward
    assert_weight_rows(frame, "0", seen[0].double())


def test_conv1d_rows_are_output_units():
    """transformers' Conv1D (GPT-2) stores (in, out): rows are its output units, i.e. the
    rows of its Jacobian d y / d x (torch's own result), not the stored rows."""
    pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
    torch.manual_seed(2)
    layer = pytorch_utils.Conv1D(6, 4)  # nf=6 outputs, nx=4 inputs: weight (4, 6)
    with torch.no_grad():
        layer.weight.add_(torch.linspace(0, 1, 6))  # columns made coherent, rows not
    jacobian = torch.autograd.functional.jacobian(layer, torch.zeros(1, 4))[0, :, 0]
    assert jacobian.shape == (6, 4)
    model = nn.Sequential(layer, nn.Tanh())
    frame = weight_frame(model, torch.randn(3, 4))
    assert_weight_rows(frame, "0", jacobian.double())


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_rows_are_output_channels(groups):
    """ConvTranspose2d stores (in, out/groups, kh, kw): the row of output channel c holds
    every weight feeding it, w[i, c % out_g] for the inputs i of c's group (explicit loop);
    pairs of different groups are orthogonal (dense rows zero outside their group)."""
    torch.manual_seed(3)
    layer = nn.ConvTranspose2d(4, 6, 2, groups=groups)
    w = layer.weight.detach().double()
    in_g, out_g = 4 // groups, 6 // groups
    dense = torch.zeros(6, 4, 2, 2, dtype=torch.float64)
    for c in range(6):
        g = c // out_g
        for i in range(g * in_g, (g + 1) * in_g):
            dense[c, i] = w[i, c % out_g]
    frame = weight_frame(nn.Sequential(layer), torch.randn(2, 4, 3, 3))
    assert_weight_rows(frame, "0", dense)


def test_bilinear_and_embedding_rows():
    """Bilinear (out, in1, in2): one row per output, as stored. Embedding: the linear map
    one_hot(token) -> vector, whose output units are the dim features: rows are the table's
    columns, the Jacobian of one_hot @ table (torch's own result); a padding row is then a
    zero column, not a zero row."""
    torch.manual_seed(4)
    bilinear = nn.Bilinear(3, 4, 5)
    x1, x2 = torch.randn(2, 3), torch.randn(2, 4)
    with Recorder(bilinear, weight_every=1) as rec:
        bilinear(x1, x2).pow(2).mean().backward()
        rec.step()
    assert_weight_rows(rec.to_frame(), "(model)", bilinear.weight.detach().double())

    embedding = nn.Embedding(9, 4, padding_idx=0)
    one_hot = torch.eye(9, dtype=torch.float64)
    table = embedding.weight.detach().double()
    jacobian = torch.autograd.functional.jacobian(lambda h: h @ table, one_hot[:1])[0, :, 0]
    assert jacobian.shape == (4, 9)
    frame = weight_frame(nn.Sequential(embedding), torch.tensor([[1, 0, 3]]))
    assert_weight_rows(frame, "0", jacobian)
    assert "zero_rows" not in set(frame.metric)


def test_attention_in_proj_rows_are_q_k_v_separately():
    """nn.MultiheadAttention: weight metrics of the attention layer are those of its query,
    key and value projections, each a linear map (pairs within each, double loop), and its
    out_proj gets its own weight rows although its forward never runs."""
    torch.manual_seed(5)
    attention = nn.MultiheadAttention(6, 2, batch_first=True)
    model = nn.ModuleDict({"attn": attention})
    x = torch.randn(2, 3, 6)
    with Recorder(model, weight_every=1) as rec:
        attention(x, x, x)[0].pow(2).mean().backward()
        rec.step()
    frame = rec.to_frame()
    q, k, v = attention.in_proj_weight.detach().double().chunk(3)
    cosines = []
    for w in (q, k, v):
        n = torch.nn.functional.normalize(w, dim=1)
        c = (n @ n.T).abs()
        cosines += [c[i, j].item() for i in range(6) for j in range(6) if i != j]
    assert lookup(frame, "attn", "coherence") == pytest.approx(max(cosines), rel=1e-5)
    mean = sum(cosines) / len(cosines)
    assert lookup(frame, "attn", "coherence_mean") == pytest.approx(mean, rel=1e-5)
    norm = attention.in_proj_weight.detach().double().norm().item()
    assert lookup(frame, "attn", "weight_norm") == pytest.approx(norm, rel=1e-6)
    assert_weight_rows(frame, "attn.out_proj", attention.out_proj.weight.detach().double())
    assert set(frame[frame.layer == "attn.out_proj"].metric) == {
        "weight_norm",
        "coherence",
        "coherence_mean",
    }


def test_weight_metrics_under_autocast_are_float32():
    """Inside the user's bf16 autocast region the weight metrics are computed in float32
    outside autocast: equal to the float64 double loop to float32 accuracy (bf16 matmuls
    would be off by ~1e-3), and a coherence of 0.9999 is not rounded to 1."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight[1] = model[0].weight[0] + 0.01 * torch.randn(16)  # |cos| ~ 0.9999
    x = torch.randn(5, 16)
    with Recorder(model, weight_every=1) as rec:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().pow(2).mean().backward()
        rec.step()
    frame = rec.to_frame()
    for name in ("0", "2"):
        assert_weight_rows(frame, name, model.get_submodule(name).weight.detach().double(), 1e-6)
    assert lookup(frame, "0", "coherence") < 1.0


def test_zero_row_of_tied_decoder_is_left_out_and_counted():
    """A padding embedding tied to its decoder: the decoder's zero row is left out of
    coherence (finite, double loop over the nonzero rows) and zero_rows says 1."""
    torch.manual_seed(7)
    embedding = nn.Embedding(7, 5, padding_idx=0)
    decoder = nn.Linear(5, 7, bias=False)
    decoder.weight = embedding.weight
    model = nn.Sequential(embedding, nn.Tanh(), decoder)
    frame = weight_frame(model, torch.tensor([[1, 2, 0]]))
    rows = decoder.weight.detach().double()
    reference = ref_weight_metrics(rows[1:])
    for metric in ("coherence", "coherence_mean"):
        assert lookup(frame, "2", metric) == pytest.approx(reference[metric], rel=1e-5)
    assert lookup(frame, "2", "zero_rows") == 1.0
    assert lookup(frame, "2", "weight_norm") == pytest.approx(reference["weight_norm"], rel=1e-6)


def test_effective_weight_changes_no_state_and_uses_the_cache():
    """effective_weight of a spectral-norm layer outside a forward: W / (u . W v) from the
    layer's own u, v (float64 numpy reference); _u / _v are the same tensor objects with
    the same values and version counters, the training flags are restored. Inside
    parametrize.cached() it is the cached tensor itself: no parametrization forward."""
    sn = nn.utils.parametrizations.spectral_norm
    torch.manual_seed(8)
    layer = sn(nn.Linear(5, 4))
    layer(torch.randn(2, 5))  # one training forward: one power iteration
    norm = layer.parametrizations.weight[0]
    u, v = norm._u, norm._v
    before = (u.clone(), v.clone(), u._version, v._version)

    weight = effective_weight(layer)

    w = layer.parametrizations.weight.original.detach().double().numpy()
    sigma = before[0].double().numpy() @ w @ before[1].double().numpy()
    np.testing.assert_allclose(weight.double().numpy(), w / sigma, rtol=1e-6)
    assert norm._u is u and norm._v is v
    assert (u._version, v._version) == before[2:]
    assert torch.equal(u, before[0]) and torch.equal(v, before[1])
    assert layer.training and norm.training

    runs = []
    layer.parametrizations.weight.register_forward_hook(lambda m, a, out: runs.append(out))
    with parametrize.cached():
        layer(torch.randn(2, 5))
        assert len(runs) == 1
        assert effective_weight(layer).data_ptr() == runs[0].data_ptr()
    assert len(runs) == 1


class _LoraTarget(nn.Module):
    """``q`` (nn.Linear or transformers' Conv1D, the LoRA target) and ``head``."""

    def __init__(self, conv1d: bool):
        super().__init__()
        if conv1d:
            self.q = pytest.importorskip("transformers.pytorch_utils").Conv1D(6, 6)
        else:
            self.q = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.q(x)))


@pytest.mark.parametrize("conv1d", [False, True])
def test_lora_layer_weight_is_base_plus_adapter(conv1d):
    """A peft LoRA layer records the weight its forward applies, W + scale B A: the
    reference is peft's own merge (merge_and_unload of a deep copy), read as output-unit
    rows (transposed for Conv1D); not the base weight alone."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(9)
    config = peft.LoraConfig(
        r=2, target_modules=["q"], init_lora_weights=False, fan_in_fan_out=conv1d
    )
    model = peft.get_peft_model(_LoraTarget(conv1d), config)
    merged = copy.deepcopy(model).merge_and_unload().q.weight.detach().double()
    rows = merged.t() if conv1d else merged
    base = model.base_model.model.q.base_layer.weight.detach().double()
    assert not torch.allclose(rows, base.t() if conv1d else base)
    frame = weight_frame(model, torch.randn(3, 6))
    assert_weight_rows(frame, "base_model.model.q", rows)
