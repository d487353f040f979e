"""The nearest-codeword quantizers: VQ-VAE-EMA (vq-ema) and VQ-STE++ (vq-ste++), and the
collectives that keep their codebooks identical on data-parallel replicas."""

import pytest
import torch
from gloo_ranks import run_on_ranks

from edvae import checkpoint
from edvae.config import ModelConfig, RunConfig, from_dict
from edvae.model import DiscreteVAE
from edvae.quantizers import build_quantizer
from edvae.quantizers.vq_ema import EMAVQQuantizer
from edvae.quantizers.vq_ste import STEVQQuantizer

METHODS = ["vq-ema", "vq-ste++"]
# VQ-STE++ with only the plain straight-through machinery, for checks by hand
PLAIN = dict(affine_groups=0, inner_lr=0.0, dead_after=0, kmeans_init_iters=0, sync_nu=0.0)


def _points(*points):
    """(B=1, D, 1, P) from P points of D values each."""
    return torch.tensor(points, dtype=torch.float32).t().reshape(1, len(points[0]), 1, len(points))


def _set_codebook(q, rows):
    with torch.no_grad():
        q.codebook.copy_(torch.tensor(rows, dtype=torch.float32))
    return q


def _assigned_sum(indices, values, k):
    """sum over positions assigned to code k of `values` (B, D, h, w) -> (K, D)."""
    flat = values.permute(0, 2, 3, 1).reshape(-1, values.shape[1])
    return torch.zeros(k, values.shape[1]).index_add_(0, indices.reshape(-1), flat)


# ------------------------------------------------------------------ contract


@pytest.mark.parametrize("name", METHODS)
def test_shapes_dtypes_and_hard_evaluation(name):
    torch.manual_seed(0)
    q = build_quantizer(name, 16, 3)
    assert not q.logit_input and q.input_channels == 3 and q.default_beta_max == 0.0
    z = torch.randn(2, 3, 4, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z.bfloat16(), temperature=0.7, beta=0.1)
    assert out.z_q.shape == (2, 3, 4, 5) and out.z_q.dtype == torch.float32
    assert out.indices.shape == (2, 4, 5) and out.indices.dtype == torch.int64
    assert out.loss.shape == () and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert q.probabilities(z) is None and q.sample_codes(z) is None and q.uncertainty(z) is None
    assert set(out.stats) == {"commitment"}
    q.eval()
    with torch.no_grad():
        out = q(z)
    assert torch.equal(out.z_q, q.embed(out.indices))  # exactly the codewords
    assert torch.equal(out.indices, q.codes(z))
    # the nearest codeword, by brute force
    d = ((z.permute(0, 2, 3, 1)[..., None, :] - q.effective_codebook()) ** 2).sum(-1)
    assert torch.equal(out.indices, d.argmin(-1))
    with pytest.raises(ValueError, match=r"expected features \(B, 3, h, w\)"):
        q(torch.randn(2, 16, 4, 5))
    q.train()
    q.reporting = False
    assert q(z).stats == {}


# ------------------------------------------------------------------ VQ-VAE-EMA


def test_ema_update_with_laplace_smoothing_and_debiasing_by_hand():
    q = _set_codebook(EMAVQQuantizer(3, 1, decay=0.5, eps=0.1), [[0.0], [10.0], [100.0]])
    # step 1: 1 and 2 -> code 0, 9 -> code 1, code 2 unused. counts (2, 1, 0), sums (3, 9, 0).
    # n = (1, .5, 0), m = (1.5, 4.5, 0); debiased by 1 - 0.5 = 0.5: n^ = (2, 1, 0), m^ = (3, 9, 0);
    # N = 3, n~ = (n^ + .1) / 3.3 * 3; e = m^ / n~ = (9.9/6.3, 29.7/3.3, unused: kept)
    out = q(_points([1.0], [2.0], [9.0]))
    assert out.indices.view(-1).tolist() == [0, 0, 1]
    assert out.z_q.view(-1).tolist() == [0.0, 0.0, 10.0]  # the codewords before the update
    assert out.loss.item() == pytest.approx(0.25 * (1 + 4 + 1) / 3, rel=1e-6)
    torch.testing.assert_close(q.codebook.view(-1), torch.tensor([9.9 / 6.3, 9.0, 100.0]))
    torch.testing.assert_close(q.ema_count, torch.tensor([1.0, 0.5, 0.0]))
    # step 2: 1.5 -> 0, 9.5 -> 1, 99 -> 2. n = (1, .75, .5), m = (1.5, 7, 49.5); 1 - .25 = .75:
    # n^ = (4/3, 1, 2/3), m^ = (2, 28/3, 66), N = 3; e_k = m^_k * 3.3 / (3 (n^_k + .1))
    out = q(_points([1.5], [9.5], [99.0]))
    assert out.indices.view(-1).tolist() == [0, 1, 2]
    torch.testing.assert_close(q.codebook.view(-1), torch.tensor([6.6 / 4.3, 28 / 3, 217.8 / 2.3]))
    assert int(q.ema_steps) == 2
    # evaluation never updates
    before = q.codebook.clone()
    q.eval()(_points([5.0], [50.0]))
    assert int(q.ema_steps) == 2 and torch.equal(q.codebook, before)


