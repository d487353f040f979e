"""`edvae bench`: study files, the one grid engine (validation, resume after SIGKILL, parallel
runs, live progress), the report's tables, and the demo's closing sentences."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edvae.bench import Runner, RunSpec, Task, check_existing, config_of, settings_differ, validate_runs
from edvae.cli import main
from edvae.demo_summary import LARGER, closing_sentences
from edvae.errors import EdvaeError
from edvae.progress import Snapshot, last_step, status_line
from edvae.quantizers import build_quantizer
from edvae.study_file import PAPER_SEEDS, PROTOCOLS, load_study, plan
from edvae.study_generation import generation_tasks
from edvae.study_report import cell, collect_rows, sweep_figure, table

ROOT = Path(__file__).parents[1]
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
# the paper's protocol settings, written here as numbers: beta_max per method (EdVAE's per data set)
BETA = {"dvae": 5e-5, "gs-vq": 5e-6, "vq-ema": 0.0, "sq-vae": 0.0, "vq-ste++": 0.0}
EDVAE_BETA = {"cifar10": 5e-7, "celeba": 1e-7, "lsun-church": 1e-7}
IMAGE_SIZE = {"cifar10": 32, "celeba": 64, "lsun-church": 128}
TINY_STUDY = """name: tiny
methods: [edvae, dvae]
seeds: [0]
scales:
  cpu-small: {protocol: A}
tables:
  - {metric: perplexity, rows: method, columns: dataset}
figures:
  - {kind: curves, metrics: [test_perplexity]}
