"""fastmae's cache folder: $FASTMAE_CACHE, default ~/.cache/fastmae."""
import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("FASTMAE_CACHE") or Path.home() / ".cache" / "fastmae").expanduser()
