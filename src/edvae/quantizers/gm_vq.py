"""GM-VQ: Gaussian-mixture vector quantization trained with the ALBO.

Yan, Wu, Shah, Liu, "Gaussian Mixture Vector Quantization with Aggregated Categorical Posterior"
(arXiv 2410.10180, 2024). No public code was found, and the paper's full text was not at hand:
the objective, the variance form and the initialisation below follow the public accounts of the
paper (its abstract, summaries and reviews); what they leave open is derived from the stated
generative model in docs/gm-vq.md, and every choice made there is an option here.

Generative model: p(c) = 1/K; p(z|c) = N(mu_c, sigma_z^2 I) with the codebook mu (K x D) and a
fixed sigma_z. The encoder emits a proxy latent z^ (D channels) per position. Then:
- q(c|x) = p(c | z^): Bayes' rule with z^ read as a draw of the mixture, so
  q(c|x) = softmax_c(-||z^ - mu_c||^2 / (2 sigma_z^2)); argmax = the nearest codeword.
- q(z|x,c) = N(mu_c, sigma_c^2(x) I). `variance_form` 'distance' (ours, default):
  sigma_c^2 = variance_scale ||z^ - mu_c||^2 / D + min_variance sigma_z^2; 'paper' (the form the
  public accounts report, unverified): sigma_c^2 = variance_scale ||z^ - mu_c||^2 / (2 sigma_z^2 D)
  + the same floor.
- Training: y = softmax((log q(c|x) + g) / tau') (Gumbel-Softmax, soft) and
  z = sum_k y_k mu_k + (sum_k y_k sigma_k) eps. Evaluation: argmax (or a draw from Cat(q),
  `eval_mode`), z = mu_c, no noise (a deterministic tokenizer).
- Loss (the negative ALBO minus its reconstruction term, on the trainer's per-pixel scale):
  beta * (KL(q(c) || p(c)) + gamma * mean_positions E_q(c|x) L_z), q(c) the aggregated posterior
  (the mean of q(c|x) over the global batch). The paper's ALBO, E_q(c)q(z|x)[log p(x, z, c) - log q(c)],
  has no -log q(z|x) term: L_z is the cross-entropy E_q(z|x,c)[-log p(z|c)] less its constant,
  (D/2) sigma_c^2 / sigma_z^2 (`latent_term` 'cross_entropy', default). 'kl' is edvae's ELBO
  variant, KL(q(z|x,c) || p(z|c)), which adds q's Gaussian entropy. beta (the trainer's ramped
  beta) and gamma (relative to beta) have no published values on this loss scale.
- Temperature: the trainer's tau = exp(-r), r from 0 to 1.5 over every run, is mapped
  log-linearly onto the summary's 2.0 -> 0.1 (`temperature_map` 'range'), or used as is ('trainer').
- Initialisation (section 6 of docs/gm-vq.md): the codebook by K-means (kmeans.py) on encoder
  outputs, and sigma_z ('init') by the maximum-likelihood shared variance of the mixture under that
  codebook, estimated on the next training batch (one the codebook was not fitted to), then held
  fixed. Both wait until the encoder's outputs have spread: until the standard
  deviation of a training batch's outputs across positions (root-mean over channels, global batch)
  reaches `init_spread`, a training pass sends z^ to the decoder unquantized (a warm-up, counted in
  the buffer `warmup_passes`). An untrained encoder whose outputs are nearly constant would
  otherwise fix a codebook packed into one point and a sigma_z that the first optimizer steps
  outgrow, and the posterior would be one-hot on one code from the start. Each pending pass reads
  one scalar back from the device; after the initialisation, none. The buffers `kmeans_done` and
  `sigma_z_done` record it, so a loaded or resumed model never re-initialises; `init_codebook`
  (train.pretrain_steps) sets `kmeans_done`.
Every numeric step (distances, softmax, KLs, noise) is float32, even under autocast.
"""

from __future__ import annotations

import math

import torch

from ..distributed import all_reduce_sum_, is_distributed
from .base import (
    QuantizerOutput,
    check_option,
    flatten,
    gumbel_noise_like,
    is_int,
    is_real,
    one_hot_channels,
    probs_from_log,
)
from .gm_vq_init import encoder_spread, kmeans_codebook, ml_prior_variance
from .gumbel_vq import GumbelVQQuantizer

