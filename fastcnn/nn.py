"""Layers with an explicit backward: no tape, no autograd.

A layer's forward calls one op and keeps what its backward needs; its backward takes dL/d(output),
stores the parameter gradients in ``Parameter.grad`` and returns dL/d(input). Gradients
accumulate across backward calls (``grad += ...``, visibly, here) until ``zero_grad()``, as in
PyTorch. Weights have PyTorch's shapes, names and default initialisation, so a state dict moves
between fastcnn and PyTorch unchanged.

    loss = loss_fn(model(x), labels)
    model.backward(loss_fn.backward())
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import numpy as np

from . import ops

__all__ = [
    "Parameter",
    "Module",
    "Sequential",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "Linear",
    "ReLU",
    "Flatten",
    "CrossEntropyLoss",
    "manual_seed",
    "LAYERS",
]

_rng = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed the generator that initialises the weights of layers created from now on.

    Args:
        seed: any int; the same seed gives the same initial weights.

    Example:
        >>> nn.manual_seed(0)
        >>> model = fastcnn.models.seednet()     # the same weights on every run
    """
    global _rng
    _rng = np.random.default_rng(seed)


class Parameter:
    """A trainable array and its gradient.

    Attributes:
        data: float32 array (numpy, or a fastcnn.cuda.DeviceArray after model.to("cuda")).
        grad: dL/d(data), of data's shape, summed over backward calls since the last
            zero_grad(); None until the first backward.
    """

    __slots__ = ("data", "grad")

    def __init__(self, data):
        if ops.device_of(data) == "cpu":
            data = np.ascontiguousarray(data, dtype=np.float32)
        self.data = data
        self.grad = None

    @property
    def shape(self):
        return self.data.shape

    def accumulate(self, g) -> None:
        """grad += g (grad = g when there is none yet); what layers' backward calls."""
        if self.grad is None:
            self.grad = g
        else:
            self.grad += g

    def __repr__(self):
        return f"Parameter(shape={self.data.shape})"


