"""The relaxation of every logit method, specified from its definition.

With the Gumbel noise g fixed, a training pass of EdVAE, dVAE, GS-VQ, SQ-VAE and GM-VQ must give
z_q = sum_k y_k e_k with y = softmax((log pi + g) / tau) (Jang, Gu, Poole, "Categorical
reparameterization with Gumbel-softmax", arXiv 1611.01144, 2016; Maddison, Mnih, Teh, "The concrete
distribution", arXiv 1611.00712, 2016), where pi is written here from each method's definition, not
read from the quantizer's helpers:
- EdVAE (Baykal et al., Pattern Recognition 2024): alpha = exp(min(z, clamp_max)) + 1, pi = alpha / S;
- dVAE (Ramesh et al., arXiv 2102.12092, 2021): pi = softmax(z);
- GS-VQ (Sonderby, Poole, Mnih, arXiv 1703.07027, 2017): log pi = -||z - e_k||^2 + const;
- SQ-VAE (Takida et al., arXiv 2205.07547, 2022): log pi = -||z - b_k||^2 / (2 var_q) + const,
  var_q = 1 + exp(log_var_q);
- GM-VQ (Yan et al., arXiv 2410.10180, 2024; docs/gm-vq.md): log pi = -||z - mu_k||^2 / (2 sigma_z^2)
  + const, z_q = sum_k y_k mu_k + (sum_k y_k sigma_k) eps with sigma_k^2 = variance_scale
  ||z - mu_k||^2 / D + min_variance sigma_z^2, and tau the trainer's temperature mapped onto GM-VQ's
  own range (`temperature_map` 'range': tau' = 2.0 (0.1 / 2.0) ^ (log tau / -1.5)) or used as is.
Two temperatures (0.5 and 2.0) tell dividing by tau from multiplying; the weights y recovered from
z_q must be soft; the gradient reaching the encoder's output (and the codebook) must be autograd's
through the closed form; evaluation must be the hard codeword of the argmax, with no noise drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from edvae.quantizers import build_quantizer
from edvae.quantizers import gm_vq as gm_vq_module
from edvae.quantizers import gumbel_vq as gumbel_vq_module
from edvae.quantizers import logit_codebook as logit_codebook_module

K, D, B, H, W = 5, 7, 2, 3, 3  # D >= K: the weights y are recoverable from z_q = y^T E
TEMPERATURES = (0.5, 2.0)
CLAMP_MAX = 2.0  # EdVAE: small, so that some logits are clamped
LOG_VAR_Q = 0.5  # SQ-VAE: var_q = 1 + e^0.5
SIGMA_Z, VARIANCE_SCALE, MIN_VARIANCE = 0.6, 0.5, 0.01  # GM-VQ


@dataclass
class Method:
    name: str
    options: dict
    noise_module: object  # the module whose `gumbel_noise_like` the quantizer calls
    logit_input: bool
    input_scale: float
    map_temperature: bool = False  # GM-VQ's 'range' map
    noisy: bool = False  # GM-VQ's Gaussian noise on z_q
    extra: dict = field(default_factory=dict)


def _gm_vq(temperature_map: str) -> Method:
    return Method("gm-vq", dict(sigma_z=SIGMA_Z, sigma_z_mode="fixed", kmeans_init_iters=0,
                                variance_scale=VARIANCE_SCALE, min_variance=MIN_VARIANCE,
                                temperature_map=temperature_map),
                  gm_vq_module, False, 0.5, map_temperature=temperature_map == "range", noisy=True)


METHODS = {
    "edvae": Method("edvae", dict(clamp_max=CLAMP_MAX), logit_codebook_module, True, 1.5),
    "dvae": Method("dvae", {}, logit_codebook_module, True, 1.5),
    "gs-vq": Method("gs-vq", {}, gumbel_vq_module, False, 0.5),
    "sq-vae": Method("sq-vae", dict(log_var_init=LOG_VAR_Q), gumbel_vq_module, False, 0.5),
    "gm-vq": _gm_vq("range"),
    "gm-vq-trainer": _gm_vq("trainer"),
}
ALL = sorted(METHODS)


def _setup(key: str, seed: int = 0):
    """The quantizer (training mode) with a codebook E drawn here, its input z_e, Gumbel noise g,
    Gaussian noise eps and the decoder-side weights w of the scalar sum(w * z_q)."""
    m = METHODS[key]
    gen = torch.Generator().manual_seed(seed)
    q = build_quantizer(m.name, K, D, **m.options).train()
    codebook = torch.randn(K, D, generator=gen) * (1.0 if m.logit_input else 0.5)
    with torch.no_grad():
        q.codebook.copy_(codebook)
    z_e = torch.randn(B, K if m.logit_input else D, H, W, generator=gen) * m.input_scale
    u = torch.rand(B, K, H, W, generator=gen).clamp(1e-10, 1 - 1e-7)
    g = -(-u.log()).log()
    eps = torch.randn(B, D, H, W, generator=gen)
    w = torch.randn(B, D, H, W, generator=gen)
    return m, q, codebook, z_e, g, eps, w


def _sq_distances(z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """||z - e_k||^2 by broadcasting, (B, D, h, w), (K, D) -> (B, K, h, w)."""
    return (z.unsqueeze(1) - e.view(1, K, D, 1, 1)).pow(2).sum(2)


def _log_pi(key: str, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """log pi (B, K, h, w), normalised, from the method's definition."""
    name = METHODS[key].name
    if name == "edvae":
        alpha = z.clamp(max=CLAMP_MAX).exp() + 1.0
        return (alpha / alpha.sum(1, keepdim=True)).log()
    if name == "dvae":
        return z.log_softmax(1)
    if name == "gs-vq":
        return (-_sq_distances(z, e)).log_softmax(1)
    if name == "sq-vae":
        var_q = 1.0 + math.exp(LOG_VAR_Q)
        return (-_sq_distances(z, e) / (2.0 * var_q)).log_softmax(1)
    return (-_sq_distances(z, e) / (2.0 * SIGMA_Z**2)).log_softmax(1)


