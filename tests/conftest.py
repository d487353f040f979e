import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY = ["--set", "model.width=4", "--set", "model.codebook_size=32", "--set", "model.codebook_dim=4"]


@pytest.fixture
def tiny_overrides():
    return list(TINY)
