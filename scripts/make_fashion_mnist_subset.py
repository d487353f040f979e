"""Write the Fashion-MNIST subset shipped in the package (the first 6,000 train and 1,000 test
images and labels, gzipped IDX, byte-reproducible) from a full copy of the data set.

    python scripts/make_fashion_mnist_subset.py [SRC] [DEST]

SRC defaults to the Debian package's folder, DEST to the package's resources/fashion-mnist-subset.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np

from edvae.data.fashion_mnist import DEBIAN_DIR, FILES, IMAGES_MAGIC, LABELS_MAGIC, SUBSET_DIR, read_idx

COUNTS = {"train": 6000, "test": 1000}


def write_idx(path: Path, array: np.ndarray) -> None:
    """A uint8 array as a gzipped IDX file (mtime 0, so the bytes depend on the array alone)."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(f">I{a.ndim}I", 0x800 + a.ndim, *a.shape) + a.tobytes()
    path.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))


def main(src: Path = DEBIAN_DIR, dest: Path = SUBSET_DIR) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for split, n in COUNTS.items():
        for base, magic in zip(FILES[split], (IMAGES_MAGIC, LABELS_MAGIC), strict=True):
            found = [src / name for name in (base + ".gz", base) if (src / name).is_file()]
            if not found:
                sys.exit(f"{src}: neither {base}.gz nor {base} found")
            write_idx(dest / (base + ".gz"), read_idx(found[0], magic)[:n])


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:3]))
