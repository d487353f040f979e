"""Each shipped paper config holds the EdVAE paper's settings for its dataset and method (Appendix D
and the authors' code), written here as numbers: the configs themselves hold only what differs
from the dataclass defaults, so this test is what pins them to the paper."""

import math
from pathlib import Path

import pytest

from edvae.config import from_dict, load_file
from edvae.quantizers import build_quantizer

CONFIGS = Path(__file__).parents[1] / "configs"
DATASETS = {"cifar10": 32, "celeba": 64, "lsun-church": 128}  # image size
# KL weight (beta_max) per method; EdVAE's depends on the dataset
BETA = {"dvae": 5e-5, "gs-vq": 5e-6, "gm-vq": 5e-5, "vq-ema": 0.0, "sq-vae": 0.0, "vq-ste++": 0.0,
        "fsq": 0.0, "lfq": 0.0, "simvq": 0.0, "ibq": 0.0}
EDVAE_BETA = {"cifar10": 5e-7, "celeba": 1e-7, "lsun-church": 1e-7}
VQVAE_NETS = {"vq-ema", "gs-vq", "sq-vae", "gm-vq"}  # van den Oord et al.'s nets; the others DALL-E's
CODE_DIM = {"fsq": 3, "lfq": 9}  # 512 codes: FSQ levels 8,8,8; LFQ 2^9; every other method 16


def paper_configs():
    for path in sorted(CONFIGS.glob("*.yaml")):
        if path.name.startswith("fashion-mnist"):
            continue
        dataset = next(d for d in DATASETS if path.name.startswith(d + "-"))
        yield pytest.param(path, dataset, path.stem[len(dataset) + 1:], id=path.name)


@pytest.mark.parametrize("path, dataset, method", list(paper_configs()))
def test_paper_config_holds_the_papers_settings(path, dataset, method):
    cfg = from_dict(load_file(path))
    m, t = cfg.model, cfg.train
    assert (m.method, t.dataset) == (method, dataset)
    # budget and optimiser: 150k steps, batch 128, Adam 1e-3 annealed to 1.25e-6 over 50k steps
    assert (t.steps, t.schedule_steps, t.batch_size) == (150_000, 150_000, 128)
    assert (t.lr, t.lr_min, t.lr_anneal_steps) == (1e-3, 1.25e-6, 50_000)
    # beta ramped over 5k steps to the method's weight; tau = exp(-1e-5 t)
    expected_beta = EDVAE_BETA[dataset] if method == "edvae" else BETA[method]
    assert t.beta_max == expected_beta and t.beta_ramp_steps == 5_000
    assert (t.temperature_decay, t.temperature_min) == (1e-5, 0.0)
    assert t.seed == 42  # the paper's seeds are 42, 1773 and 1
    # codebook 512 x 16, width 128, the first kernel 7 on LSUN Church only
    assert (m.codebook_size, m.codebook_dim) == (512, CODE_DIM.get(method, 16))
    assert (m.width, m.image_size) == (128, DATASETS[dataset])
    assert m.architecture == ("vqvae" if method in VQVAE_NETS else "dalle")
    if m.architecture == "dalle":
        assert m.first_kernel == (7 if dataset == "lsun-church" else 3)
        assert (m.hidden_ratio, m.init_std) == (0.25, 0.02)  # the authors' code: hidden = out / 4
    q = build_quantizer(method, m.codebook_size, m.codebook_dim, **m.options)  # options as built
    if method == "edvae":
        assert q.clamp_max == 20.0  # the clamp of Appendix D
    if method == "sq-vae":
        assert q.reconstruction == "arelbo"  # the official code's objective, var_q from log 20
        assert float(q.log_var_q.detach()) == pytest.approx(math.log(20.0))


def test_every_dataset_has_every_method_of_the_paper():
    for dataset in DATASETS:
        for method in ("edvae", "dvae", "vq-ema", "gs-vq", "sq-vae", "vq-ste++"):
            assert (CONFIGS / f"{dataset}-{method}.yaml").is_file(), (dataset, method)
