"""Frechet distances between image sets, and the feature extractors they are measured in.

The Frechet distance between Gaussians N(mu1, S1) and N(mu2, S2) (Dowson & Landau 1982; used as FID
by Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local Nash
equilibrium") is

    |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2).

It is computed here in float64. The last trace equals the nuclear norm (sum of singular values) of
S1^1/2 S2^1/2, because (S2^1/2 S1^1/2)^T (S2^1/2 S1^1/2) = S1^1/2 S2 S1^1/2. The square roots
S^1/2 come from a symmetric eigendecomposition with negative round-off eigenvalues clipped to 0.
This handles near-singular covariances, for example fewer samples than feature dimensions, without
the eps offset of the TTUR code. The small eigenvalues are never squared and rooted again, so a set
against itself gives 0 to round-off.

Two feature extractors, named apart so that one number is never taken for the other:

- `inception` gives **FID**: the 2048-d pool features of the TensorFlow-compatible InceptionV3, as
  torch-fidelity computes them (Obukhov et al., torch-fidelity; the weights of Heusel et al.'s TF
  graph). This is the number comparable with the EdVAE paper's Table 3. It needs the optional extra
  `pip install edvae[fid]`. Pass `weights=` (the torch-fidelity weights file,
  weights-inception-2015-12-05-6726825d.pth) to run offline.
- `classifier` gives **FD_edvae-classifier**: the distance in the penultimate features of a small CNN
  that edvae trains itself (fd_classifier.py). It needs no downloaded weights, and it is only
  comparable between runs measured with the same classifier file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import EdvaeError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}
INCEPTION_WEIGHTS_NAME = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's release asset

# Metric names, kept apart on purpose: only `fid` is comparable with published FIDs.
METRIC_NAMES = {"inception": "fid", "classifier": "fd_edvae_classifier"}


# ---------------------------------------------------------------------------------------------
# The Frechet distance


def feature_statistics(features: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), both float64."""
    x = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if x.dim() != 2:
        raise EdvaeError(f"features must be a 2-D (N, D) array, got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise EdvaeError(f"a covariance needs at least 2 samples, got {x.shape[0]}")
    if not torch.isfinite(x).all():
        raise EdvaeError("features hold NaN or infinite values")
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64."""
    mu1, mu2 = (torch.as_tensor(m).to("cpu", torch.float64) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s).to("cpu", torch.float64) for s in (sigma1, sigma2))
    d = mu1.shape[0] if mu1.dim() == 1 else -1
    if d < 1 or mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise EdvaeError(f"Frechet distance needs means (D,) and covariances (D, D) of one D; got "
                         f"{tuple(mu1.shape)}, {tuple(s1.shape)}, {tuple(mu2.shape)}, {tuple(s2.shape)}")
    tr_covmean = torch.linalg.svdvals(_psd_sqrt(s1) @ _psd_sqrt(s2)).sum()
    diff = mu1 - mu2
    value = diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * tr_covmean
    # round-off can leave -1e-13 where the exact value is 0
    return max(float(value), 0.0)


def frechet_distance_of_features(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two (N, D) feature sets."""
    mu1, s1 = feature_statistics(a)
    mu2, s2 = feature_statistics(b)
    if mu1.shape != mu2.shape:
        raise EdvaeError(f"feature sets of different widths: {mu1.shape[0]} and {mu2.shape[0]}")
    return frechet_distance(mu1, s1, mu2, s2)


# ---------------------------------------------------------------------------------------------
# Image folders


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder` (not its subfolders, as torch-fidelity reads), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EdvaeError(f"image folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EdvaeError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def read_image_folder(folder: str | Path, channels: int, size: int | None = None,
                      limit: int | None = None) -> torch.Tensor:
    """Images of a folder as uint8 (N, channels, H, W); all must share one size (`size` if given)."""
    files = image_files(folder)[:limit]
    images, shape = [], None
    for path in files:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise EdvaeError(f"{path}: not a readable image ({exc})") from None
        if size is not None and arr.shape[:2] != (size, size):
            raise EdvaeError(f"{path}: is {arr.shape[1]}x{arr.shape[0]}, the features take {size}x{size}")
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise EdvaeError(f"{path}: is {arr.shape[1]}x{arr.shape[0]}, the first image of {folder} "
                             f"is {shape[1]}x{shape[0]}; one size per folder")
        images.append(torch.from_numpy(arr.copy()))
    x = torch.stack(images)
    return x[:, None] if channels == 1 else x.permute(0, 3, 1, 2).contiguous()


def match_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> `channels` channels: grey is repeated to RGB, RGB made grey as PIL does."""
    from .data.images import adapt

    return adapt(images, None, channels)


# ---------------------------------------------------------------------------------------------
# Feature extractors: callables uint8 (N, C, H, W) -> float (N, D)


def inception_extractor(weights: str | Path | None = None,
                        device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """torch-fidelity's TF-compatible InceptionV3, 2048-d pool features (FID's standard features).

    `weights` is torch-fidelity's weights file; None lets torch-fidelity download it (online only).
    """
    if weights is not None:
        weights = Path(weights)
        if not weights.is_file():
            raise EdvaeError(f"InceptionV3 weights file not found: {weights} (torch-fidelity's "
                             f"{INCEPTION_WEIGHTS_NAME})")
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as exc:  # ImportError, or torchvision failing to load its compiled ops
        raise EdvaeError("FID with InceptionV3 features needs torch-fidelity (pip install 'edvae[fid]'),"
                         f" which did not import: {type(exc).__name__}: {exc}") from None
    try:
        # torch-fidelity reads the file with torch.load: a file of its own format, outside edvae's
        # checkpoints (those are safetensors only)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                          feature_extractor_weights_path=None if weights is None
                                          else str(weights))
    except Exception as exc:
        raise EdvaeError(f"torch-fidelity could not build InceptionV3 from "
                         f"{weights or 'its download'}: {type(exc).__name__}: {exc}") from None
    net = net.to(device).eval()

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        x = match_channels(images, 3).to(device)  # torch-fidelity reads grey images as RGB too
        return net(x)[0].float().cpu()

    return extract


def classifier_extractor(path: str | Path,
                         device: torch.device | str = "cpu") -> Callable[[torch.Tensor], torch.Tensor]:
    """Penultimate features of an edvae classifier file (fd_classifier.py)."""
    from .fd_classifier import load_classifier

    net = load_classifier(path).to(device).eval()

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        c, s = net.channels, net.size
        if images.shape[-2:] != (s, s):
            raise EdvaeError(f"images of {images.shape[-1]}x{images.shape[-2]} do not fit the classifier "
                             f"{path}, which takes {s}x{s}")
        return net.features(match_channels(images, c).to(device)).float().cpu()

    extract.net = net  # type: ignore[attr-defined]
    return extract


@torch.no_grad()
def extract_features(extract: Callable[[torch.Tensor], torch.Tensor], images,
                     batch_size: int = 100) -> torch.Tensor:
    """Features of uint8 images: a (N, C, H, W) tensor, or an ImageSet (read batch by batch)."""
    from .data import ImageSet

    n = len(images)
    if n == 0:
        raise EdvaeError("no images to extract features from")
    out = []
    for start in range(0, n, batch_size):
        idx = torch.arange(start, min(start + batch_size, n))
        batch = images.batch(idx) if isinstance(images, ImageSet) else images[idx]
        out.append(extract(batch.cpu() if batch.device.type != "cpu" else batch))
    return torch.cat(out).double()


# ---------------------------------------------------------------------------------------------
# Image sets -> one number


@torch.no_grad()
def reconstruct_images(model, images, batch_size: int = 100) -> torch.Tensor:
    """uint8 reconstructions (N, C, H, W) of an ImageSet or uint8 tensor, through the model's codes."""
    from .data import ImageSet, to_uint8

    out = []
    for start in range(0, len(images), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(images)))
        x = images.batch(idx) if isinstance(images, ImageSet) else images[idx]
        out.append(to_uint8(model.reconstruct(x)).cpu())
    return torch.cat(out)


def _classifier_for(path: str | Path | None, run_dir: Path | None, device, steps: int, log) -> Path:
    """The classifier file to use: `path` if it exists; else trained on the run's dataset and saved
    to `path` (default: one shared file per dataset, image format and seed)."""
    from . import fd_classifier
    from .prior.codes import load_split, run_config

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
    train_set = load_split(cfg, "train", device)
    test_set = load_split(cfg, "test", device)
    log(f"training the feature classifier on {cfg.train.dataset} ({len(train_set)} images, {steps} steps)"
        f" -> {target}")
    net, info = fd_classifier.train_classifier(train_set, test_set, steps=steps, seed=seed, device=device)
    fd_classifier.save_classifier(target, net, info)
    log(f"classifier test accuracy ({info['target']}): {info.get('test_accuracy', float('nan')):.3f}")
    return target


def measure(*, run_dir: str | Path | None = None, samples: str | Path | None = None,
            reconstructions: bool = False, reference: str | Path | None = None, split: str = "test",
            limit: int | None = None, features: str = "inception",
            inception_weights: str | Path | None = None, classifier: str | Path | None = None,
            classifier_steps: int = 1500, batch_size: int = 100, device: str = "auto",
            log=print) -> dict:
    """FID (inception) or FD_edvae-classifier between generated samples (a folder) or a run's
    reconstructions, and a reference: a folder, or the run's `split` (first `limit` images)."""
    from .prior.codes import load_split, run_config, run_model_file
    from .train import pick_device

    if features not in METRIC_NAMES:
        raise EdvaeError(f"unknown features {features!r} (inception, classifier)")
    if (samples is None) == (not reconstructions):
        raise EdvaeError("give either --samples DIR or --reconstructions")
    if limit is not None and limit < 2:
        raise EdvaeError(f"--limit must be at least 2 (a covariance needs two images), got {limit}")
    run = Path(run_dir) if run_dir is not None else None
    if run is not None:
        run_model_file(run)
    if reconstructions and reference is not None:
        raise EdvaeError("--reconstructions compares the run's own split with its reconstructions; "
                         "drop --reference")
    if (reconstructions or reference is None) and run is None:
        raise EdvaeError("--reconstructions and a reference split need --run RUN_DIR "
                         "(or give --reference DIR with --samples)")
    if split not in ("train", "test"):
        raise EdvaeError(f"unknown split {split!r} (train, test)")
    for folder in (samples, reference):  # cheap checks before any feature network is built or trained
        if folder is not None:
            image_files(folder)
    dev = pick_device(device)
    if features == "inception":
        extract, channels, size = inception_extractor(inception_weights, dev), 3, None
        extractor = {"features": "InceptionV3 pool3 (torch-fidelity, TF-compatible)",
                     "weights": str(inception_weights) if inception_weights else "torch-fidelity download"}
    else:
        path = _classifier_for(classifier, run, dev, classifier_steps, log)
        extract = classifier_extractor(path, dev)
        net = extract.net  # type: ignore[attr-defined]
        channels, size = net.channels, net.size
        extractor = {"features": "edvae classifier (NOT InceptionV3: not comparable with published FID)",
                     "classifier": str(path), "classifier_info": net.info}  # type: ignore[attr-defined]
    ref_desc: str
    if reference is not None:
        ref = read_image_folder(reference, channels, size, limit)
        ref_desc = str(reference)
    else:
        cfg = run_config(run)
        ref = load_split(cfg, split, "cpu")
        if limit is not None and limit < len(ref):
            ref = ref.batch(torch.arange(limit))
        ref_desc = f"{cfg.train.dataset} {split}"
    if reconstructions:
        from .model import DiscreteVAE

        model = DiscreteVAE.load(run, dev)
        gen = reconstruct_images(model, ref, batch_size)
        gen_desc = f"reconstructions by {run}"
    else:
        gen = read_image_folder(samples, channels, size)
        gen_desc = str(samples)
    fa = extract_features(extract, gen, batch_size)
    fb = extract_features(extract, ref, batch_size)
    metric = METRIC_NAMES[features]
    return {"metric": ("r" if reconstructions else "") + metric,
            "value": frechet_distance_of_features(fa, fb),
            "generated": gen_desc, "reference": ref_desc,
            "n_generated": int(fa.shape[0]), "n_reference": int(fb.shape[0]), **extractor}
