"""The PixelSNAIL prior: causality, sampling, the fit and its exact resume, the code cache, bad input."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from edvae import checkpoint
from edvae.cli import main
from edvae.config import from_dict
from edvae.data.download import sha256sum
from edvae.errors import EdvaeError
from edvae.model import DiscreteVAE
from edvae.prior import codes as codes_mod
from edvae.prior.pixelsnail import PixelSNAIL, PixelSNAILConfig, causal_attention, preset_for
from edvae.prior.sample import sample_codes
from edvae.prior.train_prior import code_bits, load_prior, train_prior

TINY_PRIOR = ["model.channels=8", "model.blocks=1", "model.res_blocks=1", "model.dropout=0.1",
              "train.batch_size=16", "train.log_every=5", "train.threads=1",
              "train.device=cpu"]  # exact resume and evaluation are CPU claims


def make_run(folder: Path, codebook_size: int = 16, seed: int = 0) -> Path:
    """A 'finished run' without training: a tiny random VAE on synthetic 32x32 images (8x8 codes)."""
    torch.manual_seed(seed)
    cfg = from_dict({"model": {"method": "edvae", "channels": 1, "width": 4, "codebook_size": codebook_size,
                               "codebook_dim": 4},
                     "train": {"dataset": "synthetic", "limit_train": 96, "limit_test": 32, "seed": seed}})
    folder.mkdir(parents=True)
    model = DiscreteVAE(cfg.model)
    checkpoint.save_model(folder / checkpoint.MODEL_FILE, model, cfg.to_dict())
    (folder / checkpoint.CONFIG_FILE).write_text(cfg.to_json())
    return folder


def tiny_prior(k: int = 7, size: int = 5, dropout: float = 0.0, seed: int = 0) -> PixelSNAIL:
    torch.manual_seed(seed)
    cfg = PixelSNAILConfig(codebook_size=k, size=size, channels=8, blocks=2, res_blocks=1, dropout=dropout)
    return PixelSNAIL(cfg).eval()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- the model ------------------------------------------------------------------------------


def test_no_logit_depends_on_its_own_or_a_later_code_and_each_sees_all_earlier_ones():
    prior = tiny_prior()
    k, s = 7, 5
    codes = torch.randint(0, k, (2, s, s), generator=torch.Generator().manual_seed(1))
    base = prior(codes)
    assert base.shape == (2, k, s, s) and base.dtype == torch.float32
    depends = torch.zeros(s * s, s * s, dtype=torch.bool)  # [logit position, perturbed position]
    for p in range(s * s):
        changed = codes.clone()
        changed.view(2, -1)[:, p] = (changed.view(2, -1)[:, p] + 1 + p % (k - 1)) % k
        diff = (prior(changed) - base).abs().amax(dim=(0, 1)).reshape(-1)
        # a later (or the same) position perturbed: every earlier logit is bit-for-bit unchanged
        assert torch.equal(diff[:p + 1], torch.zeros(p + 1)), f"position {p} leaks backwards"
        depends[:, p] = diff > 0
    # and no blind spot: each position's logits move with every earlier code (attention reaches all)
    assert torch.equal(depends, torch.ones(s * s, s * s, dtype=torch.bool).tril(-1))


def test_attention_is_strictly_causal_and_position_zero_gets_zero():
    q, k, v = (torch.randn(2, 4, 3, 3) for _ in range(3))
    out = causal_attention(q, k, v, heads=2)
    v2 = v.clone()
    v2[:, :, 2, 2] += 5.0  # the last position's value: seen by nobody
    k2 = k.clone()
    k2[:, :, 1, 0] += 5.0  # position 3's key: seen by positions 4.. only
    assert torch.equal(causal_attention(q, k, v2, heads=2), out)
    moved = (causal_attention(q, k2, v, heads=2) - out).abs().amax(dim=(0, 1)).reshape(-1)
    assert torch.equal(moved[:4], torch.zeros(4)) and (moved[4:] > 0).all()
    assert torch.equal(out[:, :, 0, 0], torch.zeros(2, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # scores and softmax stay float32
        half = causal_attention(q.bfloat16(), k.bfloat16(), v.bfloat16())
    assert half.dtype == torch.bfloat16 and torch.isfinite(half.float()).all()


def test_the_rows_done_so_far_give_the_full_maps_logits():
    prior = tiny_prior()
    codes = torch.randint(0, 7, (3, 5, 5), generator=torch.Generator().manual_seed(2))
    full = prior(codes)
    for rows in (1, 3):
        torch.testing.assert_close(prior(codes[:, :rows]), full[:, :, :rows], rtol=1e-5, atol=1e-6)


def test_presets_by_map_size_and_bad_shapes_are_clear_errors():
    assert preset_for(8)["channels"] == 128 and preset_for(16)["blocks"] == 3
    assert preset_for(32) == {"channels": 256, "blocks": 4, "res_blocks": 4}  # rosinality's 32x32 prior
    assert preset_for(4) == preset_for(8) and preset_for(64) == preset_for(32)
    prior = tiny_prior()
    with pytest.raises(EdvaeError, match=r"\(2, 4, 4\) do not fit this prior.*\(N, 5, 5\)"):
        prior.check_codes(torch.zeros(2, 4, 4, dtype=torch.long))
    with pytest.raises(EdvaeError, match=r"codes must lie in \[0, 6\]"):
        prior.check_codes(torch.full((1, 5, 5), 7))
    with pytest.raises(EdvaeError, match="heads"):
        PixelSNAIL(PixelSNAILConfig(codebook_size=4, size=2, channels=6, heads=4))


# --- sampling -------------------------------------------------------------------------------


def test_greedy_sampling_follows_the_teacher_forced_argmax_and_top_k_stays_in_the_top_k():
    prior = tiny_prior(k=9, size=4)
    greedy = sample_codes(prior, 3, top_k=1, seed=0)
    assert greedy.shape == (3, 4, 4) and greedy.dtype == torch.int64
    # every code is the argmax of the prior's logits given the codes drawn before it
    assert torch.equal(greedy, prior(greedy).argmax(1))
    drawn = sample_codes(prior, 16, top_k=3, seed=5, batch_size=6)
    top3 = prior(drawn).topk(3, dim=1).indices
    assert (top3 == drawn[:, None]).any(1).all()
    assert torch.equal(drawn, sample_codes(prior, 16, top_k=3, seed=5, batch_size=6))  # seeded
    assert not torch.equal(drawn, sample_codes(prior, 16, top_k=3, seed=6, batch_size=6))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_draws_follow_softmax_of_logits_over_temperature(temperature):
    torch.manual_seed(0)
    prior = PixelSNAIL(PixelSNAILConfig(codebook_size=5, size=1, channels=4, blocks=1, res_blocks=0,
                                        dropout=0.0)).eval()
    with torch.no_grad():
        prior.out.bias.copy_(torch.tensor([2.0, 1.0, 0.0, -1.0, 0.5]))
    p = (prior(torch.zeros(1, 1, 1, dtype=torch.long))[0, :, 0, 0] / temperature).softmax(0)
    n = 20000
    codes = sample_codes(prior, n, temperature=temperature, seed=3, batch_size=n)
    freq = torch.bincount(codes.reshape(-1), minlength=5).double() / n
    assert (freq - p.double()).abs().max() < 4 * math.sqrt(0.25 / n)  # 4 sigma at worst


def test_sampling_rejects_bad_settings():
    prior = tiny_prior()
    for kwargs, message in (({"n": 0}, "positive integer"), ({"n": 2, "temperature": 0.0}, "temperature"),
                            ({"n": 2, "top_k": 8}, r"top-k must lie in \[0, 7\]")):
        with pytest.raises(EdvaeError, match=message):
            sample_codes(prior, **kwargs)


# --- the fit --------------------------------------------------------------------------------


def write_codes(run: Path, cache: Path, train: torch.Tensor, test: torch.Tensor) -> None:
    """Put structured code maps into the cache, as if the run's model had made them."""
    sha = sha256sum(run / checkpoint.MODEL_FILE)
    cache.mkdir(parents=True, exist_ok=True)
    for split, c in (("train", train), ("test", test)):
        meta = {"format": codes_mod.CODES_FORMAT, "model_sha256": sha, "split": split}
        checkpoint.save_tensors({"codes": c.to(torch.int16)}, codes_mod.codes_file(cache, split), meta)


