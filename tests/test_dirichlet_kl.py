import math

import pytest
import torch
from torch.distributions import Dirichlet, kl_divergence

from edvae.quantizers.dirichlet_kl import (
    dirichlet_kl_uniform,
    dirichlet_kl_uniform_reference,
    evidential_log_alpha_and_kl,
)

K = 512
CLAMP = 20.0


def reference(logits: torch.Tensor) -> torch.Tensor:
    """torch.distributions in float64 over the last dimension."""
    alpha = logits.double().exp() + 1.0
    return kl_divergence(Dirichlet(alpha), Dirichlet(torch.ones_like(alpha)))


def cases() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    rows = [torch.full((K,), float(z)) for z in torch.linspace(-16, CLAMP, 73)]
    for scale in (0.1, 1.0, 3.0, 10.0):
        for mean in (-10.0, -3.0, 0.0, 3.0, 10.0, 18.0):
            rows.append((torch.randn(K, generator=g) * scale + mean).clamp(max=CLAMP))
    for big in (0.0, 2.0, 5.0, 7.0, 8.0, 10.0, 15.0, CLAMP):
        one = torch.full((K,), -30.0)
        one[0] = big
        rows.append(one)
        few = torch.randn(K, generator=g) - 3
        few[:5] = big
        rows.append(few)
    return torch.stack(rows)  # logits clamped at 20: alpha = exp(z) + 1 up to exp(20) + 1


def exact(logits: torch.Tensor, digits: int = 40) -> list[float]:
    """Appendix A's formula in 40-digit arithmetic (mpmath, a dependency of torch's sympy)."""
    mpmath = pytest.importorskip("mpmath", reason="mpmath gives the high-precision reference")
    mpmath.mp.dps = digits
    out = []
    for row in logits.double().tolist():
        alpha = [mpmath.exp(mpmath.mpf(z)) + 1 for z in row]
        s = mpmath.fsum(alpha)
        kl = (mpmath.loggamma(s) - mpmath.loggamma(len(alpha))
              - mpmath.fsum(mpmath.loggamma(a) for a in alpha)
              + mpmath.fsum((a - 1) * (mpmath.digamma(a) - mpmath.digamma(s)) for a in alpha))
        out.append(float(kl))
    return out


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (ours.double() - ref).abs() / ref.abs()


def test_matches_torch_distributions_over_the_clamp_range():
    # torch.distributions in float64 is itself exact to ~1e-9 while every alpha >= 1 + 1e-4
    z = cases().float()
    keep = z.amin(1) >= -9.0
    rel = relative_error(dirichlet_kl_uniform(z[keep], dim=1), reference(z[keep]))
    assert keep.sum() > 80 and rel.max() < 1e-5, f"worst relative error {rel.max():.2e}"


def test_matches_high_precision_reference_everywhere():
    # near alpha = 1 the float64 textbook formula cancels (lgamma(S) - lgamma(K) is ~1e-4 while
    # the KL is ~1e-12): there 40-digit arithmetic is the reference, and the float64 one is off
    z = cases().float()
    ref = torch.tensor(exact(z), dtype=torch.float64)
    rel = relative_error(dirichlet_kl_uniform(z, dim=1), ref)
    assert rel.max() < 1e-5, f"worst relative error {rel.max():.2e} at max logit {z[rel.argmax()].max():.3g}"
    tiny = torch.full((1, K), -16.0)
    assert relative_error(reference(tiny), torch.tensor(exact(tiny))).item() > 0.1


def test_zero_at_alpha_one_and_positive_elsewhere():
    alpha_one = torch.full((2, K, 3, 3), -float("inf"))  # exp(-inf) = 0 evidence
    assert torch.equal(dirichlet_kl_uniform(alpha_one), torch.zeros(2, 3, 3))
    assert (dirichlet_kl_uniform(cases(), dim=1) > 0).all()


