"""GM-VQ: Gaussian-mixture vector quantization trained with the ALBO.

Yan, Wu, Shah, Liu, "Gaussian Mixture Vector Quantization with Aggregated Categorical Posterior"
(arXiv 2410.10180, 2024); facts from shared/papers/gm-vq-summary.md and baselines.md ('GM-VQ').
No public code was found and the material at hand does not publish q(c|x): the posterior, the
variance and the relaxed training latent below are derived from the stated generative model in
docs/gm-vq.md, and every choice made there is an option here.

Generative model: p(c) = 1/K; p(z|c) = N(mu_c, sigma_z^2 I) with the codebook mu (K x D) and a
fixed sigma_z. The encoder emits a proxy latent z^ (D channels) per position. Then:
- sigma_z (unpublished): by default ('init') set once, on the first training pass (after the
  K-means initialisation), to the maximum-likelihood shared variance of the mixture with hard
  assignments, sigma_z^2 = mean over the global batch of min_c ||z^ - mu_c||^2 / D, and held fixed
  (buffers `sigma_z_sq`, `sigma_z_done`): the posterior starts on the scale of the encoder's
  outputs, whatever that is. 'fixed': the option `sigma_z` as given.
- q(c|x) = p(c | z^): Bayes' rule with z^ read as a draw of the mixture, so
  q(c|x) = softmax_c(-||z^ - mu_c||^2 / (2 sigma_z^2)) (uniform prior, shared isotropic variance:
  the normalising constants cancel); argmax = the nearest codeword.
- q(z|x,c) = N(mu_c, sigma_c^2(x) I) with the data-dependent variance
  sigma_c^2(x) = variance_scale * ||z^ - mu_c||^2 / D + min_variance * sigma_z^2 (baselines.md:
  proportional to the distance; with scale 1, E||z - mu_c||^2 = ||z^ - mu_c||^2 up to the floor).
- Training: y = softmax((log q(c|x) + g) / tau') (Gumbel-Softmax, soft, no straight-through) and
  z = sum_k y_k mu_k + (sum_k y_k sigma_k) eps, eps ~ N(0, I): z = mu_c + sigma_c eps with the one-hot
  of c relaxed to y in both terms. Evaluation: argmax (or a draw from Cat(q), `eval_mode`), z = mu_c,
  no noise (a deterministic tokenizer).
- Loss (the negative ALBO minus its reconstruction term, on the trainer's per-pixel scale):
  beta * (KL(q(c) || p(c)) + gamma * mean_positions E_q(c|x) KL(q(z|x,c) || p(z|c))), where
  q(c) is the aggregated posterior, the mean of q(c|x) over every position of the global batch
  (all-reduced under data parallelism), and beta is the trainer's ramped beta. gamma is relative
  to beta (docs/gm-vq.md says why).
- Temperature: the summary anneals 2.0 -> 0.1; the trainer passes tau = exp(-r) with r going from 0
  to 1.5 over every run (exp(-1e-5 t) over 150k steps, scaled with the budget). temperature_map
  'range' uses tau' = start * (end / start) ** (log tau / log trainer_temperature_end), which walks
  2.0 -> 0.1 along the trainer's schedule (a pure function of the step); 'trainer' uses tau as is.
- K-means initialisation of the codebook on the first training pass (Lloyd iterations from random
  rows of the global batch, nearest.py, as vq-ste++); the buffer `kmeans_done` records it, so a
  loaded or resumed model never re-initialises. `init_codebook` (train.pretrain_steps) sets it too.
  Both initialisations read the encoder as it is: an untrained encoder whose outputs are tiny and
  about to change scale (the DALL-E nets start near 1e-4) gives a codebook and a sigma_z that
  training outgrows, and the codes collapse; pretraining first avoids it (docs/gm-vq.md).
Every numeric step (distances, softmax, KLs, noise) is float32, even under autocast.
"""

from __future__ import annotations

import math

import torch

from ..distributed import all_gather_cat, all_reduce_sum_, broadcast_, is_distributed, rank
from .base import QuantizerOutput, gumbel_noise_like, one_hot_channels, probs_from_log
from .gumbel_vq import GumbelVQQuantizer
from .nearest import check_option, flatten, is_int, is_real, lloyd, nearest, random_rows

LATENT_TERMS = ("kl", "cross_entropy")
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


