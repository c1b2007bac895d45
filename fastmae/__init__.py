"""fastmae: fast Masked Autoencoder pretraining of Vision Transformers."""
import importlib.util as _ilu
import os as _os
import sys as _sys


class _CheckoutKernels:
    """Finds fastmae.kernels in a source checkout (fastmae/ beside kernels/) used from
    PYTHONPATH with nothing installed; an install maps kernels/ there through setup.py."""
    root: str = ""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        if fullname != __name__ + ".kernels":
            return None
        return _ilu.spec_from_file_location(fullname, _os.path.join(cls.root, "__init__.py"),
                                            submodule_search_locations=[cls.root])


def _register_checkout_kernels() -> None:
    here = _os.path.dirname(_os.path.abspath(__file__))
    src = _os.path.join(_os.path.dirname(here), "kernels")
    # An installed package holds its own fastmae/kernels/: leave it to the normal import.
    if _os.path.isdir(_os.path.join(here, "kernels")) or not _os.path.isfile(_os.path.join(src, "__init__.py")):
        return
    _CheckoutKernels.root = src
    if _CheckoutKernels not in _sys.meta_path:
        # First, so the kernels beside this very package win over another checkout's install.
        _sys.meta_path.insert(0, _CheckoutKernels)


_register_checkout_kernels()

from .settings import BackendUnavailable, CheckpointError, ConfigError, DataError, FastMAEError
from .models import CONFIGS, MaskedAutoencoderViT, create_model
from .apply import apply_to

__version__ = "0.1.0"
__all__ = ["MaskedAutoencoderViT", "create_model", "CONFIGS", "FastMAEError", "ConfigError",
           "CheckpointError", "DataError", "BackendUnavailable", "apply_to"]