class Module:
    """Base of every layer and model.

    A Module finds its parameters and sub-modules by walking its attributes (Parameters and
    Modules), so a subclass only sets them in __init__ and implements forward and backward.
    `module(x)` calls forward(x). There is no autograd: after the forward pass, backward(dy)
    takes dL/d(output), adds the parameter gradients into each Parameter.grad and returns
    dL/d(input).

    Attributes:
        training: True in training mode (the default), False after eval(); backward needs
            a forward made in training mode.
        requires_input_grad: False makes backward skip dL/d(input) (fit sets it for the
            network, whose input needs no gradient).
    """

    training = True
    # False when no one needs dL/d(input) (the network's first layer): the layer then skips it.
    requires_input_grad = True

    # Set by a Sequential only while it runs this layer for an inner result (never for what the
    # caller receives): outputs then go into arrays the layer keeps and reuses, so a training
    # step allocates no activations. Flag and arrays are per thread, so concurrent predictions
    # (and two Sequentials sharing a layer) never hand out one another's buffers.
    @property
    def reuse_buffers(self) -> bool:
        return getattr(self._thread_state(), "reuse", False)

    @reuse_buffers.setter
    def reuse_buffers(self, value: bool) -> None:
        self._thread_state().reuse = bool(value)

    def _thread_state(self):
        try:
            return self.__dict__["_per_thread"]
        except KeyError:
            return self.__dict__.setdefault("_per_thread", threading.local())

    def _buffer(self, key, shape, like, dtype=np.float32):
        """A reusable output array on the device of `like` when reuse_buffers is set, else None
        (the op allocates)."""
        if not self.reuse_buffers or shape is None or min(shape, default=1) < 1:
            return None  # nothing to reuse, or a bad input the op itself will report
        buffers = self._thread_state().__dict__.setdefault("arrays", {})
        buf = buffers.get(key)
        if (
            buf is None
            or tuple(buf.shape) != tuple(shape)
            or buf.dtype != dtype
            or ops.device_of(buf) != ops.device_of(like)
        ):
            buf = buffers[key] = ops.empty(shape, dtype, like)
        return buf

    def __call__(self, *args):
        return self.forward(*args)

    def forward(self, x):
        """The layer's output for input x (float32 NCHW, or (N, features))."""
        raise NotImplementedError

    def backward(self, grad_out):
        """Given dL/d(output) of the last forward, add the parameter gradients into their
        .grad and return dL/d(input) (None when requires_input_grad is False)."""
        raise NotImplementedError

    def children(self) -> Iterator[tuple[str, Module]]:
        """(name, module) of each direct sub-module."""
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(name, Parameter) pairs of this module and its sub-modules, named as in PyTorch
        ("0.weight", "0.bias", ... in a Sequential)."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def parameters(self) -> list[Parameter]:
        """Every Parameter, in named_parameters() order (what an optimizer takes)."""
        return [p for _, p in self.named_parameters()]

    def modules(self) -> Iterator[Module]:
        """This module and all its sub-modules, depth first."""
        yield self
        for _, child in self.children():
            yield from child.modules()

    def state_dict(self) -> dict[str, np.ndarray]:
        """A dict name -> numpy copy of each parameter (from whichever device it is on), with
        PyTorch's keys and shapes: torch's load_state_dict takes it after torch.from_numpy."""
        return {name: np.array(ops.to_numpy(p.data)) for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into the parameters, in place.

        Args:
            state: name -> array (numpy, or anything np.asarray takes, such as a CPU torch
                tensor), as state_dict() gives.
            strict: the names must be exactly the model's (KeyError otherwise); when False,
                names the model lacks are ignored and missing ones left as they are.

        Raises:
            KeyError: (strict) missing or unexpected names. ValueError: a shape differs.
            TypeError: non-floating values. Nothing is changed when anything is refused.
        """
        own = dict(self.named_parameters())
        if strict:
            missing = sorted(set(own) - set(state))
            unexpected = sorted(set(state) - set(own))
            if missing or unexpected:
                raise KeyError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
        arrays = {}
        for name, value in state.items():
            if name not in own:
                continue
            array = np.asarray(value)
            if array.shape != own[name].data.shape:
                raise ValueError(
                    f"{name}: expected shape {own[name].data.shape}, got {array.shape}"
                )
            if not np.issubdtype(array.dtype, np.floating):
                raise TypeError(f"{name}: expected floating-point values, got {array.dtype}")
            arrays[name] = array
        for name, array in arrays.items():
            ops.copy_into(own[name].data, array)

    def train(self, mode: bool = True) -> Module:
        """Set training mode (mode=True) or eval mode on this module and its sub-modules;
        returns self."""
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> Module:
        """Set eval mode (the same as train(False)); returns self."""
        return self.train(False)

    def zero_grad(self) -> None:
        """Set every parameter's grad to None."""
        for p in self.parameters():
            p.grad = None

    def to(self, device: str) -> Module:
        """Moves the parameters to `device` ("cpu" or "cuda"), in place; returns self. Forward
        then takes inputs on that device. Gradients and kept activations are dropped; create
        the optimizer after moving the model (or its state moves at its next step)."""
        device = ops._device(device)
        for p in self.parameters():
            p.data = ops.to_device(p.data, device)
            p.grad = None
        for m in self.modules():
            m.__dict__.pop("_per_thread", None)  # reused buffers live on the old device
        return self

    @property
    def device(self) -> str:
        """Where the parameters are: "cpu" or "cuda" ("cpu" for a layer without any)."""
        for p in self.parameters():
            return ops.device_of(p.data)
        return "cpu"

    def config(self) -> dict:
        """Constructor arguments, so that io can rebuild the layer without running stored code."""
        return {}

    def extra_repr(self) -> str:
        """The constructor arguments shown by repr()."""
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse. Parameters are named `i.weight`,
    `i.bias` (i: the layer's position), as in torch.nn.Sequential.

    Runs fused where the layer sequence allows, with the same results: Conv2d or Linear then
    ReLU applies the ReLU in the layer's epilogue; Conv2d, ReLU, MaxPool2d pools first and
    applies the ReLU to the pooled values (max and ReLU commute), a quarter of the work.
    Activations between layers go into buffers reused from step to step (one set per thread);
    the output and the input gradient handed back are fresh arrays.

    Args:
        *layers: Modules; one layer object may appear only once (ValueError otherwise).

    Example:
        >>> model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        ...                       nn.Flatten(), nn.Linear(8 * 14 * 14, 10))
        >>> model(np.zeros((4, 1, 28, 28), np.float32)).shape
        (4, 10)
    """

    def __init__(self, *layers: Module):
        for layer in layers:
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential takes Modules, got {type(layer).__name__}")
        if len({id(layer) for layer in layers}) != len(layers):
            # A layer keeps what its backward needs from its last forward: one object in two
            # places would compute wrong gradients.
            raise ValueError("Sequential got the same layer object twice; create one per position")
        self.layers = list(layers)

    def children(self):
        for i, layer in enumerate(self.layers):
            yield str(i), layer

    def named_parameters(self, prefix: str = ""):
        for name, child in self.children():
            yield from child.named_parameters(f"{prefix}{name}.")

    def __getitem__(self, i):
        return self.layers[i]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def _steps(self):
        """(layer, relu) pairs to run, after fusing ReLUs into their neighbours."""
        layers, steps, i = self.layers, [], 0
        while i < len(layers):
            layer, after = layers[i], layers[i + 1 : i + 3]
            relu_next = len(after) > 0 and type(after[0]) is ReLU
            if (
                type(layer) is Conv2d
                and relu_next
                and len(after) > 1
                and isinstance(after[1], MaxPool2d)
            ):
                steps += [(layer, False), (after[1], True)]
                i += 3
            elif type(layer) in (Conv2d, Linear) and relu_next:
                steps.append((layer, True))
                i += 2
            else:
                steps.append((layer, False))
                i += 1
        return steps

    def forward(self, x):
        steps = self._steps()
        self._ran = steps
        for i, (layer, relu) in enumerate(steps):
            # Inner results go into reused buffers; what the caller gets is always fresh.
            layer.reuse_buffers = i < len(steps) - 1
            try:
                x = layer.forward(x, relu=True) if relu else layer.forward(x)
            finally:
                layer.reuse_buffers = False
        return x

    def backward(self, grad_out):
        steps = getattr(self, "_ran", None)
        if steps is None:
            raise RuntimeError("Sequential.backward called before forward")
        if steps:
            steps[0][0].requires_input_grad = self.requires_input_grad
        for i in reversed(range(len(steps))):
            layer = steps[i][0]
            layer.reuse_buffers = i > 0  # the input gradient handed out is fresh
            if i > 0 and steps[i][1] and isinstance(layer, MaxPool2d):
                # Conv2d, ReLU, MaxPool2d: the conv's output is dead once pooled (its backward
                # needs only its input), so the pool's input gradient is written over it.
                layer._dx_into = getattr(steps[i - 1][0], "_y", None)
            try:
                grad_out = layer.backward(grad_out)
            finally:
                layer.reuse_buffers = False
                layer._dx_into = None
        return grad_out

    def __repr__(self):
        inner = "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers))
        return f"Sequential(\n{inner}\n)"


# Upper bounds on layer sizes. The kernels take int64 sizes and multiply them (C*kh*kw, padded
# H*W, ...): values within these bounds keep such products far from overflowing, while real
# networks stay far below them (thousands of channels, kernels and strides of a few pixels).
# A model file with larger values is corrupt, and is refused when loaded rather than failing
# (or allocating terabytes) at its first forward.
MAX_FEATURES = 2**24  # channels, features
MAX_WINDOW = 2**16  # kernel size, stride, padding


def _int(v, name, minimum, maximum=MAX_FEATURES):
    ok = isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    if not ok or not minimum <= v <= maximum:
        raise ValueError(f"{name} must be an int in [{minimum}, {maximum}], got {v!r}")
    return int(v)


def _pair(v, name="kernel_size", minimum=1):
    """An int or a pair of ints -> (h, w), each in [minimum, MAX_WINDOW]; ValueError otherwise."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v, v)
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return _int(v[0], name, minimum, MAX_WINDOW), _int(v[1], name, minimum, MAX_WINDOW)


def _uniform(shape, bound):
    return _rng.uniform(-bound, bound, size=shape).astype(np.float32)


class _Weighted(Module):
    """What Conv2d and Linear share around their op: the inputs backward keeps, the fused
    ReLU's mask, and the gradient accumulation."""

    _x = None

    def _keep(self, x, y, relu):
        self._x, self._y, self._relu = (x, y, relu) if self.training else (None, None, False)

    def _backward_inputs(self, dy):
        """(dy through the fused ReLU's mask, whether dx is wanted, dx's buffer or None)."""
        if self._x is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called without a forward in training mode"
            )
        if self._relu:
            dy = ops.relu_backward(self._y, dy, out=self._buffer("dy", self._y.shape, dy))
        need_dx = self.requires_input_grad
        return dy, need_dx, (self._buffer("dx", self._x.shape, dy) if need_dx else None)

    def _accumulate(self, dx, dw, db):
        self.weight.accumulate(dw)
        if self.bias is not None:
            self.bias.accumulate(db)
        return dx