def _tau(key: str, tau: float) -> float:
    """The temperature the Gumbel-softmax divides by: GM-VQ 'range' maps the trainer's tau
    log-linearly from (1, exp(-1.5)) onto its own (2.0, 0.1)."""
    if METHODS[key].map_temperature:
        return 2.0 * (0.1 / 2.0) ** (math.log(tau) / -1.5)
    return tau


def _closed_form(key: str, z, e, g, eps, tau: float):
    """(y, z_q) of a training pass, float64."""
    m = METHODS[key]
    y = ((_log_pi(key, z, e) + g) / _tau(key, tau)).softmax(1)
    z_q = torch.einsum("bkhw,kd->bdhw", y, e)
    if m.noisy:
        var = VARIANCE_SCALE * _sq_distances(z, e) / D + MIN_VARIANCE * SIGMA_Z**2
        z_q = z_q + (y * var.sqrt()).sum(1, keepdim=True) * eps
    return y, z_q


def _fix_noise(monkeypatch, m: Method, g: torch.Tensor, eps: torch.Tensor) -> list:
    """Make the quantizer draw g (and, for GM-VQ, eps); returns the list of draws made."""
    draws = []

    def gumbel(x):
        assert tuple(x.shape) == tuple(g.shape)
        draws.append("gumbel")
        return g.to(x.dtype)

    monkeypatch.setattr(m.noise_module, "gumbel_noise_like", gumbel)
    if m.noisy:
        randn_like = torch.randn_like

        def gaussian(x, *args, **kwargs):
            if tuple(x.shape) != tuple(eps.shape):
                return randn_like(x, *args, **kwargs)
            draws.append("gaussian")
            return eps.to(x.dtype)

        monkeypatch.setattr(torch, "randn_like", gaussian)  # gm_vq.py calls torch.randn_like
    return draws


