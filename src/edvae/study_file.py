"""Study files (studies/*.yaml): one experiment of the paper as entries x datasets x seeds x swept
config axes, built into a run list at a scale preset.

Keys of a study file (every one but `name` and `methods` optional):
- name, title, paper (where in the paper), claims (the letters of docs/reproduction.md), notes;
- methods: the entries, each a method name or the label of a variant;
- variants: {LABEL: {method: METHOD, set: [KEY=VALUE, ...]}};
- datasets: the paper's data sets (paper scale); cpu-small runs Fashion-MNIST;
- seeds: the paper's 42, 1773 and 1 unless given;
- sweeps: [{KEY: [VALUES], ...}, ...]: each sweep is the product of its keys' values, the study the
  union of its sweeps; a run that two sweeps share (their base point) is trained once;
- set: [KEY=VALUE] for every run at every scale;
- generation: {prior_steps, prior_set, samples, temperature, classifier_steps, fid: [classifier,
  inception]}: Table 3's stages after training (a PixelSNAIL prior fitted to the run's training
  codes, samples from it, their FD/FID; study_generation.py);
- scales: {paper: {...}, cpu-small: {...}}: per scale, `protocol` (cpu-small: A, B, C or D, the
  Fashion-MNIST CPU protocols of docs/results.md), `seeds`, `methods` (a subset), `sweeps`
  (replacing the study's), `set` (added) and `generation` (merged);
- tables and figures: what the report draws (study_report.py).

At the paper scale a run's config is the paper's for its data set and method
(configs/DATASET-METHOD.yaml: steps, batch, width, kernel and beta per data set); at cpu-small it
is the named protocol's config with the method set. The order of overrides, last wins: the study's
`set`, the scale's `set`, the variant's, the swept values, then the command line's `--set`.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bench import RunSpec, config_of
from .config import flatten
from .errors import EdvaeError
from .quantizers import QUANTIZERS
from .yaml_values import load_yaml_file

SCALES = ("paper", "cpu-small")
PROTOCOLS = {"A": "fashion-mnist-cpu.yaml", "B": "fashion-mnist-cpu-w32.yaml",
             "C": "fashion-mnist-cpu-w64.yaml", "D": "fashion-mnist-cpu-w64-6000.yaml"}
PAPER_SEEDS = [42, 1773, 1]
PAPER_DATASETS = ["cifar10", "celeba", "lsun-church"]
KEYS = {"name", "title", "paper", "claims", "notes", "methods", "variants", "datasets", "seeds", "sweeps",
        "set", "generation", "scales", "tables", "figures"}
SCALE_KEYS = {"protocol", "seeds", "methods", "sweeps", "set", "generation", "notes"}
GENERATION_KEYS = {"prior_steps", "prior_set", "samples", "temperature", "fid", "classifier_steps"}


@dataclass
class Entry:
    label: str
    method: str
    overrides: list[str] = field(default_factory=list)


@dataclass
class Study:
    path: Path
    name: str
    entries: list[Entry]
    datasets: list[str]
    seeds: list[int]
    sweeps: list[dict[str, list[Any]]]
    set: list[str]
    scales: dict[str, dict[str, Any]]
    generation: dict[str, Any]
    tables: list[dict[str, Any]]
    figures: list[dict[str, Any]]
    meta: dict[str, Any]  # name, title, paper, claims, notes

    def where(self, what: str) -> str:
        return f"study {self.path} ({what})"


def _list(value: Any, where: str, kind: type | None = None) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list) or (kind and not all(isinstance(v, kind) for v in value)):
        raise EdvaeError(f"{where}: expected a list{' of ' + kind.__name__ if kind else ''}, got {value!r}")
    return value


def _mapping(value: Any, where: str, known: set[str] | None = None) -> dict[str, Any]:
    """The mapping (None: {}); with `known`, one with no other keys."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise EdvaeError(f"{where}: expected a mapping, got {value!r}")
    unknown = sorted(set(value) - known) if known is not None else []
    if unknown:
        raise EdvaeError(f"{where}: unknown key {unknown[0]!r}")
    return value


