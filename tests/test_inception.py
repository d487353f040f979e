"""edvae's FID InceptionV3 against torch-fidelity's own, with the same random weights; the TF1 resize;
reading the weights file safely.

How torch-fidelity is loaded here without torchvision: its package `__init__` imports its CLIP, VGG
and dataset modules, which import torchvision, which does not load beside this torch build. The files
used here need only torch and numpy. The fixture `tf` puts a bare module named `torch_fidelity` in
sys.modules, with `__path__` set to the installed package folder (found by importlib.util.find_spec,
which does not run the package), so `import torch_fidelity.feature_extractor_inceptionv3` runs that
file and the helpers it imports, never the package's `__init__`. metric_fid.py imports
`torch_fidelity.utils` (torchvision again) for its file and cache handling only: a stub module stands
in for it, and the two functions used, fid_features_to_statistics and fid_statistics_to_metric, are
torch-fidelity's own. All of it is removed from sys.modules afterwards.

The real weights file is a download that these tests do not have: both networks get the same random
weights made here, with random BatchNorm statistics scaled so that the features neither vanish nor
explode. Tolerance: the 2048-d features agree to 1e-5 of their largest magnitude (on this CPU build
they were bit-identical); the FIDs to 1e-6 relative.
"""

import importlib
import importlib.util
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edvae import inception_weights
from edvae.data.download import sha256sum
from edvae.errors import EdvaeError
from edvae.fid import frechet_distance_of_features
from edvae.inception import FIDInceptionV3, inception_input, resize_bilinear_tf1
from edvae.inception_weights import INCEPTION_SHA256, load_fid_inception, map_state, read_state

FEATURE_TOL = 1e-5  # of the largest feature magnitude


@pytest.fixture(scope="module")
def tf():
    """torch-fidelity's modules, loaded without its package __init__ (see the module docstring)."""
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("torch-fidelity is not installed; scripts/setup.sh installs it "
                    "(pip install --no-deps torch-fidelity==0.4.0)")
    saved = {k: v for k, v in sys.modules.items() if k == "torch_fidelity" or k.startswith("torch_fidelity.")}
    package = types.ModuleType("torch_fidelity")
    package.__path__ = list(spec.submodule_search_locations)
    utils = types.ModuleType("torch_fidelity.utils")  # metric_fid's file/cache helpers: not used here
    for name in ("get_cacheable_input_name", "cache_lookup_one_recompute_on_miss",
                 "extract_featuresdict_from_input_id_cached", "create_feature_extractor",
                 "resolve_feature_extractor", "resolve_feature_layer_for_metric"):
        setattr(utils, name, None)
    sys.modules.update({"torch_fidelity": package, "torch_fidelity.utils": utils})
    try:
        yield types.SimpleNamespace(
            fe=importlib.import_module("torch_fidelity.feature_extractor_inceptionv3"),
            resize=importlib.import_module("torch_fidelity.interpolate_compat_tensorflow"),
            fid=importlib.import_module("torch_fidelity.metric_fid"))
    finally:
        for k in [k for k in sys.modules if k == "torch_fidelity" or k.startswith("torch_fidelity.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def random_inception_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict in the weight files' layout (names, shapes, fc.*, BatchNorm counters), random."""
    g = torch.Generator().manual_seed(seed)
    net = FIDInceptionV3()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):  # He-normal: the ReLU stack keeps its scale
            m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2 / m.weight[0].numel()) ** 0.5)
        elif isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            var = 0.01 + 0.99 * torch.rand(n, generator=g)  # small variances make eps 0.001 matter
            m.running_var.copy_(var)
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.weight.copy_((var + 1e-3).sqrt() * (0.8 + 0.4 * torch.rand(n, generator=g)))
            m.bias.copy_(0.1 * torch.randn(n, generator=g))
            m.num_batches_tracked.fill_(7)
    state = dict(net.state_dict())
    state["fc.weight"] = 0.02 * torch.randn(1008, 2048, generator=g)
    state["fc.bias"] = 0.02 * torch.randn(1008, generator=g)
    return state


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    state = random_inception_state()
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(state, path)
    return state, path, sha256sum(path)


@pytest.fixture(scope="module")
def nets(tf, weights):
    """(edvae's network read from the file, torch-fidelity's FeatureExtractorInceptionV3) with the same
    weights. torch-fidelity reads its file with torch.load(weights_only=False); here its torch.load is
    replaced for the construction by one that returns the state, so nothing is unpickled that way."""
    state, path, sha = weights
    ours = load_fid_inception(path, sha256=sha)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(tf.fe.torch, "load", lambda *a, **k: state)
        theirs = tf.fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                   feature_extractor_weights_path="given by the test")
    return ours, theirs


