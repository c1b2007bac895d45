"""Command-line flag helpers every command uses: hyphen spellings plus the official scripts'
underscore ones, help text listing a setting's allowed values (from fastmae.settings), and
the data and runtime flags the labelled-data commands (finetune, linprobe, knn) share."""
import argparse

from ..settings import ATTENTION, COMPILE, DEVICES, KERNELS, LOADERS, PRECISIONS


def flag(p, name: str, *aliases: str, **kw) -> None:
    """--name, its underscore spelling, and any aliases (also with both spellings)."""
    spellings = []
    for n in (name,) + aliases:
        for s in (f"--{n}", f"--{n.replace('-', '_')}"):
            if s not in spellings:
                spellings.append(s)
    p.add_argument(*spellings, **kw)


def one_of(values) -> str:
    """Help text of a setting's allowed values, `a | b | c`."""
    return " | ".join(values)


PRECISION_HELP = f"{one_of(PRECISIONS)} (auto: bf16 on CUDA, fp32 on CPU; fp16 needs CUDA)"
DEVICE_HELP = f"{one_of(DEVICES)} (auto: the GPU when there is one)"
KERNELS_HELP, ATTN_HELP, LOADER_HELP = one_of(KERNELS), one_of(ATTENTION), one_of(LOADERS)


def add_data_flags(p: argparse.ArgumentParser) -> None:
    flag(p, "data", "data-path", default=None,
         help="labelled images: a folder with train/ and val/ sub-folders, or an ImageFolder "
              "(root/<class>/<img>) or labelled file list; default: the built-in dataset")
    flag(p, "val", default=None, help="held-out labelled images for evaluation (default: DATA/val, "
                                      "else a stratified share of --data)")
    flag(p, "holdout-fraction", type=float, default=0.2,
         help="share of each class held out when --data has no val split (default 0.2)")
    g = p.add_mutually_exclusive_group()
    flag(g, "labels-per-class", type=int, default=None, metavar="N",
         help="train on N labelled images per class (stratified, seeded)")
    flag(g, "label-fraction", type=float, default=None, metavar="F",
         help="train on a fraction F of each class's labelled images (stratified, seeded)")
    flag(p, "img-size", "input-size", type=int, default=None,
         help="image size (default: the checkpoint's; another size interpolates the position embedding)")


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    flag(p, "loader", default="auto", help=LOADER_HELP)
    flag(p, "num-workers", type=int, default=None)
    flag(p, "device", default="auto", help=DEVICE_HELP)
    flag(p, "precision", default=None, help=PRECISION_HELP)
    flag(p, "attn", default="auto", help=ATTN_HELP)
    flag(p, "seed", type=int, default=0)


def add_inference_flags(p: argparse.ArgumentParser, batch_size: int = 32) -> None:
    """What the commands that run a trained model over images (score, drift) share."""
    flag(p, "batch-size", type=int, default=batch_size)
    flag(p, "seed", type=int, default=0)
    flag(p, "device", default="auto", help=DEVICE_HELP)
    flag(p, "precision", default=None, help=PRECISION_HELP)
    flag(p, "kernels", default="auto", help=KERNELS_HELP)
    flag(p, "compile", default="auto",
         help=f"torch.compile of the model's blocks: {one_of(COMPILE)} (auto: on for CUDA, off on the CPU)")