def _sweeps(value: Any, where: str) -> list[dict[str, list[Any]]]:
    sweeps = []
    for i, sweep in enumerate(_list(value, where)):
        sweep = _mapping(sweep, f"{where}[{i}]")
        for key, values in sweep.items():
            if not _list(values, f"{where}[{i}].{key}"):
                raise EdvaeError(f"{where}[{i}].{key}: no values")
        sweeps.append(sweep)
    return sweeps


def _entries(data: dict[str, Any], study: Path) -> list[Entry]:
    variants = _mapping(data.get("variants"), f"study {study} (variants)")
    entries = []
    for label in _list(data.get("methods"), f"study {study} (methods)", str):
        if label in variants:
            v = _mapping(variants[label], f"study {study} (variants.{label})")
            method = v.get("method")
            overrides = _list(v.get("set"), f"study {study} (variants.{label}.set)", str)
        else:
            method, overrides = label, []
        if method not in QUANTIZERS:
            raise EdvaeError(f"study {study} (methods): entry {label!r} is neither a method nor a variant "
                             f"(methods: {', '.join(QUANTIZERS)})")
        if "/" in label or label.startswith("."):
            raise EdvaeError(f"study {study} (methods): {label!r} is not a folder name")
        entries.append(Entry(label, method, list(overrides)))
    if not entries:
        raise EdvaeError(f"study {study}: no methods")
    return entries


FIGURE_KINDS = {"curves": (), "sweep": ("metric", "axis"), "maps": ()}  # kind: its required keys


def _figures(data: dict[str, Any], study: Path) -> list[dict[str, Any]]:
    """The figure specs, each of a known kind with the keys its kind needs (checked before any run)."""
    specs = [_mapping(f, f"study {study} (figures)") for f in _list(data.get("figures"), "figures")]
    for i, spec in enumerate(specs):
        kind = spec.get("kind", "curves")
        if kind not in FIGURE_KINDS:
            raise EdvaeError(f"study {study} (figures[{i}]): unknown kind {kind!r} "
                             f"(known: {', '.join(FIGURE_KINDS)})")
        missing = [k for k in FIGURE_KINDS[kind] if k not in spec]
        if missing:
            raise EdvaeError(f"study {study} (figures[{i}]): a {kind} figure needs {missing[0]!r}")
    return specs


def load_study(path: str | Path) -> Study:
    path = Path(path)
    data = load_yaml_file(path, "study")
    where = lambda what: f"study {path} ({what})"
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise EdvaeError(f"study {path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(KEYS))})")
    if not isinstance(data.get("name"), str):
        raise EdvaeError(f"study {path}: a `name` is required")
    scales = _mapping(data.get("scales"), where("scales"))
    for scale, settings in scales.items():
        if scale not in SCALES:
            raise EdvaeError(f"{where('scales')}: unknown scale {scale!r} (known: {', '.join(SCALES)})")
        _mapping(settings, where(f"scales.{scale}"), SCALE_KEYS)
    generation = _mapping(data.get("generation"), where("generation"), GENERATION_KEYS)
    return Study(path, data["name"], _entries(data, path),
                 _list(data.get("datasets"), where("datasets"), str) or list(PAPER_DATASETS),
                 _list(data.get("seeds"), where("seeds"), int) or list(PAPER_SEEDS),
                 _sweeps(data.get("sweeps"), where("sweeps")), _list(data.get("set"), where("set"), str),
                 scales, generation,
                 [_mapping(t, where("tables")) for t in _list(data.get("tables"), "tables")],
                 _figures(data, path),
                 {k: data.get(k) for k in ("name", "title", "paper", "claims", "notes")})


