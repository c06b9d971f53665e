"""Optimizers: each implements only its update (in C++, fastcnn._C), with PyTorch's rules; and
learning-rate schedules (fastcnn.optim.lr_scheduler)."""

from __future__ import annotations

import numpy as np

from .. import ops
from ..nn import Module, Parameter

__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "lr_scheduler"]


class Optimizer:
    """Base of the optimizers: holds the parameters and the learning rate.

    Args:
        params: a list of nn.Parameter (model.parameters()) or a Module.
        lr: learning rate, > 0. `opt.lr` may be changed between steps (a schedule).
    """

    def __init__(self, params, lr: float):
        if isinstance(params, Module):
            params = params.parameters()
        self.params: list[Parameter] = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        for p in self.params:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer takes Parameters, got {type(p).__name__}")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.lr = float(lr)

    def zero_grad(self) -> None:
        """Set every parameter's grad to None (gradients accumulate until then)."""
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        """Update every parameter that has a grad, in place."""
        raise NotImplementedError

    # Checkpoints: per-parameter state as arrays, scalars as a dict.
    def state_dict(self) -> dict:
        """The optimizer's state: lr, and per-parameter lists of numpy arrays (momentum
        buffers, moments) and step counts; what fit(checkpoint=...) saves."""
        return {"lr": self.lr}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict() of the same optimizer over parameters of the same shapes
        (ValueError otherwise, before anything changes)."""
        self.lr = float(state.get("lr", self.lr))

    def _check_arrays(self, saved, key, per_element=True):
        """Saved per-parameter entries must match this optimizer's parameters one for one (and,
        for arrays, in shape)."""
        if len(saved) != len(self.params):
            raise ValueError(
                f"optimizer state has {len(saved)} '{key}' entries for "
                f"{len(self.params)} parameters"
            )
        for i, (p, a) in enumerate(zip(self.params, saved)):
            if per_element and a is not None and np.shape(a) != p.data.shape:
                raise ValueError(
                    f"optimizer state '{key}'[{i}] has shape {np.shape(a)}, "
                    f"parameter {i} has {p.data.shape}"
                )


def _grad(p: Parameter):
    g = p.grad
    if ops.device_of(g) == "cpu" and (g.dtype != np.float32 or not g.flags.c_contiguous):
        g = np.ascontiguousarray(g, dtype=np.float32)
    return g


def _beside(state, p: Parameter):
    """Per-parameter optimizer state on the parameter's device (moved there if the model was
    moved after the optimizer was made)."""
    if state is None or ops.device_of(state) == ops.device_of(p.data):
        return state
    return ops.to_device(ops.to_numpy(state), ops.device_of(p.data))


def _host(states):
    """numpy copies of per-parameter state, for state_dict (None stays None)."""
    return [None if a is None else np.array(ops.to_numpy(a)) for a in states]


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, as torch.optim.SGD (dampening 0).

    Per step, with g = grad + weight_decay * p: buf = momentum * buf + g (buf = g on the
    first step), then p -= lr * (g + momentum * buf if nesterov else buf); without momentum,
    p -= lr * g. The update runs in C++ (fastcnn._C), on the parameters' device.

    Args:
        params: model.parameters() (or a Module).
        lr: learning rate.
        momentum: momentum factor, >= 0.
        weight_decay: L2 penalty, >= 0, added to the gradient.
        nesterov: Nesterov momentum (needs momentum > 0).

    Example:
        >>> opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        >>> opt.zero_grad(); model.backward(loss_fn.backward()); opt.step()
    """

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr)
        if momentum < 0 or weight_decay < 0:
            raise ValueError("momentum and weight_decay must be >= 0")
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        self.momentum, self.weight_decay, self.nesterov = (
            float(momentum),
            float(weight_decay),
            nesterov,
        )
        self.buffers = [ops.zeros_like(p.data) if momentum else None for p in self.params]
        self.started = [False] * len(self.params)

    def step(self):
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self.momentum and self.buffers[i] is None:  # momentum set after construction
                self.buffers[i], self.started[i] = ops.zeros_like(p.data), False
            if self.buffers[i] is not None:
                self.buffers[i] = _beside(self.buffers[i], p)
            ops.sgd_step(
                p.data,
                _grad(p),
                self.buffers[i],
                self.lr,
                self.momentum,
                self.weight_decay,
                self.nesterov,
                not self.started[i],
            )
            self.started[i] = True

    def state_dict(self):
        state = super().state_dict()
        state["started"] = list(self.started)
        state["buffers"] = _host(self.buffers)
        return state

    def load_state_dict(self, state):
        self._check_arrays(state["buffers"], "buffers")
        self._check_arrays(state["started"], "started", per_element=False)
        super().load_state_dict(state)
        self.started = [bool(s) for s in state["started"]]
        for mine, saved in zip(self.buffers, state["buffers"]):
            if mine is not None and saved is not None:
                ops.copy_into(mine, saved)