LATENT_TERMS = ("cross_entropy", "kl")
VARIANCE_FORMS = ("distance", "paper")
SIGMA_MODES = ("init", "fixed")
TEMPERATURE_MAPS = ("range", "trainer")
# floor of q(c) inside the log of the aggregated KL (a code no position uses contributes 0 log 0 = 0)
_Q_FLOOR = 1e-30


def aggregated_posterior(q: torch.Tensor, global_batch: bool = True) -> torch.Tensor:
    """q(c): the mean of q(c|x) (B, K, h, w) over all positions, (K,) float32.

    With global_batch and a process group, the value is the mean over the positions of every rank
    (the same on all of them), while the gradient flows through this rank's positions as through a
    local mean: after DDP averages the gradients of equal shards, the result is the gradient of the
    KL of the global batch's q(c)."""
    q = q.float()
    n_local = q.shape[0] * q.shape[2] * q.shape[3]
    local = q.sum((0, 2, 3)) / n_local
    if not (global_batch and is_distributed()):
        return local
    totals = torch.cat([q.detach().sum((0, 2, 3)), q.new_tensor([float(n_local)])])
    all_reduce_sum_(totals)
    return totals[:-1] / totals[-1] + (local - local.detach())


def kl_to_uniform(p: torch.Tensor) -> torch.Tensor:
    """KL(p || uniform over K) = sum_k p_k log(K p_k) of a (K,) distribution, float32 scalar."""
    p = p.float()
    return (p * (p.clamp_min(_Q_FLOOR) * p.shape[0]).log()).sum()


def _check_options(o: dict) -> None:
    for name, allowed in (("sigma_z_mode", SIGMA_MODES), ("latent_term", LATENT_TERMS),
                          ("variance_form", VARIANCE_FORMS), ("temperature_map", TEMPERATURE_MAPS)):
        check_option(name, o[name], o[name] in allowed, f"must be one of {allowed}")
    for name in ("sigma_z", "variance_scale", "min_variance", "temperature_start", "temperature_end"):
        check_option(name, o[name], is_real(o[name]) and o[name] > 0, "must be a finite number > 0")
    for name in ("gamma", "init_spread"):  # init_spread 0: initialise on the first training batch
        check_option(name, o[name], is_real(o[name]) and o[name] >= 0, "must be a finite number >= 0")
    end = o["trainer_temperature_end"]
    check_option("trainer_temperature_end", end, is_real(end) and 0 < end < 1,
                 "must be in (0, 1): the trainer's temperature at the end of its run")
    iters = o["kmeans_init_iters"]
    check_option("kmeans_init_iters", iters, is_int(iters) and iters >= 0,
                 "must be an integer >= 0 (0 = off)")