@dataclass
class Plan:
    """A study at one scale: its runs (validated configs built), the generation stages' settings."""

    study: Study
    scale: str
    runs: list[RunSpec]
    generation: dict[str, Any]
    sweeps: list[dict[str, list[Any]]]


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _config_for(study: Study, scale: str, protocol: str | None, dataset: str, method: str,
                configs: Path) -> Path:
    if scale == "paper":
        path = configs / f"{dataset}-{method}.yaml"
    else:
        if protocol not in PROTOCOLS:
            raise EdvaeError(f"{study.where('scales.cpu-small.protocol')}: expected one of "
                             f"{', '.join(PROTOCOLS)}, got {protocol!r}")
        path = configs / PROTOCOLS[protocol]
    if not path.is_file():
        raise EdvaeError(f"{study.where(scale)}: config file not found: {path}")
    return path


def plan(study: Study, scale: str, extra_set: list[str] | None = None) -> Plan:
    """The study's runs at `scale`, named DATASET/ENTRY[-KEYVALUE...]-seedSEED, every config built."""
    if scale not in SCALES:
        raise EdvaeError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    settings = _mapping(study.scales.get(scale), study.where(f"scales.{scale}"))
    configs = study.path.resolve().parent.parent / "configs"  # the repository's, beside studies/
    labels = _list(settings.get("methods"), study.where(f"scales.{scale}.methods"), str)
    missing = [m for m in labels if m not in {e.label for e in study.entries}]
    if missing:
        raise EdvaeError(f"{study.where(f'scales.{scale}.methods')}: {missing[0]!r} is not an entry")
    entries = [e for e in study.entries if not labels or e.label in labels]
    seeds = _list(settings.get("seeds"), study.where(f"scales.{scale}.seeds"), int) or study.seeds
    sweeps = (_sweeps(settings["sweeps"], study.where(f"scales.{scale}.sweeps")) if "sweeps" in settings
              else study.sweeps)
    shared = [*study.set, *_list(settings.get("set"), study.where(f"scales.{scale}.set"), str)]
    datasets = study.datasets if scale == "paper" else ["fashion-mnist"]
    swept = list(dict.fromkeys(k for sweep in sweeps for k in sweep))
    runs: dict[str, RunSpec] = {}
    for dataset, entry, seed in itertools.product(datasets, entries, seeds):
        config = _config_for(study, scale, settings.get("protocol"), dataset, entry.method, configs)
        for index, sweep in enumerate(sweeps or [{}]):
            for combo in itertools.product(*sweep.values()):
                point = [f"{k}={_format(v)}" for k, v in zip(sweep, combo, strict=True)]
                spec = RunSpec("", entry.method, seed, str(config),
                               [*shared, *entry.overrides, *point, *(extra_set or [])])
                _name_run(spec, study, dataset, entry, swept, point)
                # a run that two sweeps share (their base point) is planned once, labelled with both
                runs.setdefault(spec.name, spec).labels.setdefault("sweeps", []).append(index)
    generation = {**study.generation, **_mapping(settings.get("generation"), study.where("generation"))}
    return Plan(study, scale, list(runs.values()), generation, sweeps)


def _name_run(spec: RunSpec, study: Study, dataset: str, entry: Entry, swept: list[str],
              point: list[str]) -> None:
    """Build the run's config (errors name the entry, seed and swept point) and name the run by its
    values of the swept keys."""
    where = f"{dataset}/{entry.label}-seed{spec.seed}" + (f" at {', '.join(point)}" if point else "")
    try:
        values = flatten(config_of(spec).to_dict())
    except EdvaeError as exc:
        raise EdvaeError(f"{study.where('runs')}: entry {where}: {exc}") from None
    axes = {k: values.get(k) for k in swept if values.get(k) is not None}
    part = "".join(f"-{k.split('.')[-1]}{_format(v)}" for k, v in axes.items())
    spec.name = f"{dataset}/{entry.label}{part}-seed{spec.seed}"
    spec.labels = {"entry": entry.label, "method": entry.method, "dataset": dataset, "seed": spec.seed,
                   "axes": axes}
