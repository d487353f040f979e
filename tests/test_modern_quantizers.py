"""FSQ, LFQ, SimVQ and IBQ: each method's definition checked by hand, and the contract every
quantizer keeps (shapes, bf16, save/load, encode/decode, the CLI and its errors)."""

import itertools
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from roundtrip import assert_round_trip

from edvae.cli import main
from edvae.config import from_dict
from edvae.model import DiscreteVAE
from edvae.quantizers import build_quantizer
from edvae.quantizers import nearest as nearest_module
from edvae.quantizers.fsq import FSQQuantizer
from edvae.quantizers.ibq import IBQQuantizer
from edvae.quantizers.lfq import LFQQuantizer
from edvae.quantizers.simvq import SimVQQuantizer

# method -> (codebook_size, codebook_dim, options) of a small valid codebook
SMALL = {
    "fsq": (12, 2, {"levels": "4,3"}),
    "lfq": (8, 3, {}),
    "simvq": (16, 3, {}),
    "simvq+rotation": (16, 3, {"gradient": "rotation"}),
    "ibq": (16, 3, {}),
}


def small(name, **extra):
    k, d, options = SMALL[name]
    return build_quantizer(name.split("+")[0], k, d, **{**options, **extra})


# ------------------------------------------------------------------ FSQ


def _bound_by_hand(z: float, levels: int) -> float:
    half_l = (levels - 1) * 1.001 / 2
    offset = 0.5 if levels % 2 == 0 else 0.0
    return math.tanh(z + math.atanh(offset / half_l)) * half_l - offset


