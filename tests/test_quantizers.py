import math
import re

import pytest
import torch

from edvae.quantizers import QUANTIZERS, build_quantizer
from edvae.quantizers.evidential import EvidentialQuantizer
from edvae.quantizers.gumbel import GumbelQuantizer

# codebooks the implicit-grid methods can form: FSQ 4 x 4 levels, LFQ 2^4 codes
SIZES = {"fsq": (16, 2, {"levels": "4,4"}), "lfq": (16, 4, {})}


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_contract_shapes_and_dtypes(name):
    torch.manual_seed(0)
    k, d, options = SIZES.get(name, (16, 3, {}))
    q = build_quantizer(name, k, d, **options)
    z = torch.randn(2, q.input_channels, 4, 5)
    out = q(z, temperature=0.7, beta=0.1)
    assert out.z_q.shape == (2, d, 4, 5) and out.z_q.dtype == torch.float32
    assert out.indices.shape == (2, 4, 5) and out.indices.dtype == torch.int64
    assert out.loss.shape == () and torch.isfinite(out.loss)
    q.eval()
    out = q(z)
    # evaluation is hard: z_q is exactly the codebook row of each index
    torch.testing.assert_close(out.z_q, q.embed(out.indices))
    assert torch.equal(out.indices, q.codes(z))


@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_input_is_checked_and_read_in_float32(name):
    """Every method's one input check names the shape it expects; any float input is cast to
    float32 before the numerics (bf16 autocast: test_modern_quantizers.py)."""
    torch.manual_seed(0)
    k, d, options = SIZES.get(name, (16, 3, {}))
    q = build_quantizer(name, k, d, **options).eval()
    c, kind = (k, "logits") if q.logit_input else (d, "features")
    for bad in (torch.randn(2, c + 1, 4, 5), torch.randn(c, 4, 5)):
        for call in (q, q.codes):
            message = f"expected {kind} (B, {c}, h, w), got {tuple(bad.shape)}"
            with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
                call(bad)
    z = torch.randn(2, c, 4, 5, dtype=torch.float64)
    with torch.no_grad():
        out, out32 = q(z), q(z.float())
    assert out.z_q.dtype == torch.float32 and torch.equal(out.z_q, out32.z_q)
    assert torch.equal(q.codes(z), q.codes(z.float()))


def test_edvae_regulariser_traces_without_a_graph_break():
    """On a CPU the clamp is skipped when no logit reaches it, which reads a value back to the host;
    under torch.compile that read would break the graph every step, so there the clamp always runs."""
    q = EvidentialQuantizer(8, 2, clamp_max=20.0)
    z = (torch.randn(2, 8, 3, 3) * 4).requires_grad_()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda t: q.regulariser(t).sum())(z)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(lambda t: q.regulariser(t).sum(), backend="aot_eager")
    big = torch.tensor([30.0, 20.0, 0.0, -1.0]).view(1, 4, 1, 1).repeat(1, 2, 1, 1).requires_grad_()
    for x in (z, big):  # nothing clamped, and logits above and at the clamp
        value = compiled(x)
        (grad,) = torch.autograd.grad(value, x)
        eager = q.regulariser(x).sum()
        assert torch.equal(value, eager) and torch.equal(grad, torch.autograd.grad(eager, x)[0])
    torch._dynamo.reset()


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method 'vq'"):
        build_quantizer("vq", 8, 2)


def test_dvae_regulariser_is_kl_to_uniform():
    q = GumbelQuantizer(4, 2)
    logits = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 4, 1, 1)
    p = torch.softmax(torch.tensor([0.0, 1.0, 2.0, 3.0]), 0)
    expected = float((p * (p * 4).log()).sum())
    assert q.regulariser(logits).item() == pytest.approx(expected, rel=1e-6)
    assert q.regulariser(torch.zeros(1, 4, 1, 1)).item() == pytest.approx(0.0, abs=1e-7)


def test_edvae_probabilities_are_the_dirichlet_mean_and_uncertainty_k_over_s():
    q = EvidentialQuantizer(3, 2, clamp_max=20.0)
    logits = torch.tensor([0.0, math.log(3.0), 30.0]).view(1, 3, 1, 1)
    alpha = torch.tensor([2.0, 4.0, math.exp(20.0) + 1])  # the clamp at 20 applies to 30
    torch.testing.assert_close(q.probabilities(logits).view(3), alpha / alpha.sum())
    assert q.uncertainty(logits).item() == pytest.approx(3 / float(alpha.sum()), rel=1e-6)


