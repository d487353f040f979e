"""The learned prior over code maps: PixelSNAIL (Chen et al. 2018), as the EdVAE paper fits for its
FID table (Section 5.2.5).

- pixelsnail.py: the model;
- codes.py: encoding a run's splits once, cached;
- train_prior.py: the fit, exactly resumable, with the test bits per code and its baselines;
- sample.py: ancestral sampling with temperature and top-k, decoded to PNGs.
"""

from .pixelsnail import PRESETS, PixelSNAIL, PixelSNAILConfig, preset_for

__all__ = ["PRESETS", "PixelSNAIL", "PixelSNAILConfig", "preset_for"]
