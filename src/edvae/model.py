"""DiscreteVAE = encoder + quantizer + decoder, and its tokenizer API (encode / decode / load)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from . import checkpoint
from .config import ARCHITECTURES, ModelConfig, from_dict
from .errors import EdvaeError
from .nets.dalle import DalleDecoder, DalleEncoder
from .nets.vqvae import VqvaeDecoder, VqvaeEncoder
from .quantizers import QuantizerOutput, build_quantizer


class DiscreteVAE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.quantizer = build_quantizer(config.method, config.codebook_size, config.codebook_dim,
                                         eval_mode=config.eval_mode, **config.options)
        if config.architecture == "dalle":
            # the logit methods' K logits in float32 under autocast (nets/dalle.py)
            self.encoder = DalleEncoder(config.channels, self.quantizer.input_channels, config.width,
                                        config.first_kernel, config.hidden_ratio, config.init_std,
                                        float32_logits=config.float32_logits and self.quantizer.logit_input)
            self.decoder = DalleDecoder(config.codebook_dim, config.channels, config.width,
                                        config.hidden_ratio, config.init_std)
        elif config.architecture == "vqvae":
            # residual hidden = width x hidden_ratio: 128 x 0.25 = 32, the sonnet example's value
            res_hidden = max(1, round(config.width * config.hidden_ratio))
            self.encoder = VqvaeEncoder(config.channels, self.quantizer.input_channels, config.width,
                                        res_hidden)
            self.decoder = VqvaeDecoder(config.codebook_dim, config.channels, config.width, res_hidden)
        else:
            raise EdvaeError(f"config key model.architecture must be one of {ARCHITECTURES}, "
                             f"got {config.architecture!r}")
        self.quantizer.set_image_shape(config.channels, config.image_size, config.image_size)

    @property
    def latent_size(self) -> int:
        return self.config.image_size // self.encoder.downsample

    def forward(self, x: torch.Tensor, temperature: float = 1.0,
                beta: float = 0.0) -> tuple[torch.Tensor, QuantizerOutput]:
        out = self.quantizer(self.encoder(x), temperature=temperature, beta=beta)
        return self.decoder(out.z_q.to(x.dtype)), out

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        c, s = self.config.channels, self.config.image_size
        if images.dim() != 4 or images.shape[1] != c or images.shape[2] != s or images.shape[3] != s:
            raise EdvaeError(f"images of shape {tuple(images.shape)} do not fit this model, "
                             f"which takes (N, {c}, {s}, {s})")
        if images.dtype == torch.uint8:
            images = images.float() / 255.0 - 0.5
        return images.to(self.device, torch.float32)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W), uint8 or float in [-0.5, 0.5] -> codes (N, h, w) int64."""
        return self.quantizer.codes(self.encoder(self._check_images(images)))

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes (N, h, w) -> images (N, C, H, W) float in about [-0.5, 0.5]."""
        k, h = self.config.codebook_size, self.latent_size
        if indices.dim() != 3 or indices.shape[1:] != (h, h):
            raise EdvaeError(f"codes of shape {tuple(indices.shape)} do not fit this model, "
                             f"which takes (N, {h}, {h})")
        indices = indices.to(self.device, torch.int64)
        lo, hi = (int(indices.min()), int(indices.max())) if indices.numel() else (0, 0)
        if lo < 0 or hi >= k:
            raise EdvaeError(f"codes must lie in [0, {k - 1}], got {lo}..{hi}")
        return self.decoder(self.quantizer.embed(indices))

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(images))

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> DiscreteVAE:
        """Load the trained model of a run folder (or a model.safetensors file)."""
        path = Path(run_dir)
        if path.is_dir():
            path = path / checkpoint.MODEL_FILE
        tensors, config = checkpoint.load_model_tensors(path)
        model = cls(from_dict(config).model)
        checkpoint.load_into(model, tensors, f"{path} does not fit its own config")
        return model.to(device).eval()
