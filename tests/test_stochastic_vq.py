import json
import math

import pytest
import torch

from edvae import checkpoint
from edvae.config import from_dict
from edvae.errors import EdvaeError
from edvae.model import DiscreteVAE
from edvae.quantizers import build_quantizer
from edvae.quantizers.base import gumbel_noise_like
from edvae.quantizers.gumbel_vq import GumbelVQQuantizer
from edvae.quantizers.sq import SQQuantizer
from edvae.train import train


def _with_codebook(q, rows):
    with torch.no_grad():
        q.codebook.copy_(torch.tensor(rows))
    return q


def _features(*points):
    """(B=1, D, 1, P) from P points of D values."""
    return torch.tensor(points).t().reshape(1, len(points[0]), 1, len(points))


# ---------------------------------------------------------------- GS-VQ


def test_gs_vq_logits_and_regulariser_by_hand():
    q = _with_codebook(GumbelVQQuantizer(2, 2), [[0.0, 0.0], [1.0, 0.0]]).eval()
    # position 1 at (1, 1): distances 2 and 1; position 2 at (0.5, 0): 0.25 and 0.25 (a tie)
    z = _features([1.0, 1.0], [0.5, 0.0])
    torch.testing.assert_close(q.logits(z).view(2, 2).t(), torch.tensor([[-2.0, -1.0], [-0.25, -0.25]]))
    q1 = 1 / (1 + math.e)  # softmax(-2, -1)[0]
    torch.testing.assert_close(q.probabilities(z).view(2, 2).t(),
                               torch.tensor([[q1, 1 - q1], [0.5, 0.5]]))
    kl1 = q1 * math.log(2 * q1) + (1 - q1) * math.log(2 * (1 - q1))
    torch.testing.assert_close(q.regulariser(q.logits(z)).view(2), torch.tensor([kl1, 0.0]))
    out = q(z, beta=0.3)
    assert out.loss.item() == pytest.approx(0.3 * kl1 / 2, rel=1e-6)  # mean over the 2 positions
    assert out.stats["kl"].item() == pytest.approx(kl1 / 2, rel=1e-6)
    assert out.indices[0, 0, 0].item() == 1  # the nearest codeword
    assert GumbelVQQuantizer.default_beta_max == 5e-6 and not GumbelVQQuantizer.logit_input


@pytest.mark.parametrize("cls", [GumbelVQQuantizer, SQQuantizer])
def test_training_sample_is_the_gumbel_softmax_mixture_of_codewords(cls):
    torch.manual_seed(0)
    q = cls(6, 3)
    z = torch.randn(2, 3, 2, 2)
    torch.manual_seed(1)
    out = q(z, temperature=0.5)
    torch.manual_seed(1)
    logits = q.logits(z)
    y = ((logits + gumbel_noise_like(logits)) / 0.5).softmax(1)
    torch.testing.assert_close(out.z_q, torch.einsum("bkhw,kd->bdhw", y, q.codebook))
    assert torch.equal(out.indices, y.argmax(1))
    assert not torch.allclose(out.z_q, q.embed(out.indices))  # soft: not a single codeword


@pytest.mark.parametrize("name", ["gs-vq", "sq-vae"])
def test_soft_sample_gradient_reaches_the_encoder_and_the_codebook(name):
    torch.manual_seed(0)
    q = build_quantizer(name, 8, 3)
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    out = q(z, temperature=1.0, beta=0.0)
    (out.z_q * torch.randn_like(out.z_q)).sum().backward()  # the decoder's path only, no regulariser
    assert z.grad.abs().sum() > 0 and torch.isfinite(z.grad).all()
    assert q.codebook.grad.abs().sum() > 0
    if name == "sq-vae":  # the logits depend on var_q
        assert q.log_var_q.grad.abs() > 0


@pytest.mark.parametrize("name", ["gs-vq", "sq-vae"])
def test_argmax_evaluation_is_deterministic_and_nearest(name):
    torch.manual_seed(0)
    q = build_quantizer(name, 16, 3).eval()
    z = torch.randn(2, 3, 4, 4)
    a, b = q(z), q(z)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.z_q, b.z_q)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    nearest = torch.cdist(flat, q.codebook).argmin(1).view(2, 4, 4)
    assert torch.equal(a.indices, nearest) and torch.equal(q.codes(z), nearest)
    torch.testing.assert_close(a.z_q, q.embed(nearest))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(q.sample_codes(z, generator=g1), q.sample_codes(z, generator=g2))


