"""The augmentations of MAE pretraining and fine-tuning, as torchvision ops on PIL images,
with every random draw taken from a per-sample torch.Generator (so a sample's augmentation
is a pure function of its seed). `pixels*` give the augmented image as uint8 (C, H, W);
`normalize` turns one image or a batch into float, exactly as ToTensor + Normalize do, so
a loader can ship uint8 from its workers (a quarter of the bytes) and normalise per batch,
on the GPU when it trains on one."""
from __future__ import annotations

import math

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .images import load_image
from .reduced import Opened, eval_reduced, jpeg_scale, oriented_reduced, window_reduced
from .sources import sample_seed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PRETRAIN_SCALE = (0.2, 1.0)  # MAE main_pretrain.py
FINETUNE_SCALE = (0.08, 1.0)  # torchvision / timm default for fine-tuning
RATIO = (3.0 / 4.0, 4.0 / 3.0)
EVAL_CROP_PCT = 0.875  # eval: resize shorter side to img_size / 0.875, centre crop img_size


def mean_std(in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet statistics; one channel uses their average (grayscale of an RGB photo)."""
    if in_chans == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)


def crop_params(width: int, height: int, scale, ratio, g: torch.Generator):
    """torchvision's RandomResizedCrop.get_params with draws from `g`: (top, left, h, w)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=g).item())
            j = int(torch.randint(0, width - w + 1, (1,), generator=g).item())
            return i, j, h, w
    in_ratio = width / height  # fallback: centre crop at the nearest allowed ratio
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of every random draw of sample `index` in `epoch`: a pure function of
    (seed, epoch, index), so any batch of any epoch can be recomputed (exact resume)."""
    return torch.Generator().manual_seed(sample_seed(seed, epoch, index))


def random_crop_flip(width: int, height: int, scale, g: torch.Generator):
    """Every random draw of one training sample, in order: the RandomResizedCrop window
    (top, left, h, w) of a width x height image, then the horizontal flip. Both backends
    call this with the sample's own generator, so they pick the same window and flip."""
    window = crop_params(width, height, scale, RATIO, g)
    return window, torch.rand(1, generator=g).item() < 0.5


def eval_resize(img_size: int) -> int:
    return int(math.floor(img_size / EVAL_CROP_PCT))


def pil_to_uint8(img) -> torch.Tensor:
    """An 8-bit RGB or L PIL image as uint8 (C, H, W) (a view of a writable copy)."""
    a = torch.from_numpy(np.array(img))
    return (a[..., None] if a.ndim == 2 else a).permute(2, 0, 1)


def normalize_pixels(x: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (..., C, H, W) -> float32 (x / 255 - mean) / std, one image or a batch, on x's
    device: the same arithmetic as TF.to_tensor + TF.normalize, so the same values, without
    TF.normalize's std == 0 check, which reads the device back (a host sync every batch)."""
    shape = (len(mean), 1, 1)
    m = torch.tensor(mean, dtype=torch.float32).view(shape).to(x.device, non_blocking=True)
    s = torch.tensor(std, dtype=torch.float32).view(shape).to(x.device, non_blocking=True)
    return x.to(torch.float32).div_(255).sub_(m).div_(s)


class TrainTransform:
    """RandomResizedCrop(img_size, scale, ratio 3/4-4/3, bicubic) + RandomHorizontalFlip +
    ToTensor + Normalize, the transform of MAE's main_pretrain.py."""

    reduced = True  # from_file decodes a JPEG only at the scale its crop needs (reduced.py)

    def __init__(self, img_size: int, scale, in_chans: int = 3):
        self.size = (img_size, img_size)
        self.scale = tuple(scale)
        self.mean, self.std = mean_std(in_chans)

    def __call__(self, img, g: torch.Generator) -> torch.Tensor:
        return self.normalize(self.pixels(img, g))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_pixels(x, self.mean, self.std)

    def pixels(self, img, g: torch.Generator) -> torch.Tensor:
        """__call__ before ToTensor + Normalize: uint8 (C, H, W)."""
        window, flip = random_crop_flip(img.width, img.height, self.scale, g)
        return self._crop(img, window, flip)

    def _crop(self, img, window, flip: bool) -> torch.Tensor:
        img = TF.resized_crop(img, *window, self.size, InterpolationMode.BICUBIC, antialias=True)
        return pil_to_uint8(TF.hflip(img) if flip else img)

    def pixels_from_file(self, path: str, in_chans: int, g: torch.Generator) -> torch.Tensor:
        """pixels() of the image file at `path`: the window is drawn from the header, then a
        JPEG is decoded at the smallest DCT scale that keeps the window >= img_size. The
        same draws as on the full decode. BadImage if the file cannot be used."""
        with Opened(path) as src:
            if self.reduced and src.reducible:
                window, flip = random_crop_flip(*src.size, self.scale, g)
                d = jpeg_scale(window[3], window[2], self.size[0])
                if d > 1:
                    return window_reduced(src, window, d, self.size, in_chans, flip)
                return self._crop(oriented_reduced(src, 1, in_chans), window, flip)  # = load_image
        return self.pixels(load_image(path, in_chans), g)

    def from_file(self, path: str, in_chans: int, g: torch.Generator) -> torch.Tensor:
        """__call__ on the image file at `path` (pixels_from_file, normalised)."""
        return self.normalize(self.pixels_from_file(path, in_chans, g))


class EvalTransform:
    """Resize shorter side to img_size / 0.875 (bicubic) + CenterCrop + ToTensor + Normalize."""

    reduced = True  # from_file decodes a JPEG only at the scale the resize needs

    def __init__(self, img_size: int, in_chans: int = 3):
        self.img_size = img_size
        self.resize = eval_resize(img_size)
        self.mean, self.std = mean_std(in_chans)

    def describe(self) -> dict:
        """What a consumer of a trained model needs to redo this transform (timm, HF, ONNX)."""
        return {"img_size": self.img_size, "resize": self.resize, "crop_pct": EVAL_CROP_PCT,
                "interpolation": "bicubic", "mean": list(self.mean), "std": list(self.std)}

    def __call__(self, img, g: torch.Generator | None = None) -> torch.Tensor:
        return self.normalize(self.pixels(img))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_pixels(x, self.mean, self.std)

    def pixels(self, img, g: torch.Generator | None = None) -> torch.Tensor:
        """__call__ before ToTensor + Normalize: uint8 (C, H, W)."""
        img = TF.resize(img, self.resize, InterpolationMode.BICUBIC, antialias=True)
        return pil_to_uint8(TF.center_crop(img, [self.img_size, self.img_size]))

    def pixels_from_file(self, path: str, in_chans: int, g: torch.Generator | None = None) -> torch.Tensor:
        """pixels() of the image file at `path`, a JPEG decoded at the smallest DCT scale
        that keeps its shorter side >= the resize. BadImage if the file cannot be used."""
        with Opened(path) as src:
            d = jpeg_scale(*src.size, self.resize) if self.reduced and src.reducible else 1
            if d > 1:
                return pil_to_uint8(eval_reduced(src, d, self.resize, self.img_size, in_chans))
        return self.pixels(load_image(path, in_chans))

    def from_file(self, path: str, in_chans: int, g: torch.Generator | None = None) -> torch.Tensor:
        """__call__ on the image file at `path` (pixels_from_file, normalised)."""
        return self.normalize(self.pixels_from_file(path, in_chans, g))


# -- batched tensor ops (the DALI backend's CPU path) ----------------------------------


def resize_uint8(img: torch.Tensor, size) -> torch.Tensor:
    """(1, C, H, W) uint8 -> (1, C, *size) uint8, antialiased bicubic (torch's vectorised
    uint8 kernel; channels-last input is its fast layout)."""
    return torch.nn.functional.interpolate(img, size=tuple(size), mode="bicubic", antialias=True)


def resize_shorter_centre_crop(img: torch.Tensor, shorter: int, crop: int) -> torch.Tensor:
    """torchvision's Resize(shorter) (long side int(shorter * long / short)) + CenterCrop(crop)."""
    h, w = img.shape[-2:]
    if h <= w:
        size = (shorter, int(shorter * w / h))
    else:
        size = (int(shorter * h / w), shorter)
    img = resize_uint8(img, size)
    top = int(round((size[0] - crop) / 2.0))
    left = int(round((size[1] - crop) / 2.0))
    return img[..., top:top + crop, left:left + crop]


def normalize_uint8(batch: torch.Tensor, mean255, std255) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 (x - mean) / std, with mean/std in 0-255 units."""
    c = batch.shape[1]
    mean = torch.tensor(mean255, dtype=torch.float32).view(1, c, 1, 1)
    inv = 1.0 / torch.tensor(std255, dtype=torch.float32).view(1, c, 1, 1)
    return batch.to(torch.float32).sub_(mean).mul_(inv)
