"""Typed run configuration: dataclasses, YAML files and `key=value` overrides, validated.

An unknown key, a value of the wrong type or out of range is an EdvaeError naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import DATASETS
from .errors import EdvaeError
from .quantizers import QUANTIZERS
from .schedules import LR_SCHEDULES
from .yaml_values import load_yaml_file, parse_value

DEVICES = ("auto", "cpu", "cuda", "mps")
ARCHITECTURES = ("dalle", "vqvae")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class ModelConfig:
    method: str = "edvae"
    # encoder/decoder: dalle (EdVAE paper, Appendix D: nets/dalle.py) or vqvae (van den Oord et al.
    # 2017, for the VQ baselines: nets/vqvae.py, hidden channels = width, residual hidden = width x
    # hidden_ratio; first_kernel and init_std apply to dalle only)
    architecture: str = "dalle"
    channels: int = 3
    image_size: int = 32
    codebook_size: int = 512
    codebook_dim: int = 16
    width: int = 128  # n of the paper: stage widths n, 2n, 4n
    first_kernel: int = 3  # 3 for CIFAR10 and CelebA, 7 for LSUN Church
    hidden_ratio: float = 0.25  # block hidden width / output width: code 0.25, paper's table 1.0
    init_std: float = 0.02
    eval_mode: str = "argmax"  # argmax (authors' code) or sample (Algorithm 2)
    # the logit methods (EdVAE, dVAE): the encoder's last 1x1 convolution in float32 under bf16
    # autocast, so the logits are not rounded to bf16 before the exponential (nets/dalle.py)
    float32_logits: bool = True
    options: dict[str, Any] = field(default_factory=dict)  # method-specific, e.g. clamp_max


@dataclass
class TrainConfig:
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    limit_train: int | None = None
    limit_test: int | None = None
    steps: int = 150_000
    batch_size: int = 128
    lr: float = 1e-3
    lr_min: float = 1.25e-6
    lr_anneal_steps: int = 50_000
    # quarter-cosine: the authors' code (the same ramp as beta); half-cosine: the earlier default,
    # which every result committed before this option used (schedules.py)
    lr_schedule: str = "quarter-cosine"
    beta_max: float | None = None  # None: the method's paper value (EdVAE 5e-7, dVAE 5e-5)
    beta_ramp_steps: int = 5_000
    temperature_init: float = 1.0  # tau = temperature_init * exp(-temperature_decay t)
    temperature_decay: float = 1e-5
    temperature_min: float = 0.0
    schedule_steps: int = 150_000  # the budget the step counts above are given for
    seed: int = 42
    device: str = "auto"
    precision: str = "auto"  # bf16 autocast where the device supports it
    threads: int = 0  # CPU threads; 0 leaves torch's default
    channels_last: bool = True  # NHWC convolutions: faster on CPUs (oneDNN) and tensor cores
    flush_denormals: bool = True  # CPU: subnormal floats read as 0 (denormals.py)
    log_every: int = 50
    eval_every: int = 0  # test-subset perplexity during training; 0 = off
    eval_subset: int = 2048
    eval_batch_size: int = 128
    checkpoint_every: int = 0  # 0 = only at the end
    # pretrain-then-quantize (arXiv 2411.16550): the first steps train encoder -> decoder without
    # quantization, then the codebook is set by K-means on encoder outputs (train.py); 0 = off
    pretrain_steps: int = 0
    # torch.compile of the training step (engine/compile.py, docs/performance.md); cuda_graph: the
    # compiled step replayed as CUDA graphs (CUDA only; needs compile; never yet run on a GPU)
    compile: bool = False
    cuda_graph: bool = False


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# by field name, in every config built here (the VAE's and the prior's, prior/train_prior.py)
_POSITIVE = {"channels", "image_size", "codebook_size", "codebook_dim", "width", "first_kernel",
             "steps", "batch_size", "lr_anneal_steps", "schedule_steps", "log_every",
             "eval_subset", "eval_batch_size", "temperature_init", "size", "blocks", "heads"}
_NON_NEGATIVE = {"lr", "lr_min", "beta_ramp_steps", "temperature_decay",
                 "temperature_min", "threads", "eval_every", "checkpoint_every", "init_std",
                 "pretrain_steps", "res_blocks", "embed_dim"}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# an annotation's base type -> (whether a value is one, what the error says was expected, conversion)
_TYPES = {
    "dict": (lambda v: isinstance(v, dict), "a mapping", dict),
    "bool": (lambda v: isinstance(v, bool), "true or false", bool),
    "int": (lambda v: _number(v) and (isinstance(v, int) or v.is_integer()), "an integer", int),
    "float": (_number, "a number", float),
    "str": (lambda v: isinstance(v, str), "a string", str),
}


def _coerce(section: str, key: str, value: Any, annotation: str) -> Any:
    name = f"{section}.{key}"
    if value is None:
        if "None" in annotation:
            return None
        raise EdvaeError(f"config key {name}: a value is required")
    base = annotation.replace("| None", "").strip()
    accepts, expected, convert = _TYPES["dict" if base.startswith("dict") else base]
    if not accepts(value):
        raise EdvaeError(f"config key {name}: expected {expected}, got {value!r}")
    return convert(value)


def _known(key: str, names: list[str], section: str) -> str:
    """The keys nearest to a mistyped one, or all of them when there are few."""
    near = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    if near:
        return f"did you mean {' or '.join(f'{section}.{n}' for n in near)}?"
    if len(names) <= 12:
        return f"known: {', '.join(names)}"
    return f"no key is close; the {len(names)} keys are the fields of edvae/config.py"


def _build(cls, section: str, values: dict[str, Any]):
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        hint = _known(unknown[0], list(fields), section)
        raise EdvaeError(f"unknown config key {section}.{unknown[0]} ({hint})")
    obj = cls(**{k: _coerce(section, k, v, str(fields[k].type)) for k, v in values.items()})
    for key in fields:
        value = getattr(obj, key)
        if key in _POSITIVE and value <= 0:
            raise EdvaeError(f"config key {section}.{key} must be positive, got {value}")
        if key in _NON_NEGATIVE and value < 0:
            raise EdvaeError(f"config key {section}.{key} must be >= 0, got {value}")
    return obj


def _check_options(m: ModelConfig) -> None:
    """Options coerced by the types the quantizer declares, then checked by building it."""
    if m.method not in QUANTIZERS:
        raise EdvaeError(f"config key model.method: unknown method {m.method!r} "
                         f"(known: {', '.join(sorted(QUANTIZERS))})")
    types = QUANTIZERS[m.method].option_types()
    for key in list(m.options):
        if key not in types:
            raise EdvaeError(f"unknown config key model.options.{key} for method {m.method} "
                             f"(known: {', '.join(sorted(types)) or 'none'})")
        m.options[key] = _coerce("model.options", key, m.options[key], types[key].__name__)
    try:  # the quantizer checks its own option values
        QUANTIZERS[m.method](m.codebook_size, m.codebook_dim, eval_mode=m.eval_mode, **m.options)
    except ValueError as e:
        raise EdvaeError(f"config key model.options / model.eval_mode for method {m.method}: {e}") from None


def validate(cfg: RunConfig) -> RunConfig:
    m, t = cfg.model, cfg.train
    _check_options(m)
    if t.dataset not in DATASETS:
        raise EdvaeError(f"config key train.dataset: unknown dataset {t.dataset!r} "
                         f"(known: {', '.join(DATASETS)})")
    if t.beta_max is None:
        t.beta_max = QUANTIZERS[m.method].default_beta_max
    if t.beta_max < 0:
        raise EdvaeError(f"config key train.beta_max must be >= 0, got {t.beta_max}")
    if t.pretrain_steps and QUANTIZERS[m.method].logit_input:
        raise EdvaeError(f"config key train.pretrain_steps: {m.method} reads {m.codebook_size} logits, so "
                         "there is no codebook to initialise from encoder outputs; pretraining is for the "
                         "codebook methods (encoder outputs of codebook_dim channels)")
    if t.pretrain_steps and not QUANTIZERS[m.method].learned_codebook:
        raise EdvaeError(f"config key train.pretrain_steps: {m.method} has no codebook for the K-means "
                         "that ends pretraining to set (its codes are fixed, not learned); pretraining "
                         "is for the codebook methods")
    if t.pretrain_steps >= t.steps:
        raise EdvaeError(f"config key train.pretrain_steps ({t.pretrain_steps}) must be smaller than "
                         f"train.steps ({t.steps}): quantized training follows the pretraining")
    for key, value, valid in (("model.architecture", m.architecture, ARCHITECTURES),
                              ("train.device", t.device, DEVICES),
                              ("train.precision", t.precision, PRECISIONS),
                              ("train.lr_schedule", t.lr_schedule, LR_SCHEDULES)):
        if value not in valid:
            raise EdvaeError(f"config key {key} must be one of {valid}, got {value!r}")
    if m.channels not in (1, 3):
        raise EdvaeError(f"config key model.channels must be 1 or 3, got {m.channels}")
    if m.image_size % 4:
        raise EdvaeError(f"config key model.image_size must be a multiple of 4, got {m.image_size}")
    if t.cuda_graph and not t.compile:
        raise EdvaeError("config key train.cuda_graph needs train.compile: true (CUDA graphs replay the "
                         "compiled step)")
    if t.cuda_graph and t.device in ("cpu", "mps"):
        raise EdvaeError(f"config key train.cuda_graph needs a CUDA device, got train.device {t.device!r}")
    return cfg


def from_dict(data: dict[str, Any]) -> RunConfig:
    if not isinstance(data, dict):
        raise EdvaeError("a config must be a mapping with sections 'model' and 'train'")
    unknown = sorted(set(data) - {"model", "train"})
    if unknown:
        raise EdvaeError(f"unknown config section {unknown[0]!r} (known: model, train)")
    model = _build(ModelConfig, "model", data.get("model") or {})
    train = _build(TrainConfig, "train", data.get("train") or {})
    return validate(RunConfig(model, train))


def load_file(path: str | Path) -> dict[str, Any]:
    return load_yaml_file(Path(path), "config")


def config_data(path: str | Path | None, values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A run's config mapping: the file's (if any), then `values` ({"train.steps": 3}; None skipped),
    then the `key=value` assignments. Validate it with from_dict."""
    data = load_file(path) if path else {}
    for key, value in values.items():
        if value is not None:
            section, name = key.split(".")
            data.setdefault(section, {})[name] = value
    for assignment in overrides:
        apply_override(data, assignment)
    return data


