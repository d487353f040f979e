import math
import sys
from pathlib import Path

import pytest

from edvae.data import fashion_mnist

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from paired_seeds import two_sided_p  # noqa: E402


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5, 6.0])
def test_two_sided_p_matches_the_closed_form_at_two_degrees_of_freedom(t):
    # Student's t with 2 dof: P(|T| >= t) = 1 - t / sqrt(2 + t^2)
    assert two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)


def test_two_sided_p_at_tabulated_quantiles():
    # 97.5% quantiles of Student's t: 2.776445 (4 dof), 2.446912 (6 dof); 95%: 1.812461 (10 dof)
    assert two_sided_p(2.776445, 4) == pytest.approx(0.05, rel=1e-5)
    assert two_sided_p(-2.446912, 6) == pytest.approx(0.05, rel=1e-5)
    assert two_sided_p(1.812461, 10) == pytest.approx(0.10, rel=1e-5)
    assert two_sided_p(0.0, 5) == pytest.approx(1.0, rel=1e-9)


def test_two_sided_p_matches_the_cauchy_at_one_degree_of_freedom():
    assert two_sided_p(1.7, 1) == pytest.approx(1 - 2 / math.pi * math.atan(1.7), rel=1e-6)


def test_the_quantizer_fingerprint_matches_itself_and_names_a_changed_number(tmp_path):
    import subprocess

    from safetensors.torch import load_file, save_file

    script = Path(__file__).parents[1] / "scripts" / "quantizer_fingerprint.py"
    stem = str(tmp_path / "fp")

    def run(mode):
        return subprocess.run([sys.executable, str(script), mode, stem], capture_output=True, text=True)

    assert run("check").returncode != 0  # nothing saved yet: refused
    assert run("save").returncode == 0
    same = run("check")
    assert same.returncode == 0 and "ALL EQUAL" in same.stdout
    tensors = load_file(stem + ".safetensors")
    key = next(k for k, v in tensors.items() if v.dtype.is_floating_point and v.numel() > 1)
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = tensors[key].view(-1)[0] + 1
    save_file(tensors, stem + ".safetensors")
    changed = run("check")
    assert changed.returncode == 1 and f"differs: {key}" in changed.stdout


def test_the_logit_range_of_a_run_falls_with_the_level(tmp_path):
    import subprocess

    from edvae.cli import main

    run = tmp_path / "run"
    tiny = ["train.dataset=synthetic", "train.limit_train=64", "train.limit_test=32", "train.batch_size=8",
            "train.steps=10", "model.width=4", "model.codebook_size=16", "model.codebook_dim=4",
            "model.options.clamp_max=15"]
    assert main(["train", "--method", "edvae", "--out", str(run), "--no-progress",
                 *[a for s in tiny for a in ("--set", s)]]) == 0
    script = Path(__file__).parents[1] / "scripts" / "logit_range.py"
    out = subprocess.run([sys.executable, str(script), str(run)], capture_output=True, text=True, check=True)
    row = out.stdout.splitlines()[-1].split("|")
    assert row[1].strip() == "run" and row[2].strip() == "15"
    median, p99, top = map(float, row[3].split("/"))
    shares = [float(c) for c in row[4:-1]]
    assert median <= p99 <= top and len(shares) == 5
    # the largest logit per position, computed here on the run's 32 test images
    import torch

    from edvae.data import to_model_input
    from edvae.model import DiscreteVAE
    from edvae.run_folder import load_split, run_config

    test = load_split(run_config(run), "test")
    with torch.no_grad():
        largest = DiscreteVAE.load(run).encoder(to_model_input(test.batch(torch.arange(len(test))))).amax(1)
    assert abs(top - float(largest.max())) < 0.051
    expected = [float((largest >= v).double().mean()) for v in (10, 15, 20, 25, 30)]
    assert all(abs(a - b) < 5e-4 for a, b in zip(shares, expected, strict=True))


SCRIPTS = sorted((Path(__file__).parents[1] / "scripts").glob("*.py"))


def run_script(name: str, *args: str, cwd: Path | None = None):
    import subprocess

    script = Path(__file__).parents[1] / "scripts" / name
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_script_answers_help_with_its_usage(script):
    done = run_script(script.name, "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage:") and done.stderr == ""


@pytest.mark.parametrize("args, says", [
    (("logit_range.py", "NOPE"), "error: NOPE/config.json is missing"),
    (("study_curves.py", "NOPE"), "error: no folder NOPE"),
    (("study_records.py", "NOPE", "DEST"), "error: no study folder NOPE"),
    (("quantizer_fingerprint.py", "check", "NOPE"), "error: no fingerprint NOPE.safetensors"),
    (("plot_width_series.py", "--out", "w.png", "16=NOPE.json"), "error: NOPE.json: not a readable"),
    (("paired_seeds.py", "NOPE"), "error: NOPE: not a readable"),
    (("make_fashion_mnist_subset.py", "--src", "NOPE", "--dest", "out"),
     "error: NOPE: neither train-images-idx3-ubyte.gz nor train-images-idx3-ubyte found"),
], ids=lambda a: a[0] if isinstance(a, tuple) else "")
def test_a_script_given_a_missing_input_says_so_in_one_line_exit_2_and_writes_nothing(tmp_path, args, says):
    done = run_script(*args, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.startswith(says) and done.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not fashion_mnist.DEBIAN_DIR.is_dir(), reason="needs the dataset-fashion-mnist package")
def test_the_packaged_fashion_mnist_subset_is_rebuilt_byte_for_byte_from_the_full_set(tmp_path):
    done = run_script("make_fashion_mnist_subset.py", "--src", str(fashion_mnist.DEBIAN_DIR),
                      "--dest", str(tmp_path))
    assert done.returncode == 0, done.stderr
    shipped = sorted(p.name for p in fashion_mnist.SUBSET_DIR.glob("*.gz"))
    assert sorted(p.name for p in tmp_path.iterdir()) == shipped and len(shipped) == 4
    for name in shipped:  # the first 6,000 / 1,000 images and labels of each split
        assert (tmp_path / name).read_bytes() == (fashion_mnist.SUBSET_DIR / name).read_bytes(), name


def test_paired_seeds_reads_a_compare_list_and_a_study_results_file_alike(tmp_path):
    import json

    # EdVAE's perplexity falls as its uncertainty rises: the correlation must come out -1.00
    rows = [{"method": m, "seed": s, "perplexity": p, **({"uncertainty_mean": u} if m == "edvae" else {})}
            for s, (p, u) in enumerate([(30.0, 0.3), (20.0, 0.4), (10.0, 0.5)])
            for m in ("edvae", "dvae")]
    for r in rows:
        if r["method"] == "dvae":
            r["perplexity"] = 10.0 + r["seed"]
    (tmp_path / "compare.json").write_text(json.dumps(rows))
    (tmp_path / "study.json").write_text(json.dumps({"name": "x", "runs": rows}))
    outs = [run_script("paired_seeds.py", str(tmp_path / f)) for f in ("compare.json", "study.json")]
    assert [o.returncode for o in outs] == [0, 0] and outs[0].stdout == outs[1].stdout
    assert "ratio per seed 3.00, 1.82, 0.83" in outs[0].stdout
    assert "correlation of edvae's uncertainty with its perplexity -1.00" in outs[0].stdout