def test_closed_form_small_case_by_hand():
    # K = 2, alpha = (2, 1): KL = lgamma(3) - lgamma(2) - lgamma(2) - lgamma(1) + 1 * (psi(2) - psi(3))
    #                           = log 2 + (psi(2) - psi(3)) = log 2 - 1/2
    kl = dirichlet_kl_uniform(torch.tensor([[0.0, -float("inf")]]), dim=1)
    assert kl.item() == pytest.approx(math.log(2) - 0.5, rel=1e-6)


def test_output_is_float32_per_position_and_reference_formula_agrees():
    z = torch.randn(3, 16, 2, 5) * 2
    kl = dirichlet_kl_uniform(z)
    assert kl.shape == (3, 2, 5) and kl.dtype == torch.float32
    ref = dirichlet_kl_uniform_reference(z.double().exp() + 1, dim=1)
    torch.testing.assert_close(kl.double(), ref, rtol=1e-5, atol=0)


def test_gradient_matches_autograd_of_the_textbook_formula():
    torch.manual_seed(0)
    z = (torch.randn(4, 64, 2, 2) * 4).clamp(max=20).requires_grad_()
    dirichlet_kl_uniform(z).sum().backward()
    z64 = z.detach().double().requires_grad_()
    dirichlet_kl_uniform_reference(z64.exp() + 1, dim=1).sum().backward()
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-4, atol=1e-6)


def test_bf16_input_is_computed_in_float32():
    z = torch.randn(2, K, 1, 1) * 3
    kl16 = dirichlet_kl_uniform(z.bfloat16())
    assert kl16.dtype == torch.float32
    torch.testing.assert_close(kl16, dirichlet_kl_uniform(z.bfloat16().float()))


def test_fused_log_alpha_and_kl_with_clamp_match_the_textbook_formula():
    # one function returns log(alpha) and the KL of clamped logits; its gradient through both
    # outputs (and zero above the clamp) matches autograd of the textbook formula in float64 away
    # from the clamp. At the clamp, torch's own clamp changed its gradient (1 up to 2.13, 0 from
    # 2.14): edvae's convention, checked by hand below, is the gradient of the unclamped formula
    torch.manual_seed(1)
    z = torch.randn(3, 40, 2, 2) * 8
    z[0, :3, 0, 0] = torch.tensor([20.0, 24.0, 31.0])
    w = torch.randn(z.shape)
    zf = z.clone().requires_grad_()
    log_alpha, kl = evidential_log_alpha_and_kl(zf, 20.0, dim=1)
    (0.3 * kl.sum() + (w * log_alpha).sum()).backward()
    z64 = z.double().requires_grad_()
    alpha = z64.clamp(max=20.0).exp() + 1
    ref_kl = dirichlet_kl_uniform_reference(alpha, dim=1)
    (0.3 * ref_kl.sum() + (w.double() * alpha.log()).sum()).backward()
    torch.testing.assert_close(log_alpha.double(), alpha.log(), rtol=1e-6, atol=1e-6)
    assert relative_error(kl, ref_kl).max() < 1e-5
    off = z != 20.0
    assert off.sum() == z.numel() - 1
    torch.testing.assert_close(zf.grad.double()[off], z64.grad[off], rtol=1e-4, atol=1e-6)
    assert zf.grad[0, 1, 0, 0] == 0 and zf.grad[0, 2, 0, 0] == 0  # above the clamp
    # exactly at the clamp: the textbook formula without the clamp (the left derivative)
    z_left = z.clamp(max=20.0).double().requires_grad_()  # a leaf: no clamp in its graph
    alpha_left = z_left.exp() + 1
    (0.3 * dirichlet_kl_uniform_reference(alpha_left, dim=1).sum() + (w.double() * alpha_left.log()).sum()
     ).backward()
    assert z_left.grad[0, 0, 0, 0].abs() > 1
    torch.testing.assert_close(zf.grad[0, 0, 0, 0].double(), z_left.grad[0, 0, 0, 0], rtol=1e-4, atol=0)


@pytest.mark.parametrize("logits", [[[0.0, -math.inf]], [[0.0, -math.inf], [0.0, 0.5]]],
                         ids=["nothing-above-the-clamp", "one-logit-above-it"])
