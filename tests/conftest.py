import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy's OpenBLAS starts (via torch)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

TINY = ["--set", "model.width=4", "--set", "model.codebook_size=32", "--set", "model.codebook_dim=4"]


@pytest.fixture
def tiny_overrides():
    return list(TINY)