def test_unused_code_stays_finite_where_the_non_debiased_port_explodes():
    torch.manual_seed(0)
    k, decay, eps = 4, 0.99, 1e-5
    q = EMAVQQuantizer(k, 2, decay=decay, eps=eps)
    init = q.codebook.clone()
    assert init.abs().max() <= 1.0 / k  # uniform in +-1/K
    # every batch sits on code 0: codes 1..3 are never chosen
    port_n, port_m = torch.zeros(k), init.clone()  # the popular ports: m_k starts at the codebook
    for _ in range(5):
        z = init[0].view(1, 2, 1, 1) + 1e-4 * torch.randn(8, 2, 3, 3)
        assert (q(z).indices == 0).all()
        counts = torch.tensor([8 * 9.0, 0, 0, 0])
        sums = torch.zeros(k, 2)
        sums[0] = z.sum((0, 2, 3))
        port_n = decay * port_n + (1 - decay) * counts  # ... and are not debiased
        port_m = decay * port_m + (1 - decay) * sums
        total = port_n.sum()
        port_e = port_m / ((port_n + eps) / (total + k * eps) * total)[:, None]
    assert torch.isfinite(q.codebook).all()
    torch.testing.assert_close(q.codebook[1:], init[1:], rtol=0, atol=0)  # kept: its initial value
    assert (q.codebook[0] - init[0]).abs().max() < 1e-4  # the used code: the mean of its vectors
    # the port divides 0.99^5 m_k(0) by ~eps: blown up about 1e5 times, out of the data's reach
    assert (port_e[1:].abs() > 1e4 * init[1:].abs()).all()


def test_ema_straight_through_reaches_z_e_and_the_codebook_gets_no_gradient():
    torch.manual_seed(0)
    q = EMAVQQuantizer(8, 3, commitment=0.4)
    assert list(q.parameters()) == [] and not q.codebook.requires_grad
    z = torch.randn(2, 3, 2, 2, requires_grad=True)
    g = torch.randn(2, 3, 2, 2)
    q.eval()  # no EMA update: the codewords stay those used for the loss
    out = q(z)
    (out.z_q * g).sum().backward()
    torch.testing.assert_close(z.grad, g)  # the task gradient, unchanged
    z.grad = None
    out = q(z)
    out.loss.backward()
    e = q.embed(out.indices)
    torch.testing.assert_close(out.loss, 0.4 * ((z - e) ** 2).mean())
    torch.testing.assert_close(z.grad, 0.4 * 2 * (z - e).detach() / z.numel())


# ------------------------------------------------------------------ VQ-STE++


def test_ste_commitment_loss_against_a_direct_computation():
    torch.manual_seed(0)
    k, w, split = 6, 3.0, 0.3
    q = STEVQQuantizer(k, 2, commitment=w, commitment_split=split, **PLAIN)
    z = torch.randn(2, 2, 3, 3, requires_grad=True)
    out = q(z)
    e = q.embed(out.indices).detach()
    assert out.loss.item() == pytest.approx(w * ((z - e) ** 2).mean().item(), rel=1e-6)
    out.loss.backward()
    n = z.numel()
    # encoder side: (1 - b) of the weight; codebook side: b of it, summed over assigned positions
    torch.testing.assert_close(z.grad, w * (1 - split) * 2 * (z - e).detach() / n)
    expected = w * split * 2 * _assigned_sum(out.indices, (e - z).detach(), k) / n
    torch.testing.assert_close(q.codebook.grad, expected)