@pytest.mark.parametrize("levels, z, rounded", [
    # odd L = 3: bound = 1.001 tanh(z), rounded to -1, 0, 1, divided by floor(3/2) = 1
    (3, 0.0, 0), (3, 0.5, 0), (3, 0.6, 1), (3, -0.6, -1), (3, 9.0, 1), (3, -9.0, -1),
    # even L = 4: bound in (-2.0015, 1.0015), rounded to -2 ... 1, divided by 2
    (4, 0.0, 0), (4, 9.0, 1), (4, -9.0, -2), (4, -0.5, -1), (4, 0.3, 0), (4, 0.9, 1),
    # odd L = 5 and even L = 8
    (5, 0.0, 0), (5, 9.0, 2), (5, -9.0, -2), (8, 9.0, 3), (8, -9.0, -4), (8, 0.0, 0),
])
def test_fsq_bounding_and_rounding_against_hand_values(levels, z, rounded):
    assert round(_bound_by_hand(z, levels)) == rounded  # the hand formula agrees with the table
    q = FSQQuantizer(levels, 1, levels=str(levels)).eval()
    x = torch.tensor([[[[z]]]])
    torch.testing.assert_close(q.bound(x.view(1, 1)).item(), _bound_by_hand(z, levels), rtol=1e-6, atol=1e-6)
    out = q(x)
    assert out.z_q.item() == rounded / (levels // 2)
    assert out.indices.item() == rounded + levels // 2


def test_fsq_every_code_is_reachable_and_index_code_round_trip():
    q = FSQQuantizer(60, 3, levels="5,4,3").eval()
    grid = q.grid()  # (60, 3), in index order
    # the grid is the product of the per-channel values, each in [-1, 1]
    per_channel = [sorted({v / (n // 2) for v in range(-(n // 2), n - n // 2)}) for n in (5, 4, 3)]
    expected = {tuple(p) for p in itertools.product(*per_channel)}
    assert {tuple(r) for r in grid.tolist()} == expected and len(expected) == 60
    assert grid.abs().max() == 1.0
    # index arithmetic: the first channel varies fastest
    torch.testing.assert_close(grid[1] - grid[0], torch.tensor([0.5, 0.0, 0.0]))
    torch.testing.assert_close(grid[5] - grid[0], torch.tensor([0.0, 0.5, 0.0]))
    torch.testing.assert_close(grid[20] - grid[0], torch.tensor([0.0, 0.0, 1.0]))
    # every code is reached by some input: the inverse of the bound at each rounded value
    target = grid * q._half_width
    z = torch.atanh(((target + q._offset) / q._half_l).clamp(-0.999, 0.999)) - q._shift
    z = z.t().reshape(1, 3, 1, 60)
    codes = q.codes(z)
    assert torch.equal(codes.view(-1), torch.arange(60))
    assert torch.equal(q.embed(codes), q(z).z_q)  # index -> code -> index


def test_fsq_straight_through_gradient_is_the_bound_derivative():
    q = FSQQuantizer(12, 2, levels="4,3")
    z = torch.randn(2, 2, 3, 3, requires_grad=True)
    g = torch.randn(2, 2, 3, 3)
    (q(z).z_q * g).sum().backward()
    lv = torch.tensor([4.0, 3.0]).view(1, 2, 1, 1)
    half_l = (lv - 1) * 1.001 / 2
    offset = torch.tensor([0.5, 0.0]).view(1, 2, 1, 1)
    t = torch.tanh(z.detach() + torch.atanh(offset / half_l))
    # d/dz [tanh(z + shift) half_l / floor(L/2)], the rounding passed straight through
    torch.testing.assert_close(z.grad, g * (1 - t ** 2) * half_l / (lv // 2))


def test_fsq_defaults_from_the_paper_table_and_clear_errors():
    assert FSQQuantizer(512, 3).levels == (8, 8, 8)
    assert FSQQuantizer(1000, 4).levels == (8, 5, 5, 5)
    assert FSQQuantizer(64000, 6).levels == (8, 8, 8, 5, 5, 5)
    with pytest.raises(ValueError, match=r"cannot form codebook_size 256.*240 \(levels 8,6,5\) and 512"):
        FSQQuantizer(256, 3)
    with pytest.raises(ValueError, match="levels 8,8,8 form 512 codes, not codebook_size 500"):
        FSQQuantizer(500, 3, levels="8,8,8")
    with pytest.raises(ValueError, match="codebook_dim equal to the number of levels: 3 .* codebook_dim 16"):
        FSQQuantizer(512, 16)
    for bad in ("8,x", "8,1,64", ","):
        with pytest.raises(ValueError, match="levels must be comma-separated integers >= 2"):
            FSQQuantizer(512, 3, levels=bad)
    assert FSQQuantizer(256, 3, levels=" 8, 8,4 ").levels == (8, 8, 4)


# ------------------------------------------------------------------ LFQ


def test_lfq_sign_and_index_arithmetic():
    q = LFQQuantizer(16, 4).eval()
    z = torch.tensor([[0.3, -1.0, 2.0, -0.1], [-0.2, -0.5, -3.0, -1e-3], [1.0, 1.0, 1.0, 1.0],
                      [0.0, 5.0, 0.0, -5.0]]).t().reshape(1, 4, 1, 4)
    out = q(z)
    # bit i set <-> channel i > 0 (0 counts as negative): 1 + 4, 0, 15, 2
    assert out.indices.view(-1).tolist() == [5, 0, 15, 2]
    expected = torch.where(z > 0, 1.0, -1.0)
    assert torch.equal(out.z_q, expected) and torch.equal(q.embed(out.indices), expected)
    all_codes = torch.arange(16).view(1, 1, 16)
    assert torch.equal(q.codes(q.embed(all_codes)), all_codes)  # every code, index <-> code
    assert q.embed(all_codes)[0, :, 0, 6].tolist() == [-1.0, 1.0, 1.0, -1.0]  # 6 = 0b0110


def test_lfq_entropy_penalty_against_all_codes_by_hand():
    torch.manual_seed(0)
    d, tau, w_ent, w_com = 3, 0.7, 0.1, 0.25
    q = LFQQuantizer(8, d, entropy=w_ent, commitment=w_com, entropy_temperature=tau)
    z = torch.randn(2, d, 2, 3)
    out = q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, d).double()
    codes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=d)), dtype=torch.float64)
    dist = ((flat[:, None, :] - codes[None]) ** 2).sum(-1)  # every position to every code, (N, 8)
    p = torch.softmax(-dist / tau, dim=1)
    per_position = -(p * p.log()).sum(1).mean()
    avg = p.mean(0)
    codebook = -(avg * avg.log()).sum()
    commit = ((flat - torch.where(flat > 0, 1.0, -1.0)) ** 2).mean()
    expected = w_com * commit + w_ent * (per_position - codebook)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.stats["entropy"].item() == pytest.approx(per_position.item(), rel=1e-5)
    assert out.stats["codebook_entropy"].item() == pytest.approx(codebook.item(), rel=1e-5)


def test_lfq_straight_through_and_entropy_gradient():
    torch.manual_seed(0)
    q = LFQQuantizer(8, 3, entropy=0.0, commitment=0.0)
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    g = torch.randn(2, 3, 2, 2)
    (q(z).z_q * g).sum().backward()
    torch.testing.assert_close(z.grad, g)  # sign passed straight through
    z.grad = None
    q = LFQQuantizer(8, 3, entropy=1.0, commitment=0.0, entropy_temperature=0.5)
    q(z).loss.backward()
    assert z.grad.abs().sum() > 0  # the penalty reaches the encoder


def test_lfq_impossible_sizes_name_the_nearest_powers_of_two():
    with pytest.raises(ValueError, match=r"got 500, not a power of two.*256 \(codebook_dim 8\) and 512 "
                                         r"\(codebook_dim 9\)"):
        LFQQuantizer(500, 9)
    with pytest.raises(ValueError, match="512 codes need codebook_dim 9, got 16"):
        LFQQuantizer(512, 16)
    with pytest.raises(ValueError, match="entropy_temperature must be a number > 0"):
        LFQQuantizer(8, 3, entropy_temperature=0.0)


def _lfq_on_rank(rank, world):
    from edvae.quantizers.lfq import LFQQuantizer as Lfq

    torch.manual_seed(0)
    z = torch.randn(4, 3, 2, 2)[rank * 2:(rank + 1) * 2].clone().requires_grad_()
    out = Lfq(8, 3, entropy=1.0, commitment=0.25, entropy_temperature=0.5)(z)
    out.loss.backward()
    return {"grad": z.grad, "codebook_entropy": out.stats["codebook_entropy"]}


def test_lfq_batch_entropy_is_the_global_batch_under_data_parallelism(tmp_path):
    from gloo_ranks import run_on_ranks

    torch.manual_seed(0)
    z = torch.randn(4, 3, 2, 2).requires_grad_()
    out = LFQQuantizer(8, 3, entropy=1.0, commitment=0.25, entropy_temperature=0.5)(z)
    out.loss.backward()
    ranks = run_on_ranks(_lfq_on_rank, tmp_path)
    for r, state in enumerate(ranks):
        torch.testing.assert_close(state["codebook_entropy"], out.stats["codebook_entropy"])
        # DDP averages the ranks' gradients: each rank's, divided by the world size, is the
        # one-process gradient of its slice
        torch.testing.assert_close(state["grad"] / 2, z.grad[r * 2:(r + 1) * 2])


# ------------------------------------------------------------------ SimVQ


def test_simvq_only_w_and_the_encoder_move_and_c_is_frozen():
    torch.manual_seed(0)
    q = SimVQQuantizer(16, 3)
    names = [n for n, _ in q.named_parameters()]
    assert names == ["projection"] and "frozen_codebook" in dict(q.named_buffers())
    assert "frozen_codebook" in q.state_dict()  # saved with the model
    encoder = torch.nn.Conv2d(3, 3, 1)
    opt = torch.optim.Adam([*encoder.parameters(), *q.parameters()], lr=1e-2)
    c0, w0 = q.frozen_codebook.clone(), q.projection.detach().clone()
    enc0 = [p.detach().clone() for p in encoder.parameters()]
    x = torch.randn(4, 3, 4, 4)
    for _ in range(3):
        out = q(encoder(x))
        loss = out.z_q.square().mean() + out.loss
        opt.zero_grad()
        loss.backward()
        assert q.frozen_codebook.grad is None
        opt.step()
    assert torch.equal(q.frozen_codebook, c0)
    assert (q.projection - w0).abs().max() > 1e-3
    assert all((p - p0).abs().max() > 1e-4 for p, p0 in zip(encoder.parameters(), enc0, strict=True))
    torch.testing.assert_close(q.effective_codebook(), c0 @ q.projection.detach())


def test_simvq_nearest_codeword_of_cw_and_its_losses():
    torch.manual_seed(0)
    q = SimVQQuantizer(16, 3, commitment=0.4, codebook=0.7)
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    out = q(z)
    cw = (q.frozen_codebook @ q.projection).detach()
    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    assert torch.equal(out.indices.view(-1), torch.cdist(flat, cw).argmin(1))
    e = cw[out.indices.view(-1)]
    assert out.loss.item() == pytest.approx(1.1 * ((flat - e) ** 2).mean().item(), rel=1e-5)
    out.loss.backward()
    torch.testing.assert_close(z.grad.permute(0, 2, 3, 1).reshape(-1, 3), 0.4 * 2 * (flat - e) / flat.numel())
    # the codebook term's gradient reaches W: d/dW 0.7 mean||sg(z) - C_k W||^2
    c = q.frozen_codebook[out.indices.view(-1)]
    torch.testing.assert_close(q.projection.grad, 0.7 * 2 * c.t() @ (e - flat) / flat.numel())


def test_simvq_init_codebook_sets_c_and_resets_w():
    q = SimVQQuantizer(4, 2)
    v = torch.arange(8.0).view(4, 2)
    q.init_codebook(v)
    assert torch.equal(q.effective_codebook(), v)


# ------------------------------------------------------------------ IBQ


def test_ibq_forward_is_the_hard_one_hot_and_the_gradient_the_softmax():
    torch.manual_seed(0)
    q = IBQQuantizer(16, 3, commitment=0.0, codebook=0.0)
    z = torch.randn(2, 3, 2, 3, requires_grad=True)
    g = torch.randn(2, 3, 2, 3)
    out = q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    logits = flat @ q.codebook.t()
    hard = logits.argmax(1)
    assert torch.equal(out.indices.view(-1), hard)
    assert torch.equal(out.z_q, q.embed(out.indices))  # the chosen codewords, exactly
    (out.z_q * g).sum().backward()
    grad_z, grad_c = z.grad.clone(), q.codebook.grad.clone()
    # the hand-built soft version: (one-hot - sg(p) + p) E
    z.grad, q.codebook.grad = None, None
    p = torch.softmax(flat @ q.codebook.t(), dim=1)
    one_hot = torch.nn.functional.one_hot(hard, 16).float()
    soft = (one_hot - p.detach() + p) @ q.codebook
    (soft * g.permute(0, 2, 3, 1).reshape(-1, 3)).sum().backward()
    torch.testing.assert_close(grad_z, z.grad)
    torch.testing.assert_close(grad_c, q.codebook.grad)
    assert (grad_c.abs().sum(1) > 0).all()  # every codeword receives gradient, chosen or not


@pytest.mark.parametrize("chunk_values", [1 << 24, 16 * 7])  # one chunk of rows; 15 chunks of 7 rows
@pytest.mark.parametrize("ties", [False, True])
def test_ibq_training_indices_are_the_tokenizer_codes(monkeypatch, chunk_values, ties):
    """The training forward pass takes its codes from the logits it builds when `codes` would
    form them in one chunk, and `codes`'s chunks otherwise: both must be `codes`, ties included
    (the lowest index)."""
    monkeypatch.setattr(nearest_module, "_CHUNK_VALUES", chunk_values)
    torch.manual_seed(0)
    q = IBQQuantizer(16, 3)
    z = torch.randn(3, 3, 5, 7)
    if ties:  # integer features and codewords, the codewords twice: every maximum tied
        with torch.no_grad():
            q.codebook.copy_(torch.randint(-1, 2, (8, 3)).float().repeat(2, 1))
        z = torch.randint(-2, 3, z.shape).float()
    out = q(z.clone().requires_grad_())
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    logits = flat @ q.codebook.detach().t()
    assert torch.equal(out.indices.view(-1), logits.argmax(1))  # the first maximum
    if ties:
        assert (out.indices < 8).all()  # of two equal codewords, the lower index
    assert torch.equal(out.indices, q.codes(z))


def test_ibq_commitment_and_codebook_terms():
    torch.manual_seed(0)
    q = IBQQuantizer(16, 3, commitment=0.3, codebook=2.0)
    z = torch.randn(2, 3, 2, 2)
    out = q(z)
    e = q.embed(out.indices).detach()
    assert out.loss.item() == pytest.approx(2.3 * ((z - e) ** 2).mean().item(), rel=1e-5)


# ------------------------------------------------------------------ every new method: the contract


@pytest.mark.parametrize("name", sorted(SMALL))
def test_contract_under_bf16_autocast(name):
    torch.manual_seed(0)
    q = small(name)
    k, d, _ = SMALL[name]
    assert not q.logit_input and q.input_channels == d and q.default_beta_max == 0.0
    z = torch.randn(2, d, 4, 5) * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z.bfloat16(), temperature=0.7, beta=0.1)
    assert out.z_q.shape == (2, d, 4, 5) and out.z_q.dtype == torch.float32
    assert out.indices.shape == (2, 4, 5) and out.indices.dtype == torch.int64
    assert out.loss.shape == () and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert int(out.indices.min()) >= 0 and int(out.indices.max()) < k
    q.eval()
    with torch.no_grad():
        out = q(z)
    assert torch.equal(out.z_q, q.embed(out.indices))  # evaluation is hard: exactly the codewords
    assert torch.equal(out.indices, q.codes(z))
    with pytest.raises(ValueError, match=rf"expected features \(B, {d}, h, w\)"):
        q(torch.randn(2, d + 1, 4, 5))


@pytest.mark.parametrize("name", sorted(SMALL))
def test_reporting_off_keeps_every_gradient(name):
    grads = []
    for reporting in (True, False):
        torch.manual_seed(0)
        q = small(name)
        z = (torch.randn(2, SMALL[name][1], 3, 3) * 2).requires_grad_()
        q.reporting = reporting
        out = q(z)
        (out.z_q.square().mean() + out.loss).backward()
        grads.append([z.grad] + [p.grad for p in q.parameters()])
        if not reporting:
            assert out.indices is None and out.stats == {}
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))