def test_a_logit_exactly_at_the_clamp_keeps_the_unclamped_gradient(logits):
    # edvae's convention with clamp_max = 0, K = 2, dim = 1 (two CPU paths: without and with a
    # logit strictly above the clamp). d log(alpha_j)/dz_j = e_j / (1 + e_j) = 1/2 at e_j = 1;
    # dKL/dz_j = e_j (e_j psi1(1 + e_j) - E psi1(K + E)), and psi1(x) - psi1(x + 1) = 1/x^2:
    # - alpha = (2, 1): KL = log 2 - 1/2, dKL/dz_0 = psi1(2) - psi1(3) = 1/4;
    # - alpha = (2, 2) from z = (0, 0.5): KL = log 6 - 5/3 (psi(4) - psi(2) = 1/2 + 1/3),
    #   dKL/dz_0 = psi1(2) - 2 psi1(4) = 31/18 - pi^2/6, and dz_1 = 0 (above the clamp).
    # (0.077 is a difference of two terms near 0.4, each from psi1 to ~1e-5 relative: rtol 1e-4)
    z = torch.tensor(logits, requires_grad=True)
    log_alpha, kl = evidential_log_alpha_and_kl(z, 0.0, dim=1)
    grad_kl, = torch.autograd.grad(kl.sum(), z, retain_graph=True)
    grad_log_alpha, = torch.autograd.grad(log_alpha.sum(), z)
    kl_by_hand = [math.log(2) - 0.5, math.log(6) - 5 / 3]
    grad_by_hand = [[0.25, 0.0], [31 / 18 - math.pi ** 2 / 6, 0.0]]
    n = len(logits)
    torch.testing.assert_close(kl, torch.tensor(kl_by_hand[:n]), rtol=1e-6, atol=0)
    torch.testing.assert_close(grad_kl, torch.tensor(grad_by_hand[:n]), rtol=1e-4, atol=0)
    torch.testing.assert_close(grad_log_alpha, torch.tensor([[0.5, 0.0]] * n), rtol=1e-6, atol=0)


def test_gradient_only_mode_skips_the_value_but_not_the_gradient():
    torch.manual_seed(2)
    z = torch.randn(2, 64, 3, 3) * 5
    grads = []
    for value in (True, False):
        zf = z.clone().requires_grad_()
        log_alpha, kl = evidential_log_alpha_and_kl(zf, 20.0, dim=1, value=value)
        (kl.mean() + log_alpha.square().mean()).backward()
        grads.append(zf.grad)
        if not value:
            assert torch.equal(kl, torch.zeros(2, 3, 3))
    assert torch.equal(grads[0], grads[1])


def test_large_evidence_form_penalises_the_total_evidence():
    # docs/results.md's reading of the KL: when every alpha_k is large, Stirling's series gives
    #   KL ~ (K-1)/2 log S - 1/2 sum_k log pi_k - lgamma(K) - (K-1)/2 (1 + log 2 pi),
    # with S = sum alpha and pi = alpha / S; the error is O(K / min alpha). So scaling every
    # evidence by e^c (pi unchanged) raises the KL by (K-1)/2 c.
    g = torch.Generator().manual_seed(3)
    z = torch.rand(4, K, generator=g) * 8 + 10  # alpha from e^10 to e^18
    alpha = z.double().exp() + 1
    s = alpha.sum(1)
    pi = alpha / s[:, None]
    form = ((K - 1) / 2 * s.log() - 0.5 * pi.log().sum(1) - math.lgamma(K)
            - (K - 1) / 2 * (1 + math.log(2 * math.pi)))
    kl = dirichlet_kl_uniform(z, dim=1).double()
    assert (kl - form).abs().max() < 0.01
    shifted = dirichlet_kl_uniform(z + 2.0, dim=1).double()  # every evidence times e^2
    torch.testing.assert_close(shifted - kl, torch.full_like(kl, (K - 1) / 2 * 2.0), rtol=2e-5, atol=0)
