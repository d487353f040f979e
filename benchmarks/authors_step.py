"""The reference of benchmarks/throughput.py: a training step that follows the EdVAE authors' code
path step by step (github.com/ituvisionlab/EdVAE; written here from a reading of it, not copied),
with edvae's encoder and decoder at the same sizes.

Baykal, Kandemir, Unal, "EdVAE: Mitigating codebook collapse with evidential discrete variational
autoencoders", Pattern Recognition 2024 (arXiv 2310.05718). What the authors' step does, and this one:
- data: a DataLoader over the images kept as uint8 (H, W, C) arrays, each image made a PIL image and
  converted on its own (ToTensor: (C, H, W) float / 255, then x - 0.5), batches collated by the
  DataLoader (shuffle, drop_last). The authors' loader has 4 workers and pins memory for the GPU;
  here it runs in the main process (`workers`, default 0): on a CPU the workers would compete with
  the step for the same cores;
- float32 throughout, the default (NCHW) memory layout;
- EdVAE (DirichletQuantizer): alpha = exp(clamp(logits, max=20)) + 1, permuted to (B, h, w, K) and
  made contiguous; a torch.distributions Dirichlet(alpha) posterior; pi = alpha / sum(alpha); a
  RelaxedOneHotCategorical(temperature, probs=pi) sample (rsample), permuted back to (B, K, h, w);
  the argmax indices; z_q = einsum('bnhw,nd->bdhw', weights, codebook); the KL to a Dirichlet(1)
  prior built every step (kl_divergence, then the mean, times the KL weight); the perplexity of the
  batch from the flattened sample, every step;
- dVAE (GumbelQuantizer): F.gumbel_softmax(logits, tau, hard=False, dim=1), the argmax indices,
  the same einsum, the KL to the uniform prior as sum_k p_k log(K p_k + 1e-10) with p = softmax,
  the perplexity from one-hot encodings of the indices, every step;
- the loss mean((x_hat - x)^2) + KL; Adam; the temperature exp(-1e-5 t), the KL weight's cosine ramp
  and the learning rate's cosine annealing set before each step as Python floats (the authors'
  Lightning callbacks), no per-step reseeding.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.distributions import Dirichlet, RelaxedOneHotCategorical, kl_divergence
from torch.utils.data import DataLoader, Dataset

from edvae.config import ModelConfig
from edvae.nets.dalle import DalleDecoder, DalleEncoder

METHODS = ("edvae", "dvae")  # the two quantizers of the authors' code


class PerImageSet(Dataset):
    """uint8 (N, H, W, C) images, each converted on its own as torchvision's CIFAR10 + ToTensor do."""

    def __init__(self, images_hwc: np.ndarray):
        self.images = images_hwc

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i])  # as the dataset hands a PIL image to the transform
        x = torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).contiguous()
        return x.float().div(255.0) - 0.5, 0


def _perplexity(encodings: torch.Tensor) -> torch.Tensor:
    avg = encodings.mean(0)
    return (-(avg * torch.log(avg + 1e-10)).sum()).exp()


class AuthorsQuantizer(nn.Module):
    def __init__(self, method: str, k: int, d: int, clamp_max: float = 20.0):
        super().__init__()
        self.method, self.k, self.clamp_max = method, k, clamp_max
        self.codebook = nn.Embedding(k, d)  # N(0, 1), the authors' "normal" init
        self.temp, self.kl_weight = 1.0, 0.0  # set before each step, as the callbacks do

    def forward(self, logits: torch.Tensor):
        if self.method == "edvae":
            alpha = (torch.exp(logits.clamp(min=float("-inf"), max=self.clamp_max)) + 1)
            alpha = alpha.permute(0, 2, 3, 1).contiguous()
            posterior = Dirichlet(alpha)
            probs = alpha / alpha.sum(-1, keepdim=True)
            sample = RelaxedOneHotCategorical(temperature=self.temp, probs=probs).rsample()
            weights = sample.permute(0, 3, 1, 2)
            indices = weights.argmax(dim=1)
            encodings = sample.reshape(-1, self.k)
            prior = Dirichlet(torch.ones(alpha.shape, device=alpha.device))
            kl = self.kl_weight * kl_divergence(posterior, prior).mean()
        else:
            weights = F.gumbel_softmax(logits, tau=self.temp, hard=False, dim=1)
            indices = weights.argmax(dim=1)
            p = F.softmax(logits, dim=1)
            kl = self.kl_weight * torch.sum(p * torch.log(p * self.k + 1e-10), dim=1).mean()
            encodings = F.one_hot(indices, self.k).float().reshape(-1, self.k)
        z_q = torch.einsum("bnhw,nd->bdhw", weights, self.codebook.weight)
        return z_q, kl, indices, _perplexity(encodings)


class AuthorsModel(nn.Module):
    def __init__(self, m: ModelConfig):
        super().__init__()
        self.encoder = DalleEncoder(m.channels, m.codebook_size, m.width, m.first_kernel, m.hidden_ratio,
                                    m.init_std)
        self.quantizer = AuthorsQuantizer(m.method, m.codebook_size, m.codebook_dim)
        self.decoder = DalleDecoder(m.codebook_dim, m.channels, m.width, m.hidden_ratio, m.init_std)

    def forward(self, img: torch.Tensor):
        z_q, kl, indices, perplexity = self.quantizer(self.encoder(img))
        return self.decoder(z_q), kl, indices, perplexity


def _cos_anneal(t0: float, t1: float, v0: float, v1: float, t: float) -> float:
    """v0 at t0 to v1 at t1 along a quarter cosine (the authors' schedule helper)."""
    a = 1.0 - math.cos(min(max((t - t0) / (t1 - t0), 0.0), 1.0) * math.pi / 2)
    return a * v1 + (1.0 - a) * v0


class AuthorsStep:
    """One training step of the authors' path per call: next batch, schedules, forward, loss,
    backward, Adam."""

    def __init__(self, m: ModelConfig, images_hwc: np.ndarray, batch_size: int, device: torch.device,
                 kl_weight: float, lr: float = 1e-3, seed: int = 0, workers: int = 0):
        torch.manual_seed(seed)
        self.model = AuthorsModel(m).to(device).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.loader = DataLoader(PerImageSet(images_hwc), batch_size=batch_size, shuffle=True,
                                 drop_last=True, num_workers=workers, pin_memory=device.type == "cuda")
        self.device, self.kl_weight, self.lr = device, kl_weight, lr
        self._batches = iter(self.loader)

    def _next(self) -> torch.Tensor:
        try:
            img, _ = next(self._batches)
        except StopIteration:
            self._batches = iter(self.loader)
            img, _ = next(self._batches)
        return img.to(self.device, non_blocking=True)

    def __call__(self, step: int) -> torch.Tensor:
        q = self.model.quantizer
        q.temp = math.exp(-0.00001 * step)
        q.kl_weight = _cos_anneal(0, 5000, 0.0, self.kl_weight, step)
        for g in self.optimizer.param_groups:
            g["lr"] = _cos_anneal(0, 50000, self.lr, 1.25e-6, step)
        img = self._next()
        reconst, kl, _, _ = self.model(img)
        loss = torch.mean((reconst - img) ** 2) + kl
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.detach()