def _config(name):
    k, d, options = SMALL[name]
    return from_dict({"model": {"method": name.split("+")[0], "channels": 1, "width": 4, "codebook_size": k,
                                "codebook_dim": d, "options": options}})


@pytest.mark.parametrize("name", sorted(SMALL))
def test_save_load_round_trip_and_encode_decode(tmp_path, name):
    torch.manual_seed(0)
    cfg = _config(name)
    model = DiscreteVAE(cfg.model)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x = torch.rand(8, 1, 32, 32) - 0.5
    for _ in range(3):  # a few steps, so the saved state is not the initial one
        x_hat, out = model(x)
        loss = model.quantizer.reconstruction_loss(x_hat, x) + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert_round_trip(tmp_path, model, cfg)


# ------------------------------------------------------------------ the command line

CLI_SIZES = {  # small codebooks each method can form
    "fsq": ["model.codebook_size=16", "model.codebook_dim=2", "model.options.levels=4,4"],
    "lfq": ["model.codebook_size=16", "model.codebook_dim=4"],
    "simvq": ["model.codebook_size=16", "model.codebook_dim=4", "model.options.gradient=rotation"],
    "ibq": ["model.codebook_size=16", "model.codebook_dim=4"],
}


def _sets(assignments):
    return [a for s in assignments for a in ("--set", s)]


