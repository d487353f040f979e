"""A small CNN that edvae trains itself, so that Frechet distances can be measured without downloading
weights: FD_edvae-classifier. It is not FID.

The idea is that of FID (Heusel et al. 2017): compare image sets in the features of a network
trained to recognise the data. Here that network is trained by edvae on the dataset's own labels
(Fashion-MNIST, CIFAR-10 and synthetic have them). For sets without labels (CelebA, LSUN, folders)
it is trained on the rotation of the image instead, RotNet's self-supervised task (Gidaris et al.
2018, "Unsupervised representation learning by predicting image rotations"). The features are the
globally pooled last convolutional layer.

Numbers made with this extractor can be compared only with numbers made with the same classifier
file. Comparisons across methods should therefore share one file (the default path is one per
dataset, image size and seed). They are never comparable with published FIDs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import checkpoint
from .data import ImageSet, to_model_input
from .engine.loop import Fit, Phase, StepOutput, fit
from .engine.runtime import BatchOrder, step_seed
from .errors import EdvaeError

KIND = "fd-classifier"
CACHE_DIR = Path.home() / ".cache" / "edvae" / "fd-classifier"


class FeatureClassifier(nn.Module):
    """Three stages of two 3x3 convolutions (width, 2 width, 4 width), max-pooling between them;
    global average pooling gives the features; a linear layer gives the class logits."""

    def __init__(self, channels: int = 1, size: int = 32, classes: int = 10,
                 width: int = 16):  # width 16: trains in about a minute on one CPU thread
        super().__init__()
        self.channels, self.size, self.classes, self.width = channels, size, classes, width
        layers: list[nn.Module] = []
        c_in = channels
        for stage, c in enumerate((width, 2 * width, 4 * width)):
            if stage:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
                c_in = c
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * width, classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float (N, 4 width)."""
        return self.body(to_model_input(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def default_path(dataset: str, channels: int, size: int, seed: int) -> Path:
    """One classifier per dataset, image format and seed, shared by every run measured on it."""
    return CACHE_DIR / f"{dataset}-{channels}x{size}x{size}-seed{seed}.safetensors"


def _rotate(images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    out = images.clone()
    for r in range(1, 4):
        out[k == r] = torch.rot90(images[k == r], r, dims=(2, 3))
    return out


def _targets(data: ImageSet, idx: torch.Tensor, images: torch.Tensor, use_labels: bool,
             gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if use_labels:
        return images, data.labels[idx.to(data.labels.device)].to(images.device)
    k = torch.randint(0, 4, (images.shape[0],), generator=gen).to(images.device)
    return _rotate(images, k), k


class ClassifierSteps:
    """The classifier's step function: cross-entropy on labels, or on RotNet's rotations."""

    def __init__(self, net: FeatureClassifier, data: ImageSet, batch_size: int, seed: int,
                 device: torch.device | str):
        self.net, self.data, self.seed, self.device = net, data, seed, device
        self.use_labels = data.labels is not None
        self.order = BatchOrder(len(data), batch_size, seed)

    def step(self, step: int, values: dict[str, float], report: bool) -> StepOutput:
        gen = torch.Generator().manual_seed(step_seed(self.seed, step))
        idx = self.order.indices(step)
        x, y = _targets(self.data, idx, self.data.batch(idx).to(self.device), self.use_labels, gen)
        self.net.train()
        return StepOutput(F.cross_entropy(self.net(x), y))


def train_classifier(train_set: ImageSet, test_set: ImageSet | None = None, *,
                     steps: int = 1500,  # about 1.6 epochs of Fashion-MNIST at batch 64
                     batch_size: int = 64,
                     lr: float = 1e-3,  # Adam's usual rate
                     width: int = 16,
                     seed: int = 0,
                     device: torch.device | str = "cpu",
                     progress: bool = False, state_dir: Path | None = None,
                     checkpoint_every: int = 0) -> tuple[FeatureClassifier, dict[str, Any]]:
    """Train on the labels of `train_set` (or on rotations where it has none); returns the network
    and its description (target, classes, test accuracy). With `state_dir`, the training state is
    checkpointed there (every `checkpoint_every` steps and at the end) and a rerun resumes it."""
    if steps < 1 or batch_size < 1:
        raise EdvaeError(f"classifier steps and batch size must be positive, got {steps}, {batch_size}")
    use_labels = train_set.labels is not None
    classes = int(train_set.labels.max()) + 1 if use_labels else 4
    if use_labels and classes < 2:
        raise EdvaeError(f"{train_set.name}: one label only; a classifier needs two or more")
    torch.manual_seed(seed)
    net = FeatureClassifier(train_set.channels, train_set.size, classes, width).to(device)
    info: dict[str, Any] = {"kind": KIND, "channels": train_set.channels, "size": train_set.size,
                            "classes": classes, "width": width, "dataset": train_set.name,
                            "target": "labels" if use_labels else "rotation", "steps": steps,
                            "batch_size": batch_size, "lr": lr, "seed": seed,
                            "train_images": len(train_set)}
    run = ClassifierSteps(net, train_set, batch_size, seed, device)
    f = Fit(net, torch.optim.Adam(net.parameters(), lr=lr), [Phase(steps, run.step)], lambda _: {"lr": lr},
            seed, torch.device(device), checkpoint_every=checkpoint_every, out=state_dir, config=info,
            model_file=None, progress="fd classifier" if progress else None, name="classifier training")
    resume = state_dir is not None and (state_dir / checkpoint.STATE_FILE).is_file()
    fit(f, f.resume() if resume else 0)
    net.eval()
    if test_set is not None and len(test_set):
        info["test_accuracy"] = accuracy(net, test_set, use_labels, seed)
    return net, info


@torch.no_grad()
def accuracy(net: FeatureClassifier, data: ImageSet, use_labels: bool = True, seed: int = 0,
             batch_size: int = 256) -> float:
    net.eval()
    device = next(net.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    right = 0
    for idx in torch.arange(len(data)).split(batch_size):
        x, y = _targets(data, idx, data.batch(idx).to(device), use_labels and data.labels is not None, gen)
        right += int((net(x).argmax(1) == y).sum())
    return right / len(data)


def save_classifier(path: str | Path, net: FeatureClassifier, info: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save_model(path, net, info)


def load_classifier(path: str | Path) -> FeatureClassifier:
    path = Path(path)
    tensors, info = checkpoint.load_model_tensors(path)
    if info.get("kind") != KIND:
        raise EdvaeError(f"{path} is not an edvae feature classifier (kind {info.get('kind')!r})")
    net = FeatureClassifier(info["channels"], info["size"], info["classes"], info["width"])
    checkpoint.load_into(net, tensors, f"{path} does not fit its own description")
    net.info = info  # type: ignore[attr-defined]
    return net.eval()
