import pytest

from edvae.config import apply_override, from_dict, load_file
from edvae.errors import EdvaeError
from edvae.quantizers import QUANTIZERS


def test_defaults_and_method_beta():
    assert from_dict({"model": {"method": "edvae"}}).train.beta_max == 5e-7
    assert from_dict({"model": {"method": "dvae"}}).train.beta_max == 5e-5
    assert from_dict({"model": {"method": "dvae"}, "train": {"beta_max": 1e-3}}).train.beta_max == 1e-3


@pytest.mark.parametrize("data, message", [
    ({"train": {"stepz": 3}}, "unknown config key train.stepz"),
    ({"optim": {}}, "unknown config section 'optim'"),
    ({"train": {"steps": 0}}, "train.steps must be positive"),
    ({"train": {"steps": -5}}, "train.steps must be positive"),
    ({"train": {"steps": 1.5}}, "train.steps: expected an integer"),
    ({"train": {"steps": float("inf")}}, "train.steps: expected an integer, got inf"),
    ({"train": {"steps": True}}, "train.steps: expected an integer, got True"),
    ({"train": {"compile": 1}}, "train.compile: expected true or false, got 1"),
    ({"train": {"data_dir": 3}}, "train.data_dir: expected a string, got 3"),
    ({"model": {"options": [1]}}, "model.options: expected a mapping, got"),
    ({"train": {"lr": None}}, "train.lr: a value is required"),
    ({"train": {"lr": "fast"}}, "train.lr: expected a number"),
    ({"model": {"method": "vqgan"}}, "unknown method 'vqgan'"),
    ({"model": {"options": {"clamp": 3}}}, "model.options.clamp"),
    ({"model": {"method": "dvae", "options": {"clamp_max": 3}}}, "model.options.clamp_max for method dvae"),
    ({"model": {"channels": 2}}, "model.channels must be 1 or 3"),
    ({"model": {"options": {"clamp_max": 100}}}, "clamp_max must be in (0, 80]"),
    ({"model": {"method": "vq-ste++", "options": {"dead_after": -1}}}, "option dead_after must be"),
    ({"model": {"method": "vq-ema", "eval_mode": "sample"}}, "eval_mode must be 'argmax' for vq-ema"),
    ({"train": {"device": "tpu"}}, "train.device"),
    ({"model": {"architecture": "unet"}}, "model.architecture must be one of ('dalle', 'vqvae'), got 'unet'"),
    ({"train": {"precision": "fp8"}}, "train.precision must be one of ('auto', 'fp32', 'bf16'), got 'fp8'"),
    ({"train": {"lr_schedule": "linear"}}, "train.lr_schedule must be one of"),
])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(EdvaeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        from_dict(data)


def test_overrides_dotted_bare_and_nested():
    data = {}
    for a in ("train.steps=12", "width=8", "model.options.clamp_max=15", "train.data_dir=null"):
        apply_override(data, a)
    cfg = from_dict(data)
    assert cfg.train.steps == 12 and cfg.model.width == 8 and cfg.model.options == {"clamp_max": 15}
    with pytest.raises(EdvaeError, match="unknown config key 'nope'"):
        apply_override({}, "nope=1")
    with pytest.raises(EdvaeError, match="key=value"):
        apply_override({}, "steps")


def test_exponent_without_a_dot_is_a_number(tmp_path):
    # YAML 1.1 (PyYAML) reads 5e-6 as a string; configs and --set must read it as a number
    data = {}
    for a in ("train.beta_max=5e-6", "lr=3E-4", "model.options.clamp_max=2e1", "train.data_dir=1e3x"):
        apply_override(data, a)
    cfg = from_dict(data)
    assert cfg.train.beta_max == 5e-6 and cfg.train.lr == 3e-4
    assert cfg.model.options == {"clamp_max": 20.0} and cfg.train.data_dir == "1e3x"
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  beta_max: 1e-7\n  steps: 2e3\n  lr_min: -1.5e-6\n")
    train = load_file(path)["train"]
    assert train == {"beta_max": 1e-7, "steps": 2000.0, "lr_min": -1.5e-6}
    assert from_dict({"train": {"beta_max": 1e-7, "steps": 2000.0}}).train.steps == 2000


def test_pretraining_is_refused_for_exactly_the_methods_without_a_codebook_to_set():
    """train.pretrain_steps ends by setting the codebook by K-means (init_codebook): the logit methods
    have none of encoder-output vectors, FSQ and LFQ have fixed codes; every other method takes it."""
    refused = set()
    for method in QUANTIZERS:
        model = {"method": method, "codebook_size": 16, "codebook_dim": 4,
                 "options": {"levels": "2,2,2,2"} if method == "fsq" else {}}
        assert from_dict({"model": dict(model), "train": {"steps": 2}}).train.pretrain_steps == 0
        try:
            cfg = from_dict({"model": dict(model), "train": {"steps": 2, "pretrain_steps": 1}})
        except EdvaeError as e:
            assert str(e).startswith("config key train.pretrain_steps: " + method), str(e)
            refused.add(method)
        else:
            assert cfg.train.pretrain_steps == 1
    assert refused == {"edvae", "dvae", "fsq", "lfq"}
