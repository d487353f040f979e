"""GM-VQ (gm-vq): Gaussian-mixture posterior, data-dependent variance (both forms), the ALBO (its
cross-entropy latent term and edvae's KL variant) and its aggregated-posterior KL against direct
computations, temperature map, the initialisation gated by the encoder's spread (a near-constant
encoder starts no one-hot posterior), K-means, data-parallel all-reduce. The formulas are derived in
docs/gm-vq.md."""

import math

import pytest
import torch
from gloo_ranks import run_on_ranks

from edvae import checkpoint
from edvae.config import ModelConfig, RunConfig
from edvae.model import DiscreteVAE
from edvae.quantizers import build_quantizer
from edvae.quantizers.base import gumbel_noise_like
from edvae.quantizers.gm_vq import GMVQQuantizer, aggregated_posterior, kl_to_uniform
from edvae.quantizers.gm_vq_init import encoder_spread, ml_prior_variance

HAND = dict(kmeans_init_iters=0, sigma_z_mode="fixed")  # keep a codebook and sigma_z set by hand


def _points(*points):
    """(B=1, D, 1, P) from P points of D values each."""
    return torch.tensor(points, dtype=torch.float32).t().reshape(1, len(points[0]), 1, len(points))


def _quantizer(rows, **options):
    q = GMVQQuantizer(len(rows), len(rows[0]), **{**HAND, **options})
    with torch.no_grad():
        q.codebook.copy_(torch.tensor(rows, dtype=torch.float32))
    return q


def _sq(a, b):
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True))


def _direct_albo(points, codebook, sigma_z, scale, floor, gamma, beta, term="cross_entropy", form="distance"):
    """The regulariser of the negative ALBO by plain loops over positions and codes (docs/gm-vq.md):
    q(c|x) by Bayes' rule with the Gaussian densities, q(c) their mean, sigma_c^2 from its formula
    (floor in units of sigma_z^2; the 'paper' form divides the distance term by 2 sigma_z^2)."""
    k, d = len(codebook), len(codebook[0])
    posteriors, latents = [], []
    for z in points:
        dens = [math.exp(-_sq(z, mu) / (2 * sigma_z ** 2)) / (2 * math.pi * sigma_z ** 2) ** (d / 2)
                for mu in codebook]
        post = [p / sum(dens) for p in dens]  # p(c) = 1/K cancels
        posteriors.append(post)
        per_code = []
        for mu in codebook:
            spread = scale * _sq(z, mu) / d / (2 * sigma_z ** 2 if form == "paper" else 1.0)
            ratio = (spread + floor * sigma_z ** 2) / sigma_z ** 2
            per_code.append(d / 2 * (ratio if term == "cross_entropy" else ratio - 1 - math.log(ratio)))
        latents.append(sum(p * v for p, v in zip(post, per_code, strict=True)))
    aggregate = [sum(p[c] for p in posteriors) / len(points) for c in range(k)]
    kl = sum(a * math.log(k * a) for a in aggregate if a > 0)
    latent = sum(latents) / len(points)
    return beta * (kl + gamma * latent), kl, latent, posteriors


# ------------------------------------------------------------------ contract


