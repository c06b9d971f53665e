"""Model files: one .safetensors file with the weights and, in its metadata, everything needed
to rebuild and use the model (layer list, class names, preprocessing).

Loading never runs code from the file: the architecture is a JSON list of layer names from
nn.LAYERS and their constructor arguments, checked before anything is built. Saving writes a
temporary file, fsyncs it and renames it over the target, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np

from . import __version__, nn

__all__ = ["save", "load"]

FORMAT = "fastcnn"
FORMAT_VERSION = "1"


def architecture(model) -> dict:
    """The JSON-able description io.load rebuilds `model` from."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"save() supports Sequential models, got {type(model).__name__}")
    layers = []
    for layer in model:
        name = type(layer).__name__
        if nn.LAYERS.get(name) is not type(layer):
            raise TypeError(f"save() cannot store layer type {name}; known: {sorted(nn.LAYERS)}")
        layers.append({"type": name, "config": layer.config()})
    return {"type": "Sequential", "layers": layers}


def build(arch) -> nn.Sequential:
    """Rebuilds a model from architecture(); ValueError for anything unexpected."""
    if not isinstance(arch, dict) or arch.get("type") != "Sequential":
        raise ValueError(
            f"unknown architecture {arch.get('type') if isinstance(arch, dict) else arch!r}"
        )
    specs = arch.get("layers")
    if not isinstance(specs, list) or not specs:
        raise ValueError("architecture has no layer list")
    layers = []
    for i, spec in enumerate(specs):
        kind = spec.get("type") if isinstance(spec, dict) else None
        if not isinstance(kind, str) or kind not in nn.LAYERS:
            raise ValueError(f"layer {i}: unknown layer type {spec!r}")
        config = spec.get("config", {})
        if not isinstance(config, dict):
            raise ValueError(f"layer {i}: config must be a mapping")
        try:
            layers.append(nn.LAYERS[spec["type"]](**config))
        except (TypeError, ValueError) as e:
            raise ValueError(f"layer {i} ({spec['type']}): bad configuration {config}: {e}") from e
    return nn.Sequential(*layers)


def _expected_shapes(arch) -> dict:
    """Parameter shapes the architecture implies, from its JSON alone (nothing allocated)."""
    shapes = {}
    layers = arch.get("layers")
    for i, spec in enumerate(layers if isinstance(layers, list) else []):
        config = spec.get("config", {}) if isinstance(spec, dict) else {}
        if not isinstance(config, dict):
            continue
        kind = spec.get("type") if isinstance(spec, dict) else None
        try:
            if kind == "Conv2d":
                k = config["kernel_size"]
                k = [k, k] if isinstance(k, int) else list(k)
                shapes[f"{i}.weight"] = (config["out_channels"], config["in_channels"], *k)
                if config.get("bias", True):
                    shapes[f"{i}.bias"] = (config["out_channels"],)
            elif kind == "Linear":
                shapes[f"{i}.weight"] = (config["out_features"], config["in_features"])
                if config.get("bias", True):
                    shapes[f"{i}.bias"] = (config["out_features"],)
        except (KeyError, TypeError):
            continue  # build() reports the bad configuration
    return shapes


def _check_shapes(arch, tensors, path) -> None:
    """The file's tensors must have exactly the architecture's shapes, checked before any layer
    is built, so a corrupt size is refused instead of allocated."""
    for name, shape in _expected_shapes(arch).items():
        if name not in tensors:
            raise ValueError(f"{path}: weights do not fit the architecture: {name} is missing")
        if tuple(tensors[name].shape) != tuple(shape):
            raise ValueError(
                f"{path}: weights do not fit the architecture: {name} has shape "
                f"{tuple(tensors[name].shape)}, the architecture needs {tuple(shape)}"
            )


def save(model, path) -> None:
    """Writes `model` (weights, architecture, classes, preprocessing) to `path` atomically."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"cannot save the model to {path}: folder {directory} does not exist"
        )
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fastcnn_version": __version__,
        "architecture": json.dumps(architecture(model)),
    }
    classes = getattr(model, "classes", None)
    if classes is not None:
        metadata["classes"] = json.dumps([str(c) for c in classes])
    prep = getattr(model, "preprocessing", None)
    if prep is not None:
        metadata["preprocessing"] = json.dumps(_jsonable(prep))
    tensors = {name: np.ascontiguousarray(p.data) for name, p in model.named_parameters()}
    fd, tmp = tempfile.mkstemp(prefix=".fastcnn-", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json(metadata, key, path, required=True):
    if key not in metadata:
        if required:
            raise ValueError(f"{path}: not a fastcnn model file (metadata has no '{key}')")
        return None
    try:
        return json.loads(metadata[key])
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt model file (metadata '{key}' is not JSON: {e})") from e


def _check_preprocessing(prep, path):
    if prep is None:
        return None
    ok = (
        isinstance(prep, dict)
        and isinstance(prep.get("channels"), int)
        and prep["channels"] in (1, 3)
        and isinstance(prep.get("image_size"), list)
        and len(prep["image_size"]) == 2
        and all(isinstance(v, int) and v > 0 for v in prep["image_size"])
        and all(
            isinstance(prep.get(k), list)
            and len(prep[k]) in (1, prep["channels"])
            and all(isinstance(v, (int, float)) for v in prep[k])
            for k in ("mean", "std")
        )
        and all(math.isfinite(v) for v in prep["mean"] + prep["std"])
        and all(v > 0 for v in prep["std"])
    )
    if not ok:
        raise ValueError(f"{path}: corrupt model file (bad preprocessing metadata {prep!r})")
    return prep


def load(path) -> nn.Sequential:
    """Reads a model written by save(); ValueError naming the problem for any bad file."""
    from safetensors import SafetensorError, safe_open

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no model file at {path}")
    try:
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a readable .safetensors model file ({e})") from e
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a fastcnn model file (metadata format is {metadata.get('format')!r})"
        )
    arch = _json(metadata, "architecture", path)
    if not isinstance(arch, dict):
        raise ValueError(f"{path}: corrupt model file (architecture is not a mapping)")
    _check_shapes(arch, tensors, path)
    try:
        model = build(arch)
    except ValueError as e:
        raise ValueError(f"{path}: corrupt model file: {e}") from e
    try:
        model.load_state_dict(tensors)
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: weights do not fit the architecture: {e}") from e
    classes = _json(metadata, "classes", path, required=False)
    if classes is not None and not (
        isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    ):
        raise ValueError(f"{path}: corrupt model file (classes must be a list of names)")
    model.classes = classes
    model.preprocessing = _check_preprocessing(_json(metadata, "preprocessing", path, False), path)
    model.eval()
    return model