class GMVQQuantizer(GumbelVQQuantizer):
    """Gaussian-mixture posterior over a K x D codebook of means, noisy relaxed latent in
    training, the mean of the most probable component at evaluation."""

    name = "gm-vq"
    logit_input = False
    # The summary publishes no beta. 5e-5 is the EdVAE paper's weight of dVAE's KL of a softmax to the
    # uniform prior (Appendix D, all datasets), the same kind of term; in short CPU runs it beat
    # GS-VQ's 5e-6 on code usage at equal MSE (docs/gm-vq.md, 'Smoke runs').
    default_beta_max = 5e-5

    def __init__(self, codebook_size: int, codebook_dim: int,
                 eval_mode: str = "argmax",  # argmax: the deterministic tokenizer, as gs-vq
                 sigma_z: float = 1.0,  # std of p(z|c) with sigma_z_mode 'fixed' (unpublished); ours
                 sigma_z_mode: str = "init",  # ML estimate at initialisation (ours), or 'fixed'
                 gamma: float = 1.0,  # latent KL weight relative to beta: 1 = both KLs as in the bound
                 latent_term: str = "kl",  # the bound's Gaussian KL; 'cross_entropy' drops q's entropy
                 variance_scale: float = 1.0,  # sigma_c^2 = scale ||z^ - mu_c||^2 / D (+ floor); ours
                 min_variance: float = 1e-4,  # floor of sigma_c^2 / sigma_z^2 (finite log); ours
                 temperature_map: str = "range",  # map the trainer's tau onto the summary's range
                 temperature_start: float = 2.0,  # summary: annealed from 2.0 ...
                 temperature_end: float = 0.1,  # ... to 0.1
                 trainer_temperature_end: float = math.exp(-1.5),  # trainer's final tau (protocol.md)
                 kmeans_init_iters: int = 10):  # summary: K-means init; 10 Lloyd steps: ours (as vq-ste++)
        super().__init__(codebook_size, codebook_dim, eval_mode)
        check_option("sigma_z", sigma_z, is_real(sigma_z) and sigma_z > 0, "a finite number > 0")
        check_option("sigma_z_mode", sigma_z_mode, sigma_z_mode in SIGMA_MODES, f"one of {SIGMA_MODES}")
        check_option("gamma", gamma, is_real(gamma) and gamma >= 0, "a finite number >= 0")
        check_option("latent_term", latent_term, latent_term in LATENT_TERMS, f"one of {LATENT_TERMS}")
        check_option("variance_scale", variance_scale, is_real(variance_scale) and variance_scale > 0,
                     "a finite number > 0")
        check_option("min_variance", min_variance, is_real(min_variance) and min_variance > 0,
                     "a finite number > 0")
        check_option("temperature_map", temperature_map, temperature_map in TEMPERATURE_MAPS,
                     f"one of {TEMPERATURE_MAPS}")
        for option, value in (("temperature_start", temperature_start), ("temperature_end", temperature_end)):
            check_option(option, value, is_real(value) and value > 0, "a finite number > 0")
        check_option("trainer_temperature_end", trainer_temperature_end,
                     is_real(trainer_temperature_end) and 0 < trainer_temperature_end < 1,
                     "in (0, 1): the trainer's temperature at the end of its run")
        check_option("kmeans_init_iters", kmeans_init_iters,
                     is_int(kmeans_init_iters) and kmeans_init_iters >= 0, "an integer >= 0 (0 = off)")
        self.sigma_z, self.sigma_z_mode = float(sigma_z), sigma_z_mode
        self.gamma, self.latent_term = float(gamma), latent_term
        self.variance_scale, self.min_variance = float(variance_scale), float(min_variance)
        self.temperature_map = temperature_map
        self.temperature_start, self.temperature_end = float(temperature_start), float(temperature_end)
        self.trainer_temperature_end = float(trainer_temperature_end)
        self.kmeans_init_iters = kmeans_init_iters
        # the codebook of means (GumbelVQQuantizer): N(0, 1) until K-means sets it
        self.register_buffer("kmeans_done", torch.zeros((), dtype=torch.int64))
        # sigma_z^2 of p(z|c): the option's value until estimated ('init': once, on the first
        # training pass, which sets `sigma_z_done`; 'fixed': never)
        self.register_buffer("sigma_z_sq", torch.tensor(float(sigma_z) ** 2))
        self.register_buffer("sigma_z_done", torch.tensor(int(sigma_z_mode == "fixed"), dtype=torch.int64))

    # ------------------------------------------------------------------ the posterior

    def prior_variance(self) -> torch.Tensor:
        """sigma_z^2, a float32 scalar tensor."""
        return self.sigma_z_sq.float()

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """log q(c|x) up to a constant: -||z^ - mu_c||^2 / (2 sigma_z^2), (B, K, h, w) float32."""
        return self.distances(z) / (-2.0 * self.prior_variance())

    def variances(self, z: torch.Tensor, distances: torch.Tensor | None = None) -> torch.Tensor:
        """sigma_c^2(x) = variance_scale ||z^ - mu_c||^2 / D + min_variance sigma_z^2, (B, K, h, w)."""
        d = self.distances(z) if distances is None else distances
        return d * (self.variance_scale / self.codebook_dim) + self.min_variance * self.prior_variance()

    def latent_kl(self, variances: torch.Tensor) -> torch.Tensor:
        """Per position and code: KL(N(mu_c, v I) || N(mu_c, sigma_z^2 I))
        = (D/2) (v / sigma_z^2 - 1 - log(v / sigma_z^2)); with latent_term 'cross_entropy' only the
        cross-entropy part E_q[-log p(z|c)] less its constant, (D/2) v / sigma_z^2."""
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

    # ------------------------------------------------------------------ K-means initialisation

    @torch.no_grad()
    def init_codebook(self, vectors: torch.Tensor) -> None:
        """Set the codebook to `vectors` (K, D) and mark the K-means initialisation done, so the
        first training pass does not redo it (train.pretrain_steps, kmeans.py)."""
        if tuple(vectors.shape) != tuple(self.codebook.shape):
            raise ValueError(f"init_codebook expects {tuple(self.codebook.shape)} vectors, "
                             f"got {tuple(vectors.shape)}")
        self.codebook.copy_(vectors.to(self.codebook.device, self.codebook.dtype))
        self.set_flag("kmeans_done")

    @torch.no_grad()
    def _kmeans_init(self, flat: torch.Tensor) -> None:
        points = all_gather_cat(flat)  # the global batch, in rank order
        centroids = torch.empty(self.codebook_size, self.codebook_dim, device=flat.device)
        if rank() == 0:  # the random start is rank 0's, broadcast
            centroids.copy_(lloyd(points, random_rows(points, self.codebook_size), self.kmeans_init_iters))
        broadcast_(centroids)
        self.init_codebook(centroids)

    @torch.no_grad()
    def _estimate_prior_variance(self, flat: torch.Tensor) -> None:
        """sigma_z^2 = sum over the global batch of min_c ||z^ - mu_c||^2 / (N D): the maximum-
        likelihood shared variance of the mixture with hard (nearest-mean) assignments. Kept as it
        was when every position sits on a mean (nothing to estimate from)."""
        mu = self.codebook.float()
        totals = torch.stack([(flat - mu[nearest(flat, mu)]).pow(2).sum(),
                              flat.new_tensor(float(flat.numel()))])
        all_reduce_sum_(totals)
        if totals[0] > 0:
            self.sigma_z_sq.copy_(totals[0] / totals[1])
        self.set_flag("sigma_z_done")

    # ------------------------------------------------------------------ forward

    def forward(self, z_e: torch.Tensor, temperature: float = 1.0,
                beta: float = 0.0) -> QuantizerOutput:
        z = self._features(z_e)
        with torch.autocast(device_type=z.device.type, enabled=False):
            if self.training and self.kmeans_init_iters and not self.is_flag_set("kmeans_done"):
                self._kmeans_init(flatten(z.detach()))  # before the graph uses the codebook
            if self.training and not self.is_flag_set("sigma_z_done"):
                self._estimate_prior_variance(flatten(z.detach()))
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
                indices = self._eval_codes(logits)
                y = one_hot_channels(indices, self.codebook_size, logits.dtype)
                z_q = torch.einsum("bkhw,kd->bdhw", y, mu)  # the means: no noise at evaluation
            # the aggregate over the global batch in training (every rank calls the all-reduce);
            # evaluation may run on one rank alone, so it stays local there
            categorical = kl_to_uniform(aggregated_posterior(q, global_batch=self.training))
            latent = (q * self.latent_kl(var)).sum(1).mean()  # E_q(c|x) KL, mean over positions
            loss = beta * (categorical + self.gamma * latent)
        if self.reporting or not self.training:
            stats.update({"kl": categorical.detach(), "latent_kl": latent.detach()})
        return QuantizerOutput(z_q=z_q, loss=loss, indices=indices, probs=q.detach(), stats=stats)