def test_contract_under_bf16_autocast_with_float32_outputs_and_hard_evaluation():
    torch.manual_seed(0)
    q = build_quantizer("gm-vq", 16, 3)
    assert isinstance(q, GMVQQuantizer) and not q.logit_input and q.input_channels == 3
    assert q.default_beta_max == 5e-5
    # the defaults: the paper's ALBO (cross-entropy latent term), the distance variance, the gate
    assert (q.latent_term, q.variance_form, q.init_spread) == ("cross_entropy", "distance", 0.05)
    z = torch.randn(2, 3, 4, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        first = q(z.bfloat16(), temperature=0.7, beta=0.1)  # K-means: a warm-up pass
        assert set(first.stats) == {"warmup_passes"} and torch.equal(first.z_q, z.bfloat16().float())
        out = q(z.bfloat16(), temperature=0.7, beta=0.1)  # sigma_z, then quantized
    assert out.z_q.shape == (2, 3, 4, 5) and out.z_q.dtype == torch.float32
    assert out.loss.shape == () and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.indices.shape == (2, 4, 5) and out.indices.dtype == torch.int64
    assert set(out.stats) == {"kl", "latent_kl", "noise_std", "temperature", "sigma_z"}
    assert all(v.dtype == torch.float32 for v in out.stats.values())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p = q.probabilities(z.bfloat16())
    assert p.dtype == torch.float32 and p.shape == (2, 16, 4, 5)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 4, 5))

    q.eval()
    with torch.no_grad():
        out = q(z)
    assert torch.equal(out.z_q, q.embed(out.indices))  # exactly the means mu_c: no noise
    assert torch.equal(out.indices, q.codes(z)) and torch.equal(q.codes(z), q.codes(z.clone()))
    # argmax of the posterior = the nearest mean, by brute force
    d = ((z.permute(0, 2, 3, 1)[..., None, :] - q.codebook.detach()) ** 2).sum(-1)
    assert torch.equal(q.codes(z), d.argmin(-1))
    with pytest.raises(ValueError, match=r"expected features \(B, 3, h, w\)"):
        q(torch.randn(2, 16, 4, 5))
    q.train()
    q.reporting = False
    out = q(z, temperature=0.5, beta=0.1)
    assert out.stats == {} and out.indices is None and torch.isfinite(out.loss)


def test_posterior_is_bayes_rule_of_the_mixture_and_samples_follow_it():
    rows = [[0.0, 0.0], [1.0, 0.5], [-1.0, 2.0]]
    q = _quantizer(rows, sigma_z=0.7)
    pts = [[0.2, 0.1], [0.9, 0.9], [-2.0, 1.0]]
    _, _, _, posteriors = _direct_albo(pts, rows, 0.7, 1.0, 1e-4, 1.0, 1.0)
    got = q.probabilities(_points(*pts))[0, :, 0].t()
    torch.testing.assert_close(got, torch.tensor(posteriors), rtol=1e-5, atol=1e-7)
    # sampled codes: reproducible with a generator; a peaked posterior gives its argmax
    z = torch.randn(3, 2, 4, 4)
    a = q.sample_codes(z, torch.Generator().manual_seed(3))
    assert torch.equal(a, q.sample_codes(z, torch.Generator().manual_seed(3)))
    peaked = _quantizer(rows, sigma_z=1e-3)
    assert torch.equal(peaked.sample_codes(z, torch.Generator().manual_seed(3)), peaked.codes(z))


# ------------------------------------------------------------------ variance and relaxed latent


def test_data_dependent_variance_follows_its_formula():
    torch.manual_seed(0)
    q = GMVQQuantizer(5, 3, variance_scale=0.5, min_variance=0.01, sigma_z=2.0, **HAND)
    z = torch.randn(2, 3, 2, 3)
    d = ((z.permute(0, 2, 3, 1)[..., None, :] - q.codebook.detach()) ** 2).sum(-1).permute(0, 3, 1, 2)
    torch.testing.assert_close(q.variances(z), 0.5 * d / 3 + 0.01 * 4.0, rtol=1e-5, atol=1e-6)
    # a point on a mean gets the floor alone
    q2 = _quantizer([[1.0, 2.0], [5.0, 5.0]], min_variance=0.02)
    assert q2.variances(_points([1.0, 2.0]))[0, 0].item() == pytest.approx(0.02, rel=1e-5)
    # the public accounts' form: ||z^ - mu_c||^2 / (2 sigma_z^2 D), the same floor
    paper = _quantizer([[0.0, 0.0], [3.0, 4.0]], variance_form="paper", sigma_z=0.5, min_variance=0.01)
    got = paper.variances(_points([0.0, 2.0]))[0, :, 0, 0]  # squared distances 4 and 13
    torch.testing.assert_close(got, torch.tensor([4 / (2 * 0.25 * 2), 13 / (2 * 0.25 * 2)]) + 0.01 * 0.25)


