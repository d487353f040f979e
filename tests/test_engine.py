"""The training engine (engine/loop.py, engine/runtime.py): what `fit` does for every loop on it,
on a toy model; the exact resume of the FD classifier, the smallest loop on it; the warning of
emulated bf16 on a CPU."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from edvae import checkpoint, fd_classifier
from edvae.bench import warn_slow_bf16
from edvae.cli import main
from edvae.config import from_dict
from edvae.data import load_dataset
from edvae.engine.loop import Fit, Phase, StepOutput, fit
from edvae.engine.runtime import BatchOrder, slow_bf16_warning
from edvae.errors import Diverged, EdvaeError

TINY = ["--set", "model.width=4", "--set", "model.codebook_size=32", "--set", "model.codebook_dim=4"]
SYNTH = ["--dataset", "synthetic", "--set", "train.limit_train=16", "--set", "train.limit_test=8",
         "--set", "train.batch_size=4"]


class Toy:
    """A dropout MLP regressing a fixed target: its steps draw from the global RNG (dropout), so
    exact resume needs fit's per-step reseeding."""

    def __init__(self):
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1))
        self.x = torch.randn(64, 4)
        self.y = self.x.sum(1, keepdim=True)
        self.order = BatchOrder(64, 8, seed=3)
        self.calls: list[tuple[str, int]] = []

    def step(self, step, values, report):
        idx = self.order.indices(step)
        loss = (self.net(self.x[idx]) - self.y[idx]).pow(2).mean()
        return StepOutput(loss, {"twice": 2 * loss.detach()})

    def other(self, step, values, report):
        self.calls.append(("other", step))
        return self.step(step, values, report)

    def fit(self, out, steps=20, phases=None, **kw):
        opt = torch.optim.Adam(self.net.parameters(), lr=1e-2)
        phases = phases or [Phase(steps, self.step)]
        return Fit(self.net, opt, phases, lambda s: {"lr": 1e-2 / (1 + s), "knob": float(s)}, seed=5,
                   device=torch.device("cpu"), log_every=5, checkpoint_every=10, out=out,
                   fields=("step", "loss", "twice", "lr", "knob", "seconds"), **kw)


def rows(out):
    return [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]


def test_fit_logs_every_n_steps_with_the_schedule_and_saves(tmp_path):
    toy = Toy()
    f = toy.fit(tmp_path)
    fit(f)
    logged = rows(tmp_path)
    assert [r["step"] for r in logged] == [5, 10, 15, 20]
    for r in logged:
        assert r["twice"] == pytest.approx(2 * r["loss"]) and r["knob"] == r["step"] - 1
        assert r["lr"] == pytest.approx(1e-2 / r["step"])  # the schedule of the row's last step
    assert toy.fit(tmp_path).optimizer.param_groups[0]["lr"] == 1e-2  # a fresh one is untouched
    assert f.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 / 20)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "checkpoint.safetensors").is_file()


def test_a_killed_fit_resumes_exactly(tmp_path, monkeypatch):
    whole = Toy()
    fit(whole.fit(tmp_path / "whole"))
    real_save = checkpoint.save_state

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_state", save_then_die)
    killed = Toy()
    with pytest.raises(KeyboardInterrupt):
        fit(killed.fit(tmp_path / "killed"))  # dies right after the checkpoint of step 10
    monkeypatch.undo()
    again = Toy()
    f = again.fit(tmp_path / "killed")
    assert f.resume() == 10
    fit(f, 10)
    a = load_file(tmp_path / "whole" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in rows(tmp_path / "whole")]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows(tmp_path / "killed")] == strip


def test_phases_switch_at_their_end_and_on_end_runs_before_that_steps_checkpoint(tmp_path, monkeypatch):
    toy, seen = Toy(), []
    saved = []
    real_save = checkpoint.save_state
    monkeypatch.setattr(checkpoint, "save_state", lambda *a, **k: (saved.append(a[3]), real_save(*a, **k)))
    f = toy.fit(tmp_path, phases=[Phase(10, toy.step, lambda done: seen.append((done, list(saved)))),
                                  Phase(14, toy.other)])
    fit(f)
    assert seen == [(10, [])]  # after step 9, before the checkpoint of step 10
    assert [s for _, s in toy.calls] == list(range(10, 14)) and saved == [10, 14]


def test_a_diverging_loss_stops_the_fit_naming_the_step(tmp_path):
    toy = Toy()

    def nan_step(step, values, report):
        out = toy.step(step, values, report)
        return StepOutput(out.loss * (float("nan") if step >= 6 else 1.0))

    with pytest.raises(Diverged, match="toy training diverged at step 10") as caught:
        fit(toy.fit(tmp_path, phases=[Phase(20, nan_step)], name="toy training"))
    assert isinstance(caught.value, EdvaeError) and caught.value.step == 10
    # the run folder records it (a study reports the run as diverged), and a later fit clears it
    assert json.loads((tmp_path / "diverged.json").read_text()) == {
        "step": 10, "message": "toy training diverged at step 10 (loss nan)"}
    fit(Toy().fit(tmp_path))
    assert not (tmp_path / "diverged.json").exists()


def test_the_fd_classifier_resumes_exactly(tmp_path, monkeypatch):
    train = load_dataset("synthetic", "train", limit=128, seed=0)
    kw = dict(steps=12, batch_size=16, width=4, seed=1, checkpoint_every=5)
    whole, _ = fd_classifier.train_classifier(train, **kw, state_dir=tmp_path / "whole")
    real_save = checkpoint.save_state

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fd_classifier.train_classifier(train, **kw, state_dir=tmp_path / "killed")
    monkeypatch.undo()
    resumed, _ = fd_classifier.train_classifier(train, **kw, state_dir=tmp_path / "killed")
    a, b = whole.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    plain, _ = fd_classifier.train_classifier(train, **kw)  # no folder: the same network
    assert all(torch.equal(a[k], plain.state_dict()[k]) for k in a)


@pytest.mark.parametrize("capability", ["AVX2", "DEFAULT"])
def test_bf16_on_a_cpu_without_avx512_gets_a_one_line_warning(monkeypatch, capability):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    warning = slow_bf16_warning(torch.device("cpu"), "bf16")
    assert warning.startswith("warning:") and "\n" not in warning
    assert f"capability {capability}" in warning and "train.precision=fp32" in warning
    for precision in ("fp32", "auto"):  # auto is fp32 on a CPU: nothing to warn of
        assert slow_bf16_warning(torch.device("cpu"), precision) is None
    assert slow_bf16_warning(torch.device("cuda"), "bf16") is None


@pytest.mark.parametrize("capability", ["AVX512", "SVE256", "VSX"])
def test_bf16_on_a_cpu_with_wider_vectors_is_not_warned_of(monkeypatch, capability):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert slow_bf16_warning(torch.device("cpu"), "bf16") is None


def test_a_grid_warns_of_slow_bf16_once_and_a_training_run_at_its_start(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    bf16 = from_dict({"train": {"precision": "bf16", "device": "cpu"}})
    warn_slow_bf16([from_dict({}), bf16, bf16])
    assert capsys.readouterr().err.count("warning: bf16 autocast") == 1
    warn_slow_bf16([from_dict({}), from_dict({"train": {"device": "cpu"}})])
    assert capsys.readouterr().err == ""
    assert main(["train", "--method", "dvae", "--steps", "2", "--no-progress", *SYNTH, *TINY,
                 "--set", "train.precision=bf16", "--out", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().err.count("warning: bf16 autocast on this CPU (torch capability AVX2") == 1