@pytest.mark.parametrize("name", sorted(CLI_SIZES))
def test_trains_and_evaluates_through_the_cli(tmp_path, capsys, name):
    run = tmp_path / "run"
    assert main(["train", "--method", name, "--dataset", "synthetic", "--steps", "12", "--batch-size", "8",
                 "--no-progress", "--out", str(run),
                 *_sets(["train.limit_train=64", "train.limit_test=32", "model.width=4", "train.threads=1",
                         "train.log_every=4", *CLI_SIZES[name]])]) == 0
    capsys.readouterr()
    result = json.loads((run / "eval.json").read_text())
    assert result["used_codes"] >= 1 and math.isfinite(result["mse"])
    assert main(["eval", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["used_codes"] == result["used_codes"]
    assert again["mse"] == pytest.approx(result["mse"], rel=1e-6)
    # the prior over its code maps, and images sampled from it through the decoder
    prior = tmp_path / "prior"
    assert main(["prior", "train", str(run), "--out", str(prior), "--no-progress",
                 *_sets(["model.channels=8", "model.blocks=1", "model.res_blocks=1", "train.batch_size=16",
                         "train.steps=4", "train.threads=1", "train.device=cpu"])]) == 0
    assert main(["sample", str(run), "-n", "3", "--prior", str(prior), "--out", str(tmp_path / "s"),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["n"] == 3
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 3


BAD = [
    ("fsq", ["model.codebook_size=256", "model.codebook_dim=3"], "cannot form codebook_size 256"),
    ("fsq", ["model.codebook_size=512", "model.codebook_dim=16"], "codebook_dim equal to the number"),
    ("fsq", ["model.codebook_size=512", "model.codebook_dim=3", "model.options.levels=8,1"], "levels must"),
    ("lfq", ["model.codebook_size=500", "model.codebook_dim=9"], "nearest sizes it forms are 256"),
    ("lfq", ["model.codebook_size=512", "model.codebook_dim=16"], "512 codes need codebook_dim 9"),
    ("lfq", ["model.codebook_size=512", "model.codebook_dim=9", "model.options.entropy=-1"], "entropy must"),
    ("simvq", ["model.options.gradient=rotate"], "gradient must be one of ste, rotation"),
    ("simvq", ["model.options.commitment=-0.5"], "commitment must be a number >= 0"),
    ("ibq", ["model.options.codebook=-1"], "codebook must be a number >= 0"),
    ("ibq", ["model.options.temperature=2"], "unknown config key model.options.temperature"),
]


@pytest.mark.parametrize("name, sets, message", BAD)
def test_bad_option_or_impossible_size_exits_2_before_training(tmp_path, capsys, name, sets, message):
    run = tmp_path / "run"
    assert main(["train", "--method", name, "--dataset", "synthetic", "--steps", "5", "--no-progress",
                 "--out", str(run), *_sets(sets)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not run.exists()


@pytest.mark.parametrize("name, sets, message", [BAD[0], BAD[3]])
def test_the_installed_command_exits_2_with_one_line(tmp_path, name, sets, message):
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "edvae", "train", "--method", name, "--dataset", "synthetic",
                           "--steps", "5", "--no-progress", "--out", str(run), *_sets(sets)],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not run.exists()