def test_synchronized_update_keeps_the_forward_value_and_scales_the_codebook_gradient():
    torch.manual_seed(0)
    z0, g = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)
    results = {}
    for nu in (0.0, 0.5):
        torch.manual_seed(1)
        q = STEVQQuantizer(5, 2, commitment=0.0, **{**PLAIN, "sync_nu": nu})
        z = z0.clone().requires_grad_()
        out = q(z)
        (out.z_q * g).sum().backward()  # a task loss whose gradient w.r.t. z_q is g
        results[nu] = (out.z_q.detach(), out.indices, z.grad, q.codebook.grad)
    assert torch.equal(results[0.0][0], results[0.5][0])  # same forward value
    torch.testing.assert_close(results[0.0][2], g)  # the encoder gets the task gradient ...
    torch.testing.assert_close(results[0.5][2], g)  # ... with or without the sync term
    plain = results[0.0][3]
    assert plain is None or plain.abs().max() == 0  # plain straight-through: nothing for the codebook
    torch.testing.assert_close(results[0.5][3], 0.5 * _assigned_sum(results[0.5][1], g, 5))


def test_affine_reparameterization_is_the_plain_codebook_at_init_and_follows_its_formula():
    torch.manual_seed(0)
    z = torch.randn(2, 3, 3, 3, requires_grad=True)
    outs = []
    for groups in (0, 4):
        torch.manual_seed(1)
        q = STEVQQuantizer(8, 3, **{**PLAIN, "affine_groups": groups, "sync_nu": 0.2})
        outs.append(q(z))
    assert torch.equal(outs[0].z_q, outs[1].z_q) and torch.equal(outs[0].indices, outs[1].indices)
    assert outs[0].loss.item() == outs[1].loss.item()
    (outs[1].z_q.square().sum() + outs[1].loss).backward()
    assert q.affine_scale.grad.abs().sum() > 0 and q.affine_shift.grad.abs().sum() > 0  # learned
    # c'_k = (1 + lambda s_g) c_k + lambda b_g, groups of K/G consecutive codes
    q = _set_codebook(STEVQQuantizer(4, 1, **{**PLAIN, "affine_groups": 2, "affine_lr": 2.0}),
                      [[1.0], [2.0], [3.0], [4.0]])
    with torch.no_grad():
        q.affine_scale.copy_(torch.tensor([[0.1], [-0.05]]))
        q.affine_shift.copy_(torch.tensor([[0.2], [0.0]]))
    torch.testing.assert_close(q.effective_codebook().view(-1), torch.tensor([1.6, 2.8, 2.7, 3.6]))


