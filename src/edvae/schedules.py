"""Learning rate, KL weight and temperature as pure functions of the global step.

EdVAE paper, Appendix D: Adam with cosine annealing 1e-3 -> 1.25e-6 over the first 50k of 150k
steps, then held; beta ramped from 0 to beta_max over the first 5k steps with a cosine ramp;
Gumbel-softmax temperature tau = exp(-1e-5 t). Every step count is given for a budget of
`schedule_steps` (150k) and scaled by steps / schedule_steps, the temperature's rate inversely,
so a short run walks the same curves (protocol.md: 'Short runs on a CPU').
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def cosine_ramp(t: float, t0: float, t1: float, v0: float, v1: float) -> float:
    """v0 before t0, v1 after t1, a quarter cosine in between: a = 1 - cos(a pi / 2)."""
    if t1 <= t0:
        return v1 if t >= t0 else v0
    a = min(max((t - t0) / (t1 - t0), 0.0), 1.0)
    a = 1.0 - math.cos(a * math.pi / 2)
    return a * v1 + (1.0 - a) * v0


def cosine_anneal(t: float, total: float, v_max: float, v_min: float) -> float:
    """Cosine annealing from v_max at t = 0 to v_min at t = total, then held at v_min."""
    if total <= 0 or t >= total:
        return v_min
    return v_min + 0.5 * (v_max - v_min) * (1.0 + math.cos(math.pi * t / total))


@dataclass(frozen=True)
class Schedules:
    steps: int
    schedule_steps: int
    lr: float
    lr_min: float
    lr_anneal_steps: int
    beta_max: float
    beta_ramp_steps: int
    temperature_decay: float
    temperature_min: float

    @property
    def scale(self) -> float:
        return self.steps / self.schedule_steps

    def lr_at(self, step: int) -> float:
        return cosine_anneal(step, self.lr_anneal_steps * self.scale, self.lr, self.lr_min)

    def beta_at(self, step: int) -> float:
        return cosine_ramp(step, 0, self.beta_ramp_steps * self.scale, 0.0, self.beta_max)

    def temperature_at(self, step: int) -> float:
        return max(math.exp(-self.temperature_decay / self.scale * step), self.temperature_min)
