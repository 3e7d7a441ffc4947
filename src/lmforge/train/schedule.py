"""Learning-rate schedules as pure functions of training progress, so that resuming needs only the step number.

`progress` is the fraction of the run done: step / max_steps, or, with a time limit, whichever of that and
elapsed / time_limit is further along (so a time-boxed run still decays to its final learning rate)."""
from __future__ import annotations

import math

from lmforge.config import TrainConfig


def _cos(start: float, end: float, t: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0)))


def learning_rate(cfg: TrainConfig, step: int, progress: float) -> float:
    lr, min_lr = cfg.lr, cfg.min_lr
    if cfg.schedule == "onecycle":  # torch.optim.lr_scheduler.OneCycleLR (cosine), without momentum cycling
        initial = lr / cfg.onecycle_div_factor
        final = initial / cfg.onecycle_final_div_factor
        s = progress * cfg.max_steps  # = step, unless a time limit moves progress along faster
        peak = cfg.onecycle_pct_start * cfg.max_steps - 1
        if s <= peak:
            return _cos(initial, lr, s / peak)
        return _cos(lr, final, (s - peak) / (cfg.max_steps - 1 - peak))
    if step < cfg.warmup_steps:
        return lr * (step + 1) / cfg.warmup_steps
    warm = cfg.warmup_steps / cfg.max_steps
    t = (progress - warm) / max(1 - warm, 1e-9)
    if cfg.schedule == "cosine":
        return _cos(lr, min_lr, t)
    if cfg.schedule == "wsd":  # warmup, stable, then linear decay over the last decay_fraction of the run
        decay_start = 1 - cfg.decay_fraction
        if progress < decay_start:
            return lr
        return lr + (min_lr - lr) * min((progress - decay_start) / cfg.decay_fraction, 1.0)
    return lr  # constant
