"""The CUDA paths: skipped where torch sees no CUDA device (as on CI), run on a machine that has one."""

import json
from pathlib import Path

import pytest
import torch

from edvae.cli import main
from edvae.config import ModelConfig
from edvae.model import DiscreteVAE
from edvae.quantizers import QUANTIZERS
from edvae.quantizers.dirichlet_kl import dirichlet_kl_uniform

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

SMALL = dict(channels=1, width=8, codebook_size=64, codebook_dim=8)


def small_model(method: str, device: str) -> DiscreteVAE:
    torch.manual_seed(0)
    return DiscreteVAE(ModelConfig(method=method, **SMALL)).to(device)


def train_step(model, opt, x, beta=5e-5):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        x_hat, q = model(x, temperature=0.9, beta=beta)
    loss = model.quantizer.reconstruction_loss(x_hat, x) + q.loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("method", sorted(QUANTIZERS))
def test_a_training_step_between_logs_never_waits_for_the_gpu(method):
    """Between logged steps the host never synchronizes with the device (no .item(), nonzero, ...),
    so the CPU can queue steps ahead of the GPU."""
    model = small_model(method, "cuda").train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x = torch.rand(16, 1, 32, 32, device="cuda") - 0.5
    train_step(model, opt, x)  # the first step may initialise state (K-means codebooks)
    model.quantizer.reporting = False
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            loss = train_step(model, opt, x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(loss)


@pytest.mark.parametrize("method", ["edvae", "dvae"])
def test_cpu_and_cuda_compute_the_same_model_in_fp32(method):
    cpu, gpu = small_model(method, "cpu").eval(), small_model(method, "cuda").eval()
    images = torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # full float32 on the GPU too
    try:
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            logits_cpu = cpu.encoder(images.float() / 255 - 0.5)
            logits_gpu = gpu.encoder(images.cuda().float() / 255 - 0.5)
            codes = cpu.encode(images)
            decoded_cpu, decoded_gpu = cpu.decode(codes), gpu.decode(codes.cuda())
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.testing.assert_close(logits_gpu.cpu(), logits_cpu, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(decoded_gpu.cpu(), decoded_cpu, rtol=1e-4, atol=1e-4)
    # argmax codes agree except where two logits are within rounding of each other
    agree = (gpu.encode(images.cuda()).cpu() == codes).float().mean()
    assert agree > 0.99


def test_dirichlet_kl_on_cuda_matches_cpu_up_to_the_clamp():
    g = torch.Generator().manual_seed(0)
    logits = torch.cat([torch.linspace(-30, 20, 4096).view(8, 512, 1, 1),
                        (torch.randn(8, 512, 1, 1, generator=g) * 3).clamp(max=20)])
    torch.testing.assert_close(dirichlet_kl_uniform(logits.cuda(), dim=1).cpu(),
                               dirichlet_kl_uniform(logits, dim=1), rtol=1e-5, atol=1e-5)


def test_bf16_training_on_cuda_learns_fashion_mnist(tmp_path, capsys):
    """As the CPU test of a short Fashion-MNIST run (tests/test_training.py), on the GPU under bf16:
    from the Debian folder where it is installed, else the subset shipped inside the package."""
    run = tmp_path / "run"
    config = Path(__file__).parents[1] / "configs" / "fashion-mnist-cpu.yaml"
    assert main(["train", "--config", str(config), "--method", "edvae", "--steps", "300", "--width", "8",
                 "--device", "cuda", "--no-progress", "--out", str(run), "--set", "train.precision=bf16",
                 "--set", "train.eval_every=0", "--set", "train.limit_test=512",
                 "--set", "train.log_every=25"]) == 0
    capsys.readouterr()
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["mse"], sum(r["mse"] for r in rows[-3:]) / 3
    assert last < 0.5 * first, (first, last)
    result = json.loads((run / "eval.json").read_text())
    assert result["mse"] < 0.07 and result["used_codes"] >= 2 and result["perplexity"] > 1.2, result
    assert main(["eval", str(run), "--json", "--device", "cuda"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["used_codes"] == result["used_codes"]
    for key in ("mse", "perplexity", "entropy_mean", "uncertainty_mean"):
        assert again[key] == pytest.approx(result[key], rel=1e-5), key


def test_a_run_trained_on_cuda_evaluates_the_same_on_the_cpu(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--method", "edvae", "--dataset", "synthetic", "--steps", "40", "--batch-size", "16",
            "--device", "cuda", "--no-progress", "--out", str(run),
            "--set", "train.limit_train=256", "--set", "train.limit_test=64",
            "--set", "model.width=4", "--set", "model.codebook_size=32", "--set", "model.codebook_dim=4"]
    assert main(args) == 0
    capsys.readouterr()
    on_cuda = json.loads((run / "eval.json").read_text())
    assert main(["eval", str(run), "--json", "--device", "cpu"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    assert on_cpu["used_codes"] == pytest.approx(on_cuda["used_codes"], abs=1)
    assert on_cpu["mse"] == pytest.approx(on_cuda["mse"], rel=1e-2)
    assert on_cpu["perplexity"] == pytest.approx(on_cuda["perplexity"], rel=5e-2)
