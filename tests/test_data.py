"""Data layer: every source read from small files written here in the official formats."""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from edvae.data import (
    DATASETS,
    InMemoryImages,
    StreamingImages,
    cifar10,
    fashion_mnist,
    load_dataset,
    to_model_input,
    to_uint8,
)
from edvae.data.download import DownloadError, download, extract_tar, sha256sum
from edvae.data.images import read_image_file
from edvae.errors import EdvaeError

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------- Fashion-MNIST (IDX)


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_fmnist(folder: Path, n: int = 5, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    images = RNG.integers(1, 256, (n, 28, 28), dtype=np.uint8)
    labels = RNG.integers(0, 10, n, dtype=np.uint8)
    for prefix in ("train", "t10k"):
        for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            data = idx_bytes(array, magic)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return images, labels


@pytest.mark.parametrize("gz", [True, False])
def test_idx_gz_and_raw(tmp_path, gz):
    images, labels = write_fmnist(tmp_path, gz=gz)
    data = load_dataset("fashion-mnist", "test", root=tmp_path)
    assert isinstance(data, InMemoryImages)
    assert data.images.shape == (5, 1, 32, 32) and data.images.dtype == torch.uint8
    assert torch.equal(data.images[:, 0, 2:30, 2:30], torch.from_numpy(images))
    border = data.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert border.sum() == 0
    assert data.labels.dtype == torch.int64 and data.labels.tolist() == labels.tolist()
    assert data.source == str(tmp_path)
    assert len(load_dataset("fashion-mnist", root=tmp_path, limit=2)) == 2


def test_idx_bad_magic_and_truncated(tmp_path):
    write_fmnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    good = path.read_bytes()
    path.write_bytes(struct.pack(">I", 2049) + good[4:])
    with pytest.raises(EdvaeError, match="train-images-idx3-ubyte.*magic"):
        load_dataset("fashion-mnist", root=tmp_path)
    path.write_bytes(good[:-10])
    with pytest.raises(EdvaeError, match="train-images-idx3-ubyte.*truncated"):
        load_dataset("fashion-mnist", root=tmp_path)
    path.unlink()
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(good)[:100])  # cut inside the compressed stream
    with pytest.raises(EdvaeError, match="train-images-idx3-ubyte.gz"):
        load_dataset("fashion-mnist", root=tmp_path)


def test_fmnist_missing_file_or_folder(tmp_path):
    write_fmnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(EdvaeError, match="t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", "test", root=tmp_path)
    with pytest.raises(EdvaeError, match="nope"):
        load_dataset("fashion-mnist", root=tmp_path / "nope")


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian Fashion-MNIST folder /usr/share/datasets/fashion-mnist absent")
def test_debian_fashion_mnist():
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert train.source == "/usr/share/datasets/fashion-mnist"
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape[1:] == (1, 32, 32) and test.labels.shape == (10000,)
    x = train.images[:2000]
    assert x[:, :, :2].max() == 0 and x[:, :, -2:].max() == 0
    assert x[:, :, :, :2].max() == 0 and x[:, :, :, -2:].max() == 0
    assert x.float().mean() > 50  # real images, not zeros
    assert torch.bincount(train.labels, minlength=10).tolist() == [6000] * 10