def _recover_weights(z_q: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """y from z_q = sum_k y_k e_k, by least squares (E has full rank K <= D)."""
    flat = z_q.double().permute(0, 2, 3, 1).reshape(-1, D)
    y = torch.linalg.lstsq(e.double().t(), flat.t()).solution.t()
    return y.reshape(B, H, W, K).permute(0, 3, 1, 2)


def test_setup_is_not_degenerate():
    _, _, codebook, _, _, _, _ = _setup("gs-vq")
    assert torch.linalg.matrix_rank(codebook.double()) == K
    assert math.isclose(_tau("gm-vq", 0.5), 0.500987, rel_tol=1e-5)  # 2 * 20 ** (log(tau) / 1.5)
    assert math.isclose(_tau("gm-vq", 2.0), 7.984239, rel_tol=1e-5)
    assert math.isclose(_tau("gm-vq", 1.0), 2.0) and math.isclose(_tau("gm-vq", math.exp(-1.5)), 0.1)


@pytest.mark.parametrize("reporting", [True, False])
@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("key", ALL)
def test_training_sample_is_the_gumbel_softmax_of_log_pi(monkeypatch, key, tau, reporting):
    m, q, codebook, z_e, g, eps, _ = _setup(key)
    q.reporting = reporting
    draws = _fix_noise(monkeypatch, m, g, eps)
    out = q(z_e, temperature=tau)
    assert draws == (["gumbel", "gaussian"] if m.noisy else ["gumbel"])
    y, z_q = _closed_form(key, z_e.double(), codebook.double(), g.double(), eps.double(), tau)
    assert out.z_q.dtype == torch.float32 and out.z_q.shape == (B, D, H, W)
    torch.testing.assert_close(out.z_q.double(), z_q, rtol=1e-5, atol=1e-5)
    if reporting:
        assert torch.equal(out.indices, y.argmax(1))
    # the other temperature, or tau multiplied instead of divided, gives another sample
    other = TEMPERATURES[1 - TEMPERATURES.index(tau)]
    for wrong in (other, 1.0 / tau):
        _, z_q_wrong = _closed_form(key, z_e.double(), codebook.double(), g.double(), eps.double(), wrong)
        assert (z_q_wrong - z_q).abs().max() > 1e-2


@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("key", ALL)
def test_training_weights_are_soft(monkeypatch, key, tau):
    m, q, codebook, z_e, g, _, _ = _setup(key)
    _fix_noise(monkeypatch, m, g, torch.zeros(B, D, H, W))  # GM-VQ: no Gaussian noise, z_q = y^T E
    with torch.no_grad():
        z_q = q(z_e, temperature=tau).z_q
    y = _recover_weights(z_q, codebook)
    expected, _ = _closed_form(key, z_e.double(), codebook.double(), g.double(), torch.zeros(1), tau)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(y.sum(1), torch.ones(B, H, W, dtype=torch.float64), rtol=0, atol=1e-5)
    assert bool((y > -1e-5).all())
    top = y.amax(1)
    soft = (top < 1 - 1e-3) & ((y > 1e-3).sum(1) >= 2)
    # not one-hot: at most positions, and never a codeword (a hard or straight-through sample is)
    assert soft.float().mean() >= 0.5, f"{int(soft.sum())} soft positions of {soft.numel()}"
    assert bool((top < 1 - 1e-4).any())
    nearest = _sq_distances(z_q.double(), codebook.double()).amin(1)
    assert bool((nearest > 1e-6).any())


@pytest.mark.parametrize("tau", TEMPERATURES)
@pytest.mark.parametrize("key", ALL)
def test_gradient_to_the_encoder_is_the_closed_forms(monkeypatch, key, tau):
    m, q, codebook, z_e, g, eps, w = _setup(key)
    _fix_noise(monkeypatch, m, g, eps)
    z_e = z_e.requires_grad_()
    out = q(z_e, temperature=tau)
    grad_z, grad_e = torch.autograd.grad((out.z_q * w).sum(), (z_e, q.codebook))
    z64 = z_e.detach().double().requires_grad_()
    e64 = codebook.double().requires_grad_()
    _, z_q = _closed_form(key, z64, e64, g.double(), eps.double(), tau)
    want_z, want_e = torch.autograd.grad((z_q * w.double()).sum(), (z64, e64))
    assert bool(torch.isfinite(grad_z).all()) and bool(torch.isfinite(grad_e).all())
    assert grad_z.abs().amax() > 1e-3  # the sample passes gradient to the encoder
    torch.testing.assert_close(grad_z.double(), want_z, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(grad_e.double(), want_e, rtol=1e-4, atol=1e-5)
    if m.name == "edvae":  # the clamp: no gradient above clamp_max, some below
        above = z_e.detach() > CLAMP_MAX
        assert bool(above.any()) and bool((grad_z[above] == 0).all())
        assert bool((grad_z[~above] != 0).all())
    else:
        assert bool((grad_z != 0).float().mean() > 0.9)


@pytest.mark.parametrize("key", ALL)
def test_evaluation_is_the_hard_codeword_of_the_argmax(monkeypatch, key):
    m, q, codebook, z_e, _, _, _ = _setup(key)
    q.eval()

    def no_noise(*args, **kwargs):
        raise AssertionError("evaluation drew noise")

    monkeypatch.setattr(m.noise_module, "gumbel_noise_like", no_noise)
    monkeypatch.setattr(torch, "randn_like", no_noise)
    with torch.no_grad():
        out = q(z_e, temperature=0.5)
    log_pi = _log_pi(key, z_e.double(), codebook.double())
    # EdVAE and dVAE take the argmax of the logits (the authors' code), an argmax of pi since pi is
    # nondecreasing in each logit; with clamped logits EdVAE's pi ties, and the logits decide
    expected = z_e.argmax(1) if m.logit_input else log_pi.argmax(1)
    assert torch.equal(out.indices, expected)
    picked = log_pi.gather(1, expected.unsqueeze(1)).squeeze(1)
    assert bool((picked >= log_pi.amax(1) - 1e-12).all())
    assert torch.equal(out.z_q, codebook[expected].permute(0, 3, 1, 2))
    assert torch.equal(q.codes(z_e), expected)


@pytest.mark.parametrize("tau", TEMPERATURES)
def test_edvae_dirichlet_sample_is_the_gumbel_softmax_of_a_dirichlet_draw(monkeypatch, tau):
    """Option dirichlet_sample (Algorithm 1): pi ~ Dir(alpha), drawn as G_k ~ Gamma(alpha_k, 1),
    pi = G / sum G, then y = softmax((log pi + g) / tau). The Gamma draws are reproduced by seed."""
    m, _, codebook, z_e, g, eps, w = _setup("edvae")
    q = build_quantizer("edvae", K, D, clamp_max=CLAMP_MAX, dirichlet_sample=True).train()
    with torch.no_grad():
        q.codebook.copy_(codebook)
    _fix_noise(monkeypatch, m, g, eps)
    z_e = z_e.requires_grad_()
    torch.manual_seed(7)
    out = q(z_e, temperature=tau)
    torch.manual_seed(7)
    alpha = z_e.detach().clamp(max=CLAMP_MAX).exp() + 1.0
    gamma = torch.distributions.Gamma(alpha, torch.ones_like(alpha)).sample().double()
    log_pi = (gamma / gamma.sum(1, keepdim=True)).log()
    y = ((log_pi + g.double()) / tau).softmax(1)
    torch.testing.assert_close(out.z_q.double(), torch.einsum("bkhw,kd->bdhw", y, codebook.double()),
                               rtol=1e-5, atol=1e-5)
    assert bool((y.amax(1) < 1 - 1e-3).float().mean() >= 0.5)
    # another draw of pi gives another sample: the mean alpha / S is not what was used
    y_mean = ((_log_pi("edvae", z_e.detach().double(), codebook.double()) + g.double()) / tau).softmax(1)
    assert (y_mean - y).abs().max() > 1e-2
    (grad,) = torch.autograd.grad((out.z_q * w).sum(), z_e)
    assert bool(torch.isfinite(grad).all()) and grad.abs().amax() > 1e-3
