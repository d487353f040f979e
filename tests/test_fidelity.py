"""Fidelity to the authors' code: the batch perplexity over full batches only, and the logit
methods' logits computed in float32 under bf16 autocast (the learning-rate schedule is tested in
test_schedules.py and test_configs_shipped.py)."""

import math

import pytest
import torch
import torch.nn.functional as F

from edvae.config import ModelConfig
from edvae.data.synthetic import load_synthetic
from edvae.evaluate import evaluate
from edvae.metrics import code_counts, perplexity
from edvae.model import DiscreteVAE
from edvae.nets.dalle import Float32Conv2d


def small_model(method: str = "edvae", **extra) -> DiscreteVAE:
    torch.manual_seed(0)
    cfg = ModelConfig(method=method, channels=1, image_size=16, codebook_size=16, codebook_dim=4, width=4,
                      init_std=0.3, **extra)
    return DiscreteVAE(cfg).eval()


def test_batch_perplexity_averages_the_full_batches_only():
    """20 images in batches of 8: the batches 0-7 and 8-15 count, the last 4 images do not (the
    authors' loader drops them); the dataset-level perplexity still covers all 20."""
    model, data = small_model(), load_synthetic("test", size=16, n=20)
    result = evaluate(model, data, batch_size=8, sampled=False)
    codes = model.encode(data.batch(torch.arange(20)))
    per_batch = [perplexity(code_counts(codes[a:b], 16)) for a, b in ((0, 8), (8, 16), (16, 20))]
    assert result["batch_perplexity"] == pytest.approx((per_batch[0] + per_batch[1]) / 2, rel=1e-9)
    assert sum(per_batch) / 3 != pytest.approx(result["batch_perplexity"], rel=1e-6)  # the test can tell
    assert result["perplexity"] == pytest.approx(perplexity(code_counts(codes, 16)), rel=1e-9)


def test_batch_perplexity_is_none_below_one_full_batch():
    model = small_model()
    assert evaluate(model, load_synthetic("test", size=16, n=7), batch_size=8)["batch_perplexity"] is None
    full = evaluate(model, load_synthetic("test", size=16, n=16), batch_size=8, sampled=True)
    assert full["batch_perplexity"] is not None and full["batch_perplexity_sampled"] is not None


@pytest.mark.parametrize("method", ["edvae", "dvae"])
def test_logits_are_float32_under_bf16_autocast_and_equal_a_float32_last_layer(method):
    model = small_model(method)
    head = model.encoder.net[-1]
    assert isinstance(head, Float32Conv2d)
    x = torch.rand(3, 1, 16, 16) - 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model.encoder(x)
        features = model.encoder.net[:-1](x)  # everything before the last 1x1 convolution, in bf16
    assert features.dtype == torch.bfloat16 and logits.dtype == torch.float32
    expected = F.conv2d(features.float(), head.weight, head.bias)  # the last layer in float32
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)
    # what autocast alone computes: the same layer rounded to bf16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = F.conv2d(features, head.weight, head.bias)
    assert rounded.dtype == torch.bfloat16 and not torch.equal(rounded.float(), expected)


def test_codebook_methods_and_the_pinned_protocols_keep_a_plain_last_layer():
    for model in (small_model("vq-ema"), small_model("edvae", float32_logits=False)):
        assert type(model.encoder.net[-1]) is torch.nn.Conv2d
    # the same parameters either way: model files load into both
    plain = small_model("edvae", float32_logits=False)
    assert small_model("edvae").state_dict().keys() == plain.state_dict().keys()


def test_without_autocast_the_float32_head_computes_what_the_plain_one_does():
    """fp32 runs (CPU protocol A, evaluation) are unchanged by the option, bit for bit."""
    a, b = small_model("edvae"), small_model("edvae", float32_logits=False)
    b.load_state_dict(a.state_dict())
    x = torch.rand(2, 1, 16, 16) - 0.5
    assert torch.equal(a.encoder(x), b.encoder(x))


def test_bf16_rounding_of_logits_costs_up_to_3_and_6_percent_of_the_evidence():
    """The reason for the float32 head (nets/dalle.py): bf16 spacing is 0.0625 on [8, 16) and 0.125
    on [16, 32); round-to-nearest errs by half of it, exp(0.03125) - 1 = 3.2%, exp(0.0625) - 1 = 6.4%."""
    for lo, hi, bound in ((8.0, 16.0, 0.0625 / 2), (16.0, 32.0, 0.125 / 2)):
        z = torch.linspace(lo, hi - 1e-3, 100_001, dtype=torch.float64)
        err = ((z.to(torch.bfloat16).double() - z).abs()).max().item()
        assert err == pytest.approx(bound, rel=1e-3)
        assert math.expm1(err) == pytest.approx(math.expm1(bound), rel=1e-3)
