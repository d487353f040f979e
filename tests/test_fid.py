"""Frechet distance against closed forms; the classifier features; `edvae fid`: its protocols, and a
missing, truncated or wrong InceptionV3 weights file (exit 2, one line). The network itself is checked
against torch-fidelity's in test_inception.py."""

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edvae import checkpoint, fd_classifier, inception_weights
from edvae.cli import main
from edvae.config import from_dict
from edvae.data import load_dataset
from edvae.data.download import sha256sum
from edvae.errors import EdvaeError
from edvae.fid import (
    classifier_extractor,
    extract_features,
    feature_statistics,
    frechet_distance,
    frechet_distance_of_features,
    read_image_folder,
)
from edvae.inception import FIDInceptionV3
from edvae.inception_weights import INCEPTION_SHA256
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


def test_small_sets_through_centred_features_match_a_closed_form():
    # sets {mu1 +- v1} and {mu2 +- v2}: S = 2 v v^T, and tr sqrt(S1^1/2 S2 S1^1/2) = 2 |v1 . v2|
    g = torch.Generator().manual_seed(0)
    mu1, mu2, v1, v2 = torch.randn(4, 50, generator=g, dtype=torch.float64)
    a, b = torch.stack([mu1 + v1, mu1 - v1]), torch.stack([mu2 + v2, mu2 - v2])
    expected = float((mu1 - mu2) @ (mu1 - mu2) + 2 * v1 @ v1 + 2 * v2 @ v2 - 4 * (v1 @ v2).abs())
    assert frechet_distance_of_features(a, b) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance_of_features(b, a) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("n1, n2", [(10, 7), (2, 30), (32, 32)])
