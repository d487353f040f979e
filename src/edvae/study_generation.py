"""Table 3's stages after training, as engine tasks (bench.Task): for each run, a PixelSNAIL prior
fitted to its training codes (`edvae prior train`), samples drawn from it (`edvae sample`) and their
Frechet distance to the training split (`edvae fid`): FD_edvae-classifier always, FID (the paper's
metric) only where Inception weights are given; the two are written to different files and never
mixed (docs/prior.md).

The classifier of FD_edvae-classifier is trained once per data set by the first FD task of that
data set (run alone), then read by the others. A prior resumes from its checkpoint; sampling and
FD restart (their outputs are replaced).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .bench import RunSpec, Task
from .config import RunConfig
from .prior.train_prior import EVAL_FILE as PRIOR_EVAL

FD_FILE = "fd-classifier.json"
FID_FILE = "fid-inception.json"


def generation_tasks(specs: list[RunSpec], configs: dict[str, RunConfig], out: Path,
                     generation: dict[str, Any], threads: int,
                     inception_weights: str | None = None) -> list[Task]:
    """The prior, sample and FD/FID tasks of every run (none when `generation` is empty)."""
    if not generation:
        return []
    g = {"prior_steps": 20_000, "samples": 10_000, "temperature": 1.0, "classifier_steps": 1500,
         "fid": ["classifier", "inception"], **generation}
    tasks: list[Task] = []
    first_of_dataset: set[str] = set()
    for spec in specs:
        t = configs[spec.name].train
        tasks += run_tasks(spec.name, out, t.dataset, t.device, g, threads, inception_weights,
                           first=t.dataset not in first_of_dataset)
        first_of_dataset.add(t.dataset)
    # the first FD task of each data set trains the shared classifier: it runs before the others
    return sorted(tasks, key=lambda t: (t.wave, not t.alone))


def stage_files(run: Path) -> dict[str, Path]:
    """The result file of each generation stage of a run folder: the file that marks it finished."""
    return {"prior": run / "prior" / PRIOR_EVAL, "samples": run / "prior" / "samples" / "samples.json",
            "FD": run / FD_FILE, "FID": run / FID_FILE}


def run_tasks(name: str, out: Path, dataset: str, device: str, g: dict[str, Any], threads: int,
              inception_weights: str | None, first: bool) -> list[Task]:
    run = out / name
    files = stage_files(run)
    prior, samples = files["prior"].parent, files["samples"].parent
    steps = int(g["prior_steps"])
    fit = ["prior", "train", str(run), "--out", str(prior), "--no-progress", "--steps", str(steps),
           "--device", device, "--set", f"train.threads={threads}"]
    for assignment in g.get("prior_set", []):  # the prior's size and optimiser (docs/prior.md)
        fit += ["--set", str(assignment)]
    draw = ["sample", str(run), "-n", str(int(g["samples"])), "--prior", str(prior), "--out", str(samples),
            "--temperature", f"{float(g['temperature']):g}", "--seed", "0", "--device", device]
    fd = ["fid", "--run", str(run), "--samples", str(samples / "images"), "--device", device]
    tasks = [Task(f"{name} prior", fit, files["prior"], Path(f"{run}.prior.log"), prior, steps,
                  checkpoint=prior / "checkpoint.safetensors", clear=prior, wave=1, after=name),
             Task(f"{name} sample", draw, files["samples"], Path(f"{run}.sample.log"), samples,
                  clear=samples, wave=2, after=f"{name} prior")]
    if "classifier" in g["fid"]:
        classifier = out / f"fd-classifier-{dataset}.safetensors"
        argv = [*fd, "--features", "classifier", "--classifier", str(classifier),
                "--classifier-steps", str(int(g["classifier_steps"])), "-o", str(files["FD"])]
        tasks.append(Task(f"{name} fd", argv, files["FD"], Path(f"{run}.fd.log"), run, wave=3,
                          after=f"{name} sample", alone=first))
    if "inception" in g["fid"] and inception_weights:
        argv = [*fd, "--inception-weights", str(inception_weights), "-o", str(files["FID"])]
        tasks.append(Task(f"{name} fid", argv, files["FID"], Path(f"{run}.fid.log"), run, wave=3,
                          after=f"{name} sample"))
    return tasks
