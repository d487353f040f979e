"""LSUN church_outdoor: the official LMDB export, or a folder of images.

`root` may be a folder holding church_outdoor_train_lmdb/ ("train") and
church_outdoor_val_lmdb/ ("test", LSUN's val set), one of those LMDB folders itself (the other
split is then looked for next to it; an LMDB folder with another name serves every split),
or a folder of images (split as in edvae.data.folder). Values in the LMDB are encoded
images (WebP/JPEG). Images are resized so the shorter side is `size` (default 128), then
centre-cropped. Needs the `lmdb` package for LMDB folders (pip install edvae[lsun]).
"""

from __future__ import annotations

import io
import os
import threading
from functools import partial
from itertools import islice
from pathlib import Path

import torch

from edvae.data.folder import decode_resized, load_folder
from edvae.data.images import ImageSet, check_request, streaming_set
from edvae.errors import EdvaeError

LMDB_NAMES = {"train": "church_outdoor_train_lmdb", "test": "church_outdoor_val_lmdb"}


def _lmdb():
    try:
        import lmdb
    except ImportError as e:
        raise EdvaeError("reading LSUN LMDB folders needs the lmdb package: "
                         "pip install lmdb (or pip install edvae[lsun])") from e
    return lmdb


_ENVS: dict[tuple[str, int], object] = {}  # (path, pid) -> open environment
_ENVS_LOCK = threading.Lock()


def open_env(path: str | Path):
    """The read-only environment of an LMDB folder, opened once per process (fork-safe)."""
    key = (str(path), os.getpid())
    with _ENVS_LOCK:
        if key not in _ENVS:
            lmdb = _lmdb()
            try:
                _ENVS[key] = lmdb.open(key[0], readonly=True, lock=False, readahead=False,
                                       meminit=False)
            except lmdb.Error as e:
                raise EdvaeError(f"cannot open LMDB {path}: {e}") from e
        return _ENVS[key]


def lmdb_keys(path: str | Path, limit: int | None = None) -> list[bytes]:
    with open_env(path).begin() as txn:
        return [bytes(key) for key in islice(txn.cursor().iternext(keys=True, values=False), limit)]


def decode_lmdb(key: bytes, path: str, size: int, channels: int) -> torch.Tensor:
    """Decode the image stored under `key`, resize the shorter side, centre crop."""
    with open_env(path).begin() as txn:
        value = txn.get(key)
    if value is None:
        raise EdvaeError(f"key {key!r} missing from LMDB {path}")
    return decode_resized(io.BytesIO(value), size, channels, what=f"{key!r} in {path}")


def _lmdb_folder(root: Path, split: str) -> Path | None:
    want = LMDB_NAMES[split]
    if (root / "data.mdb").is_file():
        if root.name not in LMDB_NAMES.values() or root.name == want:
            return root
        root = root.parent  # an LMDB of the other split: look next to it
    if (root / want / "data.mdb").is_file():
        return root / want
    if root.name in LMDB_NAMES.values() or any((root / n).is_dir() for n in LMDB_NAMES.values()):
        raise EdvaeError(f"no LSUN LMDB folder {root / want} (with data.mdb) for split {split}")
    return None


def load_lsun(split: str = "train", root: str | Path | None = None, *,
              size: int | None = None, channels: int | None = None, limit: int | None = None,
              cache_to_memory: bool = False) -> ImageSet:
    """LSUN church_outdoor `split` (train/test) as a streaming set of (C, size, size) images."""
    size, channels = check_request("lsun-church", split, limit, size, channels, default_size=128)
    if root is None:
        raise EdvaeError("lsun-church needs root= a folder with church_outdoor_train_lmdb/ "
                         "and church_outdoor_val_lmdb/ (or a folder of images)")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise EdvaeError(f"LSUN folder {root} does not exist")
    db = _lmdb_folder(root, split)
    if db is None:
        return load_folder(split, root, size=size, channels=channels, limit=limit,
                           name="lsun-church", cache_to_memory=cache_to_memory)
    keys = lmdb_keys(db, limit)
    if not keys:
        raise EdvaeError(f"LSUN LMDB {db} is empty")
    return streaming_set("lsun-church", db, keys, partial(decode_lmdb, path=str(db)), size=size,
                         channels=channels, cache_to_memory=cache_to_memory)
