"""KL(Dir(alpha) || Dir(1, ..., 1)) in closed form: fast and accurate in float32.

Baykal et al., "EdVAE" (Pattern Recognition 2024), Appendix A:
    KL = lgamma(S) - lgamma(K) - sum_k lgamma(a_k) + sum_k (a_k - 1) (psi(a_k) - psi(S)),
with S = sum_k a_k. Written with the evidence e_k = a_k - 1 >= 0 and E = sum_k e_k this is
    KL = A(E) + sum_k B(e_k),
    A(E) = lgamma(K + E) - lgamma(K) - E psi(K + E)    (one value per latent position)
    B(e) = e psi(1 + e) - lgamma(1 + e)                (one value per evidence)
Both vanish at zero evidence, so KL is exactly 0 at alpha = 1. Evaluated naively in float32
the formula cancels catastrophically: at alpha near exp(20) + 1 the terms are ~1e10 while the
KL is ~1e4. Three measures keep it accurate to ~1e-6 relative over the whole clamp range:
- B is a Taylor series for small e (where e psi(1+e) and lgamma(1+e) cancel to O(e^2)), and
  B(e) - e an asymptotic series for very large e (where B grows like e);
- positions whose largest evidence is large sum (A(E) + E) + sum_k (B(e_k) - e_k), so that the
  linear parts cancel analytically; the others sum A(E) + sum_k B(e_k);
- A and its derivative are per position (K times fewer values) and are computed in float64.
The gradient is the closed form dKL/de_j = e_j psi1(1 + e_j) - E psi1(K + E), prepared in the
forward pass, so the backward pass is a few fused multiply-adds. EdVAE also needs log(alpha) of
the same clamped logits (its Gumbel-softmax weights): one autograd function returns both, so the
clamp, the exponential and their backward passes are shared. A training step whose loss is not
reported can skip the value and keep the exact gradient (value=False): about half the passes.
torch.digamma and torch.polygamma
are slow on CPUs (tens of ms per 2M values): psi and psi1 are evaluated here by a two-step
recurrence and the asymptotic series, in place. Every pass over the (B, K, h, w) tensor costs
about a millisecond per 2M values on a CPU, so the code counts passes.
"""

from __future__ import annotations

import math

import torch

# Taylor coefficients of B(e) = sum_{n>=2} (-1)^n zeta(n) (1 - 1/n) e^n, n = 2..12.
_ZETA = (1.6449340668482264, 1.2020569031595942, 1.0823232337111382, 1.0369277551433699,
         1.0173430619844491, 1.0083492773819228, 1.0040773561979443, 1.0020083928260822,
         1.0009945751278181, 1.0004941886041195, 1.0002460865533080)
