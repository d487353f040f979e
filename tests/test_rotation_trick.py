"""The rotation trick (rotation.py) against its closed form, and the `gradient` option of the
nearest-codeword quantizers (vq-ema, vq-ste++, simvq)."""

import pytest
import torch

from edvae.quantizers import build_quantizer
from edvae.quantizers.rotation import rotation_trick

PLAIN_STE = dict(affine_groups=0, inner_lr=0.0, dead_after=0, kmeans_init_iters=0, sync_nu=0.0)


def closed_form(e: torch.Tensor, q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(|q|/|e|) R^T g for one row, with R = I - 2 r r^T + 2 q^ e^^T built as a matrix (float64)."""
    e, q, g = e.double(), q.double(), g.double()
    e_hat, q_hat = e / e.norm(), q / q.norm()
    r = (e_hat + q_hat) / (e_hat + q_hat).norm()
    eye = torch.eye(len(e), dtype=torch.float64)
    rot = eye - 2 * torch.outer(r, r) + 2 * torch.outer(q_hat, e_hat)
    # R is a rotation taking e^ onto q^ (orthogonal, determinant 1)
    torch.testing.assert_close(rot @ e_hat, q_hat)
    torch.testing.assert_close(rot.T @ rot, eye)
    assert torch.linalg.det(rot).item() == pytest.approx(1.0, abs=1e-9)
    return (q.norm() / e.norm()) * rot.T @ g


def test_value_is_q_and_gradient_is_the_scaled_transposed_rotation():
    torch.manual_seed(0)
    e = torch.randn(7, 5, requires_grad=True)
    q = torch.randn(7, 5) * 3
    g = torch.randn(7, 5)
    out = rotation_trick(e, q)
    assert out.dtype == torch.float32 and torch.equal(out, q)  # the forward value, exactly
    (out * g).sum().backward()
    for i in range(7):
        torch.testing.assert_close(e.grad[i].double(), closed_form(e[i].detach(), q[i], g[i]),
                                   rtol=1e-5, atol=1e-6)
    # not the straight-through copy
    assert (e.grad - g).abs().max() > 0.1


def test_no_gradient_reaches_the_codeword():
    e = torch.randn(4, 3, requires_grad=True)
    q = torch.randn(4, 3, requires_grad=True)
    rotation_trick(e, q).sum().backward()
    assert q.grad is None or torch.equal(q.grad, torch.zeros_like(q))


def test_degenerate_cases_have_no_nan():
    g = torch.tensor([[1.0, -2.0, 0.5]] * 4)
    q = torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    # e parallel to q (R = I, gradient scaled by |q|/|e| = 4), e = 0, e opposite q, q = 0
    e = torch.tensor([[0.5, 0.0, 0.0], [0.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 1.0, 0.0]],
                     requires_grad=True)
    out = rotation_trick(e, q)
    assert torch.equal(out, q)
    (out * g).sum().backward()
    assert torch.isfinite(e.grad).all()
    torch.testing.assert_close(e.grad[0], 4.0 * g[0])
    torch.testing.assert_close(e.grad[1:], g[1:])  # R undefined: the straight-through copy


def test_bf16_autocast_runs_in_float32():
    torch.manual_seed(0)
    e = torch.randn(6, 4, requires_grad=True)
    q = torch.randn(6, 4)
    g = torch.randn(6, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rotation_trick(e, q.bfloat16().float())
    assert out.dtype == torch.float32
    (out * g).sum().backward()
    expected = torch.stack([closed_form(e[i].detach(), q[i].bfloat16().float(), g[i]) for i in range(6)])
    torch.testing.assert_close(e.grad.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name,options", [("vq-ema", {}), ("vq-ste++", PLAIN_STE), ("simvq", {})])
def test_gradient_option_of_the_nearest_codeword_quantizers(name, options):
    torch.manual_seed(0)
    grads, values = {}, {}
    for gradient in ("ste", "rotation"):
        torch.manual_seed(0)
        q = build_quantizer(name, 16, 3, gradient=gradient, **options).eval()
        z = torch.randn(2, 3, 2, 2, requires_grad=True)
        g = torch.randn(2, 3, 2, 2)
        out = q(z)
        (out.z_q * g).sum().backward()
        grads[gradient], values[gradient] = z.grad, out.z_q.detach()
        idx = out.indices
    e = q.embed(idx).detach()
    # forward unchanged: the codewords (exactly; z + sg(e - z) rounds to within an ulp of them)
    assert torch.equal(values["rotation"], e)
    torch.testing.assert_close(values["ste"], e)
    torch.testing.assert_close(grads["ste"], g)  # straight-through: the gradient unchanged
    flat = lambda t: t.permute(0, 2, 3, 1).reshape(-1, 3)  # noqa: E731
    expected = torch.stack([closed_form(a, b, c) for a, b, c in zip(flat(z.detach()), flat(e), flat(g),
                                                                     strict=True)])
    torch.testing.assert_close(flat(grads["rotation"]).double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["vq-ema", "vq-ste++", "simvq"])
def test_bad_gradient_option_is_a_clear_error(name):
    with pytest.raises(ValueError, match="gradient"):
        build_quantizer(name, 16, 3, gradient="straight")


@pytest.mark.parametrize("name", ["vq-ema", "vq-ste++", "simvq"])
def test_a_training_step_with_the_rotation_trick_matches_ste_in_value(name):
    # every default on (vq-ste++: K-means start, dead-code replacement, affine map, synchronized update)
    outs, grads = {}, {}
    for gradient in ("ste", "rotation"):
        torch.manual_seed(0)
        q = build_quantizer(name, 16, 3, gradient=gradient)
        z = (torch.randn(4, 3, 3, 3) * 2).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = q(z.bfloat16())
        (out.z_q.square().sum() + out.loss).backward()
        outs[gradient], grads[gradient] = out, z.grad
    assert torch.equal(outs["ste"].indices, outs["rotation"].indices)
    torch.testing.assert_close(outs["ste"].z_q, outs["rotation"].z_q)
    assert outs["rotation"].z_q.dtype == torch.float32 and torch.isfinite(grads["rotation"]).all()
    assert (grads["ste"] - grads["rotation"]).abs().max() > 1e-3  # a different estimator
