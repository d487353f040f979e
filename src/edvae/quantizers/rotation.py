"""The rotation trick: a gradient estimator for nearest-codeword quantizers.

Fifty et al., "Restructuring Vector Quantization with the Rotation Trick" (ICLR 2025,
arXiv 2410.06424).

The forward value is the chosen codeword q, as with the straight-through estimator; the backward
pass goes through
    q~ = sg(|q| / |e|) * R e,
where R is the rotation taking e^ = e/|e| onto q^ = q/|q|, held constant (detached). With
r = (e^ + q^) / |e^ + q^| (detached), the paper's efficient form (a Householder reflection about
r followed by a reflection that lands on q^) is
    R e = e - 2 r (r . e) + 2 q^ (e^ . e),
so the gradient reaching e from an incoming gradient g at q is (|q| / |e|) R^T g, with
R = I - 2 r r^T + 2 q^ e^^T. No gradient reaches q through this path (the codebook learns from
its own loss terms, as in the paper).

Degenerate positions, where R is not defined (|e| ~ 0, |q| ~ 0, or e pointing exactly away from q,
|e^ + q^| ~ 0), fall back to the straight-through copy (gradient g); our choice, the paper does
not treat them. The value returned is exactly q at every position (q + (x - sg(x)), x - sg(x) = 0),
and the math runs in float32 even under autocast.
"""

from __future__ import annotations

import torch

from .base import check_option

GRADIENTS = ("ste", "rotation")
_EPS = 1e-6  # norms below this count as degenerate


def rotation_trick(e: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Rows e (N, D) (encoder outputs, with gradient) and their codewords q (N, D) -> (N, D) float32
    equal to q in value, whose gradient with respect to e is (|q|/|e|) R^T g per row."""
    with torch.autocast(device_type=e.device.type, enabled=False):
        e = e.float()
        qd, ed = q.detach().float(), e.detach()
        e_norm = ed.norm(dim=1, keepdim=True)
        q_norm = qd.norm(dim=1, keepdim=True)
        e_hat = ed / e_norm.clamp_min(_EPS)
        q_hat = qd / q_norm.clamp_min(_EPS)
        s = e_hat + q_hat
        s_norm = s.norm(dim=1, keepdim=True)
        r = s / s_norm.clamp_min(_EPS)
        ok = (e_norm > _EPS) & (q_norm > _EPS) & (s_norm > _EPS)  # (N, 1): R is defined
        scale = q_norm / e_norm.clamp_min(_EPS)
        rotated = e - 2.0 * r * (r * e).sum(1, keepdim=True) + 2.0 * q_hat * (e_hat * e).sum(1, keepdim=True)
        moved = torch.where(ok, scale * rotated, e)  # straight-through where R is undefined
        return qd + (moved - moved.detach())


def check_gradient(gradient: str) -> str:
    """The option `gradient` of the quantizers that offer the rotation trick, checked."""
    check_option("gradient", gradient, gradient in GRADIENTS, f"must be one of {', '.join(GRADIENTS)}")
    return gradient


def straight_through_to(e: torch.Tensor, q: torch.Tensor, gradient: str) -> torch.Tensor:
    """What the decoder reads: q in value, with the gradient estimator `gradient` ("ste": the
    straight-through copy e + sg(q - e); "rotation": the rotation trick)."""
    if gradient == "rotation":
        return rotation_trick(e, q)
    return e + (q - e).detach()
