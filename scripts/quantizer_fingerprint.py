"""A fingerprint of every quantizer's numbers, for refactors that must change none of them.

    python scripts/quantizer_fingerprint.py save STEM    # before the change: STEM.safetensors, STEM.json
    python scripts/quantizer_fingerprint.py check STEM   # after it: exit 0 when all is torch.equal

Each case (every registered method, with its options that take other code paths) records several
training steps with reporting on and off (z_q, loss, indices, stats, the input's and parameters'
gradients, the state after an SGD step), an evaluation forward, codes, embed, eval_codes,
probabilities, sampled codes, uncertainty, bf16-autocast forwards, init_codebook and error texts.
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

torch.set_num_threads(1)

from edvae.quantizers import QUANTIZERS, build_quantizer  # noqa: E402
from edvae.quantizers import kmeans as kmeans_mod  # noqa: E402
from edvae.quantizers.dirichlet_kl import (  # noqa: E402
    dirichlet_kl_uniform,
    evidential_log_alpha_and_kl,
)

# (label, method, K, D, options, input scale, train steps, (B, h, w))
CASES = [
    ("edvae", "edvae", 16, 4, {}, 12.0, 4, (3, 4, 4)),
    ("edvae-dirsample", "edvae", 16, 4, {"dirichlet_sample": True}, 12.0, 4, (3, 4, 4)),
    ("edvae-evalsample", "edvae", 16, 4, {"eval_mode": "sample", "clamp_max": 5.0}, 6.0, 3, (3, 4, 4)),
    ("dvae", "dvae", 16, 4, {}, 3.0, 4, (3, 4, 4)),
    ("dvae-evalsample", "dvae", 16, 4, {"eval_mode": "sample"}, 3.0, 3, (3, 4, 4)),
    ("gs-vq", "gs-vq", 16, 4, {}, 1.5, 4, (3, 4, 4)),
    ("gs-vq-evalsample", "gs-vq", 16, 4, {"eval_mode": "sample"}, 1.5, 3, (3, 4, 4)),
    ("sq-vae", "sq-vae", 16, 4, {}, 1.5, 4, (3, 4, 4)),
    ("sq-vae-mse", "sq-vae", 16, 4, {"reconstruction": "mse", "eval_mode": "sample", "log_var_init": 0.5},
     1.5, 3, (3, 4, 4)),
    ("vq-ema", "vq-ema", 16, 4, {}, 0.2, 5, (3, 4, 4)),
    ("vq-ema-rot", "vq-ema", 16, 4, {"gradient": "rotation", "decay": 0.9}, 0.2, 5, (3, 4, 4)),
    ("vq-ema-bigK", "vq-ema", 4096, 4, {}, 0.2, 2, (2, 48, 48)),
    ("vq-ste", "vq-ste++", 16, 4, {}, 1.0, 4, (3, 4, 4)),
    ("vq-ste-rot", "vq-ste++", 16, 4, {"gradient": "rotation"}, 1.0, 4, (3, 4, 4)),
    ("vq-ste-all", "vq-ste++", 16, 4, {"inner_lr": 0.5, "dead_after": 1, "affine_groups": 2,
                                        "kmeans_init_iters": 3, "sync_nu": 0.5}, 1.0, 5, (2, 2, 2)),
    ("vq-ste-plain", "vq-ste++", 16, 4, {"affine_groups": 0, "sync_nu": 0.0, "dead_after": 0,
                                          "kmeans_init_iters": 0}, 1.0, 3, (3, 4, 4)),
    ("gm-vq", "gm-vq", 16, 4, {}, 1.0, 4, (3, 4, 4)),
    ("gm-vq-warm", "gm-vq", 16, 4, {}, 0.01, 3, (3, 4, 4)),
    ("gm-vq-opts", "gm-vq", 16, 4, {"sigma_z_mode": "fixed", "latent_term": "kl", "variance_form": "paper",
                                    "temperature_map": "trainer", "eval_mode": "sample", "init_spread": 0.0,
                                    "kmeans_init_iters": 0}, 1.0, 3, (3, 4, 4)),
    ("fsq", "fsq", 512, 3, {}, 1.5, 3, (3, 4, 4)),
    ("fsq-levels", "fsq", 12, 2, {"levels": "4,3"}, 1.5, 3, (3, 4, 4)),
    ("lfq", "lfq", 16, 4, {}, 1.0, 3, (3, 4, 4)),
    ("lfq-noent", "lfq", 8, 3, {"entropy": 0.0, "entropy_temperature": 0.5}, 1.0, 3, (3, 4, 4)),
    ("simvq", "simvq", 16, 4, {}, 1.0, 3, (3, 4, 4)),
    ("simvq-rot", "simvq", 16, 4, {"gradient": "rotation", "commitment": 0.4, "codebook": 0.7}, 1.0, 3,
     (3, 4, 4)),
    ("ibq", "ibq", 16, 4, {}, 1.0, 3, (3, 4, 4)),
    ("ibq-512", "ibq", 512, 8, {}, 1.0, 2, (8, 8, 8)),
    ("ibq-bigK", "ibq", 4096, 4, {"commitment": 0.3, "codebook": 2.0}, 1.0, 2, (2, 48, 48)),
    ("ibq-ties", "ibq", 16, 2, {}, 1.0, 2, (3, 4, 4)),  # integer inputs and codebook: many ties
]

tensors: dict[str, torch.Tensor] = {}
texts: dict[str, object] = {}


def put(key, value):
    if value is None:
        texts[key] = None
    elif isinstance(value, torch.Tensor):
        tensors[key] = value.detach().clone().contiguous()
    else:
        texts[key] = value


def record_out(prefix, out):
    put(prefix + "/z_q", out.z_q)
    put(prefix + "/loss", torch.as_tensor(out.loss))
    put(prefix + "/indices", out.indices)
    texts[prefix + "/stats_keys"] = sorted(out.stats)
    for k, v in out.stats.items():
        put(prefix + "/stat/" + k, torch.as_tensor(v))


def run_case(label, method, k, d, options, scale, steps, shape):
    torch.manual_seed(0)
    q = build_quantizer(method, k, d, **options)
    if method == "sq-vae":
        q.set_image_shape(1, 8, 8)
    texts[label + "/option_types"] = {n: t.__name__ for n, t in q.option_types().items()}
    c = q.input_channels
    b, h, w = shape
    ties = label.endswith("ties")
    if ties:
        with torch.no_grad():
            q.codebook.copy_(torch.randint(-2, 3, q.codebook.shape).float())
    for step in range(steps):
        q.train()
        q.reporting = step % 3 != 1
        torch.manual_seed(1000 + step)
        z = torch.randn(b, c, h, w) * scale
        if ties:
            z = torch.randint(-2, 3, z.shape).float()
        z.requires_grad_()
        out = q(z, temperature=0.7, beta=0.3)
        p = f"{label}/train{step}"
        record_out(p, out)
        g = torch.randn_like(out.z_q)
        ((out.z_q * g).sum() + 100.0 * out.loss).backward()
        put(p + "/grad_z", z.grad)
        with torch.no_grad():
            for n, prm in q.named_parameters():
                put(p + "/grad/" + n, prm.grad)
                if prm.grad is not None:
                    prm -= 0.05 * prm.grad
                    prm.grad = None
        for n, t in q.state_dict().items():
            put(p + "/state/" + n, t)
    q.reporting = True
    torch.manual_seed(7)
    z = torch.randn(b, c, h, w) * scale
    if ties:
        z = torch.randint(-2, 3, z.shape).float()
    q.eval()
    with torch.no_grad():
        torch.manual_seed(8)
        record_out(label + "/eval_nograd", q(z, temperature=0.7, beta=0.3))
    zg = z.clone().requires_grad_()
    torch.manual_seed(8)
    out = q(zg, temperature=0.7, beta=0.3)
    record_out(label + "/eval_grad", out)
    (out.z_q.square().sum() + 100.0 * out.loss).backward()
    put(label + "/eval_grad/grad_z", zg.grad)
    for n, prm in q.named_parameters():
        put(label + "/eval_grad/grad/" + n, prm.grad)
        prm.grad = None
    codes = q.codes(z)
    put(label + "/codes", codes)
    put(label + "/embed", q.embed(codes))
    torch.manual_seed(9)
    put(label + "/eval_codes", q.eval_codes(z))
    with torch.no_grad():
        put(label + "/probabilities", q.probabilities(z))
        put(label + "/sample_codes", q.sample_codes(z, torch.Generator().manual_seed(3)))
        put(label + "/uncertainty", q.uncertainty(z))
    if method == "sq-vae":
        x = torch.rand(3, 1, 8, 8)
        put(label + "/recon", q.reconstruction_loss(x + 0.1 * torch.randn_like(x), x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(10)
        record_out(label + "/bf16_eval", q(z.bfloat16(), temperature=0.7, beta=0.3))
        put(label + "/bf16_codes", q.codes(z.bfloat16()))
        q.train()
        torch.manual_seed(11)
        record_out(label + "/bf16_train", q(z.bfloat16().requires_grad_(), temperature=0.7, beta=0.3))
    try:
        q(torch.randn(b, c + 1, h, w))
    except Exception as e:  # noqa: BLE001
        texts[label + "/bad_shape"] = f"{type(e).__name__}: {e}"
    try:
        q.codes(torch.randn(b, c + 1, h, w))
    except Exception as e:  # noqa: BLE001
        texts[label + "/bad_shape_codes"] = f"{type(e).__name__}: {e}"
    torch.manual_seed(12)
    vectors = torch.randn(k, d)
    try:
        q.init_codebook(vectors)
        for n, t in q.state_dict().items():
            put(label + "/init/" + n, t)
        put(label + "/init/codes", q.codes(z))
    except Exception as e:  # noqa: BLE001
        texts[label + "/init_error"] = f"{type(e).__name__}: {e}"


def extras():
    torch.manual_seed(5)
    logits = (torch.randn(2, 16, 3, 3) * 15).requires_grad_()
    for value in (True, False):
        for cm in (None, 20.0, 5.0):
            la, kl = evidential_log_alpha_and_kl(logits, cm, value=value)
            (la.sin().sum() + kl.sum()).backward()
            put(f"dkl/{value}/{cm}/la", la)
            put(f"dkl/{value}/{cm}/kl", kl)
            put(f"dkl/{value}/{cm}/grad", logits.grad)
            logits.grad = None
    put("dkl/uniform", dirichlet_kl_uniform(logits.detach()))
    pts = torch.randn(200, 3)
    r = kmeans_mod.kmeans(pts, 8, iters=5, seed=1)
    put("kmeans/centroids", r.centroids)
    put("kmeans/counts", r.counts)
    texts["kmeans/inertia_iters"] = [r.inertia, r.iterations]
    for name in QUANTIZERS:
        try:
            build_quantizer(name, 16, 4, eval_mode="bogus")
        except Exception as e:  # noqa: BLE001
            texts[f"errors/{name}/eval_mode"] = f"{type(e).__name__}: {e}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["save", "check"], help="save before the change, check after it")
    parser.add_argument("stem", help="STEM.safetensors and STEM.json hold the fingerprint")
    args = parser.parse_args()
    mode, stem = args.mode, args.stem
    if mode == "check" and not (Path(stem + ".safetensors").is_file() and Path(stem + ".json").is_file()):
        print(f"error: no fingerprint {stem}.safetensors / {stem}.json: run `save {stem}` first",
              file=sys.stderr)
        sys.exit(2)
    assert {m for _, m, *_ in CASES} == set(QUANTIZERS), set(QUANTIZERS) - {m for _, m, *_ in CASES}
    for case in CASES:
        run_case(*case)
    extras()
    if mode == "save":
        save_file(tensors, stem + ".safetensors")
        with open(stem + ".json", "w") as f:
            json.dump(texts, f, indent=0, sort_keys=True)
        print(f"saved {len(tensors)} tensors, {len(texts)} texts over {len(CASES)} cases")
        return
    ref = load_file(stem + ".safetensors")
    with open(stem + ".json") as f:
        ref_texts = json.load(f)
    bad = []
    if set(ref) != set(tensors):
        bad.append(f"tensor keys differ: {sorted(set(ref) ^ set(tensors))[:20]}")
    for key in sorted(set(ref) & set(tensors)):
        a, b = ref[key], tensors[key]
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            if not (a.dtype.is_floating_point and a.shape == b.shape and a.dtype == b.dtype
                    and torch.equal(torch.nan_to_num(a, 1.0), torch.nan_to_num(b, 1.0))
                    and torch.equal(a.isnan(), b.isnan())):
                bad.append(f"differs: {key}")
    texts_now = json.loads(json.dumps(texts, sort_keys=True))
    if texts_now != ref_texts:
        for key in sorted(set(ref_texts) | set(texts_now)):
            if ref_texts.get(key, "<absent>") != texts_now.get(key, "<absent>"):
                bad.append(f"text differs: {key}: {ref_texts.get(key, '<absent>')!r} -> "
                           f"{texts_now.get(key, '<absent>')!r}")
    print(f"compared {len(tensors)} tensors, {len(texts)} texts over {len(CASES)} cases")
    print("\n".join(bad) if bad else "ALL EQUAL (torch.equal, dtype and shape)")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
