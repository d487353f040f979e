"""Frechet distances between image sets, and the feature extractors they are measured in.

The Frechet distance between Gaussians N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982; used as FID
by Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium", arXiv:1706.08500) is

    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2).

It is computed here in float64. The last trace equals the nuclear norm (sum of singular values) of
S1^1/2 S2^1/2, because (S2^1/2 S1^1/2)^T (S2^1/2 S1^1/2) = S1^1/2 S2 S1^1/2. The square roots
S^1/2 come from a symmetric eigendecomposition with negative round-off eigenvalues clipped to 0.
This handles near-singular covariances, for example fewer samples than feature dimensions, without
the eps offset of the TTUR code. The small eigenvalues are never squared and rooted again, so a set
against itself gives 0 to round-off.

With no more samples per set than feature dimensions, the same distance comes from the centred
features instead of the D x D covariances: with A = (X1 - mu1) / sqrt(n1 - 1) and B likewise,
S1 = A^T A and S2 = B^T B, so tr(S1) = |A|_F^2, and the nonzero eigenvalues of S1 S2 are those of
(A B^T)(A B^T)^T: the trace term is the nuclear norm of the n1 x n2 matrix A B^T. This is exact, and
a few small sets take milliseconds where 2048 x 2048 eigendecompositions take seconds.

Two feature extractors, named apart so that one number is never taken for the other:

- `inception` gives **FID**: the 2048-d pool features of FID's TensorFlow-compatible InceptionV3
  (inception.py, edvae's own, checked against torch-fidelity's), with the standard 2015-12-05 weights
  file checked by SHA-256 (inception_weights.py). This is the number comparable with the EdVAE
  paper's Table 3 and with published FIDs.
- `classifier` gives **FD_edvae-classifier**: the distance in the penultimate features of a small CNN
  that edvae trains itself (fd_classifier.py). It needs no downloaded weights, and it is only
  comparable between runs measured with the same classifier file.

The protocols (`measure`): FID of generated samples against the run's training split (the paper's
Table 3: a prior's samples), and rFID, the run's reconstructions of its test split against that split.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from . import fd_classifier, inception_weights
from .data import ImageSet, to_uint8
from .data.folder import EXTENSIONS, list_images
from .data.images import adapt, read_image_file
from .engine.runtime import pick_device
from .errors import EdvaeError
from .fd_classifier import load_classifier
from .model import DiscreteVAE
from .run_folder import load_split, load_splits, run_config, run_model_file

# Metric names, kept apart on purpose: only `fid` is comparable with published FIDs.
METRIC_NAMES = {"inception": "fid", "classifier": "fd_edvae_classifier"}


# ---------------------------------------------------------------------------------------------
# The Frechet distance


def _features(features: torch.Tensor | np.ndarray) -> torch.Tensor:
    """(N, D) features as float64 on the CPU, checked: 2-D, at least 2 samples, finite."""
    x = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if x.dim() != 2:
        raise EdvaeError(f"features must be a 2-D (N, D) array, got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise EdvaeError(f"a covariance needs at least 2 samples, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise EdvaeError("features hold NaN or infinite values")
    return x


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), both float64."""
    x = _features(features)
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _distance(diff: torch.Tensor, tr1: torch.Tensor, tr2: torch.Tensor, tr_covmean: torch.Tensor) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2), from its four parts."""
    # round-off can leave -1e-13 where the exact value is 0
    return max(float(diff @ diff + tr1 + tr2 - 2 * tr_covmean), 0.0)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64."""
    mu1, s1, mu2, s2 = (torch.as_tensor(t).to("cpu", torch.float64) for t in (mu1, sigma1, mu2, sigma2))
    d = mu1.shape[0] if mu1.dim() == 1 else -1
    if d < 1 or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise EdvaeError(f"Frechet distance needs means (D,) and covariances (D, D) of one D; got "
                         f"{tuple(mu1.shape)}, {tuple(s1.shape)}, {tuple(mu2.shape)}, {tuple(s2.shape)}")
    tr_covmean = torch.linalg.svdvals(_psd_sqrt(s1) @ _psd_sqrt(s2)).sum()
    return _distance(mu1 - mu2, torch.trace(s1), torch.trace(s2), tr_covmean)


