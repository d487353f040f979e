"""`edvae compare`: a method x seed grid trained in parallel processes, resumable, one report."""

import json

from edvae.cli import main
from edvae.compare import collect, summary_table
from edvae.study_report import read_curves

GRID = ["--set", "train.dataset=synthetic", "--set", "train.limit_train=64", "--set", "train.limit_test=32",
        "--set", "train.batch_size=8", "--set", "train.steps=4", "--set", "model.width=4",
        "--set", "model.codebook_size=16", "--set", "model.codebook_dim=4", "--threads", "1"]


def test_grid_trains_every_run_reports_and_resumes_without_retraining(tmp_path, capsys):
    out = tmp_path / "grid"
    assert main(["compare", "--methods", "edvae", "dvae", "--seeds", "0", "1", "--jobs", "2",
                 "--out", str(out), *GRID]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert sorted((r["method"], r["seed"]) for r in rows) == [
        ("dvae", 0), ("dvae", 1), ("edvae", 0), ("edvae", 1)]
    for r in rows:
        run = json.loads((out / f"{r['method']}-seed{r['seed']}" / "config.json").read_text())
        assert run["model"]["method"] == r["method"] and run["train"]["seed"] == r["seed"]
        assert 0 < r["mse"] and 1 <= r["perplexity"] <= 16
    summary = (out / "summary.md").read_text()
    assert "| edvae | 2 |" in summary and "| dvae | 2 |" in summary
    # a second call finds every run finished: nothing is retrained, the report is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/model.safetensors")}
    capsys.readouterr()
    assert main(["compare", "--methods", "edvae", "dvae", "--seeds", "0", "1", "--out", str(out), *GRID]) == 0
    assert "start" not in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/model.safetensors")} == stamps


def test_a_failing_run_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "grid"
    # a valid config whose data is missing: it fails only once the run loads its data
    assert main(["compare", "--methods", "dvae", "--seeds", "0", "--out", str(out), *GRID,
                 "--set", "train.dataset=fashion-mnist", "--set", f"train.data_dir={tmp_path / 'none'}"]) == 2
    err = capsys.readouterr().err
    assert "runs failed: dvae-seed0" in err and str(out) in err


def test_every_run_is_validated_before_any_starts(tmp_path, capsys):
    """A bad value, in the shared settings or in one variant, stops the grid before a single
    process starts: exit 2, one line naming the grid entry, nothing written."""
    out = tmp_path / "grid"
    assert main(["compare", "--methods", "dvae", "--seeds", "0", "--out", str(out), *GRID,
                 "--set", "train.dataset=no-such-set"]) == 2
    captured = capsys.readouterr()
    assert "start" not in captured.out
    assert captured.err.count("\n") == 1 and "grid entry dvae-seed0" in captured.err
    assert "unknown dataset 'no-such-set'" in captured.err
    assert main(["compare", "--methods", "edvae", "bad", "--seeds", "0", "1", "--out", str(out), *GRID,
                 "--variant", "bad", "edvae", "model.options.clamp_max=abc"]) == 2
    captured = capsys.readouterr()
    assert "start" not in captured.out and "grid entry bad-seed0" in captured.err
    assert "model.options.clamp_max: expected a number, got 'abc'" in captured.err
    assert not out.exists()


def test_a_variant_is_a_method_with_its_own_settings(tmp_path):
    out = tmp_path / "grid"
    assert main(["compare", "--methods", "vq-ema", "vq-ema+pretrain", "--seeds", "0", "--jobs", "2",
                 "--variant", "vq-ema+pretrain", "vq-ema", "train.pretrain_steps=2",
                 "--out", str(out), *GRID, "--set", "train.eval_every=2", "--set", "train.log_every=2"]) == 0
    plain = json.loads((out / "vq-ema-seed0" / "config.json").read_text())
    pre = json.loads((out / "vq-ema+pretrain-seed0" / "config.json").read_text())
    assert plain["model"]["method"] == pre["model"]["method"] == "vq-ema"
    assert (plain["train"]["pretrain_steps"], pre["train"]["pretrain_steps"]) == (0, 2)
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == ["vq-ema", "vq-ema+pretrain"]
    assert "| vq-ema+pretrain | 1 |" in (out / "summary.md").read_text()
    # the figure's curves: test perplexity at steps 2 and 4 (the pretrained run quantizes from
    # step 2 on, so it is first evaluated at step 4)
    assert [s for s, _ in read_curves(out / "vq-ema-seed0")["test_perplexity"]] == [2, 4]
    assert [s for s, _ in read_curves(out / "vq-ema+pretrain-seed0")["test_perplexity"]] == [4]
    assert (out / "perplexity.png").read_bytes()[:4] == b"\x89PNG"


def test_unknown_entries_and_bad_variants_are_clear_errors(tmp_path, capsys):
    out = tmp_path / "grid"
    assert main(["compare", "--methods", "edvae", "no-such", "--out", str(out), *GRID]) == 2
    assert "unknown method or variant 'no-such'" in capsys.readouterr().err
    assert main(["compare", "--methods", "x", "--variant", "x", "no-such", "--out", str(out), *GRID]) == 2
    assert "unknown method 'no-such'" in capsys.readouterr().err
    assert main(["compare", "--methods", "x", "--variant", "x", "dvae", "steps",
                 "--out", str(out), *GRID]) == 2
    assert "expected KEY=VALUE, got 'steps'" in capsys.readouterr().err
    assert main(["compare", "--methods", "dvae", "--variant", "dvae", "edvae", "--out", str(out), *GRID]) == 2
    assert "label 'dvae'" in capsys.readouterr().err
    assert not out.exists()  # nothing was started


def test_a_grids_diverged_run_is_a_row_of_its_summary(tmp_path):
    for seed, record in ((0, {"eval.json": {"perplexity": 8.0, "mse": 0.01, "code_counts": [1]}}),
                         (1, {"diverged.json": {"step": 650, "message": "training diverged at step 650"}})):
        run = tmp_path / f"edvae-seed{seed}"
        run.mkdir()
        for name, data in record.items():
            (run / name).write_text(json.dumps(data))
    rows = collect(tmp_path, ["edvae"], [0, 1])
    assert rows[1] == {"method": "edvae", "seed": 1, "diverged_at": 650}
    assert "| edvae | 2 | 8.0 (1 of 2 diverged) |" in summary_table(rows, ["edvae"])
