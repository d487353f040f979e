"""End-to-end runs through the command line, CPU-sized: resume after SIGKILL, bad input, real data."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from edvae.cli import main

TINY = ["--set", "model.width=4", "--set", "model.codebook_size=32", "--set", "model.codebook_dim=4",
        "--set", "train.threads=1"]
SYNTH = ["--dataset", "synthetic", "--set", "train.limit_train=512", "--set", "train.limit_test=64",
         "--batch-size", "16"]


def edvae(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "edvae", *args], capture_output=True, text=True,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    if check and proc.returncode != 0:
        raise AssertionError(proc.stderr)
    return proc


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_sigkill_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path):
    args = ["train", "--method", "edvae", "--steps", "120", "--no-progress", *SYNTH, *TINY,
            "--set", "train.checkpoint_every=20", "--set", "train.log_every=10"]
    edvae(*args, "--out", str(tmp_path / "whole"))
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "edvae", *args, "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    state = run / "checkpoint.safetensors"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (run / "model.safetensors").exists()
    edvae(*args, "--out", str(run), "--resume")
    a, b = load_file(tmp_path / "whole" / "model.safetensors"), load_file(run / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ev_a = json.loads((tmp_path / "whole" / "eval.json").read_text())
    ev_b = json.loads((run / "eval.json").read_text())
    assert ev_a == ev_b
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 120  # no duplicated rows after the resume


def test_bad_input_exits_2_and_leaves_files_untouched(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--method", "dvae", "--steps", "4", "--no-progress", *SYNTH, *TINY,
                 "--out", str(run)]) == 0
    before = snapshot(run)

    def fails(argv, message):
        capsys.readouterr()
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("edvae: error:") and len(err) < 400
        assert snapshot(run) == before

    fails(["train", "--steps", "4", *SYNTH, "--out", str(run)], "already holds files")
    fails(["train", "--steps", "0", *SYNTH, "--out", str(tmp_path / "n")], "train.steps must be positive")
    fails(["train", "--set", "train.bogus=1", "--out", str(tmp_path / "n")], "unknown config key train.bogus")
    fails(["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "nowhere"),
           "--out", str(tmp_path / "n")], "nowhere")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (corrupt / name).write_bytes(b"\x00\x00\x08\x03garbage")
    fails(["train", "--dataset", "fashion-mnist", "--data-dir", str(corrupt),
           "--out", str(tmp_path / "n")], "idx3-ubyte")
    fails(["train", "--resume", "--out", str(tmp_path / "empty")], "no checkpoint to resume")
    wrong = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(wrong)
    fails(["encode", str(run), str(wrong), "-o", str(tmp_path / "c.npy")], "rgb.png: has 3 channel(s)")
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(small)
    fails(["encode", str(run), str(small), "-o", str(tmp_path / "c.npy")], "small.png: is 28x28")
    fails(["eval", str(tmp_path / "nothing")], "not a finished run")
    assert not (tmp_path / "n").exists() or not any((tmp_path / "n").iterdir())


def test_encode_decode_files_round_trip(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--method", "edvae", "--steps", "4", "--no-progress", *SYNTH, *TINY,
                 "--out", str(run)]) == 0
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(images / f"{i}.png")
    assert main(["encode", str(run), str(images), "-o", str(tmp_path / "codes.npy")]) == 0
    codes = np.load(tmp_path / "codes.npy")
    assert codes.shape == (3, 8, 8) and codes.dtype == np.int32
    assert main(["decode", str(run), str(tmp_path / "codes.npy"), "-o", str(tmp_path / "out")]) == 0
    decoded = sorted((tmp_path / "out").glob("*.png"))
    assert len(decoded) == 3 and Image.open(decoded[0]).size == (32, 32)
    # decoded images encode back to codes the model can decode: the tokenizer is consistent
    assert main(["encode", str(run), str(tmp_path / "out"), "-o", str(tmp_path / "again.npy")]) == 0
    assert np.load(tmp_path / "again.npy").shape == codes.shape


@pytest.mark.slow
@pytest.mark.parametrize("method", ["edvae", "dvae"])
def test_short_run_on_fashion_mnist_learns_and_reproduces_its_evaluation(tmp_path, method):
    run = tmp_path / method
    config = Path(__file__).parents[1] / "configs" / "fashion-mnist-cpu.yaml"
    proc = edvae("train", "--config", str(config), "--method", method, "--steps", "300",
                 "--width", "8", "--seed", "0", "--no-progress", "--set", "train.eval_every=0",
                 "--set", "train.limit_test=512", "--set", "train.log_every=25",
                 "--set", "train.threads=1", "--out", str(run))
    result = json.loads(proc.stdout)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["mse"], sum(r["mse"] for r in rows[-3:]) / 3
    assert last < 0.5 * first, (first, last)  # the reconstruction loss falls
    assert result["mse"] < 0.07  # pixels in [-0.5, 0.5]: zero output gives ~0.17, the mean image ~0.1
    # codes are used: 300 steps already collapse to a few codes (docs/results.md), but not to one
    assert result["used_codes"] >= 2 and result["perplexity"] > 1.2
    again = json.loads(edvae("eval", str(run), "--json").stdout)
    for key in ("mse", "perplexity", "batch_perplexity", "used_codes", "entropy_mean", "uncertainty_mean"):
        assert again[key] == result[key], key  # the saved model reproduces its evaluation
    for png in ("reconstructions.png", "code_usage.png", "entropy_maps.png"):
        assert (run / png).stat().st_size > 1000