def frechet_distance_of_features(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two (N, D) feature sets.

    Through the centred features when neither set has more samples than dimensions (exact, and fast
    for small sets), else through the D x D covariances."""
    x1, x2 = _features(a), _features(b)
    if x1.shape[1] != x2.shape[1]:
        raise EdvaeError(f"feature sets of different widths: {x1.shape[1]} and {x2.shape[1]}")
    if max(x1.shape[0], x2.shape[0]) > x1.shape[1]:
        return frechet_distance(*feature_statistics(x1), *feature_statistics(x2))
    c1, c2 = ((x - x.mean(0)) / (x.shape[0] - 1) ** 0.5 for x in (x1, x2))  # c^T c = S
    return _distance(x1.mean(0) - x2.mean(0), (c1 * c1).sum(), (c2 * c2).sum(),
                     torch.linalg.svdvals(c1 @ c2.T).sum())


# ---------------------------------------------------------------------------------------------
# Image folders


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder` (not its subfolders, as torch-fidelity reads), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdvaeError(f"image folder not found: {folder}")
    files = list_images(folder, recursive=False)
    if not files:
        raise EdvaeError(f"no images ({', '.join(EXTENSIONS)}) in {folder}")
    return files


def read_image_folder(folder: str | Path, channels: int, size: int | None = None,
                      limit: int | None = None) -> torch.Tensor:
    """Images of a folder as uint8 (N, channels, H, W); all must share one size (`size` if given)."""
    files = image_files(folder)[:limit]
    images = [read_image_file(path, channels, size, taker="the features") for path in files]
    for path, image in zip(files, images, strict=True):
        if image.shape != images[0].shape:
            raise EdvaeError(f"{path}: is {image.shape[2]}x{image.shape[1]}, the first image of {folder} "
                             f"is {images[0].shape[2]}x{images[0].shape[1]}; one size per folder")
    return torch.stack(images)


# ---------------------------------------------------------------------------------------------
# Feature extractors: callables uint8 (N, C, H, W) -> float (N, D)


def inception_extractor(path: str | Path,
                        device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """FID's InceptionV3 (inception.py): uint8 images -> 2048-d pool features (FID's standard features).

    `path` is the standard 2015-12-05 file (inception_weights.py), checked against its published hash.
    """
    net = inception_weights.load_fid_inception(path, device)
    device = torch.device(device)

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        x = adapt(images, None, 3).to(device)  # grey images are read as RGB, as torch-fidelity does
        tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = tf32 and device.type != "cuda"  # CUDA: full float32, as on the CPU
        try:
            return net(x).cpu()
        finally:
            torch.backends.cudnn.allow_tf32 = tf32

    return extract


def classifier_extractor(path: str | Path,
                         device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """Penultimate features of an edvae classifier file (fd_classifier.py)."""
    net = load_classifier(path).to(device).eval()

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        c, s = net.channels, net.size
        if images.shape[-2:] != (s, s):
            raise EdvaeError(f"images of {images.shape[-1]}x{images.shape[-2]} do not fit the classifier "
                             f"{path}, which takes {s}x{s}")
        return net.features(adapt(images, None, c).to(device)).float().cpu()

    extract.net = net  # type: ignore[attr-defined]
    return extract


def _batches(images, batch_size: int):
    """uint8 (B, C, H, W) batches in order, of a (N, C, H, W) tensor or an ImageSet."""
    for idx in torch.arange(len(images)).split(batch_size):
        yield images.batch(idx) if isinstance(images, ImageSet) else images[idx]


@torch.no_grad()
def extract_features(extract: Callable[[torch.Tensor], torch.Tensor], images,
                     batch_size: int = 100) -> torch.Tensor:
    """Features of uint8 images: a (N, C, H, W) tensor, or an ImageSet (read batch by batch)."""
    if len(images) == 0:
        raise EdvaeError("no images to extract features from")
    return torch.cat([extract(batch.cpu()) for batch in _batches(images, batch_size)]).double()


# ---------------------------------------------------------------------------------------------
# Image sets -> one number


@torch.no_grad()
def reconstruct_images(model, images, batch_size: int = 100) -> torch.Tensor:
    """uint8 reconstructions (N, C, H, W) of an ImageSet or uint8 tensor, through the model's codes."""
    return torch.cat([to_uint8(model.reconstruct(x)).cpu() for x in _batches(images, batch_size)])


def _classifier_for(path: str | Path | None, run_dir: Path | None, device, steps: int, log) -> Path:
    """The classifier file to use: `path` if it exists; else trained on the run's dataset and saved
    to `path` (default: one shared file per dataset, image format and seed)."""
    if path is not None and Path(path).is_file():
        return Path(path)
    if run_dir is None:
        if path is None:
            raise EdvaeError("classifier features need --classifier FILE or --run RUN_DIR")
        raise EdvaeError(f"classifier file not found: {path}; give --run RUN_DIR to train one on the "
                         "run's dataset")
    cfg = run_config(run_dir)
    seed = 0  # the classifier's own seed: one classifier per dataset, whichever run asks for it
    target = Path(path) if path is not None else fd_classifier.default_path(
        cfg.train.dataset, cfg.model.channels, cfg.model.image_size, seed)
    if target.is_file():
        return target
    train_set, test_set = load_splits(cfg, device)
    log(f"training the feature classifier on {cfg.train.dataset} ({len(train_set)} images, {steps} steps)"
        f" -> {target}")
    net, info = fd_classifier.train_classifier(train_set, test_set, steps=steps, seed=seed, device=device)
    fd_classifier.save_classifier(target, net, info)
    log(f"classifier test accuracy ({info['target']}): {info.get('test_accuracy', float('nan')):.3f}")
    return target


