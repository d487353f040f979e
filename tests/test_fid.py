"""Frechet distance against closed forms; the classifier features; the torch-fidelity path; `edvae fid`."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edvae import checkpoint, fd_classifier
from edvae.cli import main
from edvae.config import from_dict
from edvae.data import load_dataset
from edvae.errors import EdvaeError
from edvae.fid import (
    classifier_extractor,
    extract_features,
    feature_statistics,
    frechet_distance,
    frechet_distance_of_features,
    read_image_folder,
)
from edvae.model import DiscreteVAE


def spd(d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


# --- the distance ---------------------------------------------------------------------------


def test_commuting_covariances_give_the_sum_of_squared_root_differences():
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    a = torch.tensor([4.0, 1.0, 0.25, 9.0, 2.0, 0.0], dtype=torch.float64)  # one zero variance
    b = torch.tensor([1.0, 1.0, 1.0, 4.0, 8.0, 3.0], dtype=torch.float64)
    mu1 = torch.arange(6, dtype=torch.float64)
    mu2 = mu1 + torch.tensor([1.0, 0, 0, 2.0, 0, 0], dtype=torch.float64)
    expected = 5.0 + float(((a.sqrt() - b.sqrt()) ** 2).sum())
    # diagonal, and the same covariances in a rotated basis (they commute); rotating puts a
    # round-off eps on the zero variance, which moves the exact distance by ~sqrt(eps): 1e-8
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(q @ mu1, q @ torch.diag(a) @ q.T, q @ mu2, q @ torch.diag(b) @ q.T) == \
        pytest.approx(expected, rel=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_non_commuting_2x2_matches_its_closed_form(seed):
    # for 2x2: tr sqrt(M) = sqrt(tr M + 2 sqrt(det M)), with M similar to S1^1/2 S2 S1^1/2
    s1, s2 = spd(2, seed), spd(2, seed + 10)
    m = s1 @ s2
    tr_sqrt = math.sqrt(float(torch.trace(m)) + 2 * math.sqrt(float(torch.det(m))))
    mu1, mu2 = torch.tensor([0.5, -1.0]), torch.tensor([2.0, 1.0])
    expected = 2.25 + 4.0 + float(torch.trace(s1) + torch.trace(s2)) - 2 * tr_sqrt
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def test_agrees_with_the_eigenvalues_of_the_product_on_random_full_rank_covariances():
    s1, s2 = spd(20, 3), spd(20, 4)
    ev = np.linalg.eigvals(s1.numpy() @ s2.numpy())  # real and positive for SPD pairs
    expected = float(np.trace(s1.numpy()) + np.trace(s2.numpy()) - 2 * np.sqrt(ev.real).sum())
    assert frechet_distance(torch.zeros(20), s1, torch.zeros(20), s2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n, d", [(400, 16), (12, 64)])  # full rank, and near-singular (rank 11 in 64)
def test_a_set_against_itself_is_zero_and_a_shift_adds_its_squared_length(n, d):
    f = torch.randn(n, d, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * 3 + 1
    scale = float(torch.trace(feature_statistics(f)[1]))
    assert frechet_distance_of_features(f, f) < 1e-10 * scale
    shift = torch.randn(d, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    values = [frechet_distance_of_features(f, f + t * shift) for t in (0.5, 1.0, 2.0)]
    for t, v in zip((0.5, 1.0, 2.0), values, strict=True):
        assert v == pytest.approx(t * t * float(shift @ shift), rel=1e-8, abs=1e-9 * scale)
    assert values == sorted(values) and values[0] > 0


def test_statistics_are_the_mean_and_unbiased_covariance():
    f = np.random.default_rng(0).normal(size=(50, 5)).astype(np.float32)
    mu, sigma = feature_statistics(f)
    assert mu.dtype == sigma.dtype == torch.float64
    np.testing.assert_allclose(mu.numpy(), f.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(f.astype(np.float64), rowvar=False), rtol=1e-10)


def test_bad_statistics_are_clear_errors():
    with pytest.raises(EdvaeError, match="at least 2 samples"):
        feature_statistics(torch.zeros(1, 3))
    with pytest.raises(EdvaeError, match="NaN or infinite"):
        feature_statistics(torch.tensor([[0.0, 1.0], [float("nan"), 2.0]]))
    with pytest.raises(EdvaeError, match="different widths: 3 and 4"):
        frechet_distance_of_features(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(EdvaeError, match="one D"):
        frechet_distance(torch.zeros(3), torch.eye(3), torch.zeros(3), torch.eye(2))


# --- the classifier features ----------------------------------------------------------------


def test_classifier_features_tell_distributions_apart_and_survive_a_save_load(tmp_path):
    train = load_dataset("synthetic", "train", limit=512, seed=0)
    test = load_dataset("synthetic", "test", limit=200, seed=0)
    other = load_dataset("synthetic", "test", limit=200, seed=1)  # other prototypes
    net, info = fd_classifier.train_classifier(train, test, steps=60, batch_size=32, width=8, lr=3e-3)
    assert info["target"] == "labels" and info["classes"] == 10 and info["test_accuracy"] > 0.5
    fd_classifier.save_classifier(tmp_path / "c.safetensors", net, info)
    extract = classifier_extractor(tmp_path / "c.safetensors")
    feats = {name: extract_features(extract, s, batch_size=64) for name, s in
             (("train", train), ("test", test), ("other", other))}
    assert feats["test"].shape == (200, 32) and feats["test"].dtype == torch.float64
    assert torch.allclose(feats["test"].float(), net.features(test.images), atol=1e-5)  # the same net
    same = frechet_distance_of_features(feats["train"], feats["test"])
    assert frechet_distance_of_features(feats["test"], feats["test"]) < 1e-9
    assert frechet_distance_of_features(feats["other"], feats["test"]) > 5 * same
    with pytest.raises(EdvaeError, match="not an edvae feature classifier"):
        model = DiscreteVAE(from_dict({"model": {"channels": 1, "width": 4, "codebook_size": 8,
                                                 "codebook_dim": 2}}).model)
        checkpoint.save_model(tmp_path / "vae.safetensors", model, {"kind": "vae"})
        classifier_extractor(tmp_path / "vae.safetensors")


def test_unlabelled_sets_train_the_classifier_on_rotations():
    train = load_dataset("synthetic", "train", limit=64, seed=0)
    net, info = fd_classifier.train_classifier(dataclasses.replace(train, labels=None), steps=3,
                                               batch_size=16, width=2)
    assert info["target"] == "rotation" and net.head.out_features == 4
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).view(2, 1, 4, 4)
    rotated = fd_classifier._rotate(x, torch.tensor([0, 3]))
    assert torch.equal(rotated[0], x[0]) and torch.equal(rotated[1], torch.rot90(x[1], 3, dims=(1, 2)))


# --- folders and the command line -----------------------------------------------------------


def write_pngs(folder: Path, images: torch.Tensor) -> Path:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img[0].numpy()).save(folder / f"{i:04d}.png")
    return folder


def make_run(folder: Path) -> Path:
    torch.manual_seed(0)
    cfg = from_dict({"model": {"method": "dvae", "channels": 1, "width": 4, "codebook_size": 8,
                               "codebook_dim": 2},
                     "train": {"dataset": "synthetic", "limit_train": 256, "limit_test": 40, "seed": 0}})
    folder.mkdir(parents=True)
    checkpoint.save_model(folder / checkpoint.MODEL_FILE, DiscreteVAE(cfg.model), cfg.to_dict())
    (folder / checkpoint.CONFIG_FILE).write_text(cfg.to_json())
    return folder


def test_reading_a_folder_of_images(tmp_path):
    imgs = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    folder = write_pngs(tmp_path / "a", imgs)
    (folder / "notes.txt").write_text("not an image")
    assert torch.equal(read_image_folder(folder, 1), imgs)
    rgb = read_image_folder(folder, 3)
    assert rgb.shape == (3, 3, 8, 8) and torch.equal(rgb[:, 2], imgs[:, 0])  # grey read as RGB
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "9999.png")
    with pytest.raises(EdvaeError, match="9999.png: is 4x4"):
        read_image_folder(folder, 1)
    with pytest.raises(EdvaeError, match="no images"):
        read_image_folder(tmp_path, 1)  # holds only the folder a/, which is not read


def test_fd_classifier_command_for_samples_and_reconstructions(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    clf = tmp_path / "clf.safetensors"
    test = load_dataset("synthetic", "test", limit=40, seed=0)
    samples = write_pngs(tmp_path / "samples", test.images[:30])
    argv = ["fid", "--run", str(run), "--features", "classifier", "--classifier", str(clf),
            "--classifier-steps", "5", "--device", "cpu"]
    assert main([*argv, "--samples", str(samples), "-o", str(tmp_path / "fd.json")]) == 0
    result = json.loads(capsys.readouterr().out)
    # named apart from FID, and the file holds the same result
    assert result["metric"] == "fd_edvae_classifier" and "NOT InceptionV3" in result["features"]
    assert json.loads((tmp_path / "fd.json").read_text()) == result
    assert result["n_generated"] == 30 and result["n_reference"] == 40 and clf.is_file()
    assert result["classifier_info"]["steps"] == 5
    # the samples are 30 of the 40 reference images: a small distance; PNG files are exact
    assert main([*argv, "--samples", str(samples), "--limit", "30"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] < 1e-9
    assert main([*argv, "--reconstructions"]) == 0
    recon = json.loads(capsys.readouterr().out)
    assert recon["metric"] == "rfd_edvae_classifier" and recon["n_generated"] == recon["n_reference"] == 40
    assert recon["value"] > 0


def test_fid_bad_input_exits_2_and_names_the_problem(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    samples = write_pngs(tmp_path / "samples", torch.zeros(3, 1, 32, 32, dtype=torch.uint8))
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def fails(argv, message):
        capsys.readouterr()
        assert main(["fid", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("edvae: error:") and len(err) < 400, err
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    missing = tmp_path / "nowhere" / "weights-inception-2015-12-05-6726825d.pth"
    fails(["--run", str(run), "--samples", str(samples), "--inception-weights", str(missing)],
          f"InceptionV3 weights file not found: {missing}")
    fails(["--run", str(run), "--samples", str(tmp_path / "none"), "--features", "classifier",
           "--classifier", str(tmp_path / "c.safetensors")], "image folder not found")
    fails(["--run", str(tmp_path / "norun"), "--samples", str(samples)], "run folder not found")
    fails(["--samples", str(samples)], "need --run RUN_DIR")
    fails(["--run", str(run)], "either --samples DIR or --reconstructions")
    fails(["--samples", str(samples), "--reference", str(samples), "--features", "classifier",
           "--classifier", str(tmp_path / "missing.safetensors")], "classifier file not found")
    fails(["--run", str(run), "--samples", str(samples), "--limit", "1"], "--limit must be at least 2")


# --- FID through torch-fidelity -------------------------------------------------------------


def torch_fidelity_or_skip():
    try:
        import torch_fidelity  # noqa: F401
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as exc:  # ImportError, or torchvision's compiled ops failing to load
        pytest.skip(f"torch-fidelity does not import here ({type(exc).__name__}: {exc}); the FID path "
                    "is tested where it does (pip install 'edvae[fid]' with a loadable torchvision)")
    return FeatureExtractorInceptionV3


def write_inception_weights(path: Path, monkeypatch) -> Path:
    """A weights file in torch-fidelity's format with random weights (He-initialised so that the
    features neither vanish nor explode): the real file is a download, this test runs offline."""
    fe_class = torch_fidelity_or_skip()
    empty = path.with_name("empty.pth")
    torch.save({}, empty)
    with monkeypatch.context() as m:
        m.setattr(fe_class, "load_state_dict", lambda self, *a, **k: None)
        net = fe_class("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    torch.manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(torch.nn.Module.state_dict(net), path)  # torch-fidelity's own format (read with torch.load)
    return path


def test_fid_through_torch_fidelity_inception_features(tmp_path, monkeypatch, capsys):
    weights = write_inception_weights(tmp_path / "weights-inception.pth", monkeypatch)
    import torch_fidelity

    g = torch.Generator().manual_seed(0)
    a = write_pngs(tmp_path / "a", torch.randint(0, 256, (8, 1, 32, 32), dtype=torch.uint8, generator=g))
    b = write_pngs(tmp_path / "b", (torch.rand(8, 1, 32, 32, generator=g) * 128).to(torch.uint8))
    cuda = torch.cuda.is_available()
    argv = ["fid", "--features", "inception", "--inception-weights", str(weights),
            "--device", "cuda" if cuda else "cpu", "--batch-size", "4"]
    assert main([*argv, "--samples", str(a), "--reference", str(b)]) == 0
    ours = json.loads(capsys.readouterr().out)
    assert ours["metric"] == "fid" and ours["n_generated"] == ours["n_reference"] == 8
    theirs = torch_fidelity.calculate_metrics(input1=str(a), input2=str(b), fid=True, cuda=cuda,
                                              feature_extractor_weights_path=str(weights), verbose=False,
                                              cache=False, save_cpu_ram=True)
    assert ours["value"] > 0
    assert ours["value"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-3, abs=1e-3)
    assert main([*argv, "--samples", str(a), "--reference", str(a)]) == 0
    assert json.loads(capsys.readouterr().out)["value"] < 1e-6 * ours["value"]


def test_without_torch_fidelity_inception_fid_is_a_clear_error(tmp_path, capsys):
    try:
        import torch_fidelity  # noqa: F401

        pytest.skip("torch-fidelity imports here; the error path cannot be reached")
    except Exception:
        pass
    a = write_pngs(tmp_path / "a", torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    assert main(["fid", "--samples", str(a), "--reference", str(a)]) == 2
    assert "needs torch-fidelity (pip install 'edvae[fid]')" in capsys.readouterr().err
