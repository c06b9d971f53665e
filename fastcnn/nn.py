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

import contextlib
import math
import threading
from collections.abc import Iterator

import numpy as np

from . import ops

__all__ = [
    "Parameter",
    "Buffer",
    "Module",
    "Sequential",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "Linear",
    "ReLU",
    "Flatten",
    "BatchNorm2d",
    "Dropout",
    "Residual",
    "BasicBlock",
    "CrossEntropyLoss",
    "manual_seed",
    "LAYERS",
]

_rng = np.random.default_rng()
# Mixed into Dropout's mask seeds: each rank of a distributed run draws its own masks from the
# same generator state (which the checkpoint keeps); 0 in a single process.
_rank_salt = 0


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
        hook: None, or a function called with the parameter after each accumulate (what
            distributed training uses to start exchanging gradients during backward).
    """

    __slots__ = ("data", "grad", "hook")

    def __init__(self, data):
        if ops.device_of(data) == "cpu":
            data = np.ascontiguousarray(data, dtype=np.float32)
        self.data = data
        self.grad = None
        self.hook = None

    @property
    def shape(self):
        return self.data.shape

    def accumulate(self, g) -> None:
        """grad += g (grad = g when there is none yet); what layers' backward calls."""
        if self.grad is None:
            self.grad = g
        else:
            self.grad += g
        if self.hook is not None:
            self.hook(self)

    def __repr__(self):
        return f"Parameter(shape={self.data.shape})"


class Buffer:
    """Saved, untrained state of a layer (PyTorch's buffers: BatchNorm2d's running statistics):
    part of state_dict() and of model files, never of parameters() or an optimizer.

    Attributes:
        data: a numpy array (float32, or int64 for counters).
    """

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = np.asarray(data)

    def __repr__(self):
        return f"Buffer(shape={tuple(self.data.shape)}, dtype={self.data.dtype})"


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

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, Buffer]]:
        """(name, Buffer) pairs of this module and its sub-modules ("1.running_mean", ...)."""
        for name, value in vars(self).items():
            if isinstance(value, Buffer):
                yield prefix + name, value
        for name, child in self.children():
            yield from child.named_buffers(f"{prefix}{name}.")

    def _named_state(self, prefix: str = ""):
        """Parameters then buffers of each module, depth first: PyTorch's state_dict order."""
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield prefix + name, value
        for name, value in vars(self).items():
            if isinstance(value, Buffer):
                yield prefix + name, value
        for name, child in self.children():
            yield from child._named_state(f"{prefix}{name}.")

    def modules(self) -> Iterator[Module]:
        """This module and all its sub-modules, depth first."""
        yield self
        for _, child in self.children():
            yield from child.modules()

    def state_dict(self) -> dict[str, np.ndarray]:
        """A dict name -> numpy copy of each parameter and buffer (from whichever device it is
        on), with PyTorch's keys, order and shapes: torch's load_state_dict takes it after
        torch.from_numpy."""
        return {name: np.array(ops.to_numpy(p.data)) for name, p in self._named_state()}

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
        own = dict(self._named_state())
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
            integer = np.issubdtype(own[name].data.dtype, np.integer)  # a counter buffer
            kind = np.integer if integer else np.floating
            if not np.issubdtype(array.dtype, kind):
                what = "integer" if integer else "floating-point"
                raise TypeError(f"{name}: expected {what} values, got {array.dtype}")
            arrays[name] = array
        for name, array in arrays.items():
            if isinstance(own[name], Buffer):
                own[name].data = np.array(array, dtype=own[name].data.dtype)
            else:
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
        if device != "cpu" and any(True for _ in self.named_buffers()):
            kinds = sorted({type(m).__name__ for m in self.modules() if _has_buffers(m)})
            raise NotImplementedError(f"{', '.join(kinds)} run on the CPU only for now")
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


class _ConvBN:
    """A Conv2d and the eval-mode BatchNorm2d after it, run as one convolution with the
    normalisation folded into its weights and bias (and a following ReLU in its epilogue):
    inference reads and writes the activations once instead of twice."""

    def __init__(self, conv, bn):
        self.conv, self.bn = conv, bn
        self.reuse_buffers = False

    def forward(self, x, relu=False):
        out = self.conv._buffer("y", self.conv._out_shape(x), x) if self.reuse_buffers else None
        return conv_bn_eval(self.conv, self.bn, x, relu, out)

    def backward(self, dy):
        raise RuntimeError("BatchNorm2d.backward called without a forward in training mode")