def test_prior_variance_is_estimated_once_from_the_first_training_batch():
    # 'init': sigma_z^2 = mean over positions of min_c ||z^ - mu_c||^2 / D, then held
    q = _quantizer([[0.0, 0.0], [10.0, 0.0]], sigma_z_mode="init")
    z = _points([1.0, 0.0], [10.0, 2.0], [0.0, 3.0])  # nearest squared distances 1, 4, 9
    q.eval()(z)  # evaluation estimates nothing
    assert q.prior_variance().item() == 1.0 and int(q.sigma_z_done) == 0
    q.train()(z, temperature=0.5)
    assert q.prior_variance().item() == pytest.approx((1 + 4 + 9) / 3 / 2, rel=1e-6)
    assert int(q.sigma_z_done) == 1
    q(z * 5.0, temperature=0.5)  # a second training pass: no re-estimate
    assert q.prior_variance().item() == pytest.approx(14 / 6, rel=1e-6)
    # every position on a mean: nothing to estimate from, the option's value stays
    on = _quantizer([[0.0, 0.0], [10.0, 0.0]], sigma_z_mode="init", sigma_z=0.5)
    on(_points([0.0, 0.0], [10.0, 0.0]))
    assert on.prior_variance().item() == 0.25 and int(on.sigma_z_done) == 1
    # 'fixed' never estimates; the posterior's temperature is 2 sigma_z^2
    fixed = _quantizer([[0.0, 0.0], [10.0, 0.0]], sigma_z=0.5)
    fixed(z)
    assert fixed.prior_variance().item() == 0.25
    torch.testing.assert_close(fixed.logits(z), -4.0 * fixed.distances(z) / 2)


def test_training_latent_is_the_mean_plus_noise_of_the_distance_scale():
    # z^ at distance 0.6 from mu_0 and far from mu_1; a tiny temperature makes y one-hot, so
    # z - mu_0 = sigma_0 eps with sigma_0^2 = ||z^ - mu_0||^2 / D + floor: E||z - mu_0||^2 = 0.36 + D floor
    q = _quantizer([[0.0, 0.0], [50.0, 50.0]], temperature_map="trainer", min_variance=1e-4)
    torch.manual_seed(0)
    z_hat = _points(*([[0.6, 0.0]] * 4000))
    out = q(z_hat, temperature=1e-3)
    assert bool((out.indices == 0).all())
    sq = out.z_q.pow(2).sum(1)
    assert sq.mean().item() == pytest.approx(0.36 + 2e-4, rel=0.06)
    assert out.stats["noise_std"].item() == pytest.approx(math.sqrt(0.18 + 1e-4), rel=1e-5)


def test_training_latent_against_a_direct_computation_with_the_same_noise():
    rows = [[0.0, 1.0], [1.0, -1.0], [-0.5, 0.5]]
    q = _quantizer(rows, sigma_z=0.9, variance_scale=0.7, temperature_map="trainer")
    z = _points([0.3, 0.2], [1.2, -0.4], [-1.0, 0.0], [0.1, 0.9])
    torch.manual_seed(5)
    out = q(z, temperature=0.8)
    torch.manual_seed(5)  # the quantizer draws the Gumbel noise, then eps
    log_q = q.logits(z).log_softmax(1).double()
    g = gumbel_noise_like(log_q.float()).double()
    eps = torch.randn_like(z).double()
    y = ((log_q + g) / 0.8).softmax(1)
    mu = torch.tensor(rows, dtype=torch.float64)
    sigma = q.variances(z).double().sqrt()
    expected = torch.einsum("bkhw,kd->bdhw", y, mu) + (y * sigma).sum(1, keepdim=True) * eps
    torch.testing.assert_close(out.z_q.double(), expected, rtol=1e-5, atol=1e-6)
    assert torch.equal(out.indices, y.argmax(1))


# ------------------------------------------------------------------ the ALBO


def test_aggregated_kl_closed_forms():
    rows = [[0.0, 0.0], [40.0, 0.0]]  # far apart: q(c|x) is one-hot at a mean
    q = _quantizer(rows)
    q.eval()
    both_on_0 = q(_points([0.0, 0.0], [0.0, 0.0]))
    assert both_on_0.stats["kl"].item() == pytest.approx(math.log(2), rel=1e-6)
    split = q(_points([0.0, 0.0], [40.0, 0.0]))
    assert split.stats["kl"].item() == pytest.approx(0.0, abs=1e-6)
    # the aggregate is a mean over every position of the batch (B and h, w)
    p = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7]]).view(2, 3, 1, 1)
    torch.testing.assert_close(aggregated_posterior(p), torch.tensor([0.3, 0.35, 0.35]))
    expected = 0.3 * math.log(0.9) + 2 * 0.35 * math.log(1.05)
    assert kl_to_uniform(torch.tensor([0.3, 0.35, 0.35])).item() == pytest.approx(expected, abs=1e-7)
    assert kl_to_uniform(torch.tensor([1.0, 0.0, 0.0])).item() == pytest.approx(math.log(3), rel=1e-6)


