import pytest
import torch
from roundtrip import assert_round_trip

from edvae.config import ModelConfig, from_dict
from edvae.errors import EdvaeError
from edvae.model import DiscreteVAE
from edvae.nets.dalle import DalleDecoder, DalleEncoder


@pytest.mark.parametrize("channels, size, kw", [(1, 32, 3), (3, 64, 7)])
def test_paper_networks_shapes(channels, size, kw):
    enc = DalleEncoder(channels, 512, width=8, first_kernel=kw)
    dec = DalleDecoder(16, channels, width=8)
    z = enc(torch.zeros(2, channels, size, size))
    assert z.shape == (2, 512, size // 4, size // 4)
    assert dec(torch.zeros(2, 16, size // 4, size // 4)).shape == (2, channels, size, size)
    # DALL-E blocks: 6 blocks, residual gain 1/36; hidden width out/4 by default
    blocks = [m for m in enc.modules() if hasattr(m, "gain")]
    assert len(blocks) == 6 and all(b.gain == pytest.approx(1 / 36) for b in blocks)
    assert blocks[0].res_path[1].out_channels == 2
    assert DalleEncoder(1, 16, width=8, hidden_ratio=1.0).net[1].res_path[1].out_channels == 8


@pytest.mark.parametrize("method", ["edvae", "dvae", "gs-vq", "sq-vae", "vq-ema", "vq-ste++", "gm-vq"])
def test_save_load_round_trip_gives_identical_codes(tmp_path, method):
    torch.manual_seed(0)
    cfg = from_dict({"model": {"method": method, "channels": 1, "width": 4, "codebook_size": 32,
                               "codebook_dim": 4}})
    assert_round_trip(tmp_path, DiscreteVAE(cfg.model), cfg)


def test_tokenizer_rejects_wrong_shapes_and_codes():
    model = DiscreteVAE(ModelConfig(channels=1, width=4, codebook_size=16, codebook_dim=2)).eval()
    with pytest.raises(EdvaeError, match=r"\(2, 3, 32, 32\) do not fit.*\(N, 1, 32, 32\)"):
        model.encode(torch.zeros(2, 3, 32, 32))
    with pytest.raises(EdvaeError, match="do not fit"):
        model.encode(torch.zeros(2, 1, 28, 28))
    with pytest.raises(EdvaeError, match=r"codes must lie in \[0, 15\]"):
        model.decode(torch.full((1, 8, 8), 16))
    with pytest.raises(EdvaeError, match=r"\(N, 8, 8\)"):
        model.decode(torch.zeros(1, 4, 4, dtype=torch.int64))


def test_loading_a_corrupt_or_foreign_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EdvaeError, match="not a readable safetensors file"):
        DiscreteVAE.load(tmp_path)
    with pytest.raises(EdvaeError, match="checkpoint not found"):
        DiscreteVAE.load(tmp_path / "missing")
