"""Export a fastcnn model to ONNX (the optional extra `pip install "fastcnn[onnx]"`): the graph
is built with the `onnx` package from the model's layers in eval mode, BatchNorm2d folded into the
convolution before it, Dropout dropped; the batch dimension is dynamic; the class names and the
preprocessing (size, channels, mean, std) go into the model's metadata, so a runtime elsewhere
can feed it raw images as fastcnn does.

Example:
    >>> fastcnn.export_onnx(fastcnn.load("pets.safetensors"), "pets.onnx")
    >>> import onnxruntime
    >>> logits = onnxruntime.InferenceSession("pets.onnx").run(None, {"input": x})[0]
"""

from __future__ import annotations

import json
import os

import numpy as np

from . import __version__, nn, ops

__all__ = ["export_onnx"]

OPSET = 17


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError(
            'ONNX export needs the onnx package: pip install "fastcnn[onnx]" (or pip install onnx)'
        ) from e
    return onnx


class _Graph:
    """Nodes and initializers, appended in order; each tensor named once."""

    def __init__(self, onnx):
        self.onnx, self.nodes, self.inits, self.count = onnx, [], [], 0

    def name(self, hint):
        self.count += 1
        return f"{hint}_{self.count}"

    def const(self, hint, array):
        name = self.name(hint)
        array = np.ascontiguousarray(array)
        self.inits.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def op(self, kind, inputs, **attrs):
        out = self.name(kind.lower())
        self.nodes.append(self.onnx.helper.make_node(kind, inputs, [out], **attrs))
        return out


def _conv(g, conv, x, bn=None):
    if bn is not None:  # the eval-mode normalisation folded into the convolution
        w, b = nn.fold_conv_bn(conv, bn)
    else:
        w = np.asarray(ops.to_numpy(conv.weight.data), np.float32)
        b = None if conv.bias is None else np.asarray(ops.to_numpy(conv.bias.data), np.float32)
    inputs = [x, g.const("weight", w)]
    if b is not None:
        inputs.append(g.const("bias", np.asarray(b, np.float32)))
    (ph, pw), (sh, sw) = conv.padding, conv.stride
    return g.op("Conv", inputs, kernel_shape=list(conv.kernel_size), strides=[sh, sw],
                pads=[ph, pw, ph, pw])  # fmt: skip


def _batchnorm(g, bn, x):
    scale, shift = bn.eval_affine()
    one, zero = np.ones_like(scale), np.zeros_like(shift)
    return g.op("BatchNormalization", [x, g.const("scale", scale), g.const("shift", shift),
                g.const("mean", zero), g.const("var", one - 1e-5)], epsilon=1e-5)  # fmt: skip


def _layers(g, layers, x):
    i = 0
    while i < len(layers):
        layer = layers[i]
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(layer, nn.Conv2d):
            if isinstance(nxt, nn.BatchNorm2d):
                x = _conv(g, layer, x, nxt)
                i += 1
            else:
                x = _conv(g, layer, x)
        elif isinstance(layer, nn.BatchNorm2d):
            x = _batchnorm(g, layer, x)
        elif isinstance(layer, nn.ReLU):
            x = g.op("Relu", [x])
        elif isinstance(layer, nn.MaxPool2d):
            x = g.op(
                "MaxPool", [x], kernel_shape=list(layer.kernel_size), strides=list(layer.stride)
            )
        elif isinstance(layer, nn.AvgPool2d):
            x = g.op("AveragePool", [x], kernel_shape=list(layer.kernel_size),
                     strides=list(layer.stride))  # fmt: skip
        elif isinstance(layer, nn.AdaptiveAvgPool2d):
            x = g.op("GlobalAveragePool", [x])
        elif isinstance(layer, nn.Flatten):
            x = g.op("Flatten", [x], axis=1)
        elif isinstance(layer, nn.Linear):
            w = np.asarray(ops.to_numpy(layer.weight.data), np.float32)
            inputs = [x, g.const("weight", w)]
            if layer.bias is not None:
                inputs.append(
                    g.const("bias", np.asarray(ops.to_numpy(layer.bias.data), np.float32))
                )
            x = g.op("Gemm", inputs, transB=1)
        elif isinstance(layer, nn.Dropout):
            pass  # the identity in eval mode
        elif isinstance(layer, nn.BasicBlock):
            h = g.op("Relu", [_conv(g, layer.conv1, x, layer.bn1)])
            h = _conv(g, layer.conv2, h, layer.bn2)
            s = _layers(g, layer.shortcut.layers, x)
            x = g.op("Relu", [g.op("Add", [h, s])])
        elif isinstance(layer, nn.Sequential):
            x = _layers(g, layer.layers, x)
        else:
            raise TypeError(f"export_onnx cannot export layer type {type(layer).__name__}")
        i += 1
    return x


def export_onnx(model, path) -> str:
    """Write `model` (an nn.Sequential, e.g. from fastcnn.load) as an ONNX file.

    The graph takes "input", float32 (batch, C, H, W) already preprocessed as fastcnn does
    (raw / 255, then (x - mean) / std per channel; see the metadata), and gives "logits"
    (batch, classes). BatchNorm2d runs on its running statistics (folded into the convolution
    before it), Dropout is dropped. Metadata: "classes" and "preprocessing" as JSON.

    Args:
        model: the network; it is not changed (its mode is restored).
        path: the .onnx file to write.

    Returns:
        The path written.

    Raises:
        ImportError: the onnx package is missing. TypeError: a layer ONNX export does not know.
    """
    onnx = _onnx()
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"export_onnx takes an nn.Sequential, got {type(model).__name__}")
    was_training = [m.training for m in model.modules()]
    model.eval()
    try:
        g = _Graph(onnx)
        logits = _layers(g, model.layers, "input")
    finally:
        for m, mode in zip(model.modules(), was_training):
            m.training = mode
    g.nodes.append(onnx.helper.make_node("Identity", [logits], ["logits"]))
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first.in_channels if first is not None else None
    prep = getattr(model, "preprocessing", None) or {}
    size = prep.get("image_size") or ["height", "width"]
    size = [size, size] if isinstance(size, int) else list(size)
    dims = ["batch", prep.get("channels", channels) or "channels", *size]
    inp = onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, dims)
    out = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", None])
    graph = onnx.helper.make_graph(g.nodes, "fastcnn", [inp], [out], initializer=g.inits)
    proto = onnx.helper.make_model(
        graph,
        producer_name="fastcnn",
        producer_version=__version__,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
    )
    from .io import _jsonable

    meta = {"classes": getattr(model, "classes", None), "preprocessing": prep or None}
    for key, value in meta.items():
        if value is not None:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, json.dumps(_jsonable(value))
    onnx.checker.check_model(proto)
    path = os.fspath(path)
    tmp = path + ".tmp"
    onnx.save(proto, tmp)
    os.replace(tmp, path)
    return path