_SERIES = tuple((-1) ** n * z * (1 - 1 / n) for n, z in zip(range(2, 13), _ZETA, strict=True))
SMALL_EVIDENCE = 0.15  # below: Taylor series of B (truncation < 2e-9 relative)
LARGE_EVIDENCE = 15.0  # from here: asymptotic series of B(e) - e in 1/(1+e) (truncation < 1e-8)
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _evidence_terms(e: torch.Tensor, value: bool) -> dict[str, torch.Tensor]:
    """Per evidence e >= 0, float32: always `e_grad` = e (e psi1(1 + e) - 1), `sigmoid` = e / (1 + e)
    and `log_alpha` = log(1 + e); with `value` also B(e) as `b` and B(e) - e as `b_minus_e`."""
    x = e + 1.0
    r0 = x.reciprocal()
    r1 = (x + 1.0).reciprocal_()
    y = x + 2.0
    w = y.reciprocal()
    w2 = w * w
    # the gradient needs h(e) = e psi1(1 + e) - 1 (its 1 cancels against the per-position term):
    # psi1(x) = 1/x^2 + 1/(x+1)^2 + 1/y + 1/(2y^2) + 1/(6y^3) - 1/(30y^5) and e/y = 1 - 3/y, so
    # h = e (1/x^2 + 1/(x+1)^2 + 1/(2y^2) + 1/(6y^3) - 1/(30y^5)) - 3/y, no O(1) cancellation
    # (1e-5 relative at y = 3, ample for a gradient). e_grad = e h.
    poly = w2 * (-1 / 30)
    poly.add_(1 / 6).mul_(w).add_(0.5).mul_(w2)
    e_grad = poly.addcmul_(r0, r0).addcmul_(r1, r1).mul_(e).add_(w, alpha=-3.0).mul_(e)
    out = {"e_grad": e_grad, "sigmoid": e * r0}  # d log(alpha) / dz = e / (1 + e)
    if not value:
        out["log_alpha"] = x.log_()
        return out
    # psi(x) = psi(x + 2) - 1/x - 1/(x + 1);
    # psi(y) = ln y - 1/(2y) - 1/(12y^2) + 1/(120y^4) - 1/(252y^6) + 1/(240y^8), y >= 3
    poly = w2 * (1 / 240)
    poly.sub_(1 / 252).mul_(w2).add_(1 / 120).mul_(w2).sub_(1 / 12).mul_(w2)
    psi = y.log_().add_(poly).add_(w, alpha=-0.5).sub_(r0).sub_(r1)
    b = torch.lgamma(x).neg_().addcmul_(e, psi)
    # small evidence: e psi(1+e) and lgamma(1+e) cancel to O(e^2); use the Taylor series
    # (on evidence clamped to the series' range, so that no power overflows: lerp turns a 0 weight
    # on an infinite endpoint into NaN). torch.where is unvectorised on CPUs; lerp with a 0/1
    # weight selects exactly and is 4x faster.
    e_small = e.clamp(max=SMALL_EVIDENCE)
    series = torch.full_like(e, _SERIES[-1])
    for c in reversed(_SERIES[:-1]):
        series.mul_(e_small).add_(c)
    b.lerp_(series.mul_(e_small).mul_(e_small), (e < SMALL_EVIDENCE).float())
    # large evidence: B(e) - e = 1/2 - ln(2 pi)/2 - ln(x)/2 + 1/(3x) + 1/(12x^2) + 1/(90x^3)
    #                            - 1/(120x^4) - 1/(210x^5) + 1/(252x^6) + O(x^-7)
    tail = r0 * (1 / 252)
    for c in (-1 / 210, -1 / 120, 1 / 90, 1 / 12, 1 / 3):
        tail.mul_(r0).add_(c)
    log_alpha = x.log_()
    tail.mul_(r0).add_(0.5 - _HALF_LOG_2PI).add_(log_alpha, alpha=-0.5)
    large = (e >= LARGE_EVIDENCE).float()
    out["b_minus_e"] = (b - e).lerp_(tail, large)
    out["b"] = b.lerp_(tail.add_(e), large)
    out["log_alpha"] = log_alpha
    return out


