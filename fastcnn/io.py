"""Model files: one .safetensors file with the weights and, in its metadata, everything needed
to rebuild and use the model (layer list, class names, preprocessing).

Loading never runs code from the file: the architecture is a JSON list of layer names from
nn.LAYERS and their constructor arguments, checked before anything is built. Saving writes a
temporary file in the target's folder, fsyncs it and renames it over the target, so a crash
never leaves half a file.

Training checkpoints (save_checkpoint / load_checkpoint) are model files with more in them: the
optimizer's per-parameter arrays as tensors named `optimizer.<i>.<key>` (i: the parameter's
position in the optimizer, key: the optimizer's state_dict key, e.g. `buffers`, `exp_avg`), and
in the metadata, as JSON, the optimizer's type, hyper-parameters and scalar state
(`optimizer`) and the training state (`checkpoint`: epoch, history, seed, data-loader epoch...).
fastcnn.load() reads a checkpoint as the model it holds. No pickle, ever.
"""

from __future__ import annotations

import json
import math
import os
import tempfile

import numpy as np

from . import __version__, nn, transforms

__all__ = [
    "save",
    "load",
    "load_state_dict_from",
    "save_checkpoint",
    "load_checkpoint",
    "Checkpoint",
]

FORMAT = "fastcnn"
FORMAT_VERSION = "1"
CHECKPOINT_VERSION = 1
OPTIMIZER_PREFIX = "optimizer."


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
    """Parameter and buffer shapes the architecture implies, from its JSON alone (nothing
    allocated): each layer class's shapes(**config)."""
    shapes = {}
    layers = arch.get("layers")
    for i, spec in enumerate(layers if isinstance(layers, list) else []):
        config = spec.get("config", {}) if isinstance(spec, dict) else {}
        kind = spec.get("type") if isinstance(spec, dict) else None
        cls = nn.LAYERS.get(kind) if isinstance(kind, str) else None
        if not isinstance(config, dict) or not hasattr(cls, "shapes"):
            continue
        try:
            for name, shape in cls.shapes(**config).items():
                shapes[f"{i}.{name}"] = tuple(shape)
        except (KeyError, TypeError, ValueError):
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


def _model_payload(model):
    """(tensors, metadata) of a model file."""
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
    tensors = model.state_dict()  # numpy copies, from whichever device the model is on
    return tensors, metadata


def _write_atomically(path, tensors, metadata, what) -> None:
    """safetensors file at `path`: written to a temporary file in the same folder, fsynced, then
    renamed over `path` (and the folder fsynced), so `path` is always the old or the new file."""
    from safetensors.numpy import save_file

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save {what} to {path}: folder {directory} does not exist")
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
    try:  # make the rename itself durable (POSIX); not possible everywhere (Windows)
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save(model, path) -> None:
    """Write `model` to one .safetensors file at `path`.

    The file holds the weights (a tensor per state_dict() entry) and, in its metadata, the
    layer list, the class names and the preprocessing (image size, channels, mean, std) that
    fit() recorded, so that load() rebuilds a model that labels raw image files by itself.
    It is written to a temporary file in the same folder, synced and renamed over `path`: a
    crash never leaves half a file.

    Args:
        model: an nn.Sequential of the layers in nn.LAYERS (on any device).
        path: where to write (conventionally ending in .safetensors); its folder must exist.

    Raises:
        TypeError: the model is not a Sequential of known layers.
        FileNotFoundError: the folder does not exist.

    Example:
        >>> fastcnn.save(model, "pets.safetensors")
    """
    tensors, metadata = _model_payload(model)
    _write_atomically(path, tensors, metadata, "the model")


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
    except RecursionError as e:  # json's parser recurses once per nesting level
        raise ValueError(f"{path}: corrupt model file (metadata '{key}' nests too deep)") from e
    except ValueError as e:  # not JSON, or an int of more digits than Python will convert
        raise ValueError(f"{path}: corrupt model file (metadata '{key}' is not JSON: {e})") from e


def _finite(v) -> bool:
    """A JSON number that is a finite float (a JSON int can be too large for a float)."""
    try:
        return isinstance(v, (int, float)) and math.isfinite(v)
    except OverflowError:
        return False


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
        # predict resizes every image to this size: refuse one it could not allocate
        and prep["image_size"][0] * prep["image_size"][1] <= transforms.MAX_IMAGE_PIXELS
        and all(
            isinstance(prep.get(k), list)
            and len(prep[k]) in (1, prep["channels"])
            and all(_finite(v) for v in prep[k])
            for k in ("mean", "std")
        )
        and all(v > 0 for v in prep["std"])
    )
    if not ok:
        raise ValueError(f"{path}: corrupt model file (bad preprocessing metadata {prep!r})")
    return prep