def fold_conv_bn(conv, bn):
    """(weight, bias), float32: the convolution that computes bn(conv(x)) with bn in eval mode."""
    scale, shift = bn.eval_affine()
    w = np.asarray(ops.to_numpy(conv.weight.data)) * scale[:, None, None, None]
    b = shift if conv.bias is None else shift + scale * np.asarray(ops.to_numpy(conv.bias.data))
    return w.astype(np.float32), b.astype(np.float32)


def conv_bn_eval(conv, bn, x, relu=False, out=None, residual=None):
    """bn(conv(x)) (+ residual, then max(0, .) with relu) in eval mode, as one convolution."""
    w, b = fold_conv_bn(conv, bn)
    if residual is None:
        return ops.conv2d_forward(x, w, b, conv.stride, conv.padding, relu, out)
    y = ops.conv2d_forward(x, w, b, conv.stride, conv.padding, False, out)
    return ops.add_relu(y, residual, y) if relu else y + residual


def _has_buffers(module) -> bool:
    return any(isinstance(v, Buffer) for v in vars(module).values())


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
        """(layer, relu) pairs to run, after fusing ReLUs into their neighbours (and, in eval
        mode, a BatchNorm2d into the convolution before it)."""
        layers, steps, i = self.layers, [], 0
        while i < len(layers):
            layer, after = layers[i], layers[i + 1 : i + 3]
            relu_next = len(after) > 0 and type(after[0]) is ReLU
            if (
                type(layer) is Conv2d
                and after
                and type(after[0]) is BatchNorm2d
                and after[0].folds()
            ):
                relu_after = len(after) > 1 and type(after[1]) is ReLU
                steps.append((_ConvBN(layer, after[0]), relu_after))
                i += 3 if relu_after else 2
            elif (
                type(layer) is Conv2d
                and relu_next
                and len(after) > 1
                and isinstance(after[1], MaxPool2d)
            ):
                steps += [(layer, False), (after[1], True)]
                i += 3
            elif type(layer) in (Conv2d, Linear, BatchNorm2d) and relu_next:
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

    def _backward_inputs(self, dy, dx_buffer=True):
        """(dy through the fused ReLU's mask, whether dx is wanted, dx's buffer or None; None
        too without dx_buffer)."""
        if self._x is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward called without a forward in training mode"
            )
        if self._relu:
            dy = ops.relu_backward(self._y, dy, out=self._buffer("dy", self._y.shape, dy))
        need_dx = self.requires_input_grad
        buf = self._buffer("dx", self._x.shape, dy) if need_dx and dx_buffer else None
        return dy, need_dx, buf

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

    @classmethod
    def shapes(cls, in_channels, out_channels, kernel_size, bias=True, **_):
        """Parameter shapes, from the configuration alone (io checks model files by it)."""
        k = [kernel_size, kernel_size] if isinstance(kernel_size, int) else list(kernel_size)
        out = {"weight": (out_channels, in_channels, *k)}
        if bias:
            out["bias"] = (out_channels,)
        return out

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

    def backward(self, dy, add_to=None):
        """dL/dx for dy = dL/dy (None when requires_input_grad is off); with add_to (an array
        of x's shape), dL/dx is added into add_to, which is returned."""
        dy, need_dx, dx_buf = self._backward_inputs(dy, dx_buffer=add_to is None)
        if add_to is not None:
            need_dx, dx_buf = True, add_to
        dx, dw, db = ops.conv2d_backward(
            self._x,
            self.weight.data,
            dy,
            self.stride,
            self.padding,
            need_dx,
            out=(dx_buf, None, None),
            add_dx=add_to is not None,
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

    @classmethod
    def shapes(cls, in_features, out_features, bias=True):
        """Parameter shapes, from the configuration alone (io checks model files by it)."""
        return {
            "weight": (out_features, in_features),
            **({"bias": (out_features,)} if bias else {}),
        }

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


class AdaptiveAvgPool2d(Module):
    """Global average pooling, as torch.nn.AdaptiveAvgPool2d(1): (N, C, H, W) -> (N, C, 1, 1),
    each channel's mean (the average-pooling kernels with one H x W window). Only output size 1
    is supported.

    Args:
        output_size: 1 (or (1, 1)).
    """

    def __init__(self, output_size=1):
        if output_size not in (1, (1, 1), [1, 1]):
            raise ValueError(f"AdaptiveAvgPool2d supports output_size 1 only, got {output_size!r}")

    def forward(self, x):
        if getattr(x, "ndim", 0) != 4:
            raise ValueError(f"AdaptiveAvgPool2d takes (N, C, H, W), got shape {x.shape}")
        self._x_shape = x.shape
        window = tuple(x.shape[2:])
        return ops.avgpool2d_forward(x, window, window, self._buffer("y", (*x.shape[:2], 1, 1), x))

    def backward(self, dy):
        window = tuple(self._x_shape[2:])
        return ops.avgpool2d_backward(
            dy, self._x_shape, window, window, self._buffer("dx", self._x_shape, dy)
        )

    def config(self):
        return {"output_size": 1}


class BatchNorm2d(Module):
    """Batch normalisation over the channels of NCHW images, as torch.nn.BatchNorm2d.

    Training: each channel normalised by the batch's mean and biased variance, then scaled by
    `weight` and shifted by `bias`; `running_mean` and `running_var` (unbiased) follow the batch
    statistics with `momentum` (None: a cumulative average), `num_batches_tracked` counts the
    batches. Eval: the running statistics are used instead (folded into one scale and shift per
    channel). A ReLU after it in a Sequential runs in its output loop.

    Args:
        num_features: channels C.
        eps: added to the variance, > 0.
        momentum: weight of each new batch in the running statistics, in [0, 1], or None.
        affine: learn `weight` (ones) and `bias` (zeros).
        track_running_stats: keep running statistics (else batch statistics in eval too).
    """

    sync = None  # a distributed World: training statistics over the global batch (--sync-bn)

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        self.num_features = _int(num_features, "num_features", 1)
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if momentum is not None and not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1] or None, got {momentum}")
        self.eps, self.momentum = float(eps), None if momentum is None else float(momentum)
        self.affine, self.track_running_stats = bool(affine), bool(track_running_stats)
        c = self.num_features
        self.weight = Parameter(np.ones(c, np.float32)) if affine else None
        self.bias = Parameter(np.zeros(c, np.float32)) if affine else None
        if track_running_stats:
            self.running_mean = Buffer(np.zeros(c, np.float32))
            self.running_var = Buffer(np.ones(c, np.float32))
            self.num_batches_tracked = Buffer(np.array(0, np.int64))

    @classmethod
    def shapes(cls, num_features, affine=True, track_running_stats=True, **_):
        """Parameter and buffer shapes, from the configuration alone (io checks files by it)."""
        c = (num_features,)
        out = {"weight": c, "bias": c} if affine else {}
        if track_running_stats:
            out.update(running_mean=c, running_var=c, num_batches_tracked=())
        return out

    def forward(self, x, relu=False, residual=None):
        """Normalise x; `relu` applies max(0, .) after it, and `residual` (x's shape) is added
        before that (a ResNet block's tail, one pass)."""
        if getattr(x, "ndim", 0) != 4 or x.shape[1] != self.num_features:
            raise ValueError(
                f"BatchNorm2d({self.num_features}) takes (N, {self.num_features}, H, W), "
                f"got shape {getattr(x, 'shape', None)}"
            )
        w = self.weight.data if self.affine else None
        b = self.bias.data if self.affine else None
        out = self._buffer("y", x.shape, x)
        if self.training and self.sync is not None:
            from . import distributed

            return distributed.batchnorm_forward(self, x, relu, residual, out)
        if self.training or not self.track_running_stats:
            y, mean, invstd, var = ops.batchnorm2d_forward(x, w, b, self.eps, relu, out, residual)
            if self.training and self.track_running_stats:
                self._update_running_stats(mean, var, x.shape[0] * x.shape[2] * x.shape[3])
            self._x, self._stats = x, (mean, invstd)
            # The ReLU's mask in backward: y > 0 where a residual was added, else recomputed
            # from x (one array fewer to read back).
            self._y = y if relu and residual is not None else None
            self._relu_x = relu and residual is None
            return y
        self._x = None
        return ops.batchnorm2d_forward_eval(x, *self.eval_affine(), relu, out, residual)

    def eval_affine(self):
        """(scale, shift), float32 (C,): eval mode's y = x * scale + shift per channel."""
        scale = 1.0 / np.sqrt(self.running_var.data.astype(np.float64) + self.eps)
        if self.affine:
            scale = scale * self.weight.data
        shift = -self.running_mean.data * scale
        if self.affine:
            shift = shift + self.bias.data
        return scale.astype(np.float32), shift.astype(np.float32)

    def folds(self) -> bool:
        """Whether this layer, in its current mode, is an affine map that a preceding
        convolution can absorb (eval mode with running statistics)."""
        return not self.training and self.track_running_stats

    def _update_running_stats(self, mean, var, count):
        self.num_batches_tracked.data = self.num_batches_tracked.data + 1
        m = self.momentum
        if m is None:  # a cumulative moving average, as PyTorch's momentum=None
            m = 1.0 / float(self.num_batches_tracked.data)
        unbiased = var * np.float32(count / max(count - 1, 1))
        rm, rv = self.running_mean, self.running_var
        rm.data = ((1 - m) * rm.data + m * mean).astype(np.float32)
        rv.data = ((1 - m) * rv.data + m * unbiased).astype(np.float32)

    def backward(self, dy):
        return self._backward(dy, None)

    def backward_masked(self, dy):
        """(dx, g) after a forward with relu=True: g is dy through the ReLU's mask, what the
        residual added in forward receives."""
        if self._y is None and not getattr(self, "_relu_x", False):
            raise RuntimeError("backward_masked needs a forward with relu=True")
        g = self._buffer("g", self._x.shape, dy)
        g = ops.empty(self._x.shape, np.float32, dy) if g is None else g
        return self._backward(dy, g), g

    def _backward(self, dy, masked_dy_out):
        if getattr(self, "_x", None) is None:
            raise RuntimeError("BatchNorm2d.backward called without a forward in training mode")
        if self.sync is not None:
            from . import distributed

            return distributed.batchnorm_backward(self, dy, masked_dy_out)
        need_dx = self.requires_input_grad
        dx, dw, db = ops.batchnorm2d_backward(
            self._x,
            dy,
            self._y,
            *self._stats,
            self.weight.data if self.affine else None,
            need_dx,
            self.affine,
            self._buffer("dx", self._x.shape, dy) if need_dx else None,
            masked_dy_out,
            relu=self._relu_x,
            bias=self.bias.data if self.affine else None,
        )
        if self.affine:
            self.weight.accumulate(dw)
            self.bias.accumulate(db)
        return dx

    def config(self):
        return {
            "num_features": self.num_features,
            "eps": self.eps,
            "momentum": self.momentum,
            "affine": self.affine,
            "track_running_stats": self.track_running_stats,
        }