def _position_terms(total: torch.Tensor, k: int, value: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A(E) (when `value`) and E psi1(K + E) - 1 per position, in the (float64) dtype of `total`."""
    s = total + k
    grad_a = total * torch.polygamma(1, s) - 1.0
    if not value:
        return None, grad_a
    a = torch.lgamma(s) - math.lgamma(k) - total * torch.digamma(s)
    # for E << K the lgamma difference cancels even in float64: A = -(E^2/2 psi1(K)
    # + E^3/3 psi2(K) + E^4/8 psi3(K)) + O(E^5 / K^5), exact to 1e-10 relative for E < K / 1000
    kk = torch.tensor(float(k), dtype=total.dtype, device=total.device)
    p1, p2, p3 = (torch.polygamma(n, kk) for n in (1, 2, 3))
    series = -(total * total) * (p1 / 2 + total * (p2 / 3 + total * p3 / 8))
    a = torch.where(total < k * 1e-3, series, a)
    return a, grad_a


class _EvidentialKL(torch.autograd.Function):
    """logits -> (log alpha, KL per position), alpha = exp(min(logits, clamp_max)) + 1, in one pass
    over the (B, K, ...) tensor whose backward is three fused multiply-adds. Only logits strictly
    above clamp_max get a zero gradient (the boundary convention of `evidential_log_alpha_and_kl`)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, dim: int, clamp_max: float | None, value: bool):
        z = logits.float()
        clamped = None
        # on a CPU, reading amax back is free and saves two passes when nothing is clamped; on an
        # accelerator it would be a host-device sync every step, and under torch.compile a graph
        # break, so there the clamp always runs (clamping values below the maximum is the identity)
        if clamp_max is not None and (z.device.type != "cpu" or torch.compiler.is_compiling()
                                      or bool(z.amax() > clamp_max)):
            clamped = z > clamp_max  # evidence is constant there: no gradient (not at == clamp_max)
            z = z.clamp(max=clamp_max)
        e = z.exp()
        k = e.shape[dim]
        t = _evidence_terms(e, value)
        wide = torch.float32 if e.device.type == "mps" else torch.float64
        total = e.sum(dim).to(wide)
        a, grad_a = _position_terms(total, k, value)
        if value:
            form_small = a + t["b"].sum(dim).to(wide)
            form_large = (a + total) + t["b_minus_e"].sum(dim).to(wide)
            kl = torch.where(e.amax(dim) >= LARGE_EVIDENCE, form_large, form_small).float()
        else:  # the caller only wants the gradient (a training step whose loss is not reported)
            kl = torch.zeros(total.shape, dtype=torch.float32, device=e.device)
        ctx.dim = dim
        ctx.save_for_backward(t["e_grad"], e, t["sigmoid"], grad_a.float(), clamped)
        return t["log_alpha"], kl

    @staticmethod
    def backward(ctx, grad_log_alpha: torch.Tensor | None, grad_kl: torch.Tensor | None):
        # dKL/dz_j = e_j (e_j psi1(1 + e_j) - E psi1(K + E)) and d log(alpha_j)/dz_j = e_j / alpha_j,
        # with e = exp(z) below the clamp and 0 above it
        e_grad, e, sigmoid, grad_a, clamped = ctx.saved_tensors
        grad = torch.zeros_like(e)
        if grad_kl is not None:
            grad = torch.addcmul(e_grad, e, grad_a.unsqueeze(ctx.dim), value=-1.0)
            grad.mul_(grad_kl.unsqueeze(ctx.dim))
        if grad_log_alpha is not None:
            grad.addcmul_(grad_log_alpha, sigmoid)
        if clamped is not None:
            grad.masked_fill_(clamped, 0.0)
        return grad, None, None, None


def evidential_log_alpha_and_kl(logits: torch.Tensor, clamp_max: float | None = None, dim: int = 1,
                                value: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """log(alpha) (same shape as `logits`) and KL(Dir(alpha) || Dir(1, ..., 1)) per position, with
    alpha = exp(min(logits, clamp_max)) + 1 along `dim`, float32, differentiable, in one fused pass.

    With value=False the KL returned is zeros, but its gradient is still the exact gradient of the
    KL: for training steps whose loss is not reported (about half the cost of the value).

    The clamp's boundary, edvae's convention: a logit exactly at clamp_max keeps the gradient of
    the unclamped formula (its left derivative, the subgradient 1 for the clamp); only logits
    strictly above clamp_max get 0. This is the gradient of the authors' code on the torch it ran on:
    exp(logits.clamp(min=-inf, max=20)) + 1 (github.com/ituvisionlab/EdVAE, models/utils.py) under
    PyTorch 2.0.0 (its package-list.txt), whose clamp passes the subgradient 1 at both bounds, as
    torch did up to 2.13; torch 2.14 gives 0 there. edvae keeps 1, whatever the installed torch does:
    it reproduces the paper's runs; under bf16 autocast the logits are spaced 0.125 apart near 20, so
    a logit lands exactly on the clamp often, and with 0 it would get no gradient at all (neither the
    KL's pull down nor the reconstruction's); and it keeps edvae's gradients bit for bit as before.
    """
    if logits.dim() == 0:
        raise ValueError("logits need at least one dimension (the categories)")
    return _EvidentialKL.apply(logits, dim, clamp_max, value)


def dirichlet_kl_uniform(log_evidence: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(Dir(alpha) || Dir(1, ..., 1)) along `dim` with alpha = exp(log_evidence) + 1.

    One float32 value per position; differentiable.
    """
    return evidential_log_alpha_and_kl(log_evidence, None, dim)[1]


def dirichlet_kl_uniform_reference(alpha: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The textbook formula of Appendix A through lgamma and digamma, in the input's dtype."""
    s = alpha.sum(dim)
    k = alpha.shape[dim]
    return (torch.lgamma(s) - math.lgamma(k) - torch.lgamma(alpha).sum(dim)
            + ((alpha - 1) * (torch.digamma(alpha) - torch.digamma(s).unsqueeze(dim))).sum(dim))