# ---------------------------------------------------------------- SQ-VAE


def _sq_case(**options):
    q = _with_codebook(SQQuantizer(2, 2, log_var_init=math.log(3.0), **options),
                       [[0.0, 0.0], [2.0, 0.0]])
    q.pixels_per_image = 12
    # batch of 2 images, one position each: (0.5, 1) and (2, 1)
    z = torch.tensor([[0.5, 1.0], [2.0, 1.0]]).view(2, 2, 1, 1)
    return q, z


def test_sq_vae_latent_terms_match_the_formula():
    q, z = _sq_case()
    var = 4.0  # 1 + exp(log 3)
    neg_entropy = distance = 0.0
    for point in ([0.5, 1.0], [2.0, 1.0]):
        d = [sum((p - c) ** 2 for p, c in zip(point, code, strict=True))
             for code in ([0.0, 0.0], [2.0, 0.0])]
        w = [math.exp(-di / (2 * var)) for di in d]
        probs = [wi / sum(w) for wi in w]
        neg_entropy += sum(p * math.log(p) for p in probs)
        distance += min(d) / (2 * var)  # evaluation: z~ is the nearest codeword
    neg_entropy, distance = neg_entropy / 2, distance / 2  # per image (batch of 2)
    q.eval()
    out = q(z, beta=123.0)  # beta is not used
    assert out.stats["var_q"].item() == pytest.approx(var)
    assert out.stats["neg_entropy"].item() == pytest.approx(neg_entropy, rel=1e-6)
    assert out.stats["distance"].item() == pytest.approx(distance, rel=1e-6)
    assert out.loss.item() == pytest.approx((neg_entropy + distance) / 12, rel=1e-6)
    torch.testing.assert_close(q.logits(z).view(2, 2)[0], torch.tensor([-1.25, -3.25]) / (2 * var))
    # training: the same entropy; the distance to the soft sample z~ that went to the decoder
    q.train()
    out = q(z, temperature=0.7)
    soft = float(((z - out.z_q.detach()) ** 2).sum()) / (2 * var) / 2
    assert out.stats["neg_entropy"].item() == pytest.approx(neg_entropy, rel=1e-6)
    assert out.loss.item() == pytest.approx((neg_entropy + soft) / 12, rel=1e-6)


@pytest.mark.parametrize("mode", ["arelbo", "mse"])
def test_sq_vae_reconstruction_term(mode):
    q, _ = _sq_case(reconstruction=mode)
    x = torch.zeros(2, 3, 2, 2)
    x_hat = torch.arange(24, dtype=torch.float32).view(2, 3, 2, 2) / 24
    sse = sum((i / 24) ** 2 for i in range(24))
    rec = q.reconstruction_loss(x_hat, x).item()
    if mode == "arelbo":
        # the official (D/2) log(SSE / B), D = 12 values per image, divided by D
        assert 12 * rec == pytest.approx(12 / 2 * math.log(sse / 2), rel=1e-6)
    else:
        assert rec == pytest.approx(sse / 24, rel=1e-6)
    with pytest.raises(ValueError, match="12"):
        q.reconstruction_loss(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 2))


def test_sq_vae_variance_is_at_least_one_and_starts_at_the_official_init():
    q = SQQuantizer(4, 2)
    assert q.log_var_q.item() == pytest.approx(math.log(20.0))
    assert q.variance().item() == pytest.approx(21.0)
    assert SQQuantizer(4, 2, log_var_init=math.log(5.0)).variance().item() == pytest.approx(6.0)
    low = SQQuantizer(4, 2, log_var_init=-80.0).variance()
    assert low.item() >= 1.0 and low.item() == pytest.approx(1.0)
    assert SQQuantizer.default_beta_max == 0.0 and not SQQuantizer.logit_input