def images(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    """uint8 RGB: smooth random shapes plus noise, so that neighbouring pixels are related."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, max(h // 4, 2), max(w // 4, 2), generator=g)
    x = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    x = 0.8 * x + 0.2 * torch.rand(n, 3, h, w, generator=g)
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


def assert_features_agree(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    assert ours.shape == theirs.shape and ours.shape[1] == 2048 and ours.dtype == torch.float32
    scale = float(theirs.abs().max())
    assert scale > 0.1 and float(theirs.std()) > 0.05  # live features, not a vanished stack
    err = float((ours - theirs).abs().max())
    assert err <= FEATURE_TOL * scale, f"max |ours - torch-fidelity| = {err:.3g} at scale {scale:.3g}"


# --- the resize -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape, size", [((1, 3, 32, 32), (299, 299)), ((2, 1, 7, 13), (299, 299)),
                                          ((1, 2, 500, 400), (299, 299)), ((1, 1, 299, 299), (299, 299)),
                                          ((1, 1, 5, 8), (3, 11))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_resize_is_torch_fidelitys_tf1_interpolation(tf, shape, size, dtype):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(shape[-1]), dtype=dtype) * 255
    ours = resize_bilinear_tf1(x, size)
    theirs = tf.resize.interpolate_bilinear_2d_like_tensorflow1x(x, size=size, align_corners=False)
    assert ours.shape == (*shape[:2], *size) and ours.dtype == dtype
    assert torch.equal(ours, theirs)  # the same float operations: bit-identical on the CPU
    if shape[-2:] == size:
        assert torch.equal(ours, x)


def test_resize_samples_at_i_times_in_over_out_without_half_pixel_centres():
    up = resize_bilinear_tf1(torch.tensor([[[[0.0, 10.0]]]]), (1, 4))  # taps at 0, 0.5, 1, 1.5 (clamped)
    assert up.flatten().tolist() == [0.0, 5.0, 10.0, 10.0]
    # PyTorch's half-pixel bilinear gives another answer: the reason for a resize of its own
    assert F.interpolate(torch.tensor([[[[0.0, 10.0]]]]), size=(1, 4), mode="bilinear",
                         align_corners=False).flatten().tolist() == [0.0, 2.5, 7.5, 10.0]
    down = resize_bilinear_tf1(torch.tensor([[[[0.0], [3.0], [6.0], [9.0]]]]), (3, 1))  # at 0, 4/3, 8/3
    assert down.flatten().tolist() == pytest.approx([0.0, 4.0, 8.0], rel=1e-6)


def test_input_scaling_maps_uint8_to_minus_one_and_float_zero_one_alike():
    row = torch.tensor([0, 128, 255], dtype=torch.uint8).repeat(100)[:299]
    x = row.view(1, 1, 1, 299).expand(1, 3, 299, 299)  # 299 x 299: the resize keeps it as it is
    scaled = inception_input(x)
    assert scaled.shape == (1, 3, 299, 299) and scaled.dtype == torch.float32
    assert scaled[0, 0, 0, :3].tolist() == [-1.0, 0.0, 127 / 128]  # (x - 128) / 128
    assert float((inception_input(x.float() / 255) - scaled).abs().max()) < 1e-6
    with pytest.raises(EdvaeError, match=r"must lie in \[0, 1\]"):
        inception_input(x.float() - 0.5)
    with pytest.raises(EdvaeError, match="RGB images"):
        inception_input(x[:, :1])


# --- the network against torch-fidelity's ---------------------------------------------------


def test_weight_names_and_shapes_are_those_torch_fidelity_loads(nets, weights):
    state, _, _ = weights
    theirs = nets[1].state_dict()
    assert len(state) == 566  # 94 convolutions x (weight + 4 BatchNorm tensors + counter), fc.weight, fc.bias
    assert {k: tuple(v.shape) for k, v in theirs.items()} == {k: tuple(v.shape) for k, v in state.items()}
    ours = nets[0].state_dict()
    for key, value in ours.items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("n, h, w", [(2, 32, 32), (1, 17, 40), (1, 299, 299), (1, 350, 300)])
def test_uint8_features_agree_with_torch_fidelity(nets, n, h, w):
    x = images(n, h, w, seed=h * w)
    ours, theirs = nets
    assert_features_agree(ours(x), theirs(x)[0])


def test_float_features_agree_with_torch_fidelity(nets, tf, monkeypatch):
    # floats in [0, 1] off the 8-bit grid; torch-fidelity's forward casts its input to float32 itself,
    # so lifting its uint8-only assertion feeds it the same values x 255
    x = torch.rand(1, 3, 24, 36, generator=torch.Generator().manual_seed(5))
    ours, theirs = nets
    monkeypatch.setattr(tf.fe, "vassert", lambda *a, **k: None)
    assert_features_agree(ours(x), theirs(x * 255)[0])
    u = images(1, 24, 36, seed=6)  # and on the grid, float k/255 is uint8 k
    assert_features_agree(ours(u.float() / 255), ours(u))


def test_a_pytorch_style_resize_would_be_caught(nets, tf, monkeypatch):
    # the same network with PyTorch's half-pixel bilinear resize gives features far outside the tolerance
    x = images(1, 32, 32, seed=9)
    ours, theirs = nets
    monkeypatch.setattr(tf.fe, "interpolate_bilinear_2d_like_tensorflow1x",
                        lambda t, size, align_corners: F.interpolate(t, size=size, mode="bilinear",
                                                                     align_corners=False))
    a, b = ours(x), theirs(x)[0]
    assert float((a - b).abs().max()) > 100 * FEATURE_TOL * float(b.abs().max())


def test_fid_of_two_small_sets_agrees_with_torch_fidelity(nets, tf):
    a, b = images(3, 32, 32, seed=1), (images(3, 32, 32, seed=2) // 2)
    ours, theirs = nets
    fa, fb = ours(a), ours(b)
    ta, tb = theirs(a)[0], theirs(b)[0]
    stats = [tf.fid.fid_features_to_statistics(t) for t in (ta, tb)]
    reference = tf.fid.fid_statistics_to_metric(*stats, verbose=False)["frechet_inception_distance"]
    value = frechet_distance_of_features(fa, fb)
    assert value > 1.0
    assert value == pytest.approx(reference, rel=1e-6)
    assert frechet_distance_of_features(fa, fa) < 1e-9 * value


# --- reading the weights file ---------------------------------------------------------------


def test_the_weights_must_have_the_published_hash(weights):
    _, path, sha = weights
    assert INCEPTION_SHA256.startswith("6726825d")  # the hash prefix in both file names
    with pytest.raises(EdvaeError, match=f"{path}: SHA-256 {sha[:12]}..., not {INCEPTION_SHA256} of the FID"):
        load_fid_inception(path)


def test_state_mapping_names_the_missing_misshapen_or_unknown_tensor(weights):
    state, _, _ = weights
    net = FIDInceptionV3()
    plain = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked") and k[:3] != "fc."}
    mapped = map_state(net, plain, "f.pth")  # a file without counters or fc loads as well
    assert mapped.keys() == net.state_dict().keys()
    assert torch.equal(mapped["Mixed_7c.branch_pool.bn.running_var"],
                       state["Mixed_7c.branch_pool.bn.running_var"])
    with pytest.raises(EdvaeError, match="f.pth: no tensor 'Mixed_5b.branch1x1.conv.weight'"):
        map_state(net, {k: v for k, v in plain.items() if k != "Mixed_5b.branch1x1.conv.weight"}, "f.pth")
    bad = dict(plain, **{"Conv2d_1a_3x3.bn.bias": torch.zeros(31)})
    with pytest.raises(EdvaeError, match=r"'Conv2d_1a_3x3.bn.bias' is \(31,\), FID's \w+ needs \(32,\)"):
        map_state(net, bad, "f.pth")
    with pytest.raises(EdvaeError, match="'AuxLogits.fc.weight' is not a weight"):
        map_state(net, dict(plain, **{"AuxLogits.fc.weight": torch.zeros(1)}), "f.pth")


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_files_are_read_without_running_pickled_code(tmp_path):
    marker = tmp_path / "the pickle ran"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"Conv2d_1a_3x3.conv.weight": _RunsCodeWhenUnpickled(marker)}, protocol=2))
    with pytest.raises(EdvaeError, match="evil.pth: not a file of tensors"):
        read_state(evil)
    assert not marker.exists()
    text = tmp_path / "notes.pth"
    text.write_text("not a weights file")
    with pytest.raises(EdvaeError, match="notes.pth: not a file of tensors"):
        read_state(text)
    truncated = tmp_path / "half.pth"
    torch.save({"w": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(EdvaeError, match="half.pth: not a weights file torch.load"):
        read_state(truncated)


def test_without_a_file_the_torch_hub_folder_is_searched_and_nothing_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(EdvaeError) as err:
        inception_weights.resolve_weights_file(None)
    message = str(err.value)
    assert "none in torch.hub's checkpoints" in message and INCEPTION_SHA256 in message
    assert "--inception-weights FILE" in message and "pt_inception-2015-12-05-6726825d.pth" in message
    found = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    found.parent.mkdir(parents=True)
    found.write_bytes(b"")
    assert inception_weights.resolve_weights_file(None) == found
