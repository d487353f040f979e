import math

import pytest
import torch

from edvae.quantizers.softmax_kl import softmax_kl_uniform


def reference(logits: torch.Tensor, dim: int) -> torch.Tensor:
    log_p = logits.double().log_softmax(dim)
    return (log_p.exp() * (log_p + math.log(logits.shape[dim]))).sum(dim)


@pytest.mark.parametrize("scale, dim", [(0.1, 1), (3.0, 1), (40.0, 1), (3.0, -1)])
def test_value_and_gradient_match_autograd_in_float64(scale, dim):
    torch.manual_seed(0)
    z = (torch.randn(3, 20, 2, 5) * scale).requires_grad_()
    w = torch.randn(3, 2, 5) if dim == 1 else torch.randn(3, 20, 2)
    kl = softmax_kl_uniform(z, dim)
    (kl * w).sum().backward()
    z64 = z.detach().double().requires_grad_()
    ref = reference(z64, dim)
    (ref * w.double()).sum().backward()
    assert kl.dtype == torch.float32 and kl.shape == ref.shape
    torch.testing.assert_close(kl.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-4, atol=1e-7)


def test_uniform_logits_give_zero_and_one_hot_gives_log_k():
    assert softmax_kl_uniform(torch.zeros(2, 8, 1, 1)).abs().max() < 1e-6
    z = torch.full((1, 8, 1, 1), -500.0)
    z[0, 3] = 0.0
    assert softmax_kl_uniform(z).item() == pytest.approx(math.log(8), rel=1e-6)
