"""Small image folders and a one-call CLI runner for the training tests."""
import contextlib
import io

import numpy as np
from PIL import Image

from fastmae.cli import main


def make_image_folder(root, n=48, size=40, seed=0):
    """n JPEGs of simple structured patterns (stripes and blobs), two classes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        label = i % 2
        f = rng.uniform(2, 6)
        base = np.sin(2 * np.pi * f * (xx if label else yy) + rng.uniform(0, 6))
        colour = rng.uniform(0.2, 1.0, 3)
        img = (0.5 + 0.5 * base)[..., None] * colour[None, None] * 255
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img{i:03d}.jpg", quality=95)
    return root


def run_cli(argv):
    """Run `fastmae ...` in process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse errors
            code = e.code
    return code, out.getvalue(), err.getvalue()