def constant_maps(n: int, seed: int) -> torch.Tensor:
    """Each 8x8 map is one code out of 4, drawn per map: 2 bits per code under the unigram baseline,
    2/64 bits per code for a prior that copies the first code."""
    c = torch.randint(0, 4, (n, 1, 1), generator=torch.Generator().manual_seed(seed))
    return c.expand(n, 8, 8).clone()


def test_fit_beats_the_unigram_baseline_and_reports_bits_per_code(tmp_path):
    run = make_run(tmp_path / "run")
    write_codes(run, tmp_path / "cache", constant_maps(96, 0), constant_maps(32, 1))
    logs = []
    result = train_prior(run, tmp_path / "prior", [*TINY_PRIOR, "train.steps=60", "train.lr=1e-2"],
                         progress=False, codes_cache=tmp_path / "cache", log=logs.append)
    assert not any("encoding" in m for m in logs)  # the cache written above was used
    assert result["uniform_bits_per_code"] == pytest.approx(4.0)  # log2 16
    assert result["unigram_bits_per_code"] == pytest.approx(2.0, abs=0.1)
    # the ideal prior needs 2 bits for the first code and ~0 after it: 2/64 bits per code
    assert result["bits_per_code"] < 0.25 * result["unigram_bits_per_code"], result
    assert result["bits_per_map"] == pytest.approx(64 * result["bits_per_code"])
    prior, cfg = load_prior(tmp_path / "prior")
    test = load_file(tmp_path / "cache" / "codes-test.safetensors")["codes"]
    assert code_bits(prior, test) == pytest.approx(result["bits_per_code"], rel=1e-9)
    assert cfg.model.size == 8 and cfg.model.codebook_size == 16 and cfg.model.channels == 8
    eval_json = json.loads((tmp_path / "prior" / "prior_eval.json").read_text())
    assert eval_json == result