@pytest.mark.parametrize("affine", [False, True])
def test_dead_code_replacement_replaces_exactly_the_stale_codes(affine):
    q = STEVQQuantizer(4, 2, **{**PLAIN, "dead_after": 2, "dead_noise": 0.0,
                                "affine_groups": 2 if affine else 0})
    _set_codebook(q, [[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    if affine:  # a non-identity map: the replaced *effective* codeword is the encoder output
        with torch.no_grad():
            q.affine_scale.fill_(0.01)
            q.affine_shift.fill_(0.02)
    before = q.effective_codebook().detach().clone()
    q(_points([0.1, 0.2], [9.9, 0.1]))  # step 1 uses codes 0 and 1
    assert q.unused_steps.tolist() == [0, 0, 1, 1]
    torch.testing.assert_close(q.effective_codebook(), before)
    z2 = _points([0.3, 0.1], [0.2, 9.8], [0.1, 9.9])  # step 2 uses codes 0 and 2
    q(z2)
    # code 3: unused for 2 steps -> replaced; code 1: unused for 1 step -> kept
    assert q.unused_steps.tolist() == [0, 1, 0, 0]
    after = q.effective_codebook().detach()
    torch.testing.assert_close(after[:3], before[:3])
    rows = z2.view(2, -1).t()
    assert ((rows - after[3]).abs().max(1).values < 1e-5).any()  # one of this batch's encoder outputs
    q(_points([0.0, 0.1]))  # step 3 uses code 0 only: code 1 is now stale, codes 2 and 3 are not
    assert q.unused_steps.tolist() == [0, 0, 1, 1]
    assert torch.allclose(q.effective_codebook()[1], torch.tensor([0.0, 0.1]), atol=1e-5)
    torch.testing.assert_close(q.effective_codebook()[2:], after[2:])


@pytest.mark.parametrize("n_rows", [3, 2])
def test_codes_that_die_together_take_distinct_rows_while_there_are_enough(n_rows):
    torch.manual_seed(0)
    q = STEVQQuantizer(4, 2, **{**PLAIN, "dead_after": 1, "dead_noise": 0.0})
    _set_codebook(q, [[0.0, 0.0], [50.0, 0.0], [0.0, 50.0], [50.0, 50.0]])
    rows = [[0.1, 0.2], [0.3, -0.1], [-0.2, 0.1]][:n_rows]  # all nearest to code 0
    q(_points(*rows))
    new = q.effective_codebook().detach()[1:]  # codes 1-3 died together
    batch = torch.tensor(rows)
    picked = [int((batch - c).abs().sum(1).argmin()) for c in new]
    assert all(bool((batch[i] - c).abs().max() < 1e-6) for i, c in zip(picked, new, strict=True))
    # three dead codes: three distinct rows when the batch has three, else every row is used
    assert len(set(picked)) == n_rows
    assert q.unused_steps.tolist() == [0, 0, 0, 0]


def test_kmeans_init_runs_once_and_not_again_after_save_and_load(tmp_path):
    torch.manual_seed(0)
    q = STEVQQuantizer(2, 2, **{**PLAIN, "kmeans_init_iters": 5})
    a, b = torch.tensor([0.0, 0.0]), torch.tensor([10.0, 10.0])
    noise = 0.1 * torch.randn(8, 2)
    points = torch.cat([a + noise[:4], b + noise[4:]])
    z = points.t().reshape(1, 2, 1, 8)
    init = q.codebook.detach().clone()
    q.eval()(z)  # evaluation never initialises
    assert int(q.kmeans_done) == 0 and torch.equal(q.codebook, init)
    q.train()(z)
    assert int(q.kmeans_done) == 1
    got = sorted(q.codebook.detach().tolist())
    torch.testing.assert_close(torch.tensor(got), torch.stack([points[:4].mean(0), points[4:].mean(0)]))
    kept = q.codebook.detach().clone()
    q(z + 5.0)  # a second training pass on other data: no re-initialisation
    assert torch.equal(q.codebook, kept)

    # through a model checkpoint: a loaded model never re-initialises either
    cfg = RunConfig(ModelConfig(method="vq-ste++", channels=1, width=4, codebook_size=16, codebook_dim=4,
                                options={"dead_after": 0}))
    model = DiscreteVAE(cfg.model)
    x = torch.rand(2, 1, 32, 32) - 0.5
    model.train()(x)
    assert int(model.quantizer.kmeans_done) == 1
    checkpoint.save_model(tmp_path / checkpoint.MODEL_FILE, model, cfg.to_dict())
    loaded = DiscreteVAE.load(tmp_path).train()
    codebook = loaded.quantizer.codebook.detach().clone()
    loaded(x * 3)
    assert torch.equal(loaded.quantizer.codebook, codebook)
    # without the flag the same pass would re-initialise: loading a state without it forgets
    # that the flag was seen set
    state = loaded.state_dict()
    state["quantizer.kmeans_done"] = torch.zeros((), dtype=torch.int64)
    loaded.load_state_dict(state)
    loaded(x * 3)
    assert not torch.equal(loaded.quantizer.codebook, codebook)


def test_a_set_flag_is_read_from_the_device_once(monkeypatch):
    """Once K-means has run, later training steps do not read `kmeans_done` again (on an
    accelerator each read would be a host synchronisation)."""
    q = STEVQQuantizer(4, 2, **{**PLAIN, "kmeans_init_iters": 2}).train()
    z = torch.randn(2, 2, 2, 2)
    q(z)
    reads = []
    real_bool = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(1) or real_bool(t))
    for _ in range(3):
        q(z)
    assert reads == [] and q.is_flag_set("kmeans_done")


@pytest.mark.parametrize("name, option, value", [
    ("vq-ema", "commitment", -0.1), ("vq-ema", "decay", 1.0), ("vq-ema", "decay", 0.0),
    ("vq-ema", "eps", 0.0), ("vq-ema", "eval_mode", "sample"),
    ("vq-ste++", "commitment", -1.0), ("vq-ste++", "commitment_split", 1.5),
    ("vq-ste++", "sync_nu", -0.2), ("vq-ste++", "affine_groups", 3), ("vq-ste++", "affine_groups", -1),
    ("vq-ste++", "affine_lr", 0.0), ("vq-ste++", "inner_lr", -1.0), ("vq-ste++", "dead_after", 2.5),
    ("vq-ste++", "dead_noise", float("nan")), ("vq-ste++", "kmeans_init_iters", -1),
    ("vq-ste++", "eval_mode", "sample"),
])
def test_bad_option_values_raise_a_value_error_naming_the_option(name, option, value):
    with pytest.raises(ValueError, match=option):
        build_quantizer(name, 16, 4, **{option: value})


def test_inner_step_moves_codes_toward_their_vectors_before_the_forward_value():
    # one plain gradient step on mean ||c_k(i) - z_i||^2 (N = 2 positions, D = 1: grad = (c - z))
    q = _set_codebook(STEVQQuantizer(2, 1, **{**PLAIN, "inner_lr": 0.5}), [[0.0], [10.0]])
    out = q(_points([1.0], [12.0]))
    torch.testing.assert_close(q.codebook.detach().view(-1), torch.tensor([0.5, 11.0]))
    torch.testing.assert_close(out.z_q.view(-1), torch.tensor([0.5, 11.0]))  # the updated codewords


# ------------------------------------------------------------------ models


@pytest.mark.parametrize("method", METHODS)
def test_model_trains_and_round_trips_through_a_checkpoint(tmp_path, method):
    torch.manual_seed(0)
    cfg = from_dict({"model": {"method": method, "channels": 1, "width": 8}})
    model = DiscreteVAE(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(4, 1, 32, 32) - 0.5
    for _ in range(2):
        x_hat, out = model(x)
        loss = torch.nn.functional.mse_loss(x_hat, x) + out.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    state = model.quantizer.state_dict()
    if method == "vq-ema":
        assert int(state["ema_steps"]) == 2
    else:
        assert int(state["kmeans_done"]) == 1 and model.quantizer.codebook.grad.abs().sum() > 0
    model.eval()
    checkpoint.save_model(tmp_path / checkpoint.MODEL_FILE, model, cfg.to_dict())
    loaded = DiscreteVAE.load(tmp_path)
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)
    codes = model.encode(images)
    assert codes.shape == (3, 8, 8) and torch.equal(codes, loaded.encode(images))
    assert torch.equal(model.decode(codes), loaded.decode(codes))
    for key, value in loaded.quantizer.state_dict().items():
        assert torch.equal(value, state[key]), key


# ------------------------------------------------------------------ data parallel (gloo)

STE_OPTIONS = dict(kmeans_init_iters=3, dead_after=2, dead_noise=0.01, inner_lr=2.0, affine_groups=2)


def _global_batch(step: int) -> torch.Tensor:
    """The global batch of a step: 4 images of 2 x 2 positions, D = 2 (16 positions)."""
    g = torch.Generator().manual_seed(step)
    z = torch.randn(4, 2, 2, 2, generator=g)
    return z if step == 0 else 0.3 * z + 3.0  # after step 0 the data moves: codes die


def _run(rows: slice, dead_after: int = 2) -> dict[str, torch.Tensor]:
    """What one replica computes on its slice of every global batch (the whole batch when alone)."""
    torch.manual_seed(0)
    ema = EMAVQQuantizer(8, 2, decay=0.9)
    ste = STEVQQuantizer(8, 2, **{**STE_OPTIONS, "dead_after": dead_after})
    for step in range(4):
        z = _global_batch(step)[rows]
        torch.manual_seed(1000 + step)  # the per-step seed; only rank 0's draws are used
        ema(z)
        ste(z)
    state = {f"ema.{k}": v for k, v in ema.state_dict().items()}
    state.update({f"ste.{k}": v.detach() for k, v in ste.state_dict().items()})
    return state


def _on_rank(rank: int, world: int) -> dict[str, torch.Tensor]:
    per_rank = 4 // world
    return _run(slice(rank * per_rank, (rank + 1) * per_rank))


def test_two_gloo_processes_hold_identical_codebooks_equal_to_one_process(tmp_path):
    ranks = run_on_ranks(_on_rank, tmp_path)
    single = _run(slice(None))
    assert set(ranks[0]) == set(single)
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # identical replicas
        torch.testing.assert_close(ranks[0][key], value, msg=key)  # = one process on the global batch
    assert int(single["ema.ema_steps"]) == 4 and int(single["ste.kmeans_done"]) == 1
    # dead codes were replaced (the run without replacement ends elsewhere)
    assert not torch.allclose(single["ste.codebook"], _run(slice(None), dead_after=0)["ste.codebook"])
