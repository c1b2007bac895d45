"""Command-line flags shared by the downstream commands (finetune, linprobe, knn):
hyphen spellings plus the official scripts' underscore ones."""
import argparse


def flag(p, name: str, *aliases: str, **kw) -> None:
    """--name, its underscore spelling, and any aliases (also with both spellings)."""
    spellings = []
    for n in (name,) + aliases:
        for s in (f"--{n}", f"--{n.replace('-', '_')}"):
            if s not in spellings:
                spellings.append(s)
    p.add_argument(*spellings, **kw)


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
    flag(p, "loader", default="auto", help="auto | dali | torch")
    flag(p, "num-workers", type=int, default=None)
    flag(p, "device", default="auto", help="auto | cuda | cpu")
    flag(p, "precision", default=None, help="bf16 | fp32 (default: bf16 on CUDA, fp32 on CPU)")
    flag(p, "attn", default="auto", help="auto | flash | sdpa | math")
    flag(p, "seed", type=int, default=0)
