"""Data-parallel training (torchrun, gloo on CPU) computes what its definition says: each rank
trains on its slice of the global batch with its own noise, and the gradients are averaged."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from edvae.config import from_dict
from edvae.data import to_model_input
from edvae.engine import ddp
from edvae.engine.runtime import BatchOrder, step_seed
from edvae.errors import EdvaeError
from edvae.model import DiscreteVAE
from edvae.run_folder import load_splits
from edvae.schedules import Schedules

ARGS = ["--dataset", "synthetic", "--set", "train.limit_train=64", "--set", "train.limit_test=32",
        "--batch-size", "8", "--steps", "3", "--set", "model.width=4", "--set", "model.codebook_size=16",
        "--set", "model.codebook_dim=4", "--set", "train.threads=1", "--set", "train.log_every=2",
        "--no-progress", "--device", "cpu"]  # gloo on the CPU, whatever the machine has


def simulate(cfg, world: int) -> dict[str, torch.Tensor]:
    """One process doing by hand what `world` data-parallel processes do together."""
    t = cfg.train
    train_set, _ = load_splits(cfg, torch.device("cpu"))
    torch.manual_seed(t.seed)
    model = DiscreteVAE(cfg.model).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    sched = Schedules.from_train(t)
    order = BatchOrder(len(train_set), t.batch_size, t.seed)
    for step in range(t.steps):
        for g in opt.param_groups:
            g["lr"] = sched.lr_at(step)
        opt.zero_grad()
        for rank in range(world):
            torch.manual_seed(step_seed(t.seed, step, rank))
            x = train_set.batch(ddp.Group(rank, world).shard(order.indices(step)))
            x = to_model_input(x).contiguous(memory_format=torch.channels_last)
            x_hat, q = model(x, temperature=sched.temperature_at(step), beta=sched.beta_at(step))
            ((F.mse_loss(x_hat, x) + q.loss) / world).backward()
        opt.step()
    return {k: v.detach() for k, v in model.state_dict().items()}


def test_two_processes_average_the_gradients_of_their_shards(tmp_path):
    run = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", "edvae", "train", "--method", "edvae",
                           *ARGS, "--out", str(run)], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-8000:]  # a rank's own error precedes torchrun's
    assert proc.stdout.count('"perplexity"') == 1  # rank 0 alone reports
    steps = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 3]  # written once, by rank 0
    cfg = from_dict(json.loads((run / "config.json").read_text()))
    trained = load_file(str(run / "model.safetensors"))
    expected = simulate(cfg, world=2)
    for name, value in expected.items():
        torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6, msg=name)
    # and it is not what a single process would have trained
    single = simulate(cfg, world=1)
    assert not torch.allclose(single["encoder.net.0.weight"], expected["encoder.net.0.weight"])


def test_batch_not_divisible_by_processes_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "3", "-m", "edvae", "train", "--method", "dvae",
                           *ARGS, "--out", str(tmp_path / "r")], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode != 0
    assert "train.batch_size 8 is not divisible by the 3 processes" in proc.stderr


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(EdvaeError, match=r"process 1 of this machine has no CUDA device \(1 visible\)"):
        ddp.start(torch.device("cuda"), batch_size=8)
