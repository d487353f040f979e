"""The weights of FID's InceptionV3 (inception.py): the standard 2015-12-05 file, checked, read safely.

pytorch-fid (M. Seitzer) and torch-fidelity (A. Obukhov et al.) publish the PyTorch conversion of the
weights of TensorFlow's 2015-12-05 InceptionV3 graph, the graph of FID (Heusel et al. 2017,
arXiv:1706.08500), as

- `pt_inception-2015-12-05-6726825d.pth` (pytorch-fid, release `fid_weights`),
- `weights-inception-2015-12-05-6726825d.pth` (torch-fidelity, release v0.2.0).

The `6726825d` in both names is the first 8 hex digits of the file's SHA-256 (torch.hub's naming rule
for files whose download it checks). The full SHA-256 published for both names is INCEPTION_SHA256:
one file (95,628,359 bytes) under two names.

A file is used only when its SHA-256 is that one; a truncated download or any other file is a
one-line EdvaeError naming the file and the expected hash. The file is then read with
`torch.load(weights_only=True)`, which builds tensors and plain containers and runs no pickled code,
and its tensors are put on FIDInceptionV3 by name (the network uses the file's names). The file's
`fc.*` (the 1008 logits) are not used by the pool features, nor are BatchNorm's
`num_batches_tracked` counters.

Nothing is downloaded. When no file is given, torch.hub's checkpoint folder (where pytorch-fid and
torch-fidelity keep the file they downloaded) is searched for either name.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from .data.download import sha256sum
from .errors import EdvaeError
from .inception import FIDInceptionV3

INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
WEIGHT_FILES = {  # name -> where it is published
    "pt_inception-2015-12-05-6726825d.pth":
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
        "pt_inception-2015-12-05-6726825d.pth",
    "weights-inception-2015-12-05-6726825d.pth":
        "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
        "weights-inception-2015-12-05-6726825d.pth",
}
_UNUSED_KEYS = ("fc.weight", "fc.bias")


def where_to_get() -> str:
    """Short: the command line cuts an error message at 500 characters (the URL is in --help)."""
    return (f"get the file of SHA-256 {INCEPTION_SHA256} (pytorch-fid's release fid_weights), "
            "pass --inception-weights FILE")


def resolve_weights_file(path: str | Path | None) -> Path:
    """The weights file to read: `path`, or a standard name in torch.hub's checkpoint folder."""
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise EdvaeError(f"InceptionV3 weights file not found: {path}; {where_to_get()}")
        return path
    folder = Path(torch.hub.get_dir()) / "checkpoints"  # $TORCH_HOME/hub/checkpoints
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise EdvaeError(f"FID needs {next(iter(WEIGHT_FILES))}: none given, none in torch.hub's checkpoints; "
                     f"{where_to_get()}")


def read_state(path: Path) -> Mapping[str, torch.Tensor]:
    """The file's tensors, by torch.load(weights_only=True) on the CPU."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # objects other than tensors, or bytes that are no pickle at all
        raise EdvaeError(f"{path}: not a file of tensors that torch.load(weights_only=True) accepts; "
                         "edvae unpickles nothing else") from None
    except Exception as exc:  # any other file it cannot read is bad input too
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise EdvaeError(f"{path}: not a weights file torch.load(weights_only=True) can read "
                         f"({type(exc).__name__}: {first})") from None
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise EdvaeError(f"{path}: holds a {type(state).__name__}, not a state dict of named tensors")
    return state


def map_state(net: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | Path) -> dict:
    """The file's tensors as `net`'s state dict: same names, same shapes; fc.* and the BatchNorm
    counters are dropped (the network keeps its own counters)."""
    own = net.state_dict()
    out = {}
    for key, value in state.items():
        if key in _UNUSED_KEYS or key.endswith(".num_batches_tracked"):
            continue
        if key not in own:
            raise EdvaeError(f"{source}: tensor {key!r} is not a weight of FID's InceptionV3")
        if not torch.is_tensor(value) or value.shape != own[key].shape:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise EdvaeError(f"{source}: {key!r} is {shape}, FID's InceptionV3 needs {tuple(own[key].shape)}")
        out[key] = value.to(own[key].dtype)
    missing = [k for k in own if k not in out and not k.endswith(".num_batches_tracked")]
    if missing:
        raise EdvaeError(f"{source}: no tensor {missing[0]!r} ({len(missing)} weights of FID's InceptionV3 "
                         "missing)")
    return {k: out.get(k, v) for k, v in own.items()}


def load_fid_inception(path: str | Path, device: torch.device | str = "cpu",
                       sha256: str | None = None) -> FIDInceptionV3:
    """FIDInceptionV3 with the weights of `path`, whose SHA-256 must be `sha256` (default: the
    standard file's, INCEPTION_SHA256; tests pass the hash of a file of random weights)."""
    path, expected = Path(path), sha256 or INCEPTION_SHA256
    try:
        got = sha256sum(path)
    except OSError as exc:
        raise EdvaeError(f"{path}: cannot read the InceptionV3 weights ({exc.strerror or exc})") from None
    if got != expected:
        raise EdvaeError(f"{path}: SHA-256 {got[:12]}..., not {expected} of the FID InceptionV3 weights "
                         "(a truncated download or another file)")
    net = FIDInceptionV3()
    net.load_state_dict(map_state(net, read_state(path), path))
    return net.to(device).eval()