class GMVQQuantizer(GumbelVQQuantizer):
    """Gaussian-mixture posterior over a K x D codebook of means, noisy relaxed latent in
    training, the mean of the most probable component at evaluation."""

    name = "gm-vq"
    # No beta is published for GM-VQ. 5e-5 is the EdVAE paper's weight of dVAE's KL of a softmax to
    # the uniform prior (Appendix D, all datasets), the same kind of term (docs/gm-vq.md, section 4).
    default_beta_max = 5e-5

    def __init__(self, codebook_size: int, codebook_dim: int,
                 eval_mode: str = "argmax",  # argmax: the deterministic tokenizer, as gs-vq
                 sigma_z: float = 1.0,  # std of p(z|c) with sigma_z_mode 'fixed' (unpublished); ours
                 sigma_z_mode: str = "init",  # ML estimate at initialisation (ours), or 'fixed'
                 gamma: float = 1.0,  # latent-term weight relative to beta (unpublished); ours
                 latent_term: str = "cross_entropy",  # the paper's ALBO; 'kl': edvae's ELBO variant
                 variance_form: str = "distance",  # ours; 'paper': the public accounts' form
                 variance_scale: float = 1.0,  # multiplies sigma_c^2's distance term; ours
                 min_variance: float = 1e-4,  # floor of sigma_c^2 / sigma_z^2 (finite log); ours
                 temperature_map: str = "range",  # map the trainer's tau onto the summary's range
                 temperature_start: float = 2.0,  # summary: annealed from 2.0 ...
                 temperature_end: float = 0.1,  # ... to 0.1
                 trainer_temperature_end: float = math.exp(-1.5),  # trainer's final tau, exp(-1e-5 x 150k)
                 kmeans_init_iters: int = 10,  # summary: K-means init; 10 Lloyd steps: ours
                 init_spread: float = 0.05):  # initialise once the outputs' spread reaches it; ours
        super().__init__(codebook_size, codebook_dim, eval_mode)
        _check_options(dict(locals()))
        self.sigma_z, self.sigma_z_mode = float(sigma_z), sigma_z_mode
        self.gamma, self.latent_term = float(gamma), latent_term
        self.variance_form = variance_form
        self.variance_scale, self.min_variance = float(variance_scale), float(min_variance)
        self.temperature_map = temperature_map
        self.temperature_start, self.temperature_end = float(temperature_start), float(temperature_end)
        self.trainer_temperature_end = float(trainer_temperature_end)
        self.kmeans_init_iters, self.init_spread = kmeans_init_iters, float(init_spread)
        # the codebook of means (GumbelVQQuantizer): N(0, 1) until K-means sets it
        self.register_buffer("kmeans_done", torch.zeros((), dtype=torch.int64))
        # sigma_z^2 of p(z|c): the option's value until estimated ('init': once, at the
        # initialisation, which sets `sigma_z_done`; 'fixed': never)
        self.register_buffer("sigma_z_sq", torch.tensor(float(sigma_z) ** 2))
        self.register_buffer("sigma_z_done", torch.tensor(int(sigma_z_mode == "fixed"), dtype=torch.int64))
        # training passes sent through unquantized while the initialisation waited for the spread
        self.register_buffer("warmup_passes", torch.zeros((), dtype=torch.int64))

    # ------------------------------------------------------------------ the posterior

    def prior_variance(self) -> torch.Tensor:
        """sigma_z^2, a float32 scalar tensor."""
        return self.sigma_z_sq.float()

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """log q(c|x) up to a constant: -||z^ - mu_c||^2 / (2 sigma_z^2), (B, K, h, w) float32."""
        return self.distances(z) / (-2.0 * self.prior_variance())

    def variances(self, z: torch.Tensor, distances: torch.Tensor | None = None) -> torch.Tensor:
        """sigma_c^2(x), (B, K, h, w): variance_scale ||z^ - mu_c||^2 / D ('distance') or
        / (2 sigma_z^2 D) ('paper'), plus min_variance sigma_z^2."""
        d = self.distances(z) if distances is None else distances
        prior = self.prior_variance()
        scale = self.variance_scale / self.codebook_dim
        if self.variance_form == "paper":
            scale = scale / (2.0 * prior)
        return d * scale + self.min_variance * prior

    def latent_kl(self, variances: torch.Tensor) -> torch.Tensor:
        """The latent term per position and code, v = sigma_c^2(x). 'cross_entropy' (the ALBO's):
        E_q(z|x,c)[-log p(z|c)] less its constant (D/2) log(2 pi sigma_z^2), = (D/2) v / sigma_z^2;
        'kl' (edvae's ELBO variant): KL(N(mu_c, v I) || N(mu_c, sigma_z^2 I))
        = (D/2) (v / sigma_z^2 - 1 - log(v / sigma_z^2))."""
        ratio = variances / self.prior_variance()
        if self.latent_term == "cross_entropy":
            return 0.5 * self.codebook_dim * ratio
        return 0.5 * self.codebook_dim * (ratio - 1.0 - ratio.log())

    def effective_temperature(self, temperature: float) -> float:
        """The Gumbel-Softmax temperature used: the trainer's tau, or its map onto the summary's
        range (tau' = start at tau = 1, end at tau = trainer_temperature_end, log-linear)."""
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if self.temperature_map == "trainer":
            return float(temperature)
        progress = math.log(temperature) / math.log(self.trainer_temperature_end)
        return self.temperature_start * (self.temperature_end / self.temperature_start) ** progress

    # ------------------------------------------------------------------ initialisation

    @torch.no_grad()
    def init_codebook(self, vectors: torch.Tensor) -> None:
        """Set the codebook to `vectors` (K, D) and mark the K-means initialisation done, so the
        first training pass does not redo it (train.pretrain_steps, kmeans.py)."""
        super().init_codebook(vectors)
        self.set_flag("kmeans_done")

    def initialised(self) -> bool:
        """Whether nothing is left to initialise (K-means, if on, and sigma_z)."""
        kmeans_done = not self.kmeans_init_iters or self.is_flag_set("kmeans_done")
        return kmeans_done and self.is_flag_set("sigma_z_done")

    @torch.no_grad()
    def _initialise(self, flat: torch.Tensor) -> bool:
        """One step of the initialisation on a training batch's outputs (N, D), once they have
        spread to `init_spread`: K-means if it is pending (this pass stays a warm-up), else the
        sigma_z estimate, on a batch the codebook was not fitted to. True: the pass quantizes."""
        if self.init_spread > 0 and not bool(encoder_spread(flat) >= self.init_spread):  # one host read
            return False
        if self.kmeans_init_iters and not self.is_flag_set("kmeans_done"):
            self.init_codebook(kmeans_codebook(flat, self.codebook_size, self.kmeans_init_iters))
            if not self.is_flag_set("sigma_z_done"):
                return False  # sigma_z from the next batch: K-means with K near N fits its own rows
        if not self.is_flag_set("sigma_z_done"):
            estimate = ml_prior_variance(flat, self.codebook)
            # every position on a mean: nothing to estimate from, the option's value stays
            self.sigma_z_sq.copy_(torch.where(estimate > 0, estimate, self.sigma_z_sq))
            self.set_flag("sigma_z_done")
        return True

    def _warm_up(self, z: torch.Tensor) -> QuantizerOutput:
        """A training pass before the initialisation: z^ goes to the decoder unquantized, with no
        regulariser (the codebook stays in the graph with a zero gradient)."""
        self.warmup_passes.add_(1)
        indices = self.logits(z.detach()).argmax(1) if self.reporting else None
        stats = {"warmup_passes": self.warmup_passes.float()} if self.reporting else {}
        return QuantizerOutput(z_q=z, loss=0.0 * self.codebook.float().sum(), indices=indices, stats=stats)

    # ------------------------------------------------------------------ forward

    def forward(self, z_e: torch.Tensor, temperature: float = 1.0,
                beta: float = 0.0) -> QuantizerOutput:
        z = self._features(z_e)
        with torch.autocast(device_type=z.device.type, enabled=False):
            if self.training and not self.initialised() and not self._initialise(flatten(z.detach())):
                return self._warm_up(z)
            d = self.distances(z)
            logits = d / (-2.0 * self.prior_variance())
            log_q = logits.log_softmax(1)
            q = probs_from_log(log_q)
            var = self.variances(z, d)
            mu = self.codebook.float()
            stats: dict[str, torch.Tensor] = {}
            if self.training:
                tau = self.effective_temperature(temperature)
                y = ((log_q + gumbel_noise_like(log_q)) / tau).softmax(1)
                indices = y.detach().argmax(1) if self.reporting else None
                std = (y * var.sqrt()).sum(1, keepdim=True)  # sum_k y_k sigma_k, (B, 1, h, w)
                z_q = torch.einsum("bkhw,kd->bdhw", y, mu) + std * torch.randn_like(z)
                if self.reporting:
                    stats = {"noise_std": std.detach().mean(), "temperature": z.new_tensor(tau),
                             "sigma_z": self.prior_variance().sqrt()}
            else:
                indices = self.sample_codes(z) if self.eval_mode == "sample" else logits.argmax(1)
                y = one_hot_channels(indices, self.codebook_size, logits.dtype)
                z_q = torch.einsum("bkhw,kd->bdhw", y, mu)  # the means: no noise at evaluation
            # the aggregate over the global batch in training (every rank calls the all-reduce);
            # evaluation may run on one rank alone, so it stays local there
            categorical = kl_to_uniform(aggregated_posterior(q, global_batch=self.training))
            latent = (q * self.latent_kl(var)).sum(1).mean()  # E_q(c|x) of the latent term
            loss = beta * (categorical + self.gamma * latent)
        if self.reports:
            stats.update({"kl": categorical.detach(), "latent_kl": latent.detach()})
        return QuantizerOutput(z_q=z_q, loss=loss, indices=indices, stats=stats)