def test_unigram_baseline_by_hand():
    cross, entropy = codes_mod.unigram_bits(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 2]), 4)
    p = np.array([3, 3, 1, 1]) / 8  # add-one counts
    assert cross == pytest.approx(-(math.log2(3 / 8) + math.log2(1 / 8)) / 2)
    assert entropy == pytest.approx(float(-(p * np.log2(p)).sum()))


def test_killed_fit_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run")
    opts = [*TINY_PRIOR, "train.steps=12", "train.checkpoint_every=5", "train.eval_every=10"]
    whole = train_prior(run, tmp_path / "whole", opts, progress=False, log=lambda m: None)

    real_save = checkpoint.save_state

    class Killed(Exception):
        pass

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise Killed

    monkeypatch.setattr(checkpoint, "save_state", save_then_die)
    with pytest.raises(Killed):
        train_prior(run, tmp_path / "killed", opts, progress=False, codes_cache=tmp_path / "whole",
                    log=lambda m: None)
    monkeypatch.undo()
    assert not (tmp_path / "killed" / "prior.safetensors").exists()
    resumed = train_prior(run, tmp_path / "killed", resume=True, progress=False,
                          codes_cache=tmp_path / "whole", log=lambda m: None)
    a = load_file(tmp_path / "whole" / "prior.safetensors")
    b = load_file(tmp_path / "killed" / "prior.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert resumed == whole
    rows = [json.loads(r) for r in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [5, 10, 12]  # rows after the checkpoint were dropped, not doubled
    assert rows == [json.loads(r) | {"seconds": rows[i]["seconds"]} for i, r in
                    enumerate((tmp_path / "whole" / "metrics.jsonl").read_text().splitlines())]


def test_codes_are_encoded_once_and_again_only_for_another_model(tmp_path):
    run = make_run(tmp_path / "run")
    logs = []
    first = codes_mod.cached_codes(run, tmp_path / "cache", "test", log=logs.append)
    model = DiscreteVAE.load(run)
    images = codes_mod.load_split(codes_mod.run_config(run), "test")
    assert first.dtype == torch.int16 and first.shape == (32, 8, 8)
    assert torch.equal(first.long(), model.encode(images.batch(torch.arange(32))))
    again = codes_mod.cached_codes(run, tmp_path / "cache", "test", log=logs.append)
    assert torch.equal(first, again) and sum(m.startswith("encoding the") for m in logs) == 1
    other = make_run(tmp_path / "other", seed=1)  # same shapes, other weights
    codes_mod.cached_codes(other, tmp_path / "cache", "test", log=logs.append)
    assert sum(m.startswith("encoding the") for m in logs) == 2 and "another model" in logs[-2]


# --- the command line -----------------------------------------------------------------------


def sets(*assignments: str) -> list[str]:
    return [x for a in assignments for x in ("--set", a)]


def test_prior_and_sample_commands_write_images_a_fid_tool_reads(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    assert main(["prior", "train", str(run), "--no-progress", *sets(*TINY_PRIOR, "train.steps=4")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bits_per_code"] > 0 and (run / "prior" / "prior.safetensors").is_file()
    out = tmp_path / "samples"
    assert main(["sample", str(run), "-n", "5", "--top-k", "3", "--temperature", "0.8", "--batch-size", "2",
                 "--out", str(out)]) == 0
    files = sorted((out / "images").iterdir())
    assert [f.name for f in files] == [f"{i:06d}.png" for i in range(5)]
    with Image.open(files[0]) as im:
        assert im.mode == "L" and im.size == (32, 32)
    codes = np.load(out / "codes.npy")
    assert codes.shape == (5, 8, 8) and codes.dtype == np.int32
    # the PNGs are the decoded codes, to the 8-bit rounding of a lossless file
    from edvae.data import to_uint8

    decoded = to_uint8(DiscreteVAE.load(run).decode(torch.from_numpy(codes.astype(np.int64))))
    assert np.array_equal(np.asarray(Image.open(files[3])), decoded[3, 0].numpy())
    assert Image.open(out / "samples.png").width >= 256
    assert json.loads((out / "samples.json").read_text())["top_k"] == 3


def test_bad_input_exits_2_names_the_problem_and_leaves_files_untouched(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    other = make_run(tmp_path / "other", codebook_size=8)
    prior_dir = tmp_path / "prior"
    assert main(["prior", "train", str(run), "--out", str(prior_dir), "--no-progress",
                 *sets(*TINY_PRIOR, "train.steps=2")]) == 0
    before, before_run = snapshot(prior_dir), snapshot(run)

    def fails(argv, message):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("edvae: error:") and len(err) < 400, err
        assert snapshot(prior_dir) == before and snapshot(run) == before_run

    fails(["prior", "train", str(tmp_path / "nowhere"), "--out", str(tmp_path / "p2")],
          "run folder not found")
    fails(["prior", "train", str(run), "--out", str(prior_dir)], "already holds files")
    fails(["prior", "train", str(run), "--out", str(tmp_path / "p3"), "--resume"], "no prior to resume")
    fails(["prior", "train", str(run), "--out", str(tmp_path / "p4"), "--set", "model.bogus=1"],
          "unknown config key model.bogus")
    fails(["prior", "train", str(run), "--out", str(tmp_path / "p5"), "--set", "model.size=16"],
          "set by the run's VAE (8)")
    fails(["prior", "train", str(run), "--out", str(tmp_path / "p6"), "--set", "train.steps=0"],
          "train.steps must be positive")
    fails(["prior", "train", str(run), "--out", str(tmp_path / "p7"), "--preset", "12x12"],
          "unknown prior preset")
    fails(["sample", str(run), "-n", "0", "--prior", str(prior_dir)], "positive integer, got 0")
    fails(["sample", str(run), "-n", "2", "--prior", str(tmp_path / "none")], "prior not found")
    fails(["sample", str(run), "-n", "2", "--prior", str(prior_dir), "--temperature", "-1"], "temperature")
    # a prior for 16 codes against a run with 8: the codebook does not fit
    fails(["sample", str(other), "-n", "2", "--prior", str(prior_dir)], "maps of 16 codes")
    assert not any((tmp_path / name).exists() for name in ("p2", "p3", "p4", "p5", "p6", "p7"))


def test_prior_overrides_read_exponents_as_numbers():
    from edvae.prior.train_prior import parse_overrides
    out = parse_overrides(["train.lr=3e-4", "model.channels=64", "train.device=cpu"])
    assert out == {"model": {"channels": 64}, "train": {"lr": 3e-4, "device": "cpu"}}
