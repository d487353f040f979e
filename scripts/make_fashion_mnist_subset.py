"""Write the Fashion-MNIST subset shipped in the package (the first 6,000 train and 1,000 test
images and labels, gzipped IDX, byte-reproducible) from a full copy of the data set.

    python scripts/make_fashion_mnist_subset.py [--src SRC] [--dest DEST]
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--src", type=Path, default=DEBIAN_DIR, help="the full set (default %(default)s)")
    parser.add_argument("--dest", type=Path, default=SUBSET_DIR, help="default: the package's subset folder")
    args = parser.parse_args()
    sources = {}
    for split in COUNTS:
        for base in FILES[split]:
            found = [args.src / name for name in (base + ".gz", base) if (args.src / name).is_file()]
            if not found:
                print(f"error: {args.src}: neither {base}.gz nor {base} found", file=sys.stderr)
                sys.exit(2)
            sources[base] = found[0]
    args.dest.mkdir(parents=True, exist_ok=True)
    for split, n in COUNTS.items():
        for base, magic in zip(FILES[split], (IMAGES_MAGIC, LABELS_MAGIC), strict=True):
            write_idx(args.dest / (base + ".gz"), read_idx(sources[base], magic)[:n])


if __name__ == "__main__":
    main()
