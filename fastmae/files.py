"""Writing outputs without ever losing user data: outputs appear atomically (written to a
temporary name, then renamed), and an existing file is only replaced when asked."""
import json
import os
import shutil
from pathlib import Path

import torch

from .settings import ConfigError


def check_new(path, force: bool = False, what: str = "output") -> Path:
    """The path, if writing it is allowed: it must not exist unless force."""
    path = Path(path).expanduser()
    if path.exists() and not force:
        raise ConfigError(f"{what} {path} already exists; choose another path or pass --force "
                          "to replace it")
    if path.exists() and path.is_dir() != (what == "folder"):
        kind = "a folder" if path.is_dir() else "a file"
        raise ConfigError(f"{what} {path} is {kind}; refusing to replace it")
    return path


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj, path) -> Path:
    """torch.save that is durable and all-or-nothing: written to a temp file, fsynced,
    renamed over path, and the rename fsynced (a kill at any moment leaves the old file
    or the new one, never half of one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return path


def atomic_write_text(text: str, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def atomic_write_json(obj, path) -> Path:
    return atomic_write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", path)


def atomic_save_file(writer, path) -> Path:
    """writer(tmp_path) writes the file; it then replaces path in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        writer(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_save_dir(writer, path) -> Path:
    """writer(tmp_dir) fills a folder; it then replaces path (an old folder is removed only
    after the new one is complete)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        writer(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return path