def test_edvae_regulariser_vanishes_at_alpha_one_and_loss_is_beta_weighted():
    q = EvidentialQuantizer(8, 2)
    z = torch.full((2, 8, 3, 3), -200.0)  # evidence exp(-200) = 0: alpha = 1
    assert q.regulariser(z).abs().max().item() == 0.0
    z = torch.randn(2, 8, 3, 3)
    out = q(z, temperature=1.0, beta=0.5)
    assert out.loss.item() == pytest.approx(0.5 * q.regulariser(z).mean().item(), rel=1e-6)


def test_edvae_clamp_stops_the_gradient_above_the_maximum():
    q = EvidentialQuantizer(4, 2, clamp_max=5.0)
    z = torch.tensor([0.0, 1.0, 6.0, 9.0]).view(1, 4, 1, 1).requires_grad_()
    q.regulariser(z).sum().backward()
    assert z.grad.view(4)[2:].abs().max() == 0 and z.grad.view(4)[:2].abs().min() > 0


def test_training_sample_is_soft_and_follows_pi():
    torch.manual_seed(0)
    q = EvidentialQuantizer(4, 4)
    q.codebook.data = torch.eye(4)
    logits = torch.log(torch.tensor([9.0, 0.0, 0.0, 0.0]) + 1e-30).view(1, 4, 1, 1)  # pi = (10,1,1,1)/13
    z = logits.expand(20000, 4, 1, 1)
    out = q(z, temperature=0.05)
    freq = torch.bincount(out.indices.view(-1), minlength=4).float() / 20000
    torch.testing.assert_close(freq, torch.tensor([10.0, 1, 1, 1]) / 13, atol=0.01, rtol=0)
    assert (out.z_q.sum(1) - 1).abs().max() < 1e-5  # rows of the one-hot codebook: a soft simplex


def test_sample_eval_mode_draws_from_pi_and_argmax_is_deterministic():
    q = EvidentialQuantizer(4, 2, eval_mode="sample").eval()
    z = torch.zeros(500, 4, 2, 2)  # uniform pi
    codes = q(z).indices
    assert len(torch.unique(codes)) == 4
    q2 = EvidentialQuantizer(4, 2).eval()
    assert torch.equal(q2(z).indices, q2(z).indices)


def test_dirichlet_sample_option_draws_pi_from_dirichlet():
    torch.manual_seed(0)
    q = EvidentialQuantizer(4, 2, dirichlet_sample=True)
    z = torch.zeros(2, 4, 3, 3, requires_grad=True)
    out = q(z, temperature=1.0, beta=1e-3)
    (out.z_q.sum() + out.loss).backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["edvae", "dvae"])
def test_reporting_off_keeps_the_gradient_and_skips_only_reports(name):
    # the trainer turns reporting off between logged steps: the parameters' gradients must be
    # identical; only the training indices, the stats and the regulariser's value may be skipped
    grads = []
    for reporting in (True, False):
        torch.manual_seed(0)
        q = build_quantizer(name, 32, 4)
        z = (torch.randn(2, 32, 3, 3) * 4).requires_grad_()
        q.reporting = reporting
        out = q(z, temperature=0.5, beta=0.01)
        (out.z_q.square().mean() + out.loss).backward()
        grads.append((z.grad, q.codebook.grad))
        if reporting:
            assert out.indices.shape == (2, 3, 3) and "kl" in out.stats
        else:
            assert out.indices is None and out.stats == {}
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_dvae_regulariser_of_peaked_logits_matches_float64():
    # the probabilities are floored at exp(-87) before they enter the sum (a CPU speed measure):
    # the KL of very peaked rows must still match an exact float64 computation
    z = torch.zeros(1, 64, 1, 2)
    z[0, 0, 0, 0], z[0, 1:, 0, 0] = 0.0, -300.0  # one code certain, the others ~e^-300
    z[0, :, 0, 1] = torch.linspace(-120.0, 0.0, 64)
    q = GumbelQuantizer(64, 2)
    log_p = z.double().log_softmax(1)
    exact = (log_p.exp() * (log_p + math.log(64))).sum(1)
    torch.testing.assert_close(q.regulariser(z).double(), exact, rtol=1e-6, atol=0)


def test_evidence_keeps_the_gradient_of_a_logit_exactly_at_the_clamp():
    """edvae's clamp convention (dirichlet_kl.py), whatever torch's clamp does at its bound."""
    z = torch.tensor([20.0, 21.0, 0.0], requires_grad=True)
    EvidentialQuantizer(4, 2, clamp_max=20.0).evidence(z).sum().backward()
    assert z.grad.tolist() == [pytest.approx(math.exp(20), rel=1e-6), 0.0, 1.0]
