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


def test_quarter_cosine_learning_rate_is_the_authors_ramp_by_hand():
    """The authors' code anneals the learning rate with the ramp of beta: lr = a lr_min + (1 - a) lr,
    a = 1 - cos(pi/2 t/T). At 25k of 50k steps: 1e-3 (1 - 0.29289) + 1.25e-6 x 0.29289 = 7.0747e-4;
    the half cosine gives (1e-3 + 1.25e-6) / 2 = 5.00625e-4."""
    quarter = Schedules(steps=150_000, **PAPER, lr_schedule="quarter-cosine")
    half = Schedules(steps=150_000, **PAPER, lr_schedule="half-cosine")
    assert quarter.lr_at(25_000) == pytest.approx(7.0747e-4, rel=1e-4)
    assert half.lr_at(25_000) == pytest.approx(5.00625e-4, rel=1e-6)
    # at 10k (a = 1 - cos(pi/10) = 0.048943): 9.5112e-4 against 9.0460e-4
    assert quarter.lr_at(10_000) == pytest.approx(9.5112e-4, rel=1e-4)
    assert half.lr_at(10_000) == pytest.approx(9.0460e-4, rel=1e-4)
    for s in (quarter, half):
        assert s.lr_at(0) == 1e-3 and s.lr_at(50_000) == s.lr_at(149_999)
        assert s.lr_at(50_000) == pytest.approx(1.25e-6, rel=1e-9)
    # averaged over the first 50k steps: 0.64e-3 against 0.50e-3 (protocol's "Schedules")
    assert sum(quarter.lr_at(t) for t in range(0, 50_000, 10)) / 5000 == pytest.approx(0.6373e-3, rel=1e-3)
    assert sum(half.lr_at(t) for t in range(0, 50_000, 10)) / 5000 == pytest.approx(0.5006e-3, rel=1e-3)


def test_positional_construction_keeps_the_half_cosine_and_unit_temperature():
    s = Schedules(150_000, 150_000, 1e-3, 1.25e-6, 50_000, 5e-7, 5_000, 1e-5, 0.0)
    assert s.lr_schedule == "half-cosine" and s.temperature_init == 1.0
    assert s.lr_at(25_000) == cosine_anneal(25_000, 50_000, 1e-3, 1.25e-6)


def test_initial_temperature_scales_the_same_decay():
    s = Schedules(steps=150_000, **{**PAPER, "temperature_init": 2.0})
    assert s.temperature_at(0) == 2.0
    assert s.temperature_at(100_000) == pytest.approx(2.0 * math.exp(-1.0))
    constant = Schedules(steps=3_000, **{**PAPER, "temperature_init": 5.0, "temperature_decay": 0.0})
    assert constant.temperature_at(0) == constant.temperature_at(2_999) == 5.0


def test_an_unknown_learning_rate_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown learning-rate schedule 'cosine'"):
        Schedules(steps=10, **PAPER, lr_schedule="cosine").lr_at(1)


def test_from_train_reads_every_schedule_key_of_a_config():
    from edvae.config import from_dict

    t = from_dict({"train": {"steps": 3000, "lr_schedule": "half-cosine", "temperature_init": 2.0,
                             "lr_anneal_steps": 150_000}}).train
    s = Schedules.from_train(t)
    assert (s.steps, s.lr_schedule, s.temperature_init) == (3000, "half-cosine", 2.0)
    assert s.lr_anneal_steps == 150_000
    assert from_dict({}).train.lr_schedule == "quarter-cosine"  # the authors' code: the default
