"""Learning-rate schedules with PyTorch's names, arguments and stepping rules.

A scheduler sets its optimizer's `lr` (and, for OneCycleLR, the momentum: SGD's `momentum`,
Adam's `beta1`). Made over an optimizer, it sets the schedule's first value at once; then call
`scheduler.step()` after `optimizer.step()`: once an epoch for StepLR and CosineAnnealingLR,
once a batch for OneCycleLR (`scheduler.per_batch` says which; fastcnn.fit(..., scheduler=)
follows it). StepLR and CosineAnnealingLR use PyTorch's recursive forms, so a schedule's values
match PyTorch's to the last bit of a double.

Example:
    >>> opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> sched = optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    >>> for epoch in range(10):
    ...     train_one_epoch(model, opt)
    ...     sched.step()
"""

from __future__ import annotations

import math

from . import SGD, Adam, Optimizer

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "OneCycleLR"]


class LRScheduler:
    """Base of the schedulers: `step()`, `get_last_lr()`, `state_dict()`, `load_state_dict()`.

    Args:
        optimizer: the Optimizer whose `lr` the schedule sets.
        last_epoch: the index of the last step taken; -1 starts the schedule afresh.
    """

    per_batch = False  # stepped once an epoch (fit() follows this)

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{type(self).__name__} takes an Optimizer, got {type(optimizer)}")
        if last_epoch != -1:
            raise ValueError("last_epoch other than -1: restore a schedule with load_state_dict")
        self.optimizer = optimizer
        self.base_lr = optimizer.lr
        self.last_epoch = -1
        self.step()

    def get_lr(self) -> float:
        """The learning rate of step `last_epoch` (the optimizer's `lr` holds the previous)."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance the schedule by one step and set the optimizer's learning rate."""
        self.last_epoch += 1
        self.optimizer.lr = float(self.get_lr())
        self._last_lr = self.optimizer.lr

    def get_last_lr(self) -> list[float]:
        """The learning rate the last step() set, as a one-element list (PyTorch's form)."""
        return [self._last_lr]

    def state_dict(self) -> dict:
        """Every setting and the position of the schedule (not the optimizer): JSON-able."""
        return {k: v for k, v in vars(self).items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        """Restore a state_dict() of the same kind of schedule, and set the optimizer's learning
        rate (and momentum) to the values of the restored step."""
        unknown = set(state) - set(vars(self))
        if unknown:
            raise ValueError(f"{type(self).__name__} state has unknown keys {sorted(unknown)}")
        self.__dict__.update(state)
        self.optimizer.lr = self._last_lr

    def scheduled(self) -> set:
        """The optimizer settings this schedule sets (a resumed run finds them moved)."""
        return {"lr"}

    def settings(self) -> dict:
        """The schedule's hyper-parameters (what a resumed run must agree on)."""
        position = {"last_epoch", "_last_lr", "_last_momentum", "base_lr"}
        return {k: v for k, v in self.state_dict().items() if k not in position}


class StepLR(LRScheduler):
    """Multiplies the learning rate by `gamma` every `step_size` epochs, as torch's StepLR:
    lr = base_lr * gamma ** (epoch // step_size).

    Args:
        optimizer: the optimizer.
        step_size: epochs between decays, >= 1.
        gamma: the factor, > 0.
    """

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        if not isinstance(step_size, int) or isinstance(step_size, bool) or step_size < 1:
            raise ValueError(f"step_size must be an int >= 1, got {step_size!r}")
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.step_size, self.gamma = step_size, float(gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self.optimizer.lr
        return self.optimizer.lr * self.gamma


class CosineAnnealingLR(LRScheduler):
    """Cosine annealing from the base learning rate to `eta_min` over `T_max` epochs, as torch's
    CosineAnnealingLR: lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2,
    computed by PyTorch's recursion (and, past T_max, rising again as it does).

    Args:
        optimizer: the optimizer.
        T_max: epochs of one half cosine, >= 1.
        eta_min: the smallest learning rate, >= 0.
    """

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        if not isinstance(T_max, int) or isinstance(T_max, bool) or T_max < 1:
            raise ValueError(f"T_max must be an int >= 1, got {T_max!r}")
        if not eta_min >= 0:
            raise ValueError(f"eta_min must be >= 0, got {eta_min}")
        self.T_max, self.eta_min = T_max, float(eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        lr, e, T, lo = self.optimizer.lr, self.last_epoch, self.T_max, self.eta_min
        if e == 0:
            return lr
        if (e - 1 - T) % (2 * T) == 0:
            return lr + (self.base_lr - lo) * (1 - math.cos(math.pi / T)) / 2
        return (1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T)) * (
            lr - lo
        ) + lo


class OneCycleLR(LRScheduler):
    """The one-cycle policy (Smith and Topin 2018), as torch's OneCycleLR: the learning rate
    rises from max_lr / div_factor to max_lr over the first pct_start of the steps, then falls
    to max_lr / (div_factor * final_div_factor); the momentum (SGD's momentum, Adam's beta1)
    moves the other way between max_momentum and base_momentum. Stepped once a batch.

    Args:
        optimizer: the optimizer (SGD or Adam/AdamW when cycle_momentum).
        max_lr: the peak learning rate.
        total_steps: steps in the cycle; or give epochs and steps_per_epoch.
        epochs, steps_per_epoch: total_steps = epochs * steps_per_epoch.
        pct_start: the share of the steps spent rising, in (0, 1).
        anneal_strategy: "cos" or "linear".
        cycle_momentum: cycle the momentum too.
        base_momentum, max_momentum: the momentum's bounds.
        div_factor: max_lr / the first learning rate.
        final_div_factor: the first learning rate / the last.
        three_phase: rise, fall back to the first rate, then anneal to the last (torch's).

    Example:
        >>> opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        >>> sched = optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, epochs=2,
        ...                                      steps_per_epoch=len(loader))
        >>> fastcnn.fit(model, data, epochs=2, optimizer=opt, scheduler=sched)
    """

    per_batch = True

    def __init__(
        self,
        optimizer,
        max_lr: float,
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
    ):
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise ValueError("OneCycleLR needs total_steps, or epochs and steps_per_epoch")
            for name, v in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ValueError(f"{name} must be an int >= 1, got {v!r}")
            total_steps = epochs * steps_per_epoch
        if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
            raise ValueError(f"total_steps must be an int >= 1, got {total_steps!r}")
        if not 0 < pct_start < 1:
            raise ValueError(f"pct_start must be in (0, 1), got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        if not (max_lr > 0 and div_factor > 0 and final_div_factor > 0):
            raise ValueError("max_lr, div_factor and final_div_factor must be > 0")
        if cycle_momentum and not isinstance(optimizer, (SGD, Adam)):
            raise ValueError("cycle_momentum needs an SGD or Adam optimizer")
        self.total_steps, self.pct_start = total_steps, float(pct_start)
        self.anneal_strategy, self.three_phase = anneal_strategy, bool(three_phase)
        self.cycle_momentum = bool(cycle_momentum)
        self.base_momentum, self.max_momentum = float(base_momentum), float(max_momentum)
        self.max_lr = float(max_lr)
        self.initial_lr = self.max_lr / div_factor
        self.min_lr = self.initial_lr / final_div_factor
        self._last_momentum = None
        super().__init__(optimizer, last_epoch)  # step 0: the first lr, and max_momentum

    def _phases(self):
        """(end step, start lr, end lr, start momentum, end momentum) of each phase."""
        T, p = self.total_steps, self.pct_start
        lo_m, hi_m = self.base_momentum, self.max_momentum
        if self.three_phase:
            return [
                (p * T - 1, self.initial_lr, self.max_lr, hi_m, lo_m),
                (2 * p * T - 2, self.max_lr, self.initial_lr, lo_m, hi_m),
                (T - 1, self.initial_lr, self.min_lr, hi_m, hi_m),
            ]
        return [
            (p * T - 1, self.initial_lr, self.max_lr, hi_m, lo_m),
            (T - 1, self.max_lr, self.min_lr, lo_m, hi_m),
        ]

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(
                f"OneCycleLR stepped {step} times; the cycle has total_steps={self.total_steps}"
            )
        start_step = 0.0
        phases = self._phases()
        for i, (end_step, lr0, lr1, m0, m1) in enumerate(phases):
            if step <= end_step or i == len(phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                if self.cycle_momentum:
                    self._apply_momentum(self._anneal(m0, m1, pct))
                return self._anneal(lr0, lr1, pct)
            start_step = end_step
        raise AssertionError("unreachable")

    def _apply_momentum(self, m):
        self._last_momentum = float(m)
        if isinstance(self.optimizer, SGD):
            self.optimizer.momentum = self._last_momentum
        else:
            self.optimizer.beta1 = self._last_momentum

    def scheduled(self):
        return {"lr", "momentum", "beta1"} if self.cycle_momentum else {"lr"}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        if self.cycle_momentum:
            self._apply_momentum(self._last_momentum)
