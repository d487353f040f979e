"""The save/load round trip of a tokenizer, shared by test_model.py and test_modern_quantizers.py."""

import torch

from edvae import checkpoint
from edvae.model import DiscreteVAE


def assert_round_trip(tmp_path, model: DiscreteVAE, config) -> None:
    """Save `model` (1 x 32 x 32 images, 8 x 8 codes) with `config`, load it back, and check on
    random images: the same int64 codes and decoded images from both, uint8 and float images read
    alike, and the loaded model's own evaluation forward pass reading those codes and decoding them
    as `decode` does."""
    model.eval()
    checkpoint.save_model(tmp_path / checkpoint.MODEL_FILE, model, config.to_dict())
    loaded = DiscreteVAE.load(tmp_path)
    images = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)
    codes = model.encode(images)
    assert codes.shape == (5, 8, 8) and codes.dtype == torch.int64
    assert torch.equal(codes, loaded.encode(images))
    assert torch.equal(model.decode(codes), loaded.decode(codes))
    floats = images.float() / 255 - 0.5
    assert torch.equal(loaded.encode(images), loaded.encode(floats))
    with torch.no_grad():
        x_hat, out = loaded(floats)
    assert torch.equal(out.indices, codes) and torch.equal(x_hat, loaded.decode(codes))