class Conv2d(_Weighted):
    """2-D convolution (cross-correlation, as in PyTorch) of NCHW images.

    Input (N, in_channels, H, W), output (N, out_channels, (H + 2*pad - kh) // stride + 1,
    (W + 2*pad - kw) // stride + 1). Parameters `weight` (out_channels, in_channels, kh, kw)
    and `bias` (out_channels,), initialised as PyTorch does: U(-1/sqrt(fan_in),
    1/sqrt(fan_in)), fan_in = in_channels * kh * kw.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output (filters).
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw).
        padding: int or (ph, pw): zeros added on each side.
        bias: whether to add a learned bias.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        self.in_channels = _int(in_channels, "in_channels", 1)
        self.out_channels = _int(out_channels, "out_channels", 1)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        # PyTorch's default: kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = Parameter(_uniform((out_channels, in_channels, *self.kernel_size), bound))
        self.bias = Parameter(_uniform((out_channels,), bound)) if bias else None

    def forward(self, x, relu=False):
        b = self.bias.data if self.bias is not None else None
        y = ops.conv2d_forward(
            x,
            self.weight.data,
            b,
            self.stride,
            self.padding,
            relu,
            self._buffer("y", self._out_shape(x), x),
        )
        self._keep(x, y, relu)
        return y

    def _out_shape(self, x):
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        if getattr(x, "ndim", 0) != 4:
            return None  # let the op report the bad input
        h, w = x.shape[2:]
        return (
            x.shape[0],
            self.out_channels,
            (h + 2 * ph - kh) // sh + 1,
            (w + 2 * pw - kw) // sw + 1,
        )

    def backward(self, dy):
        dy, need_dx, dx_buf = self._backward_inputs(dy)
        dx, dw, db = ops.conv2d_backward(
            self._x,
            self.weight.data,
            dy,
            self.stride,
            self.padding,
            need_dx,
            out=(dx_buf, None, None),
        )
        return self._accumulate(dx, dw, db)

    def config(self):
        return {
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "bias": self.bias is not None,
        }


class Linear(_Weighted):
    """Fully connected layer: y = x @ weight.T + bias.

    Input (N, in_features), output (N, out_features). Parameters `weight` (out_features,
    in_features) and `bias` (out_features,), initialised as PyTorch does:
    U(-1/sqrt(in_features), 1/sqrt(in_features)).

    Args:
        in_features: size of each input row.
        out_features: size of each output row.
        bias: whether to add a learned bias.
    """

    def __init__(self, in_features, out_features, bias=True):
        self.in_features = _int(in_features, "in_features", 1)
        self.out_features = _int(out_features, "out_features", 1)
        bound = 1.0 / math.sqrt(self.in_features)
        self.weight = Parameter(_uniform((self.out_features, self.in_features), bound))
        self.bias = Parameter(_uniform((self.out_features,), bound)) if bias else None

    def forward(self, x, relu=False):
        b = self.bias.data if self.bias is not None else None
        shape = (x.shape[0], self.out_features) if getattr(x, "ndim", 0) == 2 else None
        y = ops.linear_forward(x, self.weight.data, b, relu, self._buffer("y", shape, x))
        self._keep(x, y, relu)
        return y

    def backward(self, dy):
        dy, need_dx, dx_buf = self._backward_inputs(dy)
        dx, dw, db = ops.linear_backward(
            self._x, self.weight.data, dy, need_dx, out=(dx_buf, None, None)
        )
        return self._accumulate(dx, dw, db)

    def config(self):
        return {
            "in_features": self.in_features,
            "out_features": self.out_features,
            "bias": self.bias is not None,
        }


class _Pool2d(Module):
    def __init__(self, kernel_size, stride=None):
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else _pair(stride, "stride", 1)
        self._x_shape = None

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride)}

    def _out_shape(self, x):
        if getattr(x, "ndim", 0) != 4:
            return None
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        n, c, h, w = x.shape
        return (n, c, (h - kh) // sh + 1, (w - kw) // sw + 1)


class MaxPool2d(_Pool2d):
    """Max-pooling over kernel_size windows (no padding; a partial window at the edge is
    dropped, as PyTorch's floor mode does). Input (N, C, H, W), output (N, C,
    (H - kh) // sh + 1, (W - kw) // sw + 1).

    Args:
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw); defaults to kernel_size.
    """

    def forward(self, x, relu=False):
        shape = self._out_shape(x)
        out = None
        if self.reuse_buffers and shape is not None:
            out = (self._buffer("y", shape, x), self._buffer("indices", shape, x, np.int32))
        y, indices = ops.maxpool2d_forward(x, self.kernel_size, self.stride, relu, out)
        self._x_shape, self._indices, self._y = x.shape, indices, (y if relu else None)
        return y

    _dx_into = None  # set by Sequential: an array of x's shape free to take dx

    def backward(self, dy):
        out = self._dx_into
        if out is None or out.shape != tuple(self._x_shape) or not self.reuse_buffers:
            out = self._buffer("dx", self._x_shape, dy)
        return ops.maxpool2d_backward(dy, self._indices, self._x_shape, self._y, out)


class AvgPool2d(_Pool2d):
    """Average pooling over kernel_size windows (no padding, floor mode). Input (N, C, H, W),
    output (N, C, (H - kh) // sh + 1, (W - kw) // sw + 1).

    Args:
        kernel_size: int or (kh, kw).
        stride: int or (sh, sw); defaults to kernel_size.
    """

    def forward(self, x):
        self._x_shape = x.shape
        return ops.avgpool2d_forward(
            x, self.kernel_size, self.stride, self._buffer("y", self._out_shape(x), x)
        )

    def backward(self, dy):
        return ops.avgpool2d_backward(
            dy, self._x_shape, self.kernel_size, self.stride, self._buffer("dx", self._x_shape, dy)
        )


class ReLU(Module):
    """max(x, 0), element-wise, any shape (NaN stays NaN, as in PyTorch). In a Sequential, a
    ReLU after a Conv2d or Linear runs inside that layer."""

    def forward(self, x):
        self._y = ops.relu_forward(x, self._buffer("y", getattr(x, "shape", None), x))
        return self._y

    def backward(self, dy):
        return ops.relu_backward(self._y, dy, self._buffer("dx", self._y.shape, dy))


class Flatten(Module):
    """(N, C, H, W) -> (N, C*H*W); a view, no copy."""

    def forward(self, x):
        self._shape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._shape)


class CrossEntropyLoss:
    """Mean softmax cross-entropy, as torch.nn.CrossEntropyLoss (mean reduction).

    `loss = fn(logits, labels)` takes logits (N, classes) and integer labels (N,) in
    [0, classes) and returns the mean loss: a float, or for logits on a GPU a 0-d array there
    (float(loss) reads it). `fn.backward()` then returns dL/d(logits), (N, classes), to pass
    to model.backward().

    Args:
        label_smoothing: in [0, 1]; the target is 1 - label_smoothing at the label plus
            label_smoothing / classes everywhere, as in PyTorch.

    Example:
        >>> loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
        >>> loss = loss_fn(model(x), y)
        >>> model.backward(loss_fn.backward())
    """

    def __init__(self, label_smoothing: float = 0.0):
        label_smoothing = float(label_smoothing)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def __call__(self, logits, labels):
        loss, self._dlogits = ops.softmax_cross_entropy(
            logits, labels, label_smoothing=self.label_smoothing
        )
        return loss

    def backward(self):
        """d(loss)/d(logits) of the last call, float32 (N, classes)."""
        return self._dlogits


# Every layer io may rebuild from a model file, by name (a file never names code to run).
LAYERS = {cls.__name__: cls for cls in (Conv2d, Linear, MaxPool2d, AvgPool2d, ReLU, Flatten)}