"""
TINY_SET = ["train.dataset=synthetic", "train.limit_train=64", "train.limit_test=32", "train.batch_size=8",
            "train.steps=40", "train.checkpoint_every=10", "train.log_every=10", "train.eval_every=20",
            "train.eval_subset=16", "model.width=4", "model.codebook_size=16", "model.codebook_dim=4"]


def tiny_study(tmp_path: Path) -> Path:
    """A study file with its own configs/ beside it (cpu-small reads protocol A from there)."""
    (tmp_path / "studies").mkdir()
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / PROTOCOLS["A"], tmp_path / "configs")
    path = tmp_path / "studies" / "tiny.yaml"
    path.write_text(TINY_STUDY)
    return path


def bench_argv(study: Path, out: Path) -> list[str]:
    argv = ["bench", str(study), "--scale", "cpu-small", "--out", str(out), "--jobs", "1", "--no-progress"]
    for s in TINY_SET:
        argv += ["--set", s]
    return argv


def without_seconds(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_study_killed_mid_run_finishes_without_redoing_finished_runs_and_the_same_results(tmp_path):
    study = tiny_study(tmp_path)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert main(bench_argv(study, whole)) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "edvae", *bench_argv(study, killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    runs = [killed / "fashion-mnist" / f"{m}-seed0" for m in ("edvae", "dvae")]
    deadline = time.monotonic() + 240
    # wait until one run has finished and the next one is between checkpoints
    while not ((runs[0] / "eval.json").is_file() and (runs[1] / "checkpoint.safetensors").is_file()):
        assert proc.poll() is None and time.monotonic() < deadline, "ended before it could be killed"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its child, at once
    proc.wait()
    assert not (runs[1] / "eval.json").is_file()
    listing = subprocess.run([sys.executable, "-m", "edvae", *bench_argv(study, killed), "--list"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
    assert listing[1].endswith(": finished") and "(a checkpoint to resume from)" in listing[2]
    stamp = (runs[0] / "model.safetensors").stat().st_mtime_ns
    assert main(bench_argv(study, killed)) == 0
    assert (runs[0] / "model.safetensors").stat().st_mtime_ns == stamp  # the finished run was not redone
    for run in runs:
        again = whole / "fashion-mnist" / run.name
        assert json.loads((run / "eval.json").read_text()) == json.loads((again / "eval.json").read_text())
        assert without_seconds(run) == without_seconds(again)  # the curves too, row for row
    results = json.loads((killed / "results.json").read_text())
    assert [r["entry"] for r in results["runs"]] == ["edvae", "dvae"]
    assert results["runs"][0]["curves"]["test_perplexity"][0][0] == 20
    assert "| edvae |" in (killed / "tables.md").read_text()
    assert (killed / "figure1-fashion-mnist.png").read_bytes()[:4] == b"\x89PNG"


def test_a_diverged_run_is_finished_reported_as_diverged_and_never_rerun(tmp_path, capsys):
    """Table E.5 and Figure E.10 expect runs that diverge: such a run ends with its record
    (diverged.json), the study still writes its report with the run marked, and a second start
    skips it instead of training it into the same divergence again."""
    study = tiny_study(tmp_path)
    study.write_text(TINY_STUDY.replace("[edvae, dvae]", "[dvae]")
                     + "sweeps:\n  - {train.lr: [0.001, 1.0e+30]}\n")
    out = tmp_path / "out"
    assert main(bench_argv(study, out)) == 0
    assert "diverged fashion-mnist/dvae-lr1e+30-seed0: training diverged at step 10 (loss nan)" \
        in capsys.readouterr().out
    bad, good = out / "fashion-mnist" / "dvae-lr1e+30-seed0", out / "fashion-mnist" / "dvae-lr0.001-seed0"
    assert json.loads((bad / "diverged.json").read_text())["step"] == 10 and not (bad / "eval.json").exists()
    rows = {r["name"].split("/")[1]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert rows[bad.name]["diverged_at"] == 10 and "perplexity" not in rows[bad.name]
    assert rows[good.name]["perplexity"] > 0 and "diverged_at" not in rows[good.name]
    tables = (out / "tables.md").read_text()
    assert "| dvae | " in tables and "diverged (1 of 1)" in tables
    assert main([*bench_argv(study, out), "--list"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].endswith(f"2 runs; in {out}:")
    assert listing[1].endswith(": finished") and listing[2].endswith(": diverged at step 10")
    stamps = {p: p.stat().st_mtime_ns for p in (bad / "diverged.json", bad / "metrics.jsonl")}
    assert main(bench_argv(study, out)) == 0
    assert "start" not in capsys.readouterr().out  # nothing trained again
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_a_studys_run_records_finish_it_in_another_folder_without_training(tmp_path, capsys):
    """scripts/study_records.py keeps what the report reads (no weights, no checkpoint); copied into
    an empty output folder, the records are finished runs: nothing trains, the same results."""
    study = tiny_study(tmp_path)
    study.write_text(TINY_STUDY.replace("[edvae, dvae]", "[dvae]"))
    first, records, second = tmp_path / "first", tmp_path / "records", tmp_path / "second"
    assert main(bench_argv(study, first)) == 0
    (first / "fashion-mnist" / "unfinished").mkdir()
    (first / "fashion-mnist" / "unfinished" / "config.json").write_text("{}")
    script = ROOT / "scripts" / "study_records.py"
    done = subprocess.run([sys.executable, str(script), str(first), str(records)], capture_output=True,
                          text=True, check=True)
    assert "1 finished runs recorded" in done.stdout
    kept = sorted(p.name for p in (records / "fashion-mnist" / "dvae-seed0").iterdir())
    assert kept == ["config.json", "eval.json", "metrics.jsonl"]
    shutil.copytree(records, second)
    capsys.readouterr()
    assert main(bench_argv(study, second)) == 0
    assert "start" not in capsys.readouterr().out
    a, b = (json.loads((d / "results.json").read_text()) for d in (first, second))
    assert a["runs"] == b["runs"] and a["runs"][0]["perplexity"] > 0


def test_only_runs_the_matching_runs_and_the_rest_joins_them_later_in_the_same_folder(tmp_path, capsys):
    """A study split over sessions: --only trains and reports the runs it names; the whole study
    started later in the same folder trains just the others and reports all of them."""
    study, out = tiny_study(tmp_path), tmp_path / "out"
    assert main([*bench_argv(study, out), "--only", "fashion-mnist/dv*"]) == 0
    assert "start fashion-mnist/dvae-seed0" in capsys.readouterr().out
    assert not (out / "fashion-mnist" / "edvae-seed0").exists()
    first = json.loads((out / "results.json").read_text())["runs"]
    assert [r["entry"] for r in first] == ["dvae"]
    tables = (out / "tables.md").read_text()
    assert "| dvae |" in tables and "| edvae |" not in tables
    stamp = (out / "fashion-mnist" / "dvae-seed0" / "eval.json").stat().st_mtime_ns
    assert main([*bench_argv(study, out), "--list"]) == 0
    assert [line.rsplit(": ", 1)[1] for line in capsys.readouterr().out.splitlines()[1:]] == [
        "not started", "finished"]
    assert main(bench_argv(study, out)) == 0
    printed = capsys.readouterr().out
    assert "start fashion-mnist/edvae-seed0" in printed and "start fashion-mnist/dvae" not in printed
    assert (out / "fashion-mnist" / "dvae-seed0" / "eval.json").stat().st_mtime_ns == stamp
    both = json.loads((out / "results.json").read_text())["runs"]
    assert [r["entry"] for r in both] == ["edvae", "dvae"] and both[1] == first[0]


def test_only_a_pattern_that_names_no_run_is_refused_before_any_work(tmp_path, capsys):
    study, out = tiny_study(tmp_path), tmp_path / "out"
    assert main([*bench_argv(study, out), "--only", "fashion-mnist/dvae-*", "--only", "cifar10/*"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--only cifar10/*: no run of tiny at cpu-small" in err
    assert not out.exists()
    assert main(["bench", str(study), "--scale", "cpu-small", "--list", "--only", "*/edvae-seed0"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == ["  fashion-mnist/edvae-seed0  (3000 steps, batch 32, "
                                                        f"width 16; {tmp_path}/configs/{PROTOCOLS['A']})"]


def test_a_sweep_figure_is_drawn_beside_runs_that_diverged_and_not_from_them_alone(tmp_path):
    rows = [{"entry": "edvae", "axes": {"model.options.clamp_max": c}, "perplexity": p}
            for c, p in ((10.0, 30.0), (20.0, 35.0))]
    rows.append({"entry": "edvae", "axes": {"model.options.clamp_max": 30.0}, "diverged_at": 700})
    assert sweep_figure(tmp_path / "a.png", rows, "perplexity", "model.options.clamp_max", "t")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert not sweep_figure(tmp_path / "b.png", rows[2:], "perplexity", "model.options.clamp_max", "t")


def test_a_listing_read_only_in_part_ends_quietly():
    """`edvae bench STUDY --list | head -1`: the closed pipe is no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "edvae", "bench", str(STUDIES[0]), "--scale", "cpu-small",
                             "--list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command has printed anything (it is still importing torch)
    _, err = proc.communicate(timeout=120)
    assert err == b"" and proc.returncode == 141