@pytest.mark.parametrize("name, options, key", [
    ("gs-vq", {"eval_mode": "soft"}, "eval_mode"),
    ("sq-vae", {"eval_mode": "soft"}, "eval_mode"),
    ("sq-vae", {"reconstruction": "l1"}, "reconstruction"),
    ("sq-vae", {"log_var_init": float("nan")}, "log_var_init"),
])
def test_bad_options_name_the_option(name, options, key):
    with pytest.raises(ValueError, match=key):
        build_quantizer(name, 8, 2, **options)


def test_unknown_option_in_a_config_is_a_clear_error():
    with pytest.raises(EdvaeError, match=r"model\.options\.beta_c for method sq-vae"):
        from_dict({"model": {"method": "sq-vae", "options": {"beta_c": 0.25}}})


# ---------------------------------------------------------------- in a DiscreteVAE


@pytest.mark.parametrize("method, architecture", [("gs-vq", "dalle"), ("sq-vae", "dalle"),
                                                  ("gs-vq", "vqvae"), ("sq-vae", "vqvae")])
def test_two_training_steps_then_save_load_gives_identical_codes(tmp_path, method, architecture):
    torch.manual_seed(0)
    cfg = from_dict({"model": {"method": method, "architecture": architecture, "channels": 1,
                               "width": 4, "codebook_size": 16, "codebook_dim": 4}})
    model = DiscreteVAE(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.rand(4, 1, 32, 32) - 0.5
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        x_hat, out = model(x, temperature=0.9, beta=1e-3)
        loss = model.quantizer.reconstruction_loss(x_hat, x) + out.loss
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    assert not torch.equal(before["quantizer.codebook"], after["quantizer.codebook"])
    if method == "sq-vae":
        assert model.quantizer.pixels_per_image == 32 * 32
        assert not torch.equal(before["quantizer.log_var_q"], after["quantizer.log_var_q"])
    model.eval()
    checkpoint.save_model(tmp_path / checkpoint.MODEL_FILE, model, cfg.to_dict())
    loaded = DiscreteVAE.load(tmp_path)
    assert loaded.config.architecture == architecture
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    codes = model.encode(images)
    assert codes.shape == (3, 8, 8)
    assert torch.equal(codes, loaded.encode(images))
    assert torch.equal(model.decode(codes), loaded.decode(codes))
    if method == "sq-vae":
        assert torch.equal(loaded.quantizer.log_var_q, model.quantizer.log_var_q)
        assert loaded.quantizer.pixels_per_image == 32 * 32


def test_trainer_uses_sq_vae_reconstruction_term_and_evaluates_its_probabilities(tmp_path):
    cfg = from_dict({
        "model": {"method": "sq-vae", "architecture": "vqvae", "width": 4, "codebook_size": 16,
                  "codebook_dim": 4},
        "train": {"dataset": "synthetic", "limit_train": 16, "limit_test": 8, "steps": 2,
                  "batch_size": 8, "log_every": 1, "eval_batch_size": 8, "threads": 1}})
    result = train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    model_cfg = json.loads((tmp_path / "run" / checkpoint.CONFIG_FILE).read_text())["model"]
    values = model_cfg["channels"] * model_cfg["image_size"] ** 2  # fitted to the data by the trainer
    for r in rows:  # loss = (1/2) log(SSE / B) + latent terms, with SSE / B = mse x values
        assert r["loss"] == pytest.approx(0.5 * math.log(r["mse"] * values) + r["kl"], rel=1e-5)
    assert result["entropy_mean"] is not None and 0 <= result["entropy_mean"] <= math.log(16)
    assert "mse_sampled" in result and result["n_images"] == 8


@pytest.mark.parametrize("name", ["gs-vq", "sq-vae"])
def test_numerics_stay_float32_under_bf16_autocast(name):
    torch.manual_seed(0)
    q = build_quantizer(name, 8, 3)
    z = torch.randn(2, 3, 2, 2).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z, temperature=0.5, beta=0.1)
        p = q.probabilities(z)
    assert out.z_q.dtype == out.loss.dtype == p.dtype == torch.float32
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(p.sum(1), torch.ones(2, 2, 2))
