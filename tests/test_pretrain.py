"""Pretrain-then-quantize (train.pretrain_steps): the quantizers' init_codebook hook, the pretraining
phase leaving the codebook alone, the K-means switch, exact resume on both sides of it, the config
checks, and data-parallel pretraining."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from edvae import checkpoint
from edvae.cli import build_config, parser
from edvae.config import from_dict
from edvae.data import to_model_input
from edvae.engine import ddp
from edvae.engine.runtime import BatchOrder, step_seed
from edvae.errors import EdvaeError
from edvae.model import DiscreteVAE
from edvae.quantizers import build_quantizer
from edvae.quantizers.kmeans import INIT_BATCHES, INIT_ITERS, kmeans
from edvae.quantizers.nearest import flatten
from edvae.run_folder import load_splits
from edvae.schedules import Schedules
from edvae.train import train

CODEBOOK_METHODS = ["vq-ema", "vq-ste++", "gs-vq", "sq-vae"]


# ------------------------------------------------------------------ the quantizers' hook


@pytest.mark.parametrize("name", CODEBOOK_METHODS)
def test_init_codebook_sets_the_codewords_the_quantizer_uses(name):
    torch.manual_seed(0)
    q = build_quantizer(name, 4, 2)
    q.train()
    q(torch.randn(2, 2, 3, 3))  # some state first (EMA statistics, K-means done, dead-code counters)
    if name == "vq-ste++":
        with torch.no_grad():  # a non-identity affine map: init_codebook must invert it
            q.affine_scale.fill_(0.05)
            q.affine_shift.fill_(-0.02)
    vectors = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, -3.0], [5.0, 5.0]])
    q.init_codebook(vectors)
    points = vectors.t().reshape(1, 2, 1, 4)  # the vectors themselves as a 1 x 4 latent map
    assert q.codes(points).view(-1).tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(q.embed(torch.arange(4).view(1, 1, 4)), points, rtol=1e-6, atol=1e-6)
    if name == "vq-ema":  # the moving averages restart as at construction
        assert q.ema_count.abs().sum() == 0 and q.ema_sum.abs().sum() == 0 and int(q.ema_steps) == 0
    if name == "vq-ste++":
        assert int(q.kmeans_done) == 1 and int(q.unused_steps.abs().sum()) == 0
    with pytest.raises(ValueError, match=r"expects \(4, 2\) vectors"):
        q.init_codebook(torch.zeros(3, 2))


def test_vq_ste_does_not_redo_its_own_kmeans_after_init_codebook():
    torch.manual_seed(0)
    q = build_quantizer("vq-ste++", 4, 2, dead_after=0, inner_lr=0.0)
    vectors = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, -3.0], [5.0, 5.0]])
    q.init_codebook(vectors)
    q.train()
    q(torch.randn(2, 2, 3, 3))  # a first training forward: its K-means would move every code
    torch.testing.assert_close(q.effective_codebook(), vectors)


@pytest.mark.parametrize("name", ["edvae", "dvae"])
def test_logit_methods_refuse_init_codebook(name):
    q = build_quantizer(name, 4, 2)
    with pytest.raises(ValueError, match="no codebook that encoder outputs can initialise"):
        q.init_codebook(torch.zeros(4, 2))


# ------------------------------------------------------------------ config and command line


def _config(method="vq-ema", **train):
    t = dict(dataset="synthetic", limit_train=256, limit_test=32, batch_size=16, steps=8, pretrain_steps=4,
             checkpoint_every=1, log_every=1, threads=1, seed=3, device="cpu", lr=3e-3)
    t.update(train)
    # init_std 0.3: encoder outputs spread about 0.1 (the default 0.02 gives ~1e-6 at width 4), so that
    # K-means has clusters to find
    return {"model": {"method": method, "width": 4, "codebook_size": 16, "codebook_dim": 4, "init_std": 0.3},
            "train": t}


def test_config_checks_and_the_command_line_flag():
    assert from_dict(_config()).train.pretrain_steps == 4
    assert from_dict(_config(pretrain_steps=0)).train.pretrain_steps == 0
    with pytest.raises(EdvaeError, match="train.pretrain_steps: edvae reads 16 logits"):
        from_dict(_config("edvae"))
    with pytest.raises(EdvaeError, match=r"pretrain_steps \(8\) must be smaller than train.steps \(8\)"):
        from_dict(_config(pretrain_steps=8))
    with pytest.raises(EdvaeError, match="train.pretrain_steps must be >= 0"):
        from_dict(_config(pretrain_steps=-1))
    args = parser().parse_args(["train", "--method", "gs-vq", "--steps", "10", "--pretrain-steps", "6",
                                "--out", "unused"])
    assert build_config(args).train.pretrain_steps == 6


# ------------------------------------------------------------------ the trainer


@pytest.fixture
def snapshots(monkeypatch, tmp_path):
    """Every training state the trainer writes, kept as snapshots/<run>-<step>.safetensors."""
    folder = tmp_path / "snapshots"
    folder.mkdir()
    save = checkpoint.save_state

    def keep(path, model, optimizer, step, config):
        save(path, model, optimizer, step, config)
        shutil.copy(path, folder / f"{path.parent.name}-{step}.safetensors")

    monkeypatch.setattr(checkpoint, "save_state", keep)
    return folder


def _model_tensors(path):
    return {k[len("model."):]: v for k, v in load_file(str(path)).items() if k.startswith("model.")}


def _quantizer_state(tensors):
    return {k: v for k, v in tensors.items() if k.startswith("quantizer.")}


@pytest.mark.parametrize("method", ["vq-ema", "vq-ste++"])
def test_pretraining_leaves_the_codebook_then_kmeans_sets_it_and_resume_is_exact(method, tmp_path, snapshots):
    P, N = 4, 8
    whole = tmp_path / "whole"
    train(from_dict(_config(method)), whole, progress=False, evaluate_at_end=False)
    cfg = from_dict(json.loads((whole / "config.json").read_text()))
    torch.manual_seed(cfg.train.seed)  # the trainer's initial model
    fresh = {k: v.detach() for k, v in DiscreteVAE(cfg.model).state_dict().items()}
    states = {s: _model_tensors(snapshots / f"whole-{s}.safetensors") for s in range(1, N + 1)}

    # 1. pretraining trains encoder and decoder and leaves every quantizer tensor as it was
    for s in range(1, P):
        assert all(torch.equal(v, fresh[k]) for k, v in _quantizer_state(states[s]).items()), s
        assert not torch.equal(states[s]["encoder.net.0.weight"], fresh["encoder.net.0.weight"])
    # 2. after step P the codebook is K-means of the encoder's outputs on the next 4 batches
    model = DiscreteVAE(cfg.model).to(memory_format=torch.channels_last)  # the trainer's layout
    model.load_state_dict(states[P])
    train_set, _ = load_splits(cfg, torch.device("cpu"))
    order = BatchOrder(len(train_set), cfg.train.batch_size, cfg.train.seed)
    with torch.no_grad():
        images = [to_model_input(train_set.batch(order.indices(s))) for s in range(P, P + INIT_BATCHES)]
        images = [x.contiguous(memory_format=torch.channels_last) for x in images]
        vectors = torch.cat([flatten(model.encoder(x)) for x in images])
    expected = kmeans(vectors, cfg.model.codebook_size, iters=INIT_ITERS, seed=step_seed(cfg.train.seed, P))
    torch.testing.assert_close(model.quantizer.effective_codebook(), expected.centroids, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(states[P]["quantizer.codebook"], fresh["quantizer.codebook"])
    if method == "vq-ste++":
        assert int(states[P]["quantizer.kmeans_done"]) == 1
    # 3. then quantized training moves the codebook
    assert not torch.equal(states[N]["quantizer.codebook"], states[P]["quantizer.codebook"])
    rows = [json.loads(r) for r in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [("batch_perplexity" in r) for r in rows] == [r["step"] > P for r in rows]
    # 4. a run resumed inside pretraining, at the switch or after it ends where the whole run ended
    final = load_file(str(whole / "model.safetensors"))
    for at in (P - 1, P, P + 2):
        run = tmp_path / f"resumed{at}"
        run.mkdir()
        shutil.copy(whole / "config.json", run / "config.json")
        shutil.copy(snapshots / f"whole-{at}.safetensors", run / checkpoint.STATE_FILE)
        train(from_dict(_config(method)), run, resume=True, progress=False, evaluate_at_end=False)
        again = load_file(str(run / "model.safetensors"))
        assert again.keys() == final.keys()
        assert all(torch.equal(again[k], final[k]) for k in final), at


# ------------------------------------------------------------------ data parallel


def _simulate(cfg, world: int) -> dict[str, torch.Tensor]:
    """One process doing by hand what `world` data-parallel processes do (GS-VQ: no collectives in
    its forward): pretraining on averaged gradients, K-means over every rank's encoder outputs."""
    t = cfg.train
    train_set, _ = load_splits(cfg, torch.device("cpu"))
    torch.manual_seed(t.seed)
    model = DiscreteVAE(cfg.model).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    sched = Schedules.from_train(t)
    order = BatchOrder(len(train_set), t.batch_size, t.seed)

    def shard(step, rank):
        x = train_set.batch(ddp.Group(rank, world).shard(order.indices(step)))
        return to_model_input(x).contiguous(memory_format=torch.channels_last)

    for step in range(t.steps):
        for g in opt.param_groups:
            g["lr"] = sched.lr_at(step)
        opt.zero_grad()
        for rank in range(world):
            torch.manual_seed(step_seed(t.seed, step, rank))
            x = shard(step, rank)
            if step < t.pretrain_steps:
                loss = F.mse_loss(model.decoder(model.encoder(x)), x)
            else:
                x_hat, q = model(x, temperature=sched.temperature_at(step), beta=sched.beta_at(step))
                loss = F.mse_loss(x_hat, x) + q.loss
            (loss / world).backward()
        opt.step()
        if step + 1 == t.pretrain_steps:
            with torch.no_grad():
                vectors = torch.cat([flatten(model.encoder(shard(s, rank))) for rank in range(world)
                                     for s in range(step + 1, step + 1 + INIT_BATCHES)])
            r = kmeans(vectors, cfg.model.codebook_size, iters=INIT_ITERS, seed=step_seed(t.seed, step + 1))
            model.quantizer.init_codebook(r.centroids)
    return {k: v.detach() for k, v in model.state_dict().items()}


@pytest.mark.slow  # two torchrun processes: about 20 s of CPU
def test_two_processes_pretrain_then_quantize_as_simulated(tmp_path):
    # GS-VQ's codebook is a Parameter that gets no gradient in pretraining: DDP must not mind
    run = tmp_path / "ddp"
    args = ["--dataset", "synthetic", "--set", "train.limit_train=64", "--set", "train.limit_test=32",
            "--batch-size", "8", "--steps", "4", "--pretrain-steps", "2", "--set", "model.width=4",
            "--set", "model.init_std=0.3",
            "--set", "model.codebook_size=16", "--set", "model.codebook_dim=4", "--set", "train.threads=1",
            "--set", "train.log_every=1", "--no-progress", "--device", "cpu"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           "2", "-m", "edvae", "train", "--method", "gs-vq", *args, "--out", str(run)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-8000:]  # a rank's own error precedes torchrun's
    cfg = from_dict(json.loads((run / "config.json").read_text()))
    trained = load_file(str(run / "model.safetensors"))
    expected = _simulate(cfg, world=2)
    for name, value in expected.items():
        torch.testing.assert_close(trained[name], value, rtol=1e-5, atol=1e-6, msg=name)
