"""The CUDA backend's Python face: is a GPU there, and arrays on it.

With fastcnn built with CUDA (see the README) and a GPU present, ``model.to("cuda")`` moves a
model's parameters to the GPU; fit, evaluate and predict then move each batch there and run
every op on it (fastcnn.ops dispatches on the array type). ``to_device(a)`` copies a numpy
array to the GPU, ``DeviceArray.numpy()`` copies one back.
"""

from __future__ import annotations

from . import _C

__all__ = ["is_available", "device_count", "require", "to_device", "DeviceArray"]

if getattr(_C, "has_cuda", False):
    DeviceArray = _C.cuda.DeviceArray
else:

    class DeviceArray:
        """Stands in for the GPU array type in a build without CUDA: nothing is one, and
        creating one says why (so `isinstance(x, fastcnn.cuda.DeviceArray)` works anywhere)."""

        def __new__(cls, *args, **kwargs):
            require()


def is_available() -> bool:
    """True when fastcnn was built with CUDA and a GPU with a working driver is present."""
    return device_count() > 0


def device_count() -> int:
    """GPUs this process can use (0 without a CUDA build, a driver or a device)."""
    if not getattr(_C, "has_cuda", False):
        return 0
    return _C.cuda_device_count()


def require() -> None:
    """RuntimeError unless is_available()."""
    if not is_available():
        why = (
            "no GPU or driver answers"
            if getattr(_C, "has_cuda", False)
            else "this fastcnn was built without the CUDA backend"
        )
        raise RuntimeError(f"CUDA is not available: {why}; use device 'cpu'")


def to_device(array):
    """A copy of a numpy array on the GPU (a DeviceArray)."""
    from . import ops

    return ops.to_device(array, "cuda")