class Dropout(Module):
    """Zeroes each element with probability p while training and scales the rest by 1/(1-p)
    (inverted dropout, as torch.nn.Dropout); the identity in eval mode. The masks come from the
    generator nn.manual_seed seeds, so a seeded run repeats bit for bit.

    Args:
        p: the probability of zeroing, in [0, 1).
    """

    def __init__(self, p=0.5):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        seed = int(_rng.integers(0, 2**63)) ^ _rank_salt
        y, self._mask = ops.dropout_forward(x, self.p, seed, self._buffer("y", x.shape, x))
        return y

    def backward(self, dy):
        if self._mask is None:
            return dy
        return ops.dropout_backward(dy, self._mask, self.p, self._buffer("dx", dy.shape, dy))

    def config(self):
        return {"p": self.p}


class Residual(Module):
    """body(x) + shortcut(x), shortcut the identity when None: the residual connection of a
    ResNet. Backward adds the input gradients of both branches. Its state-dict keys are those of
    its children, `body.*` and `shortcut.*`.

    Args:
        body: a Module (often a Sequential).
        shortcut: a Module of the same output shape, or None for the identity.
    """

    def __init__(self, body, shortcut=None):
        for m in (body, shortcut):
            if m is not None and not isinstance(m, Module):
                raise TypeError(f"Residual takes Modules, got {type(m).__name__}")
        self.body, self.shortcut = body, shortcut

    def forward(self, x):
        y = self.body(x)
        s = x if self.shortcut is None else self.shortcut(x)
        if tuple(y.shape) != tuple(s.shape):
            raise ValueError(f"Residual: body gives {tuple(y.shape)}, shortcut {tuple(s.shape)}")
        return y + s

    def backward(self, dy):
        dx = self.body.backward(dy)
        ds = dy if self.shortcut is None else self.shortcut.backward(dy)
        return dx + ds


