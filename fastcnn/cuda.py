"""The CUDA backend's Python face. This build has none yet (issue 6): every call says so."""

from __future__ import annotations

from . import _C

__all__ = ["is_available", "require"]


def is_available() -> bool:
    """True when fastcnn was built with CUDA and a GPU with a working driver is present."""
    return bool(getattr(_C, "has_cuda", False))


def require() -> None:
    if not is_available():
        raise RuntimeError(
            "CUDA is not available: this fastcnn was built without the CUDA backend "
            "(or no GPU/driver is present); use device 'cpu'"
        )
