"""The CUDA backend's Python face. Device discovery only, so far: the GPU ops in csrc/cuda are
built with FASTCNN_CUDA=ON but not yet bound, so nothing runs on a GPU yet."""

from __future__ import annotations

from . import _C

__all__ = ["is_available", "require"]


def is_available() -> bool:
    """True when fastcnn was built with CUDA and a GPU with a working driver is present."""
    if not getattr(_C, "has_cuda", False):
        return False
    return _C.cuda_device_count() > 0


def require() -> None:
    if not is_available():
        raise RuntimeError(
            "CUDA is not available: this fastcnn was built without the CUDA backend "
            "(or no GPU/driver is present); use device 'cpu'"
        )
    raise RuntimeError("fastcnn's CUDA ops are not bound to Python yet; use device 'cpu'")
