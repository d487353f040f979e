from pathlib import Path

import pytest

from edvae.config import apply_override, from_dict, load_file

ROOT = Path(__file__).parents[1]
CODE_DIM = {"fsq": 3, "lfq": 9}


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    cfg = from_dict(load_file(path))
    # 512 codes; FSQ (levels 8, 8, 8) and LFQ (2^9) have their own code dimensions
    assert (cfg.model.codebook_size, cfg.model.codebook_dim) == (512, CODE_DIM.get(cfg.model.method, 16))
    if path.name.startswith("fashion-mnist-cpu"):  # CPU protocols: the paper's schedules, scaled
        assert cfg.train.schedule_steps == 150_000 and cfg.train.steps < 10_000
    else:
        assert cfg.train.steps == 150_000 and cfg.train.batch_size == 128
        assert (cfg.model.codebook_size, cfg.model.width) == (512, 128)
        assert cfg.model.first_kernel == (7 if "lsun" in path.name else 3)


def test_packaged_cpu_config_matches_the_repository_copy():
    packaged = ROOT / "src" / "edvae" / "resources" / "configs" / "fashion-mnist-cpu.yaml"
    assert packaged.read_text() == (ROOT / "configs" / "fashion-mnist-cpu.yaml").read_text()


def test_cpu_protocol_c_is_protocol_a_at_width_64_in_bf16():
    a = load_file(ROOT / "configs" / "fashion-mnist-cpu.yaml")
    for assignment in ("train.precision=bf16", "model.width=64"):
        apply_override(a, assignment)
    assert from_dict(load_file(ROOT / "configs" / "fashion-mnist-cpu-w64.yaml")) == from_dict(a)


def test_cpu_protocol_d_is_protocol_c_over_6000_steps():
    c = load_file(ROOT / "configs" / "fashion-mnist-cpu-w64.yaml")
    apply_override(c, "train.steps=6000")
    assert from_dict(load_file(ROOT / "configs" / "fashion-mnist-cpu-w64-6000.yaml")) == from_dict(c)


CPU_PROTOCOLS = sorted((ROOT / "configs").glob("fashion-mnist-cpu*.yaml"))


@pytest.mark.parametrize("path", CPU_PROTOCOLS, ids=lambda p: p.name)
def test_cpu_protocols_pin_what_their_committed_results_computed(path):
    """Every committed CPU result was trained on the half-cosine learning rate and with the logits
    rounded by bf16 autocast; the protocols pin both, so `edvae train --config` on them computes
    exactly what it did before the defaults changed to the authors' quarter-cosine and float32 logits."""
    from edvae.schedules import Schedules, cosine_anneal

    cfg = from_dict(load_file(path))
    assert cfg.train.lr_schedule == "half-cosine" and cfg.model.float32_logits is False
    t = cfg.train
    s = Schedules.from_train(t)
    # the trainer built its schedules from these nine values, by position, before the options existed
    before = Schedules(t.steps, t.schedule_steps, t.lr, t.lr_min, t.lr_anneal_steps, t.beta_max,
                       t.beta_ramp_steps, t.temperature_decay, t.temperature_min)
    for step in (0, 1, t.steps // 4, t.steps // 2, t.steps - 1, t.steps):
        half = cosine_anneal(step, t.steps, 1e-3, 1.25e-6)
        assert s.lr_at(step) == before.lr_at(step) == pytest.approx(half)
        assert s.temperature_at(step) == before.temperature_at(step)
        assert s.beta_at(step) == before.beta_at(step)
    # hand-computed: half way through the run, (1e-3 + 1.25e-6) / 2
    assert s.lr_at(t.steps // 2) == pytest.approx(5.00625e-4, rel=1e-9)


def test_paper_configs_take_the_authors_schedule_and_float32_logits():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        if not path.name.startswith("fashion-mnist-cpu"):
            cfg = from_dict(load_file(path))
            assert cfg.train.lr_schedule == "quarter-cosine" and cfg.model.float32_logits, path.name


def test_a_stored_run_without_the_new_keys_resumes_on_what_it_computed():
    """A run folder written before lr_schedule and float32_logits existed is resumed with the
    half-cosine and bf16-rounded logits it trained with, not with the new defaults."""
    from edvae.config import merge_for_resume

    stored = from_dict(load_file(ROOT / "configs" / "cifar10-edvae.yaml")).to_dict()
    del stored["train"]["lr_schedule"], stored["model"]["float32_logits"]
    resumed = merge_for_resume(stored, {"train": {"steps": 200_000}}, "test")
    assert resumed.train.lr_schedule == "half-cosine" and resumed.model.float32_logits is False
    with pytest.raises(Exception, match="train.lr_schedule"):
        merge_for_resume(stored, {"train": {"lr_schedule": "quarter-cosine"}}, "test")
