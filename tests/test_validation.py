"""Bad input stops every command before any work: exit 2, one line naming the problem, and no file
written or changed (a damaged run folder, options of the wrong type, an unknown dataset, a resume
with other settings)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edvae.cli import main

TINY = ["--set", "model.width=4", "--set", "model.codebook_size=16", "--set", "model.codebook_dim=4",
        "--set", "train.threads=1", "--set", "train.device=cpu"]
SYNTH = ["--dataset", "synthetic", "--set", "train.limit_train=64", "--set", "train.limit_test=16",
         "--batch-size", "8"]
PRIOR = ["--set", "model.channels=8", "--set", "model.blocks=1", "--set", "model.res_blocks=0",
         "--set", "model.heads=1", "--set", "train.batch_size=8", "--device", "cpu"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A trained tiny run with a fitted prior (both a few steps)."""
    root = tmp_path_factory.mktemp("finished")
    run = root / "run"
    assert main(["train", "--method", "edvae", "--steps", "4", "--no-progress", *SYNTH, *TINY,
                 "--set", "train.checkpoint_every=2", "--out", str(run)]) == 0
    assert main(["prior", "train", str(run), "--out", str(root / "prior"), "--steps", "2", "--no-progress",
                 *PRIOR]) == 0
    return run


def expect_exit_2(capsys, argv: list[str], *needles: str) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("edvae: error:") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def damage(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])
    else:
        path.write_bytes(b"\x00garbage, not what this file should hold\xff" * 3)


def commands(run: Path, out: Path) -> dict[str, list[str]]:
    """Every command that reads a run folder, each writing (if it got that far) under `out`."""
    prior = run.parent / "prior"
    image = Path(__file__).parent / "data" / "does-not-matter.png"
    return {
        "eval": ["eval", str(run)],
        "encode": ["encode", str(run), str(image), "-o", str(out / "codes.npy")],
        "decode": ["decode", str(run), str(out / "codes.npy"), "-o", str(out / "decoded")],
        "prior": ["prior", "train", str(run), "--out", str(out / "prior"), "--steps", "2", *PRIOR],
        "sample": ["sample", str(run), "-n", "2", "--prior", str(prior), "--out", str(out / "samples")],
        "fid": ["fid", "--run", str(run), "--reconstructions", "--features", "classifier",
                "--classifier", str(out / "classifier.safetensors"), "-o", str(out / "fid.json")],
    }


# which file of the run folder each command reads first
READS = {"eval": ("model.safetensors", "config.json"), "encode": ("model.safetensors",),
         "decode": ("model.safetensors",), "prior": ("model.safetensors", "config.json"),
         "sample": ("model.safetensors",), "fid": ("model.safetensors", "config.json")}


@pytest.mark.parametrize("how", ["missing", "truncated", "garbage"])
def test_a_damaged_run_folder_is_one_line_naming_the_file(finished, tmp_path, capsys, how):
    for command, files in READS.items():
        for name in files:
            run = tmp_path / f"{command}-{name}" / "run"
            shutil.copytree(finished, run)
            shutil.copytree(finished.parent / "prior", run.parent / "prior")
            damage(run / name, how)
            out = tmp_path / f"{command}-{name}" / "out"
            before = snapshot(run.parent)
            expect_exit_2(capsys, commands(run, out)[command], str(run / name))
            assert snapshot(run.parent) == before and not out.exists(), (command, name)


@pytest.mark.parametrize("how", ["missing", "truncated", "garbage"])
def test_resume_from_a_damaged_checkpoint_is_one_line_naming_it(finished, tmp_path, capsys, how):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    damage(run / "checkpoint.safetensors", how)
    before = snapshot(run)
    expect_exit_2(capsys, ["train", "--out", str(run), "--resume", "--no-progress"], "checkpoint.safetensors")
    assert snapshot(run) == before


def test_resume_with_other_settings_names_them_and_changes_nothing(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = snapshot(run)
    err = expect_exit_2(capsys, ["train", "--out", str(run), "--resume", "--set", "model.width=8",
                                 "--set", "train.lr=0.5"], "model.width (4 stored, 8 given)",
                        "train.lr (0.001 stored, 0.5 given)")
    assert "train.steps" not in err
    assert snapshot(run) == before
    # a larger step budget, another device or thread count are not other settings
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--no-progress",
                 "--set", "train.threads=1", "--set", "train.device=cpu"]) == 0
    expect_exit_2(capsys, ["train", "--out", str(run), "--resume", "--steps", "2"],
                  "train.steps (6 stored, 2 given)")
    prior = tmp_path / "prior"
    shutil.copytree(finished.parent / "prior", prior)
    before = snapshot(prior)
    expect_exit_2(capsys, ["prior", "train", str(finished), "--out", str(prior), "--resume",
                           "--set", "train.lr=1.0"], "train.lr")
    assert snapshot(prior) == before


@pytest.mark.parametrize("argv, needle", [
    (["--method", "edvae", "--set", "model.options.clamp_max=abc"],
     "model.options.clamp_max: expected a number, got 'abc'"),
    (["--method", "edvae", "--set", "model.options.dirichlet_sample=maybe"],
     "model.options.dirichlet_sample: expected true or false, got 'maybe'"),
    (["--method", "vq-ste++", "--set", "model.options.affine_groups=1.5"],
     "model.options.affine_groups: expected an integer, got 1.5"),
    (["--method", "edvae", "--set", "model.options.clamp_max=0"], "clamp_max must be in (0, 80]"),
    (["--method", "edvae", "--set", "model.options.nope=1"], "unknown config key model.options.nope"),
    (["--method", "dvae", "--set", "train.dataset=no-such-set"], "unknown dataset 'no-such-set'"),
    (["--method", "gs-vq", "--set", "model.eval_mode=best"], "eval_mode must be one of"),
    # pretraining ends by setting the codebook by K-means: FSQ's and LFQ's codes are fixed
    (["--method", "fsq", "--set", "model.options.levels=2,2,2,2", "--pretrain-steps", "1"],
     "config key train.pretrain_steps: fsq has no codebook for the K-means that ends pretraining to set"),
    (["--method", "lfq", "--pretrain-steps", "1"], "config key train.pretrain_steps: lfq has no codebook"),
])
def test_bad_config_values_stop_before_anything_is_written(tmp_path, capsys, argv, needle):
    out = tmp_path / "run"
    expect_exit_2(capsys, ["train", *argv, "--steps", "2", "--out", str(out), *TINY], needle)
    assert not out.exists()


def test_every_training_command_takes_the_same_flags(finished, tmp_path):
    """--steps, --batch-size, --seed and --device mean the same on `prior train` as on `train`."""
    prior = tmp_path / "prior"
    assert main(["prior", "train", str(finished), "--out", str(prior), "--steps", "3", "--batch-size", "4",
                 "--seed", "7", "--no-progress", *PRIOR[:-4]]) == 0
    import json

    t = json.loads((prior / "config.json").read_text())["train"]
    assert (t["steps"], t["batch_size"], t["seed"]) == (3, 4, 7)
    rows = (prior / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["step"] == 3


def test_python_dash_m_edvae_cli_runs_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edvae.cli", "eval", str(tmp_path / "none")],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2 and "not a finished run" in proc.stderr
