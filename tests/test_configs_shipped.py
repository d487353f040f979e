from pathlib import Path

import pytest

from edvae.config import apply_override, from_dict, load_file

ROOT = Path(__file__).parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    cfg = from_dict(load_file(path))
    assert (cfg.model.codebook_size, cfg.model.codebook_dim) == (512, 16)
    if path.name.startswith("fashion-mnist-cpu"):  # CPU protocols: the paper's schedules, scaled
        assert cfg.train.schedule_steps == 150_000 and cfg.train.steps < 10_000
    else:
        assert cfg.train.steps == 150_000 and cfg.train.batch_size == 128
        assert (cfg.model.codebook_size, cfg.model.codebook_dim, cfg.model.width) == (512, 16, 128)
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