def _section_of(key: str) -> tuple[str, str]:
    if "." in key:
        section, rest = key.split(".", 1)
        return section, rest
    for section, cls in (("model", ModelConfig), ("train", TrainConfig)):
        if key in {f.name for f in dataclasses.fields(cls)}:
            return section, key
    raise EdvaeError(f"unknown config key {key!r}")


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply `key=value` (YAML value) to a config mapping; keys like train.steps,
    model.options.clamp_max, or a bare name that belongs to one section."""
    if "=" not in assignment:
        raise EdvaeError(f"--set expects key=value, got {assignment!r}")
    key, raw = assignment.split("=", 1)
    section, rest = _section_of(key.strip())
    if section not in ("model", "train"):
        raise EdvaeError(f"unknown config key {key!r} (sections: model, train)")
    value = parse_value(raw)
    target = data[section] = data.get(section) or {}
    parts = rest.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise EdvaeError(f"config key {key!r}: {part} is not a mapping")
    target[parts[-1]] = value


# where (and how) a resumed run runs, not what it computes: a compiled step computes the same as an
# eager one up to rounding, as another device does
RESUMABLE_CHANGES = ("train.device", "train.threads", "train.compile", "train.cuda_graph")
# keys added after runs had been stored, with the value that computes what such a run computed
STORED_BEFORE = {"train.lr_schedule": "half-cosine", "model.float32_logits": False}


def with_stored_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config mapping with the keys it predates (STORED_BEFORE) set to their old behaviour."""
    data = copy.deepcopy(stored)
    for key, value in STORED_BEFORE.items():
        section, name = key.split(".")
        data.setdefault(section, {}).setdefault(name, value)
    return data


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"options": {"a": 1}}} -> {"model.options.a": 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def run_settings(cfg: RunConfig) -> dict[str, Any]:
    """The config flattened for telling two runs apart, every quantizer option at its value: one
    left unset reads as its default, so it is the same run as the option set to that default."""
    flat = {k: v for k, v in flatten(cfg.to_dict()).items() if k != "model.options"}
    for name, default in QUANTIZERS[cfg.model.method].option_defaults().items():
        flat.setdefault(f"model.options.{name}", default)
    return flat


def resume_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys (flattened) whose values differ between a stored config and the one given for its
    resumption, but for where it runs (RESUMABLE_CHANGES) and a larger train.steps; each shown
    with both values."""
    old, new = flatten(old), flatten(new)
    return [f"{k} ({old.get(k)!r} stored, {new.get(k)!r} given)" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES
            and not (k == "train.steps" and new[k] > old[k])]


def lay_over(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """A copy of the config mapping `base` with the values of `given` set over it."""
    merged = copy.deepcopy(base)
    for key, value in flatten(given).items():
        target = merged
        *parents, last = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
        if isinstance(value, dict):  # an empty mapping given: nothing to set
            target.setdefault(last, {})
        else:
            target[last] = value
    return merged


def merge_for_resume(stored: dict[str, Any], given: dict[str, Any], where: str) -> RunConfig:
    """The stored config with `given` (the values set again for a resumed run) laid over it. A
    value that changes what the run computes is refused, naming its keys; train.steps may grow."""
    stored = with_stored_defaults(stored)
    new = from_dict(lay_over(stored, given))
    differ = resume_differences(from_dict(stored).to_dict(), new.to_dict())
    if differ:
        raise EdvaeError(f"{where}: the run was started with other settings: {', '.join(differ)}")
    return new