def test_a_table_cell_says_how_many_of_its_runs_diverged():
    runs = [{"perplexity": 10.0}, {"perplexity": 14.0}, {"diverged_at": 700}]
    assert cell(runs, "perplexity") == "12.0 +- 2.0 (1 of 3 diverged)"
    assert cell(runs[2:], "perplexity") == "diverged (1 of 1)"
    assert cell(runs[:2], "mse") == "-" and cell(runs[:2], "perplexity") == "12.0 +- 2.0"


def test_every_run_is_validated_before_any_starts(tmp_path, capsys):
    study = tiny_study(tmp_path)
    out = tmp_path / "out"
    assert main([*bench_argv(study, out), "--set", "model.options.clamp_max=abc"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "entry fashion-mnist/edvae-seed0" in err and "clamp_max" in err
    assert not out.exists()
    study.write_text(TINY_STUDY.replace("[edvae, dvae]", "[edvae, nope]"))
    assert main(bench_argv(study, out)) == 2
    assert "entry 'nope' is neither a method nor a variant" in capsys.readouterr().err
    # a bad swept value: the message names the point of the sweep, not only the entry
    study.write_text(TINY_STUDY + "sweeps:\n  - {model.options.clamp_max: [20, abc]}\n")
    assert main(bench_argv(study, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "entry fashion-mnist/edvae-seed0 at model.options.clamp_max=abc:" in err
    assert not out.exists()
    study.write_text(TINY_STUDY + "sweep: []\n")
    assert main(bench_argv(study, out)) == 2
    assert "unknown key 'sweep'" in capsys.readouterr().err and not out.exists()


def test_a_finished_run_with_other_settings_is_not_reused(tmp_path):
    spec = RunSpec("edvae-seed0", "edvae", 0, None, ["train.steps=10"])
    configs = validate_runs([spec])
    (tmp_path / "edvae-seed0").mkdir()
    stored = configs["edvae-seed0"].to_dict()
    stored["model"]["channels"] = 1  # what the trainer stores from its data: not a setting
    (tmp_path / "edvae-seed0" / "config.json").write_text(json.dumps(stored))
    check_existing([spec], configs, tmp_path)
    stored["train"]["lr"] = 5e-4
    (tmp_path / "edvae-seed0" / "config.json").write_text(json.dumps(stored))
    with pytest.raises(EdvaeError, match=r"other settings: train.lr \(0.0005 there, 0.001 planned\)"):
        check_existing([spec], configs, tmp_path)


def test_a_task_resumes_from_its_checkpoint_or_restarts_from_an_empty_folder(tmp_path):
    run = tmp_path / "run"
    task = Task("r", ["train", "x"], run / "eval.json", tmp_path / "r.log", run, 10,
                checkpoint=run / "checkpoint.safetensors", clear=run)
    assert task.command() == ["train", "x"]
    (run / "tensorboard").mkdir(parents=True)  # killed before its first checkpoint
    assert task.command() == ["train", "x"] and not run.exists()
    run.mkdir()
    (run / "checkpoint.safetensors").write_bytes(b"")
    assert task.command() == ["train", "x", "--resume"]
    (run / "eval.json").write_text("{}")
    assert task.command() is None


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_each_shipped_study_holds_the_papers_settings_at_the_paper_scale(path):
    p = plan(load_study(path), "paper")
    configs = validate_runs(p.runs)
    swept = {k for sweep in p.sweeps for k in sweep}
    assert p.runs and {r.seed for r in p.runs} == set(PAPER_SEEDS) == {42, 1773, 1}
    for spec in p.runs:
        m, t, dataset = configs[spec.name].model, configs[spec.name].train, spec.labels["dataset"]
        assert (t.dataset, m.image_size) == (dataset, IMAGE_SIZE[dataset])
        assert (t.steps, t.schedule_steps, t.batch_size, m.width) == (150_000, 150_000, 128, 128)
        assert (t.lr, t.lr_min, t.lr_anneal_steps, t.lr_schedule) == (1e-3, 1.25e-6, 50_000, "quarter-cosine")
        assert t.beta_ramp_steps == 5_000
        if "model.codebook_size" not in swept:
            assert m.codebook_size == 512
        if "model.codebook_dim" not in swept:
            assert m.codebook_dim == 16
        if m.architecture == "dalle":
            assert m.first_kernel == (7 if dataset == "lsun-church" else 3)
        if "train.beta_max" not in swept:
            assert t.beta_max == (EDVAE_BETA[dataset] if m.method == "edvae" else BETA[m.method])
        if m.method == "edvae" and "model.options.clamp_max" not in swept:
            assert build_quantizer("edvae", 8, 2, **m.options).clamp_max == 20.0  # set or default
        if spec.labels["entry"] == m.method:  # a variant changes only what it names
            assert t.temperature_init == 1.0 and t.temperature_decay == 1e-5


EXPECTED_CPU_SMALL = {  # runs at cpu-small, and the protocol, fixed before any run (docs/reproduction.md)
    "table-1-2": (18, "D"), "table-3-fid": (18, "D"), "figure-2-entropy": (6, "D"),
    "figure-3-uncertainty": (3, "D"), "figure-6-codebook": (20, "C"), "appendix-e1-temperature": (15, "C"),
    "table-e5-clamp": (15, "C"), "figure-e10-beta": (14, "C")}


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_each_shipped_study_builds_its_run_list_at_cpu_small(path):
    p = plan(load_study(path), "cpu-small")
    configs = validate_runs(p.runs)
    count, protocol = EXPECTED_CPU_SMALL[path.stem]
    assert len(p.runs) == count
    assert {Path(r.config).name for r in p.runs} == {PROTOCOLS[protocol]}
    for spec in p.runs:
        cfg = configs[spec.name]
        assert cfg.train.dataset == "fashion-mnist" and spec.name.startswith("fashion-mnist/")
        assert cfg.train.lr_schedule == "half-cosine"  # the pinned protocol, as committed
        assert cfg.model.width == 64  # the width where the effect shows here (docs/results.md)
        assert cfg.train.steps == {"C": 3000, "D": 6000}[protocol]


def test_every_experiment_of_the_paper_has_a_study():
    papers = {load_study(p).meta["paper"] for p in STUDIES}
    assert papers == {"Tables 1 and 2", "Table 3", "Figure 2", "Figure 3", "Figure 6", "Appendix E.1",
                      "Table E.5", "Figure E.10"}
    claims = sorted(c for p in STUDIES for c in load_study(p).meta["claims"])
    assert claims == list("abcdefghi")


def test_sweeps_share_their_base_point():
    p = plan(load_study(ROOT / "studies" / "figure-6-codebook.yaml"), "paper")
    names = [r.name for r in p.runs if r.labels["entry"] == "edvae" and r.labels["dataset"] == "cifar10"
             and r.seed == 42]
    assert len(names) == 10  # 5 sizes + 6 dimensions, 512 x 16 once
    base = next(r for r in p.runs if r.name == "cifar10/edvae-codebook_size512-codebook_dim16-seed42")
    assert base.labels["sweeps"] == [0, 1]


def test_tables_are_mean_and_population_std_over_seeds_in_the_papers_layout():
    rows = [{"entry": e, "dataset": d, "seed": s, "axes": {}, "perplexity": v}
            for e, d, s, v in [("edvae", "cifar10", 0, 10.0), ("edvae", "cifar10", 1, 14.0),
                               ("dvae", "cifar10", 0, 5.0), ("dvae", "cifar10", 1, 5.0),
                               ("edvae", "celeba", 0, 3.0)]]
    text = table(rows, {"metric": "perplexity", "rows": "method", "columns": "dataset"})
    assert "| method | cifar10 | celeba |" in text
    assert "| edvae | 12.0 +- 2.0 | 3.0 |" in text and "| dvae | 5.0 +- 0.0 | - |" in text  # 3.0: one run
    sizes = (128, 256, 128, 256)
    swept = [{**r, "axes": {"model.codebook_size": k}} for r, k in zip(rows[:4], sizes, strict=True)]
    text = table(swept, {"metric": "perplexity", "rows": "method", "columns": "model.codebook_size",
                         "scale": 1000, "title": "T"})
    assert "**T**" in text and "| method | 128 | 256 |" in text and "| edvae | 10000.00 | 14000.00 |" in text


def test_the_progress_line_reads_the_runs_metrics(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 50}\n{"step": 100}\n{"step": 1')  # a row being written
    assert last_step(tmp_path) == 100 and last_step(tmp_path / "none") == 0
    line = status_line(Snapshot(3, 12, 2, 41_200, 72_000), rate=12.5, elapsed=3600)
    assert line == ("runs 3/12 done, 2 running | steps 41,200/72,000 (57%) | 12.5 steps/s | ETA 41m04s | "
                    "1h00m elapsed")
    assert "ETA -" in status_line(Snapshot(0, 2, 2, 0, 100), rate=None, elapsed=1)


@pytest.mark.slow
def test_a_generation_study_trains_fits_priors_samples_and_reports_fd_end_to_end(tmp_path, capsys):
    """Table 3's chain through the bench on a tiny study: training, a prior per run, samples, one
    classifier trained by the first FD task and read by the second, FD per run in the tables."""
    study = tiny_study(tmp_path)
    tables = ("  - {metric: fd_edvae_classifier, rows: method, columns: dataset}\n"
              "  - {metric: bits_per_code, rows: method, columns: dataset}\n")
    generation = """generation:
  prior_steps: 6
  samples: 6
  classifier_steps: 5
  fid: [classifier]
  prior_set: [model.channels=8, model.blocks=1, model.res_blocks=1, train.batch_size=8, train.log_every=2,
              train.checkpoint_every=3]
"""
    study.write_text(TINY_STUDY.replace("  - {metric: perplexity, rows: method, columns: dataset}\n", tables)
                     + generation)
    out = tmp_path / "out"
    assert main(bench_argv(study, out)) == 0
    rows = {r["entry"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    for method in ("edvae", "dvae"):
        run = out / "fashion-mnist" / f"{method}-seed0"
        assert len(list((run / "prior" / "samples" / "images").glob("*.png"))) == 6
        fd = json.loads((run / "fd-classifier.json").read_text())
        assert fd["metric"] == "fd_edvae_classifier" and fd["n_generated"] == 6 and fd["value"] > 0
        assert rows[method]["fd_edvae_classifier"] == fd["value"] and rows[method]["bits_per_code"] > 0
    assert len(list(out.glob("fd-classifier-*.safetensors"))) == 1  # one classifier, shared
    capsys.readouterr()
    assert main([*bench_argv(study, out), "--list"]) == 0
    listing = capsys.readouterr().out.splitlines()[1:]
    assert len(listing) == 2 and all(line.endswith(": finished; generation done: prior, samples, FD")
                                     for line in listing)
    # the records (no weights, no sample images) finish the study in an empty folder: nothing runs
    records, again = tmp_path / "records", tmp_path / "again"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "study_records.py"), str(out), str(records)],
                   capture_output=True, check=True)
    assert len(list(records.rglob("samples.png"))) == 2 and not list(records.rglob("model.safetensors"))
    assert not [p for p in records.rglob("*.png") if p.parent.name == "images"]
    assert [p.name for p in records.glob("*.safetensors")] == ["fd-classifier-synthetic.safetensors"]
    shutil.copytree(records, again)
    assert main(bench_argv(study, again)) == 0
    assert "start" not in capsys.readouterr().out
    assert json.loads((again / "results.json").read_text())["runs"] == \
        json.loads((out / "results.json").read_text())["runs"]
    tables = (out / "tables.md").read_text()
    assert f"| edvae | {rows['edvae']['fd_edvae_classifier']:.1f} |" in tables


def test_the_progress_line_leaves_out_the_steps_of_failed_and_skipped_tasks(tmp_path):
    """A prior that failed at once never runs its steps: they would hold the ETA up for ever."""
    tasks = [Task(name, ["train"], tmp_path / name / "eval.json", tmp_path / f"{name}.log", tmp_path / name,
                  steps=1000) for name in ("a", "b", "c")]
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "metrics.jsonl").write_text('{"step": 400}\n')
    runner = Runner(tasks, jobs=1, threads=1)
    assert runner.snapshot([]) == Snapshot(0, 3, 0, 400, 3000, 0)
    runner.failed.append("b")
    runner.skipped.add("c")
    assert runner.snapshot([]) == Snapshot(1, 3, 0, 400, 1000, 1)


def test_generation_studies_fit_a_prior_sample_and_measure(tmp_path):
    p = plan(load_study(ROOT / "studies" / "table-3-fid.yaml"), "cpu-small")
    configs = validate_runs(p.runs)
    tasks = generation_tasks(p.runs, configs, tmp_path, p.generation, threads=1)
    assert [t.wave for t in tasks] == sorted(t.wave for t in tasks)
    prior = next(t for t in tasks if t.argv[:2] == ["prior", "train"])
    assert prior.steps == 1500 and "model.channels=64" in prior.argv and prior.after == p.runs[0].name
    fd = [t for t in tasks if t.argv[0] == "fid"]
    assert len(fd) == 18 and fd[0].alone and not any(t.alone for t in fd[1:])  # one classifier trains
    assert all("--inception-weights" not in t.argv for t in tasks)  # FID only where weights are given
    with_weights = generation_tasks(p.runs, configs, tmp_path, p.generation, 1, inception_weights="w.pth")
    assert sum("--inception-weights" in t.argv for t in with_weights) == 18
    run = tmp_path / p.runs[0].name
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps({"perplexity": 3.0, "code_counts": [1]}))
    (run / "fd-classifier.json").write_text(json.dumps({"metric": "fd_edvae_classifier", "value": 8.7}))
    row = collect_rows(p.runs[:1], tmp_path)[0]
    assert row["fd_edvae_classifier"] == 8.7 and "fid" not in row and "code_counts" not in row


def demo_rows(edvae: tuple, dvae: tuple) -> list[dict]:
    return [{"method": m, "seed": 0, "perplexity": p, "used_codes": u, "mse": e, "codebook_size": 512}
            for m, (p, u, e) in (("edvae", edvae), ("dvae", dvae))]


def test_the_demos_sentences_follow_its_numbers_in_both_directions():
    behind = closing_sentences(demo_rows((5.2, 9, 0.0121), (9.0, 16, 0.0110)))
    assert behind[0].startswith("dVAE used more of the codebook: argmax perplexity 9.0 (16 of 512 codes)")
    assert "EdVAE's 5.2 (9 codes), at a test MSE of 11.00e-3 against 12.10e-3 (one seed)." in behind[0]
    assert "does not show the paper's effect (EdVAE is not ahead: the ratio of perplexities is 0.58" \
        in behind[1]
    ahead = closing_sentences(demo_rows((36.0, 66, 0.0056), (14.0, 19, 0.0060)))
    assert ahead[0].startswith("EdVAE used more of the codebook: argmax perplexity 36.0 (66 of 512 codes)")
    assert "shows the paper's effect" in ahead[1] and "2.57x dVAE's" in ahead[1]
    costly = closing_sentences(demo_rows((20.0, 30, 0.0110), (10.0, 15, 0.0100)))
    assert "does not show" in costly[1] and "EdVAE's MSE is 10% above dVAE's" in costly[1]
    for sentences in (behind, ahead, costly):
        assert "CPU protocol D" in sentences[2] and "35.7 against dVAE 13.8" in sentences[2]


def test_the_larger_budget_quoted_by_the_demo_is_the_committed_protocol_d():
    rows = json.loads((ROOT / LARGER["results"]).read_text())
    ppl = {m: [r["perplexity"] for r in rows if r["method"] == m] for m in ("edvae", "dvae")}
    assert round(sum(ppl["edvae"]) / 3, 1) == LARGER["edvae"]
    assert round(sum(ppl["dvae"]) / 3, 1) == LARGER["dvae"]
    assert sum(e > d for e, d in zip(ppl["edvae"], ppl["dvae"], strict=True)) == LARGER["ahead"] == 3


@pytest.mark.slow
def test_the_demo_is_a_study_preset_that_ends_with_its_sentences(tmp_path, capsys):
    out = tmp_path / "demo"
    argv = ["demo", "--steps", "20", "--out", str(out)]
    for s in TINY_SET[:4] + TINY_SET[-3:]:
        argv += ["--set", s]
    assert main(argv) == 0
    printed = capsys.readouterr()
    rows = json.loads((out / "results.json").read_text())
    sentences = closing_sentences(rows)
    assert all(s in printed.out for s in sentences) and sentences[2] in (out / "summary.md").read_text()
    assert "bench: runs 2/2 done" in printed.err  # the live display (a plain line when not a terminal)


def test_the_trainer_follows_the_configured_schedules(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--method", "dvae", "--out", str(out), "--no-progress"]
    for s in [*TINY_SET[:4], "train.steps=20", "train.log_every=10", "train.eval_every=0",
              *TINY_SET[-3:], "train.lr_schedule=quarter-cosine", "train.temperature_init=2.0",
              "train.lr_anneal_steps=150000"]:
        argv += ["--set", s]
    assert main(argv) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    from edvae.config import from_dict
    from edvae.schedules import Schedules

    sched = Schedules.from_train(from_dict(json.loads((out / "config.json").read_text())).train)
    assert [r["lr"] for r in rows] == [sched.lr_at(r["step"] - 1) for r in rows]
    assert [r["temperature"] for r in rows] == [sched.temperature_at(r["step"] - 1) for r in rows]
    assert rows[0]["temperature"] > 1.0  # tau_0 = 2


def test_the_two_readings_of_appendix_e1_give_the_temperatures_they_name():
    from edvae.schedules import Schedules

    p = plan(load_study(ROOT / "studies" / "appendix-e1-temperature.yaml"), "cpu-small")
    configs = validate_runs(p.runs)
    tau = {spec.labels["entry"]: Schedules.from_train(configs[spec.name].train) for spec in p.runs}
    steps = configs[p.runs[0].name].train.steps
    assert tau["dvae"].temperature_at(0) == 1.0
    assert tau["dvae-tau2"].temperature_at(0) == 2.0 and tau["dvae-tau5"].temperature_at(0) == 5.0
    assert tau["dvae-tau2"].temperature_at(steps) == pytest.approx(2.0 * tau["dvae"].temperature_at(steps))
    for name, value in (("dvae-tau2-constant", 2.0), ("dvae-tau5-constant", 5.0)):
        assert tau[name].temperature_at(0) == tau[name].temperature_at(steps) == value
        # the floor is passed to the trainer by position already: constant on today's trainer too
        t = configs[next(s.name for s in p.runs if s.labels["entry"] == name)].train
        before = Schedules(t.steps, t.schedule_steps, t.lr, t.lr_min, t.lr_anneal_steps, t.beta_max,
                           t.beta_ramp_steps, t.temperature_decay, t.temperature_min)
        assert before.temperature_at(steps // 2) == value


def test_a_listing_names_a_run_folder_with_other_settings_as_the_bench_refuses_it(tmp_path, capsys):
    """--list says what the bench will do with each folder: a finished run copied in under another
    run's name is not `finished` there but a run with other settings, on which the bench stops."""
    study, out = tiny_study(tmp_path), tmp_path / "out"
    assert main([*bench_argv(study, out), "--only", "fashion-mnist/dv*"]) == 0
    shutil.copytree(out / "fashion-mnist" / "dvae-seed0", out / "fashion-mnist" / "edvae-seed0")
    capsys.readouterr()
    assert main([*bench_argv(study, out), "--list"]) == 0
    listing = capsys.readouterr().out.splitlines()[1:]
    assert listing[0].startswith("  fashion-mnist/edvae-seed0  ") and listing[1].endswith(": finished")
    assert "holds a run with other settings (model.method ('dvae' there, 'edvae' planned)" in listing[0]
    assert listing[0].endswith(": the bench stops on it")
    stamps = {p: p.stat().st_mtime_ns for p in (out / "fashion-mnist").rglob("*") if p.is_file()}
    assert main(bench_argv(study, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "study entry fashion-mnist/edvae-seed0:" in err
    assert "model.method ('dvae' there, 'edvae' planned)" in err
    assert {p: p.stat().st_mtime_ns for p in (out / "fashion-mnist").rglob("*") if p.is_file()} == stamps


def test_a_quantizer_option_set_to_its_default_is_the_same_run_as_the_option_left_unset(tmp_path):
    """A record whose config names `clamp_max: 20` (EdVAE's default) is the run a study plans with
    the option unset, so a sweep's record can stand for the default run of another study; another
    value of the option is still a run with other settings."""
    spec = RunSpec("fashion-mnist/edvae-seed0", "edvae", 0, None)
    planned = config_of(spec)
    assert planned.model.options == {}
    for clamp, differs in ((20.0, False), (25.0, True)):
        run = tmp_path / str(clamp)
        run.mkdir()
        stored = config_of(dataclasses.replace(spec, overrides=[f"model.options.clamp_max={clamp}"]))
        (run / "config.json").write_text(json.dumps(stored.to_dict()))
        differ = settings_differ(spec, planned, run)
        assert differ == (["model.options.clamp_max (25.0 there, 20.0 planned)"] if differs else [])