@pytest.mark.parametrize("term, form", [("kl", "distance"), ("cross_entropy", "distance"),
                                        ("cross_entropy", "paper"), ("kl", "paper")])
def test_albo_regulariser_against_a_direct_computation(term, form):
    rows = [[0.0, 0.0], [1.0, 0.5], [-1.0, 2.0]]
    pts = [[0.2, 0.1], [0.9, 0.9], [-2.0, 1.0], [0.5, 0.3]]
    options = dict(sigma_z=0.8, variance_scale=0.5, min_variance=0.01, gamma=0.3, latent_term=term,
                   variance_form=form)
    loss, kl, latent, _ = _direct_albo(pts, rows, 0.8, 0.5, 0.01, 0.3, 0.7, term, form)
    q = _quantizer(rows, **options)
    torch.manual_seed(0)
    out = q(_points(*pts), temperature=0.5, beta=0.7)  # training; the regulariser ignores the noise
    assert out.stats["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert out.stats["latent_kl"].item() == pytest.approx(latent, rel=1e-5)
    assert out.loss.item() == pytest.approx(loss, rel=1e-5)
    # the whole negative ALBO of a model step: reconstruction term + this regulariser
    x, x_hat = torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4)
    total = q.reconstruction_loss(x_hat, x) + out.loss
    assert total.item() == pytest.approx(float(((x_hat - x) ** 2).mean()) + loss, rel=1e-5)


def test_gradients_reach_z_e_and_the_codebook():
    torch.manual_seed(0)
    q = GMVQQuantizer(8, 3, kmeans_init_iters=0)
    z = torch.randn(2, 3, 3, 3, requires_grad=True)
    out = q(z, temperature=0.5, beta=0.1)
    (out.z_q.pow(2).sum() + out.loss).backward()
    assert z.grad.abs().sum() > 0 and q.codebook.grad.abs().sum() > 0
    assert torch.isfinite(z.grad).all() and torch.isfinite(q.codebook.grad).all()
    # the regulariser alone reaches both too (through q(c|x) and sigma_c)
    z.grad, q.codebook.grad = None, None
    q(z, temperature=0.5, beta=0.1).loss.backward()
    assert z.grad.abs().sum() > 0 and q.codebook.grad.abs().sum() > 0
    # a point exactly on a mean keeps finite gradients (the variance floor)
    q2 = _quantizer([[1.0, 2.0], [3.0, 1.0]])
    z2 = _points([1.0, 2.0], [2.0, 2.0]).requires_grad_()
    (q2(z2, beta=1.0).loss + q2(z2).z_q.sum()).backward()
    assert torch.isfinite(z2.grad).all() and torch.isfinite(q2.codebook.grad).all()


# ------------------------------------------------------------------ initialisation gated by the spread


def test_encoder_spread_is_the_std_across_positions_whatever_the_offset():
    rows = torch.tensor([[0.0, 5.0], [2.0, 5.0]])  # channel variances 1 and 0
    assert encoder_spread(rows).item() == pytest.approx(math.sqrt(0.5), rel=1e-6)
    # a large common offset changes nothing (two passes: no cancellation in float32)
    assert encoder_spread(rows + 1e3).item() == pytest.approx(math.sqrt(0.5), rel=1e-4)
    torch.manual_seed(0)
    x = torch.randn(500, 3) * torch.tensor([1.0, 2.0, 3.0])
    assert encoder_spread(x).item() == pytest.approx(float(x.var(0, unbiased=False).mean().sqrt()), rel=1e-5)
    assert encoder_spread(torch.full((7, 4), 3.0)).item() == 0.0


def _entropy(p):
    return -(p * p.clamp_min(1e-30).log()).sum(1)


