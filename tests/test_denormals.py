"""Subnormal floats flushed to zero while training on the CPU (denormals.py)."""

import subprocess
import sys

import torch

from edvae.config import from_dict
from edvae.denormals import denormals_flushed, flush_denormals

SUBNORMAL_BITS = 0x00400000  # float32 2^-127: subnormal


def test_the_block_flushes_and_restores_the_mode():
    assert not denormals_flushed()
    x = torch.tensor([SUBNORMAL_BITS], dtype=torch.int32).view(torch.float32)
    assert float(x * 1.0) != 0.0
    with flush_denormals():
        assert denormals_flushed()
        assert float(x * 1.0) == 0.0
        with flush_denormals():  # nested: the outer block's mode is kept on exit
            pass
        assert denormals_flushed()
    assert not denormals_flushed()
    with flush_denormals(enabled=False):
        assert not denormals_flushed()


def test_threads_started_inside_the_block_flush_too():
    """The pool threads torch starts after the mode is set inherit it: a two-thread product over
    subnormal values comes out all zeros (each thread takes a half)."""
    code = (
        "import torch\n"
        "torch.set_num_threads(2)\n"
        "from edvae.denormals import flush_denormals\n"
        "with flush_denormals():\n"
        f"    x = torch.full((4_000_000,), {SUBNORMAL_BITS}, dtype=torch.int32).view(torch.float32)\n"
        "    print(int(((x * 1.0) != 0).sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


def test_training_on_the_cpu_flushes_and_leaves_the_mode_as_found(tmp_path, monkeypatch):
    from edvae import train as train_module

    seen = []
    real = train_module._train

    def spy(*args, **kwargs):
        seen.append(denormals_flushed())
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "_train", spy)
    base = {"model": {"method": "dvae", "width": 4, "codebook_size": 16, "codebook_dim": 4},
            "train": {"dataset": "synthetic", "limit_train": 16, "limit_test": 8, "steps": 2,
                      "batch_size": 4, "device": "cpu"}}
    train_module.train(from_dict(base), tmp_path / "on", progress=False, evaluate_at_end=False)
    base["train"]["flush_denormals"] = False
    train_module.train(from_dict(base), tmp_path / "off", progress=False, evaluate_at_end=False)
    assert seen == [True, False] and not denormals_flushed()


def test_edvae_train_sets_the_mode_before_torch_starts_its_threads(tmp_path):
    """Through the command line with two threads, every thread of the pool flushes during training
    (and none does with the option off)."""
    counts = []
    for flush in ("true", "false"):
        args = ["train", "--method", "dvae", "--dataset", "synthetic", "--steps", "1",
                "--out", str(tmp_path / flush), "--set", "train.threads=2", "--set", "train.device=cpu",
                "--set", f"train.flush_denormals={flush}"]
        code = (
            "import torch\n"
            "import edvae.train as T\n"
            "from edvae.cli import main\n"
            "def probe(*args, **kwargs):\n"
            f"    x = torch.full((4_000_000,), {SUBNORMAL_BITS}, dtype=torch.int32).view(torch.float32)\n"
            "    print(int(((x * 1.0) != 0).sum()))\n"
            "T._train = probe\n"
            f"main({args!r})\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        counts.append(out.stdout.split()[0])
    assert counts == ["0", "4000000"]
