import math

import pytest
import torch
from torch.distributions import Dirichlet, kl_divergence

from edvae.quantizers.dirichlet_kl import dirichlet_kl_uniform, dirichlet_kl_uniform_reference

K = 512
CLAMP = 20.0


def reference(evidence: torch.Tensor) -> torch.Tensor:
    """torch.distributions in float64 over the last dimension."""
    alpha = evidence.double() + 1.0
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
    return torch.stack(rows).exp()  # evidence from logits clamped at 20: alpha up to exp(20) + 1


def test_matches_torch_distributions_over_the_clamp_range():
    e = cases().float()
    ours = dirichlet_kl_uniform(e, dim=1).double()
    ref = reference(e)
    rel = (ours - ref).abs() / ref.abs()
    assert rel.max() < 1e-5, f"worst relative error {rel.max():.2e} at alpha {e[rel.argmax()].max() + 1:.3g}"


def test_zero_at_alpha_one_and_positive_elsewhere():
    assert torch.equal(dirichlet_kl_uniform(torch.zeros(2, K, 3, 3)), torch.zeros(2, 3, 3))
    assert (dirichlet_kl_uniform(cases().float(), dim=1) > 0).all()


def test_closed_form_small_case_by_hand():
    # K = 2, alpha = (2, 1): KL = lgamma(3) - lgamma(2) - lgamma(2) - lgamma(1) + 1 * (psi(2) - psi(3))
    #                           = log 2 + (psi(2) - psi(3)) = log 2 - 1/2
    kl = dirichlet_kl_uniform(torch.tensor([[1.0, 0.0]]), dim=1)
    assert kl.item() == pytest.approx(math.log(2) - 0.5, rel=1e-6)


def test_output_is_float32_per_position_and_reference_formula_agrees():
    e = torch.rand(3, 16, 2, 5) * 4
    kl = dirichlet_kl_uniform(e)
    assert kl.shape == (3, 2, 5) and kl.dtype == torch.float32
    ref = dirichlet_kl_uniform_reference(e.double() + 1, dim=1)
    torch.testing.assert_close(kl.double(), ref, rtol=1e-5, atol=0)


def test_gradient_matches_autograd_of_the_textbook_formula():
    torch.manual_seed(0)
    e = (torch.randn(4, 64, 2, 2) * 3).exp().requires_grad_()
    dirichlet_kl_uniform(e).sum().backward()
    e64 = e.detach().double().requires_grad_()
    dirichlet_kl_uniform_reference(e64 + 1, dim=1).sum().backward()
    torch.testing.assert_close(e.grad.double(), e64.grad, rtol=1e-4, atol=1e-6)


def test_bf16_input_is_computed_in_float32():
    e = torch.rand(2, K, 1, 1) * 3
    kl16 = dirichlet_kl_uniform(e.bfloat16())
    assert kl16.dtype == torch.float32
    torch.testing.assert_close(kl16, dirichlet_kl_uniform(e.bfloat16().float()))