def test_packaged_subset(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(fashion_mnist, "CACHE_DIR", tmp_path / "no-cache")
    train = load_dataset("fashion-mnist", "train")
    test = load_dataset("fashion-mnist", "test")
    assert train.source == str(fashion_mnist.SUBSET_DIR)
    assert (len(train), len(test)) == (6000, 1000)
    assert train.images.shape[1:] == (1, 32, 32) and train.images.float().mean() > 50
    assert fashion_mnist.fashion_mnist_source() == fashion_mnist.SUBSET_DIR



def test_fmnist_download_without_network_falls_back(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(fashion_mnist, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(fashion_mnist, "URL", "http://127.0.0.1:9/")
    with pytest.warns(UserWarning, match="cannot download"):
        data = load_dataset("fashion-mnist", "test", download=True)
    assert len(data) == 1000 and data.source == str(fashion_mnist.SUBSET_DIR)


# ---------------------------------------------------------------- download


def test_download_md5(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"hello edvae")
    dest_dir = tmp_path / "out"
    with pytest.raises(EdvaeError, match="md5 mismatch"):
        download(src.as_uri(), dest_dir / "file.bin", "0" * 32)
    assert list(dest_dir.iterdir()) == []  # neither the file nor a partial one
    md5 = hashlib.md5(b"hello edvae").hexdigest()
    assert download(src.as_uri(), dest_dir / "file.bin", md5).read_bytes() == b"hello edvae"
    with pytest.raises(DownloadError, match="127.0.0.1"):
        download("http://127.0.0.1:9/x", dest_dir / "x", None)
    assert sorted(p.name for p in dest_dir.iterdir()) == ["file.bin"]


def test_sha256sum_reads_the_whole_file_in_blocks(tmp_path):
    (tmp_path / "abc").write_bytes(b"abc")  # the FIPS 180-2 test vector
    assert sha256sum(tmp_path / "abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    big = bytes(range(256)) * 9000  # over two 1 MiB blocks
    (tmp_path / "big").write_bytes(big)
    assert sha256sum(tmp_path / "big") == hashlib.sha256(big).hexdigest()


def test_extract_tar_refuses_unsafe_paths(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(EdvaeError, match="unsafe"):
        extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


# ---------------------------------------------------------------- CIFAR-10 (binary version)

CIFAR_BATCHES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def cifar_record(label: int, pixel) -> bytes:
    """One record built byte by byte: the label, then pixel(c, y, x) for c = R, G, B, rows, columns."""
    return bytes([label] + [pixel(c, y, x) for c in range(3) for y in range(32) for x in range(32)])


def write_cifar(folder: Path, n: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    """All six batch files with n random records each; returns the (n, 3, 32, 32) images and labels."""
    folder.mkdir(parents=True)
    batches = {}
    for name in CIFAR_BATCHES:
        images = RNG.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = RNG.integers(0, 10, n).tolist()
        data = b"".join(cifar_record(lab, lambda c, y, x, im=im: int(im[c, y, x]))
                        for lab, im in zip(labels, images, strict=True))
        (folder / name).write_bytes(data)
        batches[name] = images, labels
    return batches


def test_cifar10_record_layout(tmp_path):
    # record 0: red is a row gradient, green a column gradient, blue 255 but one marked pixel;
    # record 1: all zero but its very last byte (blue, row 31, column 31), so a shifted record shows
    first = cifar_record(7, lambda c, y, x: (8 * y, 8 * x, 1 if (y, x) == (0, 1) else 255)[c])
    second = cifar_record(0, lambda c, y, x: 9 if (c, y, x) == (2, 31, 31) else 0)
    (tmp_path / "b.bin").write_bytes(first + second)
    images, labels = cifar10.read_batch(tmp_path / "b.bin")
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    assert labels.tolist() == [7, 0] and labels.dtype == np.int64
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    assert np.array_equal(images[0, 0], 8 * rows) and np.array_equal(images[0, 1], 8 * cols)
    assert images[0, 2, 0, 1] == 1 and (images[0, 2] == 255).sum() == 1023
    assert images[1, 2, 31, 31] == 9 and images[1].sum() == 9


def test_cifar10(tmp_path):
    batches = write_cifar(tmp_path / "cifar-10-batches-bin")
    for root in (tmp_path, tmp_path / "cifar-10-batches-bin"):
        train = load_dataset("cifar10", "train", root=root)
        assert train.images.shape == (10, 3, 32, 32) and train.channels == 3 and train.size == 32
        assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    test = load_dataset("cifar10", "test", root=tmp_path)
    images, labels = batches["test_batch.bin"]
    assert test.labels.tolist() == labels and torch.equal(test.images, torch.from_numpy(images))
    assert torch.equal(train.images[2], torch.from_numpy(batches["data_batch_2.bin"][0][0]))  # file order
    assert train.labels[9] == batches["data_batch_5.bin"][1][1]
    three = load_dataset("cifar10", root=tmp_path, limit=3)
    assert len(three) == 3 and torch.equal(three.images[2], train.images[2])
    gray = load_dataset("cifar10", "test", root=tmp_path, channels=1, size=16)
    assert gray.images.shape == (2, 1, 16, 16) and gray.channels == 1 and gray.size == 16
    with pytest.raises(EdvaeError, match="limit"):
        load_dataset("cifar10", root=tmp_path, limit=0)


def test_cifar10_bad_files(tmp_path):
    folder = tmp_path / "cifar-10-batches-bin"
    write_cifar(folder)
    good = (folder / "test_batch.bin").read_bytes()
    (folder / "test_batch.bin").write_bytes(good[:-5])  # truncated inside record 2
    with pytest.raises(EdvaeError, match=r"test_batch\.bin: 6141 bytes .*3073") as e:
        load_dataset("cifar10", "test", root=tmp_path)
    assert "\n" not in str(e.value)
    (folder / "test_batch.bin").write_bytes(b"")
    with pytest.raises(EdvaeError, match=r"test_batch\.bin: 0 bytes"):
        load_dataset("cifar10", "test", root=tmp_path)
    (folder / "test_batch.bin").write_bytes(good[:3073] + bytes([10]) + good[3074:])
    with pytest.raises(EdvaeError, match=r"test_batch\.bin: record 1 has label 10, expected 0-9") as e:
        load_dataset("cifar10", "test", root=tmp_path)
    assert "\n" not in str(e.value)
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(EdvaeError, match=r"no CIFAR-10 batch data_batch_3\.bin in"):
        load_dataset("cifar10", "train", root=tmp_path)
    with pytest.raises(EdvaeError, match="no CIFAR-10 batch test_batch.bin"):
        load_dataset("cifar10", "test", root=tmp_path / "empty")


def test_cifar10_python_version_only(tmp_path):
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (py / name).write_bytes(b"\x80\x02}q\x00.")  # never opened: the binary version is asked for
    for root in (tmp_path, py):
        with pytest.raises(EdvaeError, match="python version.*binary version \\(no pickle\\)") as e:
            load_dataset("cifar10", "test", root=root)
        assert "download=True" in str(e.value) and cifar10.URL in str(e.value)
    write_cifar(tmp_path / "cifar-10-batches-bin")  # both versions present: the binary one is read
    assert len(load_dataset("cifar10", "test", root=tmp_path)) == 2


def cifar_archive(tmp_path: Path, monkeypatch, names: list[str]) -> Path:
    write_cifar(tmp_path / "src" / "cifar-10-batches-bin")
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name in names:
            tar.add(tmp_path / "src" / "cifar-10-batches-bin" / name, arcname=f"cifar-10-batches-bin/{name}")
    monkeypatch.setattr(cifar10, "URL", archive.as_uri())
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(archive.read_bytes()).hexdigest())
    return archive


def test_cifar10_download(tmp_path, monkeypatch):
    assert cifar10.URL == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    assert cifar10.MD5 == "c32a1d4ab5d03f1284b67883e8d87530"  # the binary version's md5 on the CIFAR page
    cifar_archive(tmp_path, monkeypatch, CIFAR_BATCHES)
    (tmp_path / "dl" / "cifar-10-batches-py").mkdir(parents=True)  # a python version does not stop it
    data = load_dataset("cifar10", "test", root=tmp_path / "dl", download=True)
    assert len(data) == 2 and data.source == str(tmp_path / "dl" / "cifar-10-batches-bin")
    assert not (tmp_path / "dl" / "cifar-10-binary.tar.gz").exists()  # the archive is removed
    monkeypatch.setattr(cifar10, "MD5", "0" * 32)
    with pytest.raises(EdvaeError, match="md5 mismatch"):
        load_dataset("cifar10", "test", root=tmp_path / "dl2", download=True)
    assert not (tmp_path / "dl2" / "cifar-10-batches-bin").exists()


def test_cifar10_download_incomplete_archive(tmp_path, monkeypatch):
    cifar_archive(tmp_path, monkeypatch, ["test_batch.bin"])
    assert len(load_dataset("cifar10", "test", root=tmp_path / "dl", download=True)) == 2
    with pytest.raises(EdvaeError, match="did not hold data_batch_1.bin"):
        load_dataset("cifar10", "train", root=tmp_path / "dl2", download=True)


def test_cifar10_reads_no_pickle():
    import inspect
    source = inspect.getsource(cifar10)
    assert "import pickle" not in source and "Unpickler" not in source


# ---------------------------------------------------------------- CelebA


def write_celeba(root: Path, partitions=(0, 0, 0, 1, 2, 2)) -> None:
    images = root / "img_align_celeba"
    images.mkdir(parents=True)
    lines = []
    for i, p in enumerate(partitions, 1):
        a = np.zeros((218, 178, 3), np.uint8)
        a[..., 2] = 255  # blue outside the centre crop
        a[39:179, 19:159] = (255, 0, 0)  # red exactly inside the 140x140 centre crop
        Image.fromarray(a).save(images / f"{i:06d}.jpg", quality=95)
        lines.append(f"{i:06d}.jpg {p}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


def test_celeba(tmp_path):
    write_celeba(tmp_path)
    sizes = {s: len(load_dataset("celeba", s, root=tmp_path)) for s in ("train", "valid", "test")}
    assert sizes == {"train": 3, "valid": 1, "test": 2}
    train = load_dataset("celeba", "train", root=tmp_path)
    assert isinstance(train, StreamingImages)
    x = train.batch(torch.tensor([2, 0]))
    assert x.shape == (2, 3, 64, 64) and x.dtype == torch.uint8
    assert x[:, 0].float().mean() > 200 and x[:, 2].float().mean() < 40  # the crop is centred
    cached = load_dataset("celeba", "train", root=tmp_path, cache_to_memory=True)
    assert isinstance(cached, InMemoryImages)
    assert torch.equal(cached.batch(torch.tensor([2, 0])), x)
    # a streamed set takes CPU indices wherever its batches go; a set in memory takes them beside it
    assert train.to("meta").index_device == torch.device("cpu")
    assert cached.to("meta").index_device == torch.device("meta")
    assert load_dataset("celeba", "test", root=tmp_path, size=32, channels=1).batch(
        torch.tensor([0])).shape == (1, 1, 32, 32)


def test_celeba_errors(tmp_path):
    write_celeba(tmp_path)
    (tmp_path / "img_align_celeba" / "000002.jpg").unlink()
    with pytest.raises(EdvaeError, match="000002.jpg"):
        load_dataset("celeba", root=tmp_path)
    with pytest.raises(EdvaeError, match="train, valid, test"):
        load_dataset("celeba", "val", root=tmp_path)
    (tmp_path / "img_align_celeba" / "000005.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(EdvaeError, match="000005.jpg"):
        load_dataset("celeba", "test", root=tmp_path).batch(torch.tensor([0]))


# ---------------------------------------------------------------- LSUN


def encoded(w: int, h: int, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, fmt)
    return buf.getvalue()


def test_lsun_lmdb(tmp_path):
    lmdb = pytest.importorskip("lmdb", reason="lmdb not installed (pip install edvae[lsun])")
    for name, n, fmt in (("church_outdoor_train_lmdb", 3, "JPEG"),
                         ("church_outdoor_val_lmdb", 2, "WEBP")):
        env = lmdb.open(str(tmp_path / name), map_size=1 << 24)
        with env.begin(write=True) as txn:
            for i in range(n):
                txn.put(f"{i:040x}".encode(), encoded(150 + 20 * i, 120, fmt))
        env.close()
    train = load_dataset("lsun-church", "train", root=tmp_path, size=32)
    assert isinstance(train, StreamingImages) and len(train) == 3
    assert train.batch(torch.tensor([0, 2])).shape == (2, 3, 32, 32)
    test = load_dataset("lsun-church", "test", root=tmp_path)
    assert len(test) == 2 and test.batch(torch.tensor([1])).shape == (1, 3, 128, 128)
    # pointing at the train LMDB itself finds the val LMDB next to it for "test"
    direct = load_dataset("lsun-church", "test", root=tmp_path / "church_outdoor_train_lmdb")
    assert direct.source == str(tmp_path / "church_outdoor_val_lmdb")
    cached = load_dataset("lsun-church", "train", root=tmp_path, size=32, cache_to_memory=True)
    assert torch.equal(cached.images[[0, 2]], train.batch(torch.tensor([0, 2])))


def test_lsun_without_lmdb_package(tmp_path, monkeypatch):
    db = tmp_path / "church_outdoor_train_lmdb"
    db.mkdir()
    (db / "data.mdb").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "lmdb", None)  # makes `import lmdb` fail
    with pytest.raises(EdvaeError, match="pip install lmdb"):
        load_dataset("lsun-church", root=tmp_path)


def test_lsun_image_folder(tmp_path):
    for i in range(10):
        (tmp_path / f"{i}.webp").write_bytes(encoded(160, 130, "WEBP"))
    train = load_dataset("lsun-church", "train", root=tmp_path, size=16)
    test = load_dataset("lsun-church", "test", root=tmp_path, size=16)
    assert (len(train), len(test)) == (9, 1) and train.name == "lsun-church"
    assert test.batch(torch.tensor([0])).shape == (1, 3, 16, 16)


# ---------------------------------------------------------------- folder


def test_folder_mixed_sizes_and_channels(tmp_path):
    (tmp_path / "sub").mkdir()
    for i in range(20):  # 00..09 in sub/, 10..19 at the top; sorted: sub/... after 1x.png
        size = (40, 30) if i % 2 else (30, 50)
        img = Image.new("L", size, 100) if i % 3 else Image.new("RGB", size, (10, 200, 30))
        img.save(tmp_path / ("sub" if i < 10 else ".") / f"{i:02d}.png")
    train = load_dataset("folder", "train", root=tmp_path, size=24, channels=3)
    test = load_dataset("folder", "test", root=tmp_path, size=24, channels=3)
    assert (len(train), len(test)) == (18, 2)  # every tenth file in sorted order is test
    assert set(train.items).isdisjoint(test.items)
    assert [Path(p).relative_to(tmp_path).as_posix() for p in test.items] == [
        "19.png", "sub/09.png"]
    x = train.batch(torch.arange(18))
    assert x.shape == (18, 3, 24, 24)
    assert x[2, :, 5, 5].tolist() == [10, 200, 30]  # 12.png is flat RGB (10, 200, 30)
    gray = load_dataset("folder", "train", root=tmp_path, size=24, channels=1)
    assert gray.batch(torch.tensor([1])).shape == (1, 1, 24, 24)
    assert gray.batch(torch.tensor([1])).eq(100).all()  # 01.png is a flat grey image
    with pytest.raises(EdvaeError, match="size="):
        load_dataset("folder", root=tmp_path)


def test_folder_splits_size_inference_and_empty(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        (tmp_path / split).mkdir()
        for i in range(n):
            Image.new("L", (20, 20), i * 50).save(tmp_path / split / f"{i}.png")
    train = load_dataset("folder", "train", root=tmp_path)
    assert (len(train), train.size, train.channels) == (3, 20, 1)
    assert len(load_dataset("folder", "test", root=tmp_path)) == 2
    assert train.batch(torch.tensor([2])).flatten()[0] == 100
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdvaeError, match="no images"):
        load_dataset("folder", root=tmp_path / "empty")


def test_read_image_file_checks_and_converts(tmp_path):
    grey = np.arange(36, dtype=np.uint8).reshape(6, 6)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.new("RGB", (6, 4), (10, 200, 30)).save(tmp_path / "wide.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    x = read_image_file(tmp_path / "grey.png", 1, 6)
    assert x.dtype == torch.uint8 and torch.equal(x, torch.from_numpy(grey)[None])
    rgb = read_image_file(tmp_path / "grey.png", 3)  # converted: every channel the grey value
    assert rgb.shape == (3, 6, 6) and torch.equal(rgb[1], x[0])
    assert read_image_file(tmp_path / "wide.png", 3)[:, 0, 0].tolist() == [10, 200, 30]
    with pytest.raises(EdvaeError, match="wide.png: is 6x4, the model takes 6x6"):
        read_image_file(tmp_path / "wide.png", 3, 6)
    with pytest.raises(EdvaeError, match="grey.png: has 1 channel.s., the model takes 3"):
        read_image_file(tmp_path / "grey.png", 3, same_channels=True)
    with pytest.raises(EdvaeError, match="bad.png"):
        read_image_file(tmp_path / "bad.png", 1)


# ---------------------------------------------------------------- synthetic and common


def test_synthetic_deterministic():
    a = load_dataset("synthetic", seed=3, limit=200)
    b = load_dataset("synthetic", seed=3, limit=200)
    c = load_dataset("synthetic", seed=4, limit=200)
    t = load_dataset("synthetic", "test", seed=3, limit=200)
    assert a.images.shape == (200, 1, 32, 32) and a.labels.max() < 10
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.images, t.images)
    assert len(load_dataset("synthetic", "test")) == 2000
    rgb = load_dataset("synthetic", size=16, channels=3, limit=4)
    assert rgb.batch(torch.tensor([3, 0])).shape == (2, 3, 16, 16)


def test_unknown_name_and_split():
    with pytest.raises(EdvaeError, match="cifar10, celeba"):
        load_dataset("mnist")
    with pytest.raises(EdvaeError, match="train, test"):
        load_dataset("synthetic", "validation")
    assert DATASETS == ("fashion-mnist", "cifar10", "celeba", "lsun-church", "folder",
                        "synthetic")


def test_to_model_input_and_devices():
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    y = to_model_input(x)
    assert y.dtype == torch.float32 and y.min() == -0.5 and y.max() == 0.5
    assert torch.equal(to_uint8(y), x)
    with pytest.raises(TypeError):
        to_model_input(x.float())
    data = load_dataset("synthetic", limit=8)
    moved = data.to("meta")
    assert moved.batch(torch.tensor([0, 1])).device.type == "meta"
    assert data.device.type == "cpu"  # .to returns a new set