class Adam(Optimizer):
    """Adam, as torch.optim.Adam (without amsgrad): bias-corrected first and second moments.

    Per step t, with g = grad + weight_decay * p: m = beta1*m + (1-beta1)*g, v = beta2*v +
    (1-beta2)*g*g, p -= lr * (m / (1-beta1**t)) / (sqrt(v / (1-beta2**t)) + eps).

    Args:
        params: model.parameters() (or a Module).
        lr: learning rate.
        betas: (beta1, beta2), each in [0, 1): decay of the first and second moments.
        eps: added to the denominator.
        weight_decay: L2 penalty added to the gradient (as torch.optim.Adam, not AdamW).

    Example:
        >>> opt = optim.Adam(model.parameters(), lr=1e-3)
    """

    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        self.eps, self.weight_decay = float(eps), float(weight_decay)
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.exp_avg = [ops.zeros_like(p.data) for p in self.params]
        self.exp_avg_sq = [ops.zeros_like(p.data) for p in self.params]
        self.steps = [0] * len(self.params)

    def step(self):
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            self.steps[i] += 1
            self.exp_avg[i] = _beside(self.exp_avg[i], p)
            self.exp_avg_sq[i] = _beside(self.exp_avg_sq[i], p)
            ops.adam_step(
                p.data,
                _grad(p),
                self.exp_avg[i],
                self.exp_avg_sq[i],
                self.lr,
                self.beta1,
                self.beta2,
                self.eps,
                self.weight_decay,
                self.steps[i],
                self._decoupled,
            )

    def state_dict(self):
        state = super().state_dict()
        state["steps"] = list(self.steps)
        state["exp_avg"] = _host(self.exp_avg)
        state["exp_avg_sq"] = _host(self.exp_avg_sq)
        return state

    def load_state_dict(self, state):
        self._check_arrays(state["steps"], "steps", per_element=False)
        for key in ("exp_avg", "exp_avg_sq"):
            self._check_arrays(state[key], key)
        super().load_state_dict(state)
        self.steps = [int(s) for s in state["steps"]]
        for mine, saved in zip(
            self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]
        ):
            ops.copy_into(mine, saved)


class AdamW(Adam):
    """AdamW, as torch.optim.AdamW (without amsgrad): Adam with decoupled weight decay.

    Per step, before Adam's update of `p` by its gradient alone: p *= 1 - lr * weight_decay
    (Loshchilov and Hutter 2019), so the decay does not pass through the moments.

    Args:
        params: model.parameters() (or a Module).
        lr: learning rate.
        betas: (beta1, beta2), each in [0, 1).
        eps: added to the denominator.
        weight_decay: decoupled decay, >= 0 (PyTorch's default 0.01).

    Example:
        >>> opt = optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


from . import lr_scheduler  # noqa: E402  (it needs Optimizer above)