def test_a_near_constant_encoder_starts_no_one_hot_posterior():
    # an untrained encoder: outputs about 1e-3, spread across positions about 1e-6
    torch.manual_seed(0)
    k, d = 64, 4
    q = GMVQQuantizer(k, d)
    flat = torch.full((d,), 1e-3) + 1e-6 * torch.randn(4 * 8 * 8, d)
    z = flat.view(4, 8, 8, d).permute(0, 3, 1, 2).contiguous().requires_grad_()
    codebook = q.codebook.detach().clone()
    out = q(z, temperature=1.0, beta=0.1)
    # nothing is initialised from it: the pass sends z^ through, the codebook and sigma_z stay
    assert int(q.kmeans_done) == 0 and int(q.sigma_z_done) == 0 and int(q.warmup_passes) == 1
    assert torch.equal(out.z_q, z) and out.loss.item() == 0.0 and torch.equal(q.codebook, codebook)
    out.z_q.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # the encoder trains through the warm-up
    p = q.probabilities(z.detach())
    assert _entropy(p).mean().item() > 2.0 and int((p.mean((0, 2, 3)) > 1e-3).sum()) > k // 2
    # the same batch with the gate off (init_spread 0, the first-batch initialisation): K-means
    # packs the 64 codewords into the 1e-6 cluster, a state that a moving encoder cannot undo
    packed = GMVQQuantizer(k, d, init_spread=0.0)
    packed(z.detach())
    assert int(packed.kmeans_done) == 1 and encoder_spread(packed.codebook.detach()).item() < 1e-5
    # once the outputs have spread (as after a few dozen steps of training), the gated quantizer
    # initialises: K-means on one batch, sigma_z on the next, and the posterior is far from one-hot
    spread = [torch.randn(4, d, 8, 8) * 0.2 + 1e-3 for _ in range(2)]
    assert torch.equal(q(spread[0]).z_q, spread[0]) and int(q.kmeans_done) == 1  # K-means: a warm-up
    out = q(spread[1], temperature=1.0, beta=0.1)
    assert int(q.sigma_z_done) == 1 and int(q.warmup_passes) == 2
    assert encoder_spread(q.codebook.detach()).item() > 0.1
    p = q.probabilities(spread[1])
    aggregate = p.mean((0, 2, 3))
    assert math.exp(_entropy(aggregate[None]).item()) > k / 2  # perplexity of q(c)
    assert _entropy(p).mean().item() > 0.5 and p.max(1).values.mean().item() < 0.9
    assert int((aggregate > 0.1 / k).sum()) > k / 2
    assert set(out.stats) == {"kl", "latent_kl", "noise_std", "temperature", "sigma_z"}


