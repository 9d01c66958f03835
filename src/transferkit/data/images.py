"""Images: folders with one sub-folder per class, Fashion-MNIST, and the transforms (Pillow + torch).

torchvision is not a dependency (its registry build does not import beside the CPU torch), so
the few transforms we need are written here: resize + center crop for evaluation, random
resized crop + horizontal flip for training, then scale to [0, 1] and normalise.
"""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import UserError
from .examples import Examples

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """Image files under `folder` (sorted, checked to open) and the other files, which are skipped."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    images = [p for p in files if is_image_file(p)]
    for path in images:
        check_image(path)
    return images, [p for p in files if not is_image_file(p)]


def check_image(path: Path) -> None:
    """Raise a one-line UserError if Pillow cannot read the file's header and structure."""
    try:
        with Image.open(path) as img:
            img.verify()  # cheap: no full decode; a truncated file is caught when it is decoded
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise UserError(f"image file '{path}' cannot be read ({e}); remove or replace it") from None


def read_image_folder(root: str | Path) -> Examples:
    """Labelled images from `root/<class>/...`: inputs are file paths, labels the sub-folder names.

    Files that are not images (by suffix) are skipped and listed in `Examples.skipped`.
    """
    root = Path(root)
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"image folder '{root}' has no class sub-folders; put each class's images in a sub-folder named after it")
    if len(classes) == 1:
        raise UserError(f"image folder '{root}' has a single class sub-folder ('{classes[0].name}'); a classifier needs at least two")
    inputs, labels, skipped = [], [], [p for p in root.iterdir() if p.is_file()]
    for folder in classes:
        images, others = list_images(folder)
        if not images:
            raise UserError(f"class folder '{folder}' holds no images ({', '.join(IMAGE_SUFFIXES)}); add images or remove the folder")
        inputs += images
        labels += [folder.name] * len(images)
        skipped += others
    return Examples(inputs, labels, skipped=[str(p) for p in skipped])


def read_fashion_mnist(root: Path, split: str) -> Examples:
    """The 28x28 grey images of one official split ('train' or 't10k') as uint8 arrays."""
    images = np.frombuffer(gzip.open(root / f"{split}-images-idx3-ubyte.gz").read(), np.uint8, offset=16).reshape(-1, 28, 28)
    labels = np.frombuffer(gzip.open(root / f"{split}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return Examples(list(images), [FASHION_MNIST_CLASSES[i] for i in labels])


def open_rgb(image) -> Image.Image:
    """A file path or a uint8 array (H, W) / (H, W, 3) as an RGB Pillow image."""
    if isinstance(image, np.ndarray):
        return Image.fromarray(image).convert("RGB")
    try:
        with Image.open(image) as img:
            img = ImageOps.exif_transpose(img)  # phone photos are often stored sideways
            if img.mode == "P":
                img = img.convert("RGBA")  # a palette may carry transparency
            return img.convert("RGB")  # grey, grey + alpha, RGBA, CMYK -> RGB (alpha dropped, as timm does)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise UserError(f"image file '{image}' cannot be decoded ({e}); remove or replace it") from None


def resize_center_crop(img: Image.Image, size: int, crop_fraction: float) -> Image.Image:
    """Evaluation view: the shorter side to size / crop_fraction, then the central size x size."""
    scale = size / crop_fraction / min(img.size)
    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
    img = img.resize((w, h), Image.BILINEAR)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def random_resized_crop(img: Image.Image, size: int, rng: random.Random, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3)) -> Image.Image:
    """Training view: a random box of 25-100% of the area and aspect 3:4 to 4:3, resized, maybe flipped.

    The lower bound is 25%, not the 8% of ImageNet training: small data sets of small objects
    lose the object too often in tighter crops.
    """
    area = img.width * img.height
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
        w, h = round((target * aspect) ** 0.5), round((target / aspect) ** 0.5)
        if 0 < w <= img.width and 0 < h <= img.height:
            left, top = rng.randint(0, img.width - w), rng.randint(0, img.height - h)
            break
    else:  # no box fitted: the largest central square
        w = h = min(img.size)
        left, top = (img.width - w) // 2, (img.height - h) // 2
    img = img.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
    return img.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else img


def to_tensor(img: Image.Image, mean: list[float], std: list[float]) -> torch.Tensor:
    """(3, H, W) float32, scaled to [0, 1] and normalised per channel."""
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


class ImageItems(torch.utils.data.Dataset):
    """Loader items {"pixel_values": (3, S, S), "labels": int}, made on access.

    Made lazily so that random augmentation differs every epoch and a large data set is never
    held decoded in memory. `lengths` tells `make_loader` that every item has the same size.
    `transform(img, rng)` gets a random.Random drawn from (seed, epoch, index) when `seed` is given
    (training views), None otherwise: an item's view depends on nothing else, so it is the same
    whenever it is made (ahead of time by a prefetching loader, or again after a resume).
    """

    def __init__(self, inputs: list, labels: list[int] | None, transform, seed: int | None = None):
        self.inputs, self.labels, self.transform, self.seed = inputs, labels, transform, seed
        self.lengths = [1] * len(inputs)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict:
        rng = None if self.seed is None else random.Random(f"{self.seed}:{self.epoch}:{i}")
        item = {"pixel_values": self.transform(open_rgb(self.inputs[i]), rng)}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item
