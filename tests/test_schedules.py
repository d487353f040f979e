import math

import pytest

from edvae.schedules import Schedules, cosine_anneal, cosine_ramp

PAPER = dict(lr=1e-3, lr_min=1.25e-6, lr_anneal_steps=50_000, beta_max=5e-7, beta_ramp_steps=5_000,
             temperature_decay=1e-5, temperature_min=0.0, schedule_steps=150_000)


def test_cosine_ramp_endpoints_and_midpoint():
    assert cosine_ramp(-5, 0, 100, 0.0, 2.0) == 0.0
    assert cosine_ramp(100, 0, 100, 0.0, 2.0) == pytest.approx(2.0)
    assert cosine_ramp(50, 0, 100, 0.0, 2.0) == pytest.approx(2.0 * (1 - math.cos(math.pi / 4)))


def test_cosine_anneal_then_held():
    assert cosine_anneal(0, 10, 1.0, 0.1) == 1.0
    assert cosine_anneal(5, 10, 1.0, 0.1) == pytest.approx(0.55)
    assert cosine_anneal(10, 10, 1.0, 0.1) == cosine_anneal(99, 10, 1.0, 0.1) == 0.1


def test_paper_schedule_at_full_budget():
    s = Schedules(steps=150_000, **PAPER)
    assert s.temperature_at(0) == 1.0
    assert s.temperature_at(150_000) == pytest.approx(math.exp(-1.5))
    assert s.beta_at(5_000) == pytest.approx(5e-7) and s.beta_at(0) == 0.0
    assert s.lr_at(0) == 1e-3 and s.lr_at(50_000) == s.lr_at(120_000) == 1.25e-6


def test_short_runs_walk_the_same_curves():
    s = Schedules(steps=3_000, **PAPER)
    assert s.temperature_at(3_000) == pytest.approx(math.exp(-1.5))
    assert s.beta_at(100) == pytest.approx(5e-7)
    assert s.lr_at(1_000) == pytest.approx(1.25e-6)
    full = Schedules(steps=150_000, **PAPER)
    assert s.lr_at(500) == pytest.approx(full.lr_at(25_000))
