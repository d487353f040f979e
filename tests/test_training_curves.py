"""What the trainer logs over training for the paper's figures (2a, 2b and 3): the test subset's
entropy of pi, its spread, the uncertainty and the per-position entropy map of the first test
image; and the study report's `maps` figure and figure validation."""

import json
import math
from pathlib import Path

import pytest
import torch

from edvae.cli import main
from edvae.errors import EdvaeError
from edvae.evaluate import PosteriorTally, evaluate
from edvae.metrics import entropy
from edvae.model import DiscreteVAE
from edvae.run_folder import load_split, run_config
from edvae.study_file import load_study
from edvae.study_report import maps_figure, read_curves

TINY = ["train.dataset=synthetic", "train.limit_train=64", "train.limit_test=24", "train.batch_size=8",
        "train.steps=20", "train.log_every=10", "train.eval_every=10", "train.eval_subset=16",
        "model.width=4", "model.codebook_size=16", "model.codebook_dim=4", "model.init_std=0.3"]


def train(tmp_path: Path, method: str) -> Path:
    out = tmp_path / method
    argv = ["train", "--method", method, "--out", str(out), "--no-progress"]
    for s in TINY:
        argv += ["--set", s]
    assert main(argv) == 0
    return out


def rows_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method", ["edvae", "dvae"])
def test_the_last_logged_row_is_the_final_models_evaluation_of_the_test_subset(tmp_path, method):
    run = train(tmp_path, method)
    rows = rows_of(run)
    assert [r["step"] for r in rows] == [10, 20]
    cfg = run_config(run)
    model = DiscreteVAE.load(run)
    test_set = load_split(cfg, "test")
    r = evaluate(model, test_set, cfg.train.eval_batch_size, limit=16, sampled=False)
    last = rows[-1]
    assert last["test_entropy_mean"] == pytest.approx(r["entropy_mean"], rel=1e-6)
    assert last["test_entropy_std"] == pytest.approx(r["entropy_std"], rel=1e-4, abs=1e-6)
    side = model.latent_size
    logged = torch.tensor(last["test_entropy_map"])
    assert logged.shape == (side, side)
    assert bool((logged >= 0).all()) and bool((logged <= math.log(16) + 1e-4).all())
    if method == "edvae":
        assert last["test_uncertainty"] == pytest.approx(r["uncertainty_mean"], rel=1e-6)
        assert 0 < last["test_uncertainty"] <= 1
    else:
        assert last["test_uncertainty"] is None
    # the map is the first test image's per-position entropy of pi, as evaluate computes it
    kept = evaluate(model, test_set, cfg.train.eval_batch_size, limit=16, sampled=False, keep_images=1)
    first = kept["_images"]["x"][:1]
    expected = entropy(model.quantizer.probabilities(model.encoder(first).float()))[0]
    assert torch.allclose(logged, expected, atol=1e-5)
    assert logged.std() > 0  # a map, not a constant
    # metrics.csv keeps scalars only: no map column
    assert "test_entropy_map" not in (run / "metrics.csv").read_text().splitlines()[0]


def test_the_entropy_spread_over_positions_survives_near_uniform_posteriors():
    # H about 2.77 everywhere with a spread of about 1e-4: E[H^2] - E[H]^2 over float32 sums would
    # lose it (the bug this pins); the tally must give the population std of the entropies
    k, n = 16, 20_000
    logits = torch.zeros(n, k, 1, 1)
    logits[: n // 2, 0] = torch.linspace(0.0, 0.1, n // 2).view(-1, 1, 1)
    p = logits.softmax(1)
    tally = PosteriorTally()
    for chunk in p.split(1000):
        tally.add(chunk, None)
    h = entropy(p).double()
    expected = h.std(unbiased=False).item()
    assert 1e-5 < expected < 1e-3
    assert tally.summary(n)["entropy_std"] == pytest.approx(expected, rel=1e-3)
    assert tally.summary(n)["entropy_mean"] == pytest.approx(h.mean().item(), rel=1e-9)


def test_a_method_without_probabilities_logs_no_entropy(tmp_path):
    rows = rows_of(train(tmp_path, "vq-ema"))
    assert rows[-1]["test_entropy_mean"] is None and "test_entropy_map" not in rows[-1]


def test_the_maps_figure_draws_each_entrys_first_run(tmp_path):
    runs = [train(tmp_path, m) for m in ("edvae", "dvae")]
    rows = [{"entry": m, "curves": read_curves(r)} for m, r in zip(("edvae", "dvae"), runs, strict=True)]
    assert [s for s, _ in rows[0]["curves"]["test_entropy_map"]] == [10, 20]
    path = tmp_path / "maps.png"
    assert maps_figure(path, rows, "test_entropy_map", "Figure 2b")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not maps_figure(tmp_path / "none.png", [{"entry": "x", "curves": {}}], "test_entropy_map", "")
    assert not (tmp_path / "none.png").exists()


@pytest.mark.parametrize("figure, message", [
    ("{kind: heatmap}", "unknown kind 'heatmap'"),
    ("{kind: sweep, metric: perplexity}", "a sweep figure needs 'axis'"),
])
def test_a_figure_of_unknown_kind_or_missing_keys_is_refused_when_the_study_loads(tmp_path, figure, message):
    path = tmp_path / "s.yaml"
    path.write_text(f"name: s\nmethods: [edvae]\nfigures:\n  - {figure}\n")
    with pytest.raises(EdvaeError, match=message.replace("(", r"\(")):
        load_study(path)
