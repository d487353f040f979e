"""K-means (kmeans.py): k-means++ seeding, Lloyd iterations with empty clusters relocated, and
data-parallel replicas that agree with one process on the concatenated data."""

import pytest
import torch
from gloo_ranks import run_on_ranks

from edvae.quantizers.kmeans import kmeans, kmeans_pp_init, lloyd_steps


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows in lexicographic order (centroids come in no particular order)."""
    for col in reversed(range(x.shape[1])):
        x = x[x[:, col].argsort(stable=True)]
    return x


def _blobs(centres, per, std, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = torch.tensor(centres, dtype=torch.float32)
    return (c.repeat_interleave(per, 0) + std * torch.randn(len(centres) * per, c.shape[1], generator=g))


def test_seeding_takes_one_point_of_each_group_of_copies():
    # D(x)^2 is exactly 0 for the copies of a chosen point: k-means++ can never pick one twice
    points = torch.tensor([[0.0, 0.0]] * 5 + [[10.0, 0.0]] * 3 + [[0.0, 10.0]] * 2)
    for seed in range(10):
        seeds = kmeans_pp_init(points, 3, seed=seed)
        assert seeds.dtype == torch.float32 and seeds.shape == (3, 2)
        assert torch.equal(_sorted_rows(seeds), torch.tensor([[0.0, 0.0], [0.0, 10.0], [10.0, 0.0]]))
    # more centres than distinct points: the rest are drawn uniformly, still data points
    seeds = kmeans_pp_init(points, 5, seed=0)
    assert all(any(torch.equal(s, p) for p in points) for s in seeds)
    assert torch.equal(kmeans_pp_init(points, 5, seed=7), kmeans_pp_init(points, 5, seed=7))


def test_seeding_draws_in_proportion_to_the_squared_distance():
    # points 0, 1, 3 on a line, k = 2. The first is uniform; then, by D^2:
    # after 0: (1, 9)/10; after 1: (1, 4)/5; after 3: (9, 4)/13. Unordered pairs:
    # {0,1}: (1/10 + 1/5)/3 = 0.1; {0,3}: (9/10 + 9/13)/3; {1,3}: (4/5 + 4/13)/3
    points = torch.tensor([[0.0], [1.0], [3.0]])
    n = 2000
    firsts, pairs = torch.zeros(3), {}
    for seed in range(n):
        s = kmeans_pp_init(points, 2, seed=seed)[:, 0].tolist()
        firsts[points[:, 0].tolist().index(s[0])] += 1
        key = tuple(sorted(s))
        pairs[key] = pairs.get(key, 0) + 1
    expected = {(0.0, 1.0): 0.1, (0.0, 3.0): (0.9 + 9 / 13) / 3, (1.0, 3.0): (0.8 + 4 / 13) / 3}
    assert set(pairs) == set(expected)
    for key, p in expected.items():
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(pairs[key] / n - p) < 4 * sd, (key, pairs[key] / n, p)
    assert torch.all((firsts / n - 1 / 3).abs() < 4 * (2 / 9 / n) ** 0.5)


def test_well_separated_clusters_are_found_exactly():
    centres = [[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]]
    points = _blobs(centres, 25, 0.05)
    truth = points.view(4, 25, 2).mean(1)
    inertia = float(((points.view(4, 25, 2) - truth[:, None]) ** 2).sum())
    for seed in range(3):
        r = kmeans(points, 4, iters=20, seed=seed)
        assert r.centroids.dtype == torch.float32
        torch.testing.assert_close(_sorted_rows(r.centroids), _sorted_rows(truth), rtol=0, atol=1e-5)
        assert r.counts.tolist() == [25.0] * 4 and r.iterations < 20  # converged: nothing moves
        assert r.inertia == pytest.approx(inertia, rel=1e-4)


def test_an_empty_cluster_moves_to_the_farthest_point():
    points = torch.tensor([[0.0, 0.0], [0.0, 1.0], [10.0, 0.0], [10.0, 2.0]])
    start = torch.tensor([[4.0, 0.5], [100.0, 100.0]])
    # 1: every point takes centre 0 (it moves to the mean (5, .75)); centre 1 is empty and goes to
    #    (10, 2), the farthest from centre 0 (38.25). 2: the halves split: (0, .5), (10, 1). 3: stable.
    r = lloyd_steps(points, start, iters=10)
    torch.testing.assert_close(r.centroids, torch.tensor([[0.0, 0.5], [10.0, 1.0]]), rtol=0, atol=0)
    assert r.counts.tolist() == [2.0, 2.0] and r.iterations == 3 and r.inertia == pytest.approx(2.5)
    assert torch.equal(start, torch.tensor([[4.0, 0.5], [100.0, 100.0]]))  # not modified in place
    # without iterations nothing moves
    assert torch.equal(lloyd_steps(points, start, iters=0).centroids, start)


def test_more_centres_than_distinct_points_stay_finite():
    points = torch.tensor([[1.0, 1.0]] * 4 + [[5.0, 1.0]] * 3 + [[1.0, 7.0]] * 2)
    r = kmeans(points, 6, iters=10, seed=1)
    assert torch.isfinite(r.centroids).all() and r.inertia == 0.0
    distinct = {tuple(p) for p in points.tolist()}
    assert {tuple(c) for c in r.centroids.tolist()} == distinct  # every centre on a point, all covered
    assert r.counts.sum() == 9


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"points must be \(N, D\)"):
        kmeans(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        kmeans(torch.zeros(5, 2), 0)
    with pytest.raises(ValueError, match="at least one point"):
        kmeans(torch.zeros(0, 2), 2)
    with pytest.raises(ValueError, match="iters must be"):
        lloyd_steps(torch.zeros(5, 2), torch.zeros(2, 2), iters=-1)


# ------------------------------------------------------------------ data parallel


def _data():
    points = _blobs([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0], [8.0, 2.0], [2.0, 8.0]], 15, 0.8, 3)
    return points[torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(0))]


SPLIT = 37  # rank 0 holds rows [:37], rank 1 the other 53: unequal shards
FAR = torch.tensor([[0.0, 0.0], [4.0, 4.0], [50.0, 50.0], [60.0, -60.0]])  # two centres get no point


def _compute(points):
    r = kmeans(points, 9, iters=30, seed=5)
    e = lloyd_steps(points, FAR, iters=30)
    return {"centroids": r.centroids, "counts": r.counts, "inertia": torch.tensor(r.inertia),
            "iterations": torch.tensor(r.iterations), "relocated": e.centroids, "relocated_counts": e.counts}


def _on_rank(rank: int, world: int) -> dict[str, torch.Tensor]:
    points = _data()
    return _compute(points[:SPLIT] if rank == 0 else points[SPLIT:])


def test_two_replicas_agree_with_one_process_on_the_concatenated_data(tmp_path):
    ranks = run_on_ranks(_on_rank, tmp_path)
    single = _compute(_data())
    for key, value in single.items():
        assert torch.equal(ranks[0][key], ranks[1][key]), key  # replicas identical
        torch.testing.assert_close(ranks[0][key], value.to(ranks[0][key].dtype), rtol=1e-5, atol=1e-5,
                                   msg=key)
    # the far centres really were relocated (and the answer is not the start)
    assert (single["relocated_counts"] > 0).all() and single["relocated"].abs().max() < 20