def _read(path):
    """(metadata, tensors) of a fastcnn .safetensors file; ValueError for anything else."""
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
    return metadata, tensors


def _model_from(metadata, tensors, path) -> nn.Sequential:
    arch = _json(metadata, "architecture", path)
    if not isinstance(arch, dict):
        raise ValueError(f"{path}: corrupt model file (architecture is not a mapping)")
    if "checkpoint" in metadata:  # a training checkpoint: the optimizer's arrays are not weights
        tensors = {k: v for k, v in tensors.items() if not k.startswith(OPTIMIZER_PREFIX)}
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


def load(path) -> nn.Sequential:
    """Read a model written by save(), or the model in a training checkpoint.

    Nothing in the file is run: the architecture is checked against the known layers and the
    weights' shapes before anything is built. The model comes back on the CPU, in eval mode,
    with `.classes` and `.preprocessing` as saved (None when the file has none).

    Args:
        path: a .safetensors file written by fastcnn.save() or fit(checkpoint=...).

    Returns:
        The model, an nn.Sequential.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: not a fastcnn model file, or a corrupt one (the message names the problem).

    Example:
        >>> model = fastcnn.load("pets.safetensors")
        >>> model.classes
        ['cat', 'dog']
    """
    metadata, tensors = _read(path)
    return _model_from(metadata, tensors, os.fspath(path))


def load_state_dict_from(model, path, strict: bool = True):
    """Load weights trained elsewhere, e.g. with PyTorch, into `model`, in place: a state dict
    saved as .safetensors (`safetensors.torch.save_file(net.state_dict(), path)`), keyed as
    `model.state_dict()` is (fastcnn uses PyTorch's names, so the same architecture built in
    PyTorch matches). Every shape is checked before anything changes. Pickled files (.pt,
    .pth) are refused: loading one could run code.

    Args:
        model: the fastcnn network to fill (e.g. models.resnet8(...)).
        path: the .safetensors file.
        strict: the keys must be exactly the model's (else missing ones stay as they are and
            unknown ones are ignored).

    Returns:
        The model.

    Raises:
        ValueError: a pickled or unreadable file, or a shape that differs. KeyError: (strict)
            missing or unexpected keys, all named.

    Example:
        >>> model = fastcnn.models.resnet8(in_channels=3, num_classes=10)
        >>> fastcnn.load_state_dict_from(model, "resnet8_cifar.safetensors")
    """
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80" or head == b"PK":  # a pickle, or a zip of pickles (torch.save)
        raise ValueError(
            f"{path} is a pickled PyTorch file, which fastcnn never loads (it could run code): "
            "save the state dict with safetensors.torch.save_file(net.state_dict(), "
            "'weights.safetensors') and load that"
        )
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .safetensors file: {e}") from e
    model.load_state_dict(tensors, strict=strict)
    return model


# ---- training checkpoints -----------------------------------------------------------------------


def _hyperparameters(optimizer) -> dict:
    """The optimizer's scalar settings (lr, momentum, betas, eps, weight_decay, nesterov...)."""
    return {
        k: v
        for k, v in sorted(vars(optimizer).items())
        if not k.startswith("_") and isinstance(v, (bool, int, float))
    }


def _parameter_names(model, optimizer) -> list:
    """For each of the optimizer's parameters, its name in the model (None if not the model's)."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [names.get(id(p)) for p in optimizer.params]


def _plain(value, what):
    """A JSON value made of bool/int/float/str/None and lists/dicts of them; TypeError else."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, what) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, what) for k, v in value.items()}
    raise TypeError(f"{what}: cannot store a {type(value).__name__} in a checkpoint")