def test_the_gate_is_skipped_when_nothing_is_left_to_initialise():
    # K-means off and sigma_z fixed: no warm-up, no read of the spread
    q = GMVQQuantizer(4, 2, **HAND)
    z = torch.full((1, 2, 2, 2), 1e-3)
    out = q(z, temperature=1.0)
    assert "kl" in out.stats and int(q.warmup_passes) == 0
    # after pretraining (init_codebook), only sigma_z is left: estimated on the first spread batch
    pre = GMVQQuantizer(4, 2)
    pre.init_codebook(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    z = _points([0.1, 0.0], [1.0, 0.2], [0.0, 0.9], [1.3, 1.0])
    out = pre(z, temperature=1.0)
    assert int(pre.sigma_z_done) == 1 and int(pre.warmup_passes) == 0 and "kl" in out.stats
    assert pre.prior_variance().item() == pytest.approx((0.01 + 0.04 + 0.01 + 0.09) / 8, rel=1e-5)


# ------------------------------------------------------------------ temperature


def test_temperature_map_walks_the_summary_range_along_the_trainer_schedule():
    q = GMVQQuantizer(4, 2)
    assert q.effective_temperature(1.0) == pytest.approx(2.0)
    assert q.effective_temperature(math.exp(-1.5)) == pytest.approx(0.1)
    assert q.effective_temperature(math.exp(-0.75)) == pytest.approx(math.sqrt(2.0 * 0.1))
    assert GMVQQuantizer(4, 2, temperature_map="trainer").effective_temperature(0.3) == 0.3
    custom = GMVQQuantizer(4, 2, temperature_start=1.0, temperature_end=0.5, trainer_temperature_end=0.25)
    assert custom.effective_temperature(0.5) == pytest.approx(math.sqrt(0.5))
    out = GMVQQuantizer(4, 2, **HAND)(torch.randn(1, 2, 3, 3), temperature=math.exp(-1.5))
    assert out.stats["temperature"].item() == pytest.approx(0.1, rel=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        q.effective_temperature(0.0)


# ------------------------------------------------------------------ K-means initialisation


def test_kmeans_init_runs_once_then_sigma_z_on_the_next_batch():
    torch.manual_seed(0)
    q = GMVQQuantizer(2, 2, kmeans_init_iters=5)
    a, b = torch.tensor([0.0, 0.0]), torch.tensor([10.0, 10.0])
    noise = 0.1 * torch.randn(8, 2)
    points = torch.cat([a + noise[:4], b + noise[4:]])
    z = points.t().reshape(1, 2, 1, 8)
    init = q.codebook.detach().clone()
    q.eval()(z)  # evaluation never initialises
    assert int(q.kmeans_done) == 0 and torch.equal(q.codebook, init)
    out = q.train()(z)
    assert int(q.kmeans_done) == 1 and int(q.sigma_z_done) == 0
    assert torch.equal(out.z_q, z) and out.loss.item() == 0.0  # that pass sent z^ through
    got = torch.tensor(sorted(q.codebook.detach().tolist()))
    torch.testing.assert_close(got, torch.stack([points[:4].mean(0), points[4:].mean(0)]))
    kept = q.codebook.detach().clone()
    nxt = z + 0.5  # the next batch: no re-initialisation; sigma_z from it, a batch K-means did not see
    q(nxt)
    assert torch.equal(q.codebook, kept) and int(q.sigma_z_done) == 1
    rows = (points + 0.5).tolist()  # brute force: mean over positions of min_c ||z^ - mu_c||^2 / D
    brute = sum(min(_sq(r, mu) for mu in kept.tolist()) for r in rows) / (len(rows) * 2)
    assert q.prior_variance().item() == pytest.approx(brute, rel=1e-5)
    assert ml_prior_variance(points + 0.5, kept).item() == pytest.approx(brute, rel=1e-5)
    # init_codebook (the pretrain-then-quantize path) marks it done as well
    fresh = GMVQQuantizer(2, 2)
    fresh.init_codebook(torch.ones(2, 2))
    assert int(fresh.kmeans_done) == 1
    fresh(z)
    assert torch.equal(fresh.codebook.detach(), torch.ones(2, 2))
    with pytest.raises(ValueError, match=r"init_codebook expects \(2, 2\)"):
        fresh.init_codebook(torch.ones(3, 2))


def test_model_trains_two_steps_and_a_loaded_model_keeps_codes_and_never_reinitialises(tmp_path):
    torch.manual_seed(0)
    # init_spread 0: the untrained encoder's first batch (K-means), then the second (sigma_z)
    cfg = RunConfig(ModelConfig(method="gm-vq", channels=1, width=8, options={"init_spread": 0.0}))
    model = DiscreteVAE(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(2, 1, 32, 32) - 0.5
    initial = model.quantizer.codebook.detach().clone()
    for step in range(2):
        before = model.quantizer.codebook.detach().clone()
        x_hat, out = model(x, temperature=math.exp(-1.5 * step / 2), beta=5e-6)
        if step == 0:  # K-means replaced the N(0, 1) codebook in this pass
            assert not torch.equal(model.quantizer.codebook, initial)
        else:  # the second pass left the codebook as the optimizer had it
            assert torch.equal(model.quantizer.codebook, before)
        loss = model.quantizer.reconstruction_loss(x_hat, x) + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert int(model.quantizer.kmeans_done) == 1 and model.quantizer.codebook.grad.abs().sum() > 0
    model.eval()
    checkpoint.save_model(tmp_path / checkpoint.MODEL_FILE, model, cfg.to_dict())
    loaded = DiscreteVAE.load(tmp_path)
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    codes = model.encode(images)
    assert codes.shape == (3, 8, 8) and torch.equal(codes, loaded.encode(images))
    assert torch.equal(model.decode(codes), loaded.decode(codes))
    assert int(loaded.quantizer.kmeans_done) == 1 and int(loaded.quantizer.sigma_z_done) == 1
    assert torch.equal(loaded.quantizer.sigma_z_sq, model.quantizer.sigma_z_sq)
    codebook = loaded.quantizer.codebook.detach().clone()
    loaded.train()(x * 3)  # a training pass of the loaded model: no re-initialisation
    assert torch.equal(loaded.quantizer.codebook, codebook)


# ------------------------------------------------------------------ options


@pytest.mark.parametrize("option, value", [
    ("sigma_z", 0.0), ("sigma_z", float("inf")), ("gamma", -1.0), ("latent_term", "entropy"),
    ("variance_scale", 0.0), ("min_variance", 0.0), ("min_variance", float("nan")),
    ("temperature_map", "linear"), ("temperature_start", -2.0), ("temperature_end", 0.0),
    ("trainer_temperature_end", 1.0), ("trainer_temperature_end", 0.0), ("kmeans_init_iters", 2.5),
    ("kmeans_init_iters", -1), ("eval_mode", "mean"), ("gamma", True), ("sigma_z_mode", "batch"),
    ("variance_form", "linear"), ("init_spread", -0.1), ("init_spread", float("inf")),
])
def test_bad_option_values_raise_a_value_error_naming_the_option(option, value):
    with pytest.raises(ValueError, match=option):
        build_quantizer("gm-vq", 16, 4, **{option: value})


# ------------------------------------------------------------------ data parallel (gloo)


def _global_z(shift: float = 0.0):
    return (torch.linspace(-2.0, 2.0, 4 * 2 * 3).view(4, 2, 1, 3) + shift).sin() * 3.0


def _dp_run(rows: slice) -> dict[str, torch.Tensor]:
    """Two training passes of a GM-VQ on `rows` of fixed global batches: the spread gate and
    K-means (global batch, rank 0's draws), then the sigma_z estimate on the second batch and the
    regulariser (the aggregated KL all-reduced) and its gradients."""
    torch.manual_seed(0)
    q = GMVQQuantizer(4, 2, kmeans_init_iters=3, gamma=0.5)
    torch.manual_seed(1)
    q(_global_z()[rows])
    z = _global_z(0.3)[rows].clone().requires_grad_()
    out = q(z, temperature=0.5, beta=1.0)
    out.loss.backward()
    return {"kl": out.stats["kl"].reshape(1), "codebook": q.codebook.detach().clone(),
            "sigma_z_sq": q.sigma_z_sq.clone().reshape(1),
            "codebook_grad": q.codebook.grad.clone(), "z_grad": z.grad.clone()}


def _on_rank(rank: int, world: int) -> dict[str, torch.Tensor]:
    per_rank = 4 // world
    return _dp_run(slice(rank * per_rank, (rank + 1) * per_rank))


def test_two_gloo_processes_compute_the_global_aggregated_kl_and_its_gradient(tmp_path):
    ranks = run_on_ranks(_on_rank, tmp_path)
    single = _dp_run(slice(None))
    assert single["sigma_z_sq"].item() != 1.0  # estimated, over the global batch
    for key in ("kl", "codebook", "sigma_z_sq"):  # the same on every rank, and the one-process value
        assert torch.equal(ranks[0][key], ranks[1][key]), key
        torch.testing.assert_close(ranks[0][key], single[key], msg=key)
    # DDP averages parameter gradients over ranks: the mean of the ranks' gradients is the
    # one-process gradient; an encoder's gradient through z_e is its rank's share divided by 2
    # (up to float32 rounding of sums taken in another order)
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close((ranks[0]["codebook_grad"] + ranks[1]["codebook_grad"]) / 2,
                               single["codebook_grad"], **tol)
    halves = torch.cat([ranks[0]["z_grad"], ranks[1]["z_grad"]]) / 2
    torch.testing.assert_close(halves, single["z_grad"], **tol)
    # each rank's own aggregate would give another KL on each rank: the all-reduce matters here
    q = GMVQQuantizer(4, 2)
    with torch.no_grad():
        q.codebook.copy_(single["codebook"])
    local = [kl_to_uniform(aggregated_posterior(q.probabilities(_global_z()[s]))).item()
             for s in (slice(0, 2), slice(2, 4))]
    assert all(abs(v - single["kl"].item()) > 1e-3 for v in local)