PROTOCOLS = {  # what a run's split as reference stands for
    "samples-vs-train": "the paper's Table 3: generated samples against the training split",
    "reconstructions-of-test": "rFID: reconstructions of the test split against the test split",
}


def _check_measure_args(run: Path | None, samples, reconstructions: bool, reference, split: str | None,
                        limit: int | None, features: str) -> None:
    if features not in METRIC_NAMES:
        raise EdvaeError(f"unknown features {features!r} (inception, classifier)")
    if (samples is None) == (not reconstructions):
        raise EdvaeError("give either --samples DIR or --reconstructions")
    if limit is not None and limit < 2:
        raise EdvaeError(f"--limit must be at least 2 (a covariance needs two images), got {limit}")
    if run is not None:
        run_model_file(run)
    if reconstructions and reference is not None:
        raise EdvaeError("--reconstructions compares the run's own split with its reconstructions; "
                         "drop --reference")
    if (reconstructions or reference is None) and run is None:
        raise EdvaeError("--reconstructions and a reference split need --run RUN_DIR "
                         "(or give --reference DIR with --samples)")
    if split not in (None, "train", "test"):
        raise EdvaeError(f"unknown split {split!r} (train, test)")
    for folder in (samples, reference):  # cheap checks before any feature network is built or trained
        if folder is not None:
            image_files(folder)


def _extractor(features: str, weights, classifier, run: Path | None, dev, classifier_steps: int,
               log) -> tuple[Callable, int, int | None, dict]:
    """The feature extractor, the channels and size it reads images at, and its description. The
    Inception weights: `weights`, else the standard file in torch.hub's folder; nothing is downloaded."""
    if features == "inception":
        path = inception_weights.resolve_weights_file(weights)
        return inception_extractor(path, dev), 3, None, {
            "features": "InceptionV3 pool3, 2048-d (edvae's FID InceptionV3, TF-compatible)",
            "weights": str(path), "weights_sha256": inception_weights.INCEPTION_SHA256}
    path = _classifier_for(classifier, run, dev, classifier_steps, log)
    extract = classifier_extractor(path, dev)
    net = extract.net  # type: ignore[attr-defined]
    return extract, net.channels, net.size, {
        "features": "edvae classifier (NOT InceptionV3: not comparable with published FID)",
        "classifier": str(path), "classifier_info": net.info}


def measure(*, run_dir: str | Path | None = None, samples: str | Path | None = None,
            reconstructions: bool = False, reference: str | Path | None = None, split: str | None = None,
            limit: int | None = None, features: str = "inception",
            inception_weights: str | Path | None = None, classifier: str | Path | None = None,
            classifier_steps: int = 1500, batch_size: int = 100, device: str = "auto",
            log=print) -> dict:
    """FID (inception) or FD_edvae-classifier between generated samples (a folder) or a run's
    reconstructions, and a reference: a folder, or the run's `split` (first `limit` images).

    The split defaults to the protocols: samples against the training split (the paper's Table 3),
    reconstructions of the test split against it (rFID)."""
    run = Path(run_dir) if run_dir is not None else None
    _check_measure_args(run, samples, reconstructions, reference, split, limit, features)
    if reference is None:
        split = split or ("test" if reconstructions else "train")
    dev = pick_device(device)
    # the run folder is read before any work (the classifier may take minutes to train)
    cfg = run_config(run) if run is not None else None
    vae = DiscreteVAE.load(run_model_file(run), dev) if reconstructions else None
    extract, channels, size, extractor = _extractor(features, inception_weights, classifier, run, dev,
                                                    classifier_steps, log)
    if reference is not None:
        ref, ref_desc, against = read_image_folder(reference, channels, size, limit), str(reference), "folder"
    else:
        ref, ref_desc, against = load_split(cfg, split, "cpu"), f"{cfg.train.dataset} {split}", split
        if limit is not None and limit < len(ref):
            ref = ref.batch(torch.arange(limit))
    if reconstructions:
        gen, gen_desc = reconstruct_images(vae, ref, batch_size), f"reconstructions by {run}"
    else:
        gen, gen_desc = read_image_folder(samples, channels, size), str(samples)
    fa = extract_features(extract, gen, batch_size)
    fb = extract_features(extract, ref, batch_size)
    protocol = ("reconstructions-of-" if reconstructions else "samples-vs-") + against
    return {"metric": ("r" if reconstructions else "") + METRIC_NAMES[features],
            "value": frechet_distance_of_features(fa, fb), "protocol": protocol,
            "generated": gen_desc, "reference": ref_desc,
            "n_generated": int(fa.shape[0]), "n_reference": int(fb.shape[0]), **extractor}


def summary_line(result: dict) -> str:
    """One line for people: the metric, its value, both image counts and what they were."""
    about = PROTOCOLS.get(result.get("protocol", ""))
    return (f"{result['metric']} = {result['value']:.4f}: {result['n_generated']} images "
            f"({result['generated']}) against {result['n_reference']} ({result['reference']})"
            + (f"; {about}" if about else ""))
