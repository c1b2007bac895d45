"""Images in a fixed order with the evaluation transform, for embedding and pictures
(no augmentation, no shuffling: row i of the output is file i)."""
import torch

from ..data.images import load_image
from ..data.transforms import EvalTransform
from ..settings import DataError


class OrderedImages(torch.utils.data.Dataset):
    def __init__(self, paths, img_size: int, in_chans: int = 3):
        self.paths = list(paths)
        self.transform = EvalTransform(img_size, in_chans)
        self.in_chans = in_chans

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            img = load_image(self.paths[i], self.in_chans)
        except Exception as e:  # a bad file stops the run with its name, never a silent gap
            raise DataError(f"cannot read image {self.paths[i]}: {e}") from None
        return self.transform(img)


def ordered_batches(paths, img_size: int, in_chans: int = 3, batch_size: int = 64,
                    num_workers: int = 0):
    """Iterate (B, C, H, W) normalised batches of the files in order."""
    loader = torch.utils.data.DataLoader(OrderedImages(paths, img_size, in_chans),
                                         batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    return iter(loader)


def load_batch(paths, img_size: int, in_chans: int = 3) -> torch.Tensor:
    """All the given files as one normalised batch."""
    ds = OrderedImages(paths, img_size, in_chans)
    return torch.stack([ds[i] for i in range(len(ds))])