def test_small_sets_through_centred_features_agree_with_the_covariance_path(n1, n2):
    # at most D samples per set: the nuclear norm of A B^T. The covariances are then singular, where
    # the covariance path's square roots carry ~sqrt(eps) of round-off: agreement to 1e-7
    g = torch.Generator().manual_seed(n1 + n2)
    a = torch.randn(n1, 32, generator=g, dtype=torch.float64) * 2
    b = torch.randn(n2, 32, generator=g, dtype=torch.float64) + 0.5
    expected = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert frechet_distance_of_features(a, b) == pytest.approx(expected, rel=1e-7)


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
    train = load_dataset("synthetic", "train", limit=256, seed=0)  # the run's training split
    samples = write_pngs(tmp_path / "samples", train.images[:30])
    argv = ["fid", "--run", str(run), "--features", "classifier", "--classifier", str(clf),
            "--classifier-steps", "5", "--device", "cpu"]
    assert main([*argv, "--samples", str(samples), "-o", str(tmp_path / "fd.json")]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    # named apart from FID, and the file holds the same result
    assert result["metric"] == "fd_edvae_classifier" and "NOT InceptionV3" in result["features"]
    assert json.loads((tmp_path / "fd.json").read_text()) == result
    # samples are measured against the training split by default (the paper's Table 3)
    assert result["protocol"] == "samples-vs-train" and result["reference"] == "synthetic train"
    assert result["n_generated"] == 30 and result["n_reference"] == 256 and clf.is_file()
    assert "fd_edvae_classifier = " in out.err and ": 30 images" in out.err and "against 256" in out.err
    assert "Table 3" in out.err
    assert result["classifier_info"]["steps"] == 5
    # the samples are the first 30 training images: distance 0; PNG files are exact
    assert main([*argv, "--samples", str(samples), "--limit", "30"]) == 0
    assert json.loads(capsys.readouterr().out)["value"] < 1e-9
    assert main([*argv, "--samples", str(samples), "--split", "test"]) == 0
    other = json.loads(capsys.readouterr().out)
    assert other["protocol"] == "samples-vs-test" and other["n_reference"] == 40 and other["value"] > 0
    # reconstructions are of the test split by default (rFID)
    assert main([*argv, "--reconstructions"]) == 0
    out = capsys.readouterr()
    recon = json.loads(out.out)
    assert recon["metric"] == "rfd_edvae_classifier" and recon["n_generated"] == recon["n_reference"] == 40
    assert recon["protocol"] == "reconstructions-of-test" and recon["value"] > 0
    assert "40 images" in out.err and "rFID" in out.err


def test_fid_bad_input_exits_2_and_names_the_problem(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    samples = write_pngs(tmp_path / "samples", torch.zeros(3, 1, 32, 32, dtype=torch.uint8))
    before = {p.name: p.read_bytes() for p in run.iterdir()}

    def fails(argv, message):
        capsys.readouterr()
        assert main(["fid", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and err.startswith("edvae: error:") and err.count("\n") == 1, err
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before

    missing = tmp_path / "nowhere" / "weights-inception-2015-12-05-6726825d.pth"
    fails(["--run", str(run), "--samples", str(samples), "--inception-weights", str(missing)],
          f"InceptionV3 weights file not found: {missing}")
    fails(["--run", str(run), "--samples", str(tmp_path / "none"), "--features", "classifier",
           "--classifier", str(tmp_path / "c.safetensors")], "image folder not found")
    fails(["--run", str(tmp_path / "norun"), "--samples", str(samples)], "is not a finished run")
    fails(["--samples", str(samples)], "need --run RUN_DIR")
    fails(["--run", str(run)], "either --samples DIR or --reconstructions")
    fails(["--samples", str(samples), "--reference", str(samples), "--features", "classifier",
           "--classifier", str(tmp_path / "missing.safetensors")], "classifier file not found")
    fails(["--run", str(run), "--samples", str(samples), "--limit", "1"], "--limit must be at least 2")


# --- FID with edvae's InceptionV3 -----------------------------------------------------------


def random_weights_file(path: Path) -> Path:
    """A weights file in the standard layout with random He-normal convolutions (the real file is a
    download; these tests run offline). Its hash is not the published one."""
    torch.manual_seed(0)
    net = FIDInceptionV3()
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(net.state_dict(), path)
    return path


def run_fid(argv: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "TORCH_HOME": str(tmp_path / "torch-home"), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "edvae", "fid", *argv], capture_output=True, text=True,
                          env=env, timeout=120)


def test_a_missing_truncated_or_wrong_weights_file_is_one_line_and_exit_2(tmp_path):
    a = write_pngs(tmp_path / "a", torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    wrong = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({"Conv2d_1a_3x3.conv.weight": torch.randn(32, 3, 3, 3)}, wrong)  # a readable torch file
    truncated = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    truncated.write_bytes(wrong.read_bytes()[:1000])
    missing = tmp_path / "nowhere" / "pt_inception-2015-12-05-6726825d.pth"
    out = tmp_path / "fid.json"
    cases = {missing: "InceptionV3 weights file not found", truncated: "a truncated download or another file",
             wrong: "a truncated download or another file"}
    for weights, problem in cases.items():
        done = run_fid(["--samples", str(a), "--reference", str(a), "--inception-weights", str(weights),
                        "--device", "cpu", "-o", str(out)], tmp_path)
        assert done.returncode == 2, done.stderr
        assert done.stdout == "" and done.stderr.startswith("edvae: error: ")
        assert done.stderr.count("\n") == 1 and done.stderr.endswith("\n"), done.stderr  # one line
        assert str(weights) in done.stderr and INCEPTION_SHA256 in done.stderr, done.stderr
        assert problem in done.stderr, done.stderr
        assert not out.exists()


def test_without_weights_fid_names_where_to_get_them(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty torch.hub folder
    a = write_pngs(tmp_path / "a", torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    assert main(["fid", "--samples", str(a), "--reference", str(a)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--inception-weights FILE" in err and INCEPTION_SHA256 in err
    assert "none given, none in torch.hub's checkpoints" in err
    assert "pt_inception-2015-12-05-6726825d.pth" in err and "pytorch-fid's release fid_weights" in err


def test_fid_protocols_with_inception_features(tmp_path, monkeypatch, capsys):
    weights = random_weights_file(tmp_path / "random-inception.pth")
    monkeypatch.setattr(inception_weights, "INCEPTION_SHA256", sha256sum(weights))
    run = make_run(tmp_path / "run")
    train = load_dataset("synthetic", "train", limit=256, seed=0)  # the run's training split
    samples = write_pngs(tmp_path / "samples", train.images[:3])
    argv = ["fid", "--run", str(run), "--inception-weights", str(weights), "--device", "cpu", "--limit", "3"]
    # the paper's Table 3: samples against the training split; copies of it give 0
    assert main([*argv, "--samples", str(samples)]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["metric"] == "fid" and result["protocol"] == "samples-vs-train"
    assert result["n_generated"] == result["n_reference"] == 3 and result["reference"] == "synthetic train"
    assert result["weights"] == str(weights)
    assert result["weights_sha256"] == inception_weights.INCEPTION_SHA256
    assert result["value"] < 1e-6 and "fid = " in out.err and "Table 3" in out.err and ": 3 images" in out.err
    # rFID: reconstructions of the test split against it
    assert main([*argv, "--reconstructions"]) == 0
    out = capsys.readouterr()
    recon = json.loads(out.out)
    assert recon["metric"] == "rfid" and recon["protocol"] == "reconstructions-of-test"
    assert recon["n_generated"] == recon["n_reference"] == 3 and recon["reference"] == "synthetic test"
    assert recon["value"] > 1e-3 and "rfid = " in out.err and "rFID" in out.err