def save_checkpoint(path, model, optimizer, *, epoch, history, **training) -> None:
    """Writes a training checkpoint to `path` atomically (one .safetensors file, no pickle).

    It holds the model as save() writes it (so load(path) returns the model), the optimizer's
    state (optimizer.state_dict(): lists of per-parameter arrays become tensors
    `optimizer.<i>.<key>`, everything else JSON), its type and hyper-parameters, and the training
    state: epoch (epochs done), history (fit's per-epoch records) and any other JSON-able
    keywords (fit stores seed, loader_epoch, batch_size, samples...).
    """
    tensors, metadata = _model_payload(model)
    arrays, scalars, present = {}, {}, {}
    for key, value in optimizer.state_dict().items():
        if isinstance(value, (list, tuple)) and any(isinstance(v, np.ndarray) for v in value):
            if len(value) != len(optimizer.params):
                raise ValueError(
                    f"optimizer state '{key}' has {len(value)} entries for "
                    f"{len(optimizer.params)} parameters"
                )
            present[key] = [v is not None for v in value]
            for i, v in enumerate(value):
                if v is not None:
                    arrays[f"{OPTIMIZER_PREFIX}{i}.{key}"] = np.ascontiguousarray(v)
        else:
            scalars[key] = _plain(value, f"optimizer state '{key}'")
    clash = sorted(set(arrays) & set(tensors))
    if clash:
        raise ValueError(f"model parameter names clash with optimizer state: {clash}")
    tensors.update(arrays)
    metadata["optimizer"] = json.dumps(
        {
            "type": type(optimizer).__name__,
            "hyperparameters": _hyperparameters(optimizer),
            "parameters": _parameter_names(model, optimizer),
            "state": scalars,
            "arrays": present,
        }
    )
    state = {"version": CHECKPOINT_VERSION, "epoch": int(epoch), "history": history}
    state.update(training)
    metadata["checkpoint"] = json.dumps(_plain(state, "training state"))
    _write_atomically(path, tensors, metadata, "the checkpoint")


class Checkpoint:
    """What load_checkpoint() read: `model` (as load() builds it), `optimizer_type`,
    `hyperparameters`, `parameter_names`, `optimizer_state` (ready for
    optimizer.load_state_dict), `epoch`, `history` and `training` (every training-state key)."""

    def __init__(self, path, model, optimizer, training):
        self.path = path
        self.model = model
        self.optimizer_type = optimizer["type"]
        self.hyperparameters = optimizer["hyperparameters"]
        self.parameter_names = optimizer["parameters"]
        self.optimizer_state = optimizer["state"]
        self.training = training
        self.epoch = training["epoch"]
        self.history = training["history"]


def load_checkpoint(path) -> Checkpoint:
    """Reads a file written by save_checkpoint(); ValueError naming the problem for a corrupt
    file, or a model file that holds no training state."""
    path = os.fspath(path)
    metadata, tensors = _read(path)
    if "checkpoint" not in metadata or "optimizer" not in metadata:
        raise ValueError(
            f"{path}: a model file without training state (written by fastcnn.save, not by "
            "fit(checkpoint=...)); training cannot resume from it"
        )
    model = _model_from(metadata, tensors, path)
    training = _json(metadata, "checkpoint", path)
    opt = _json(metadata, "optimizer", path)
    bad = f"{path}: corrupt checkpoint"
    if not (
        isinstance(training, dict)
        and isinstance(training.get("epoch"), int)
        and training["epoch"] >= 1
        and isinstance(training.get("history"), list)
        and len(training["history"]) == training["epoch"]
        and all(isinstance(r, dict) for r in training["history"])
    ):
        raise ValueError(f"{bad} (bad training state)")
    if training.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path}: checkpoint version {training.get('version')!r} is not supported "
            f"(this fastcnn reads version {CHECKPOINT_VERSION})"
        )
    if not (
        isinstance(opt, dict)
        and isinstance(opt.get("type"), str)
        and isinstance(opt.get("hyperparameters"), dict)
        and isinstance(opt.get("parameters"), list)
        and isinstance(opt.get("state"), dict)
        and isinstance(opt.get("arrays"), dict)
    ):
        raise ValueError(f"{bad} (bad optimizer metadata)")
    n = len(opt["parameters"])
    state = dict(opt["state"])
    for key, present in opt["arrays"].items():
        if not (isinstance(present, list) and len(present) == n):
            raise ValueError(f"{bad} (optimizer state '{key}' does not list {n} parameters)")
        entries = []
        for i, there in enumerate(present):
            name = f"{OPTIMIZER_PREFIX}{i}.{key}"
            if there and name not in tensors:
                raise ValueError(f"{bad} (tensor {name} is missing)")
            entries.append(tensors[name] if there else None)
        state[key] = entries
    return Checkpoint(path, model, dict(opt, state=state), training)
