"""SQ-VAE: stochastically quantized VAE, Gaussian variant I (one learned scalar variance).

Takida et al., "SQ-VAE: Variational Bayes on discrete representation with self-annealed stochastic
quantization", ICML 2022. Facts from the paper, checked against the authors' code
(sony/sqvae, vision/): model.py (GaussianSQVAE), quantizer.py (GaussianVectorQuantizer),
configs/cifar10_gauss_1.yaml and configs/defaults.py.
- var_q = exp(0) + exp(s) with s learned (model.py, param_var_q "gaussian_1": log_var_q = 0, so
  var_q > 1), s initialised log(20) (cifar10_gauss_1.yaml, log_param_q_init; its comment recommends
  a smaller value for smaller code dimensions: option `log_var_init`);
- logits l_k = -||z - b_k||^2 / (2 var_q) (quantizer.py: 0.5 * precision times the distances);
- training: y = softmax((l + g) / tau), z~ = sum_k y_k b_k (soft); evaluation: argmax of l
  (flg_quant_det) or a draw from Cat(q) (option `eval_mode`);
- latent loss, per image (quantizer.py): sum over positions and codes of q log q (the negative
  entropy; 'kld_discrete', a sum over the batch divided by the batch size) plus the sum over
  positions and channels of ||z - z~||^2 / (2 var_q) ('kld_continuous', batch mean);
- reconstruction (model.py, flags.arelbo = True by default in defaults.py): (D/2) log(SSE / B),
  D = pixels x channels, SSE summed over the batch of B images;
- temperature tau = max(exp(-1e-5 t), 0) (defaults.py: init 1.0, decay 1e-5, min 0.0): the
  trainer's schedule. The trainer's beta is not used: the objective has no KL weight
  (default_beta_max = 0).

Scale. The official loss is per image; the trainer's is per pixel value (MSE). Here every term is
the official one divided by the number of pixel values D per image: the latent terms are divided by
`pixels_per_image` (DiscreteVAE sets it to channels x image_size^2), and 'arelbo' becomes
(1/2) log(SSE / B). A constant factor on the whole objective leaves Adam's steps unchanged (up to its
eps), so the weighting between the terms is the official one. `reconstruction="mse"` instead uses the
trainer's per-pixel MSE (a Gaussian decoder of fixed variance 1/2 on this scale) with the same
latent terms: an option, not the official code (whose other choice learns the decoder variance).
"""

from __future__ import annotations

import math

import torch

from .base import check_option
from .gumbel_vq import GumbelVQQuantizer
from .softmax_kl import softmax_kl_uniform

RECONSTRUCTIONS = ("arelbo", "mse")


class SQQuantizer(GumbelVQQuantizer):
    name = "sq-vae"
    default_beta_max = 0.0  # beta is not used: SQ-VAE's latent terms carry no weight

    def __init__(self, codebook_size: int, codebook_dim: int,
                 eval_mode: str = "argmax",  # argmax: the official code's flg_quant_det
                 log_var_init: float = math.log(20.0),  # sony/sqvae cifar10_gauss_1.yaml
                 reconstruction: str = "arelbo"):  # sony/sqvae defaults.py: flags.arelbo = True
        super().__init__(codebook_size, codebook_dim, eval_mode)
        check_option("log_var_init", log_var_init, math.isfinite(log_var_init) and abs(log_var_init) <= 80,
                     "must be a finite number in [-80, 80]")
        check_option("reconstruction", reconstruction, reconstruction in RECONSTRUCTIONS,
                     f"must be one of {RECONSTRUCTIONS}")
        self.reconstruction = reconstruction
        # s of var_q = 1 + exp(s): a parameter, so it is trained and saved with the model
        self.log_var_q = torch.nn.Parameter(torch.tensor(float(log_var_init)))
        # pixel values per image (the per-image terms are divided by it); None: a bare quantizer,
        # whose latent terms stay per image. DiscreteVAE sets it through set_image_shape.
        self.pixels_per_image: int | None = None

    def set_image_shape(self, channels: int, height: int, width: int) -> None:
        self.pixels_per_image = channels * height * width

    def variance(self) -> torch.Tensor:
        """var_q = exp(0) + exp(s) >= 1, float32 scalar."""
        return 1.0 + self.log_var_q.float().exp()

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.distances(z) / (-2.0 * self.variance())

    def latent_loss(self, z: torch.Tensor, z_q: torch.Tensor, logits: torch.Tensor,
                    beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = z.shape[0]
        # per image, over codes and positions: sum q log q = KL(q || uniform) - log K
        kl = softmax_kl_uniform(logits, dim=1)
        neg_entropy = (kl - math.log(self.codebook_size)).sum() / batch
        distance = (z - z_q).pow(2).sum() / (2.0 * self.variance()) / batch  # per image
        loss = (neg_entropy + distance) / (self.pixels_per_image or 1)
        return loss, {"kl": loss.detach(), "neg_entropy": neg_entropy.detach(),
                      "distance": distance.detach(), "var_q": self.variance().detach()}

    def reconstruction_loss(self, x_hat: torch.Tensor, x: torch.Tensor,
                            mse: torch.Tensor | None = None) -> torch.Tensor:
        values = x[0].numel()
        if self.pixels_per_image is not None and values != self.pixels_per_image:
            raise ValueError(f"images of {values} values per image, but this SQ-VAE divides its "
                             f"latent terms by {self.pixels_per_image}")
        if self.reconstruction == "mse":
            return super().reconstruction_loss(x_hat, x, mse)
        sse = (x_hat.float() - x.float()).pow(2).sum()
        # (D/2) log(SSE / B) divided by D; the clamp only keeps a perfect reconstruction finite
        return 0.5 * torch.log((sse / x.shape[0]).clamp_min(1e-30))