@contextlib.contextmanager
def _reusing(inner, last, last_reuses):
    """Runs a block's layers with reused output buffers: `inner` always (their results stay
    inside the block), `last` (whose result the block hands out) only when `last_reuses`."""
    try:
        for layer in inner:
            layer.reuse_buffers = True
        last.reuse_buffers = last_reuses
        yield
    finally:
        for layer in (*inner, last):
            layer.reuse_buffers = False


class BasicBlock(Module):
    """The two-convolution residual block of the CIFAR ResNets (He et al. 2016):
    relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), 3x3 convolutions without bias, the
    first with `stride`; the shortcut is empty (the identity) when the shape is unchanged, else
    a 1x1 convolution with `stride` and a BatchNorm2d. Keys: conv1, bn1, conv2, bn2, shortcut.0,
    shortcut.1, as in the usual PyTorch CIFAR ResNets.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: 1, or 2 to halve the image.
    """

    def __init__(self, in_planes, planes, stride=1):
        self.in_planes, self.planes = _int(in_planes, "in_planes", 1), _int(planes, "planes", 1)
        self.stride = _int(stride, "stride", 1, MAX_WINDOW)
        self.conv1 = Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = BatchNorm2d(planes)
        self.conv2 = Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = Sequential(
                Conv2d(in_planes, planes, 1, stride, 0, bias=False), BatchNorm2d(planes)
            )
        else:
            self.shortcut = Sequential()

    @classmethod
    def shapes(cls, in_planes, planes, stride=1):
        """Parameter and buffer shapes, from the configuration alone (io checks files by it)."""
        parts = {
            "conv1": Conv2d.shapes(in_planes, planes, 3, bias=False),
            "bn1": BatchNorm2d.shapes(planes),
            "conv2": Conv2d.shapes(planes, planes, 3, bias=False),
            "bn2": BatchNorm2d.shapes(planes),
        }
        if stride != 1 or in_planes != planes:
            parts["shortcut.0"] = Conv2d.shapes(in_planes, planes, 1, bias=False)
            parts["shortcut.1"] = BatchNorm2d.shapes(planes)
        return {f"{name}.{k}": s for name, shapes in parts.items() for k, s in shapes.items()}

    def forward(self, x):
        if self.bn1.folds() and self.bn2.folds():  # eval: three convolutions, nothing else
            # On the convolutions' reused buffers as in training (inner results always, the
            # output when the Sequential around asks): inference allocates no activations.
            def into(conv, x):
                return conv._buffer("y", conv._out_shape(x), x)

            sc = self.shortcut.layers
            with _reusing((self.conv1, *sc[:1]), self.conv2, self.reuse_buffers):
                h = conv_bn_eval(self.conv1, self.bn1, x, relu=True, out=into(self.conv1, x))
                s = conv_bn_eval(*sc, x, out=into(sc[0], x)) if sc else x
                y = into(self.conv2, h)
                return conv_bn_eval(self.conv2, self.bn2, h, out=y, residual=s, relu=True)
        # Inner results (the projection shortcut's too) go into the layers' reused buffers, the
        # block's output too when the Sequential around it asks (reuse_buffers): a training step
        # allocates no activations.
        sc = self.shortcut.layers
        with _reusing((self.conv1, self.bn1, self.conv2, *sc), self.bn2, self.reuse_buffers):
            h = self.bn1.forward(self.conv1(x), relu=True)
            s = sc[1].forward(sc[0](x)) if sc else x
            # bn2, the residual sum and the ReLU in one pass; its backward masks by this output.
            self._y = self.bn2.forward(self.conv2(h), relu=True, residual=s)
        return self._y

    def backward(self, dy):
        # The shortcut's input gradient stays inside the block too (it is added into dx).
        sc = self.shortcut.layers
        with _reusing((self.bn2, self.conv2, self.bn1, *sc), self.conv1, self.reuse_buffers):
            # g, dy through the ReLU's mask, is what both branches receive.
            dh, g = self.bn2.backward_masked(dy)
            dx = self.conv1.backward(self.bn1.backward(self.conv2.backward(dh)))
            if not sc:
                return None if dx is None else ops.add(dx, g, out=dx)  # g: another array
            # The projection's input gradient is added into conv1's where it is computed.
            dsc = sc[1].backward(g)
            if dx is None:
                sc[0].backward(dsc)  # its weight's gradient only
                return None
            return sc[0].backward(dsc, add_to=dx)

    def config(self):
        return {"in_planes": self.in_planes, "planes": self.planes, "stride": self.stride}


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
LAYERS = {
    cls.__name__: cls
    for cls in (
        Conv2d,
        Linear,
        MaxPool2d,
        AvgPool2d,
        ReLU,
        Flatten,
        BatchNorm2d,
        Dropout,
        AdaptiveAvgPool2d,
        BasicBlock,
    )
}
