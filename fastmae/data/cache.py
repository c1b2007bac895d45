"""fastmae's cache folder: $FASTMAE_CACHE, default ~/.cache/fastmae."""
import os
import shutil
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("FASTMAE_CACHE") or Path.home() / ".cache" / "fastmae").expanduser()


def generate_once(version: str, generate) -> Path:
    """$FASTMAE_CACHE/<version>, made by generate(folder) on first use."""
    final = cache_dir() / version
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        # Generate beside the final place and rename: a killed run never leaves half a dataset.
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=final.parent))
        try:
            generate(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():  # not another process finishing first
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final
