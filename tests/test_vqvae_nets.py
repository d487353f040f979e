import pytest
import torch

from edvae.config import ModelConfig, from_dict
from edvae.errors import EdvaeError
from edvae.model import DiscreteVAE
from edvae.nets.vqvae import ResidualStack, VqvaeDecoder, VqvaeEncoder


@pytest.mark.parametrize("channels, size", [(1, 32), (3, 16)])
def test_vqvae_networks_shapes_and_downsample_factor(channels, size):
    enc = VqvaeEncoder(channels, 5, width=8, residual_hidden=3, residual_layers=2)
    dec = VqvaeDecoder(5, channels, width=8, residual_hidden=3, residual_layers=2)
    assert enc.downsample == 4
    z = enc(torch.randn(2, channels, size, size))
    assert z.shape == (2, 5, size // 4, size // 4)
    assert dec(z).shape == (2, channels, size, size)


def test_vqvae_layout_follows_the_sonnet_example():
    enc = VqvaeEncoder(3, 16)  # defaults: 128 hidden, 32 residual hidden, 2 residual layers
    convs = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d)]
    # 4x4/2 (3 -> 64), 4x4/2 (64 -> 128), 3x3 (128), 2 x [3x3 (128 -> 32), 1x1 (32 -> 128)], 1x1 pre-VQ
    shapes = [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs]
    assert shapes == [(3, 64, (4, 4), (2, 2)), (64, 128, (4, 4), (2, 2)), (128, 128, (3, 3), (1, 1)),
                      (128, 32, (3, 3), (1, 1)), (32, 128, (1, 1), (1, 1)),
                      (128, 32, (3, 3), (1, 1)), (32, 128, (1, 1), (1, 1)),
                      (128, 16, (1, 1), (1, 1))]
    dec = VqvaeDecoder(16, 3)
    ups = [m for m in dec.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(u.in_channels, u.out_channels, u.stride) for u in ups] == [(128, 64, (2, 2)), (64, 3, (2, 2))]


def test_residual_stack_adds_its_blocks_then_applies_relu():
    torch.manual_seed(0)
    stack = ResidualStack(4, 2, 1)
    x = torch.randn(1, 4, 3, 3)
    expected = torch.relu(x + stack.blocks[0](x))
    torch.testing.assert_close(stack(x), expected)
    assert torch.equal(ResidualStack(4, 2, 0)(x), torch.relu(x))  # no layers: just the final ReLU


def test_vqvae_width_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="width"):
        VqvaeEncoder(3, 4, width=1)


@pytest.mark.parametrize("method, in_channels", [("gs-vq", 4), ("edvae", 32)])
def test_discrete_vae_picks_the_vqvae_nets(method, in_channels):
    cfg = from_dict({"model": {"method": method, "architecture": "vqvae", "channels": 3, "width": 8,
                               "codebook_size": 32, "codebook_dim": 4}})
    model = DiscreteVAE(cfg.model).eval()
    assert isinstance(model.encoder, VqvaeEncoder) and isinstance(model.decoder, VqvaeDecoder)
    # input channels = the quantizer's (D for distance quantizers, K for logit ones); hidden = width;
    # residual hidden = width x hidden_ratio (0.25)
    assert model.encoder.net[-1].out_channels == in_channels
    assert model.encoder.net[2].out_channels == 8
    assert model.encoder.net[6].blocks[0][1].out_channels == 2
    codes = model.encode(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    assert codes.shape == (2, 8, 8) == (2, model.latent_size, model.latent_size)
    assert model.decode(codes).shape == (2, 3, 32, 32)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(EdvaeError, match=r"model\.architecture.*'resnet'"):
        from_dict({"model": {"architecture": "resnet"}})
    with pytest.raises(EdvaeError, match=r"model\.architecture.*'resnet'"):
        DiscreteVAE(ModelConfig(architecture="resnet", width=4, codebook_size=8, codebook_dim=2))
    assert from_dict({}).model.architecture == "dalle"
