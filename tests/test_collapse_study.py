"""The synthetic collapse study (`edvae study collapse`): its pieces, and a tiny sweep through the
command line that writes every file and shows the direction of the effect."""

import json

import pytest
import torch

from edvae.cli import main
from edvae.collapse_study import StudyConfig, config_from_args, mixture_means, plan, sample, train_one
from edvae.errors import EdvaeError


def test_plan_trains_each_point_once():
    cfg = StudyConfig(codebook_sizes=(8, 32), widths=(4, 16), width=16, width_sweep_codebook=32,
                      seeds=(0, 1), arms=("random", "pretrain"))
    jobs = plan(cfg)
    # (8, 16), (32, 16) from the size sweep; (32, 4) from the width sweep ((32, 16) is shared)
    assert sorted({(k, w) for _, k, w, _ in jobs}) == [(8, 16), (32, 4), (32, 16)]
    assert len(jobs) == len(set(jobs)) == 3 * 2 * 2


def test_mixture_and_runs_are_deterministic():
    cfg = StudyConfig(components=4, steps=12, pretrain_steps=6, batch_size=32, init_points=64)
    means = mixture_means(cfg)
    assert means.shape == (4, 2) and means.abs().max() <= cfg.spread
    x, labels = sample(cfg, means, 500, torch.Generator().manual_seed(1))
    y, _ = sample(cfg, means, 500, torch.Generator().manual_seed(1))
    assert torch.equal(x, y) and set(labels.tolist()) == {0, 1, 2, 3}
    # each point lies near its own component's mean (std 0.3, means up to 8 apart)
    assert ((x - means[labels]).norm(dim=1) < 6 * cfg.std).float().mean() > 0.99
    test = x[:64]
    for arm in ("random", "kmeans", "pretrain"):
        a = train_one(cfg, means, test, arm, 8, 8, seed=0)
        b = train_one(cfg, means, test, arm, 8, 8, seed=0)
        assert a == b and 1.0 <= a["perplexity"] <= 8 and a["mse"] > 0
        assert ("kmeans_inertia" in a) == (arm != "random")


def test_bad_options_are_clear_errors(capsys):
    with pytest.raises(EdvaeError, match="pretrain_steps must be in"):
        config_from_args(steps=10, pretrain_steps=10)
    with pytest.raises(EdvaeError, match="unknown arm 'bogus'"):
        config_from_args(arms=["random", "bogus"])
    with pytest.raises(EdvaeError, match="codebook sizes must be at least 2"):
        config_from_args(codebook_sizes=[1, 8])
    assert main(["study", "collapse", "--out", "unused", "--steps", "5", "--pretrain-steps", "7"]) == 2
    assert "pretrain_steps must be in [0, steps)" in capsys.readouterr().err


def test_tiny_sweep_writes_its_files_and_pretraining_uses_more_codes(tmp_path, capsys):
    out = tmp_path / "study"
    assert main(["study", "collapse", "--out", str(out), "--sizes", "8", "64", "--widths", "4", "16",
                 "--width", "16", "--width-sweep-codebook", "8", "--seeds", "0", "--components", "8",
                 "--steps", "200", "--pretrain-steps", "100"]) == 0
    assert "| codebook size |" in capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    assert len(result["runs"]) == 3 * 3  # (8, 16), (64, 16), (8, 4) x three arms x one seed
    assert result["command"].startswith("edvae study collapse --out")
    summary = (out / "summary.md").read_text()
    assert result["command"] in summary and "At K = 64: pretrain perplexity" in summary
    for png in ("codebook-sweep.png", "width-sweep.png", "latents.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    at = {r["arm"]: r for r in result["runs"] if r["codebook_size"] == 64}
    # robust even at this size: a codebook initialised near the origin (random) or from the untrained
    # encoder (kmeans) keeps few of its 64 codes, the pretrained encoder's K-means codebook many
    assert at["pretrain"]["perplexity"] > 1.5 * at["random"]["perplexity"]
    assert at["pretrain"]["perplexity"] > at["kmeans"]["perplexity"]


def test_an_interrupted_study_resumes_to_the_uninterrupted_results(tmp_path, monkeypatch):
    """Killed after two runs and started again, the study trains only the runs not finished (the
    drawn ones again, for their latents) and ends with the results of a call never interrupted."""
    import edvae.collapse_study as study

    cfg = StudyConfig(components=4, steps=10, pretrain_steps=5, batch_size=16, init_points=64,
                      test_points=128, codebook_sizes=(4, 8), widths=(4,), width=4, width_sweep_codebook=8,
                      seeds=(0, 1))
    whole = study.run_study(cfg, tmp_path / "whole")
    real, calls = study.train_one, []

    def dies_after_two(*args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(args[3:7])
        return real(*args, **kwargs)

    monkeypatch.setattr(study, "train_one", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        study.run_study(cfg, tmp_path / "killed")
    monkeypatch.setattr(study, "train_one", lambda *a, **k: (calls.append(a[3:7]), real(*a, **k))[1])
    calls.clear()
    resumed = study.run_study(cfg, tmp_path / "killed")
    assert resumed["runs"] == whole["runs"] and resumed["summary"] == whole["summary"]
    assert calls == plan(cfg)[2:]  # the two finished runs were not trained again
    with pytest.raises(EdvaeError, match="other settings"):
        study.run_study(StudyConfig(**{**cfg.__dict__, "steps": 11}), tmp_path / "killed")
