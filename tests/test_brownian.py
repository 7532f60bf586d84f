"""BrownianPath: exactness, reproducibility, statistics, cache bound, arguments, noise-sampler adaptor.

Statistical tests use fixed seeds and tolerances of 5 standard errors (written out at each test), so they
cannot flake, yet each would catch a variance off by a factor of 2 by a wide margin.
"""

from __future__ import annotations

import math
import random

import pytest
import torch

from fewstep.noise import BrownianPath, brownian_noise_sampler
from fewstep.noise.normals import NATIVE_MIN_NUMEL, node_key, philox4x32_10

SEEDS = [3, 14, 15, 92, 65, 35, 89, 79]


def test_philox_matches_random123_known_answers() -> None:
    # Random123's kat_vectors, the three "philox4x32 10" lines.
    m = 0xFFFFFFFF
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((m, m, m, m), (m, m), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for counter, key, want in cases:
        assert tuple(int(w) for w in philox4x32_10(counter, key)) == want
    # Vectorised over a batch of counters, the same words as one at a time.
    words = philox4x32_10((torch.tensor([0, m, 0x243F6A88]), 0, 0, 0), (7, 9))
    for i, c0 in enumerate((0, m, 0x243F6A88)):
        assert [int(w[i]) for w in words] == [int(w) for w in philox4x32_10((c0, 0, 0, 0), (7, 9))]


def test_node_keys_are_distinct_and_mixed() -> None:
    # SplitMix64 is a bijection, so one seed's nodes and streams never share a generator seed; the low 32 bits
    # (all that the CPU's Mersenne Twister keeps) are spread too.
    keys = {node_key(seed, node, stream) for seed in (0, 1, 2**40) for node in range(1, 2000) for stream in (0, 1)}
    assert len(keys) == 3 * 1999 * 2
    assert len({k & 0xFFFFFFFF for k in keys}) == len(keys)
    assert all(0 <= k < 2**64 for k in keys)


# ----------------------------------------------------------------------------------------- exactness


def _random_partition(rng: random.Random, s: float, t: float, n: int) -> list[float]:
    inner = sorted(rng.uniform(s, t) for _ in range(n))
    return [s, *inner, t]


def test_increments_over_a_partition_sum_to_the_total() -> None:
    path = BrownianPath((3,), seeds=[0, 1, 2], t0=-1.5, t1=2.0, dtype=torch.float64)
    rng = random.Random(0)
    for s, t in [(-1.5, 2.0), (-0.3, 1.7), (0.25, 0.2500007)]:
        total = path.increment(s, t)
        grid = _random_partition(rng, s, t, 40)
        pieces = list(zip(grid[:-1], grid[1:], strict=True))
        rng.shuffle(pieces)  # any query order
        assert torch.allclose(torch.stack([path.increment(a, b) for a, b in pieces]).sum(0), total, rtol=0, atol=1e-12)
        # reversed intervals give the negated increments
        assert torch.allclose(torch.stack([path.increment(b, a) for a, b in pieces]).sum(0), -total, rtol=0, atol=1e-12)
        # and the increment is W(t) - W(s)
        assert torch.allclose(path(t) - path(s), total, rtol=0, atol=1e-12)
    assert torch.equal(path(-1.5), torch.zeros(3, 3, dtype=torch.float64))


def test_reversed_interval_negates_the_increment_and_keeps_the_levy_area() -> None:
    path = BrownianPath((2, 2), seeds=SEEDS[:3], t0=0.0, t1=5.0, dtype=torch.float64)
    w, h = path.increment(1.234, 3.21, levy_area=True)
    w_rev, h_rev = path.increment(3.21, 1.234, levy_area=True)
    assert torch.equal(w_rev, -w) and torch.equal(h_rev, h)
    w0, h0 = path.increment(2.0, 2.0, levy_area=True)
    assert w0.abs().max() == 0 and h0.abs().max() == 0 and w0.shape == (3, 2, 2)


def test_levy_areas_combine_by_the_splitting_formula() -> None:
    # For s < m < t: (t - s) H(s,t) = h1 H1 + h2 H2 + (h2 W1 - h1 W2) / 2, h1 = m - s, h2 = t - m.
    path = BrownianPath((4,), seeds=SEEDS, t0=0.0, t1=3.0, dtype=torch.float64)
    rng = random.Random(1)
    for _ in range(20):
        s, m, t = sorted(rng.uniform(0.0, 3.0) for _ in range(3))
        w, h = path.increment(s, t, levy_area=True)
        w1, h1 = path.increment(s, m, levy_area=True)
        w2, h2 = path.increment(m, t, levy_area=True)
        a, b = m - s, t - m
        assert torch.allclose(w1 + w2, w, rtol=0, atol=1e-12)
        assert torch.allclose((a * h1 + b * h2 + 0.5 * (b * w1 - a * w2)) / (a + b), h, rtol=0, atol=1e-9)


def test_same_path_whatever_the_query_order_and_cache() -> None:
    rng = random.Random(2)
    intervals = [(rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0)) for _ in range(40)]  # either orientation
    intervals += [(0.0, 1.0), (0.5, 0.75), (0.25, 0.2500001)]

    def query(path: BrownianPath, order: list[int]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return {i: path.increment(intervals[i][0], intervals[i][1], levy_area=True) for i in order}

    order = list(range(len(intervals)))
    first = query(BrownianPath((2, 3), seeds=[5, 6], dtype=torch.float64), order)
    path = BrownianPath((2, 3), seeds=[5, 6], dtype=torch.float64, cache_size=7)
    rng.shuffle(order)
    second = query(path, order)
    path.clear_cache()
    rng.shuffle(order)
    third = query(path, order)
    for i in range(len(intervals)):
        for got in (second[i], third[i]):
            assert torch.equal(got[0], first[i][0]) and torch.equal(got[1], first[i][1])


def test_tree_times_do_not_depend_on_tol() -> None:
    # Dyadic times above the leaves are nodes of the same tree, whatever its depth.
    coarse = BrownianPath((3,), seeds=[4, 2], t0=1.0, t1=3.0, tol=1e-2, dtype=torch.float64)
    fine = BrownianPath((3,), seeds=[4, 2], t0=1.0, t1=3.0, dtype=torch.float64)
    assert coarse.depth == 8 and fine.depth == 20
    for s, t in [(1.0, 3.0), (1.5, 2.0), (1.0, 1.0 + 2.0**-6), (2.5, 2.75)]:
        assert torch.equal(coarse.increment(s, t, levy_area=True)[1], fine.increment(s, t, levy_area=True)[1])
        assert torch.equal(coarse.increment(s, t), fine.increment(s, t))


def test_path_is_continuous_inside_the_leaves() -> None:
    path = BrownianPath((5,), seeds=[1], dtype=torch.float64)
    for t in (0.1, 0.333333333, 0.7):
        assert 0 < path.increment(t, t + 1e-13).abs().max() < 1e-8


# ----------------------------------------------------------------------------------------- per-sample seeds


def test_a_batch_equals_its_samples_drawn_one_at_a_time() -> None:
    batch = BrownianPath((2, 3), seeds=SEEDS, t0=0.0, t1=2.0, dtype=torch.float64)
    singles = [BrownianPath((2, 3), seeds=[s], t0=0.0, t1=2.0, dtype=torch.float64) for s in SEEDS]
    for s, t in [(0.0, 2.0), (0.3, 1.1), (1.7, 1.7000003)]:
        w, h = batch.increment(s, t, levy_area=True)
        for b, single in enumerate(singles):
            w_b, h_b = single.increment(s, t, levy_area=True)
            assert torch.equal(w[b], w_b[0]) and torch.equal(h[b], h_b[0])
    # one seed expanded to a batch means consecutive seeds; a tensor of seeds is the same as a list
    expanded = BrownianPath((2, 3), seeds=3, batch_size=4, t0=0.0, t1=2.0, dtype=torch.float64)
    listed = BrownianPath((2, 3), seeds=torch.tensor([3, 4, 5, 6]), t0=0.0, t1=2.0, dtype=torch.float64)
    assert expanded.seeds == (3, 4, 5, 6)
    assert torch.equal(expanded(0.77), listed(0.77))
    # different seeds, different paths; large seeds use both key words
    big = BrownianPath((2, 3), seeds=[2**32 + 3, 2**64 - 1], t0=0.0, t1=2.0, dtype=torch.float64)
    assert not torch.equal(big(1.0)[0], listed(1.0)[0])
    assert not torch.equal(big(1.0)[0], big(1.0)[1])


# ----------------------------------------------------------------------------------------- statistics

N_PATHS = 20_000
SHAPE = (2,)
N = N_PATHS * SHAPE[0]  # independent scalar Brownian motions


@pytest.fixture(scope="module")
def stats_path() -> BrownianPath:
    return BrownianPath(SHAPE, seeds=list(range(1000, 1000 + N_PATHS)), t0=0.5, t1=2.5, dtype=torch.float64)


def _z(estimate: float, expected: float, standard_error: float) -> float:
    return abs(estimate - expected) / standard_error


def test_increments_have_mean_zero_and_variance_t_minus_s(stats_path: BrownianPath) -> None:
    # Var of a sample variance of N normals is 2 sigma^4 / N: relative standard error sqrt(2/N) = 0.7%, so the
    # 5-SE bound is 3.5% (a factor 2 is a 140-SE miss). Kurtosis 3 (Gaussian): standard error sqrt(24/N) = 0.024.
    for s, t in [(0.5, 2.5), (1.5, 2.0), (0.7654321, 1.9876543), (1.2345678, 1.2346678), (2.0 - 3e-4, 2.0 + 5e-4)]:
        x = stats_path.increment(s, t).flatten()
        assert _z(x.mean().item(), 0.0, math.sqrt((t - s) / N)) < 5
        var = x.var().item()
        assert _z(var, t - s, (t - s) * math.sqrt(2 / N)) < 5, (s, t, var / (t - s))
        kurtosis = (x**4).mean().item() / var**2
        assert _z(kurtosis, 3.0, math.sqrt(24 / N)) < 5


def test_disjoint_increments_are_uncorrelated(stats_path: BrownianPath) -> None:
    # The sample correlation of independent normals has standard error 1/sqrt(N) = 0.005.
    cuts = [0.5, 0.61, 0.9876, 1.5, 1.5000123, 1.5001, 2.2, 2.5]
    increments = [stats_path.increment(a, b).flatten() for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
    corr = torch.corrcoef(torch.stack(increments))
    off = corr - torch.eye(len(increments), dtype=corr.dtype)
    assert off.abs().max().item() < 5 / math.sqrt(N)


def test_covariance_of_path_values_is_min_s_t(stats_path: BrownianPath) -> None:
    # Path-relative time r = t - t0: E[W(r1) W(r2)] = min(r1, r2); the product's variance is r1 (r1 + r2) (r1 <= r2).
    times = [0.6, 1.123456, 1.5, 2.4]
    values = {t: stats_path(t).flatten() for t in times}
    for i, a in enumerate(times):
        for b in times[i:]:
            r1, r2 = a - 0.5, b - 0.5
            cov = (values[a] * values[b]).mean().item()
            assert _z(cov, r1, math.sqrt(r1 * (r1 + r2) / N)) < 5, (a, b, cov, r1)


def test_levy_area_variance_and_independence(stats_path: BrownianPath) -> None:
    # Var H(s, t) = (t - s)/12 (relative 5-SE bound 3.5%; a factor 2 misses by 140 SE); H is uncorrelated with the
    # increment over the same interval and with the areas and increments of disjoint intervals (SE 1/sqrt(N)).
    intervals = [(0.5, 2.5), (0.5, 1.5), (1.5, 2.5), (0.8765432, 1.3456789), (2.1, 2.1001234)]
    ws, hs = [], []
    for s, t in intervals:
        w, h = stats_path.increment(s, t, levy_area=True)
        w, h = w.flatten(), h.flatten()
        assert _z(h.mean().item(), 0.0, math.sqrt((t - s) / 12 / N)) < 5
        assert _z(h.var().item(), (t - s) / 12, (t - s) / 12 * math.sqrt(2 / N)) < 5, (s, t)
        kurtosis = (h**4).mean().item() / h.var().item() ** 2
        assert _z(kurtosis, 3.0, math.sqrt(24 / N)) < 5
        ws.append(w)
        hs.append(h)
    corr = torch.corrcoef(torch.stack(ws + hs))
    k = len(intervals)
    # W vs H over the same interval; H vs H and W vs H over disjoint intervals ([0.5,1.5] / [1.5,2.5] and so on).
    pairs = [(i, k + i) for i in range(k)] + [(k + 1, k + 2), (k + 3, k + 4), (k + 2, k + 3), (3, k + 4)]
    for i, j in pairs:
        assert abs(corr[i, j].item()) < 5 / math.sqrt(N), (i, j)
    # The area over [0.5, 2.5] is built from its halves: H = (H1 + H2)/2 + (W1 - W2)/4, so Cov(H, W1) = Var(W1)/4
    # = 1/4 (a wrong bridge coefficient would move it); for jointly normal H, W1 the product has variance
    # Var(H) Var(W1) + Cov^2 = 1/6 + 1/16.
    cov_h_w1 = (hs[0] * ws[1]).mean().item()
    assert _z(cov_h_w1, 0.25, math.sqrt((1 / 6 + 1 / 16) / N)) < 5


def test_inside_a_leaf_the_path_is_the_documented_parabola() -> None:
    # A tree of depth 2 (leaves of length L = 1/4): at the tree's times the law is exact; at position u inside a
    # leaf, W(a + uL) - W(a) = u W + 6u(1 - u) H has variance L (u^2 + 3 u^2 (1 - u)^2), less than the u L of
    # Brownian motion by L u (1 - u)(1 - 3u(1 - u)) <= L / 12. Relative 5-SE bound 3.5%.
    n = 20_000
    path = BrownianPath((2,), seeds=list(range(n)), tol=0.25, dtype=torch.float64)
    assert path.depth == 2

    def parabola(u: float) -> float:
        return 0.25 * (u**2 + 3 * u**2 * (1 - u) ** 2)

    cases = [(0.0, 0.25, 0.25), (0.5, 1.0, 0.5), (0.0, 0.125, parabola(0.5)), (0.25, 0.3125, parabola(0.25))]
    for s, t, expected in cases:
        x = path.increment(s, t).flatten()
        assert _z(x.var().item(), expected, expected * math.sqrt(2 / x.numel())) < 5, (s, t, x.var().item(), expected)
    assert math.isclose(0.125 - parabola(0.5), 0.25 / 16)  # the deficit at a leaf midpoint: L/16, 12.5% here


# ----------------------------------------------------------------------------------------- cache


def test_cache_is_bounded_and_eviction_does_not_change_values() -> None:
    rng = random.Random(3)
    intervals = [(rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0)) for _ in range(150)]
    small = BrownianPath((3, 2), seeds=[1, 2, 3], dtype=torch.float64, cache_size=5)
    store = small._store

    def checked_store(node: int, value: tuple[torch.Tensor, torch.Tensor]) -> None:
        store(node, value)
        assert len(small._cache) <= 5

    small._store = checked_store  # type: ignore[method-assign]
    unbounded = BrownianPath((3, 2), seeds=[1, 2, 3], dtype=torch.float64, cache_size=10**9)
    uncached = BrownianPath((3, 2), seeds=[1, 2, 3], dtype=torch.float64, cache_size=0)
    for s, t in intervals:
        w, h = small.increment(s, t, levy_area=True)
        assert small.cache_info()["size"] <= 5
        for other in (unbounded, uncached):
            w_o, h_o = other.increment(s, t, levy_area=True)
            assert torch.equal(w, w_o) and torch.equal(h, h_o)
    assert uncached.cache_info()["size"] == 0
    assert unbounded.cache_info()["size"] > 1000  # what the bound saves: the nodes touched by 150 queries
    info = BrownianPath((1,), seeds=[0]).cache_info()
    assert info == {"hits": 0, "misses": 0, "size": 0, "maxsize": 128}


def test_a_long_sequential_run_keeps_the_cache_bounded_and_hits_it() -> None:
    path = BrownianPath((4,), seeds=[7], t0=0.002, t1=80.0, cache_size=64)
    grid = torch.linspace(80.0, 0.002, 151).tolist()
    for s, t in zip(grid[:-1], grid[1:], strict=True):
        path.increment(s, t)
        assert path.cache_info()["size"] <= 64
    info = path.cache_info()
    assert info["hits"] > info["misses"] / 2


# ----------------------------------------------------------------------------------------- dtypes, devices, arguments


def test_float32_and_float64_agree() -> None:
    p32 = BrownianPath((3, 4), seeds=[1, 2], t0=0.0, t1=10.0)
    p64 = BrownianPath((3, 4), seeds=[1, 2], t0=0.0, t1=10.0, dtype=torch.float64)
    for s, t in [(0.0, 10.0), (2.5, 7.123), (3.3, 3.30001)]:
        w32, h32 = p32.increment(s, t, levy_area=True)
        w64, h64 = p64.increment(s, t, levy_area=True)
        assert w32.dtype == h32.dtype == torch.float32 and w64.dtype == torch.float64
        assert w32.shape == (2, 3, 4) and h32.shape == (2, 3, 4)
        # the tree is float64 either way, so the float32 result is the float64 one rounded
        assert torch.equal(w32, w64.float()) and torch.equal(h32, h64.float())
    assert BrownianPath((2,), seeds=[1], dtype=torch.bfloat16)(0.5).dtype == torch.bfloat16


def test_devices_give_identical_values() -> None:
    on_cpu = BrownianPath((3,), seeds=[1, 2], t0=0.0, t1=1.0)
    also_cpu = BrownianPath((3,), seeds=[1, 2], t0=0.0, t1=1.0, device=torch.device("cpu"), compute_device="cpu")
    assert torch.equal(on_cpu.increment(0.1, 0.9), also_cpu.increment(0.1, 0.9))
    if torch.cuda.is_available():  # noise computed on the CPU and moved: bit-identical
        on_gpu = BrownianPath((3,), seeds=[1, 2], t0=0.0, t1=1.0, device="cuda")
        assert torch.equal(on_gpu.increment(0.1, 0.9).cpu(), on_cpu.increment(0.1, 0.9))
        computed_on_gpu = BrownianPath((3,), seeds=[1, 2], dtype=torch.float64, device="cuda", compute_device="cuda")
        reference = BrownianPath((3,), seeds=[1, 2], dtype=torch.float64)
        assert torch.allclose(computed_on_gpu.increment(0.1, 0.9).cpu(), reference.increment(0.1, 0.9), atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"shape": (0, 3)}, "shape"),
        ({"shape": (-1,)}, "shape"),
        ({"shape": (2.5,)}, "shape"),
        ({"shape": None}, "shape"),
        ({"shape": (2**16, 2**16)}, "shape"),
        ({"seeds": -1}, "seeds"),
        ({"seeds": 2**64}, "seeds"),
        ({"seeds": []}, "seeds"),
        ({"seeds": [1, 2.0]}, "seeds"),
        ({"seeds": True}, "seeds"),
        ({"seeds": "12"}, "seeds"),
        ({"seeds": torch.tensor([1.0, 2.0])}, "seeds"),
        ({"seeds": torch.tensor([[1, 2]])}, "seeds"),
        ({"seeds": [1, 2], "batch_size": 3}, "batch_size"),
        ({"seeds": 1, "batch_size": 0}, "batch_size"),
        ({"t0": 1.0, "t1": 1.0}, "t1"),
        ({"t0": float("nan")}, "t0"),
        ({"t1": float("inf")}, "t1"),
        ({"tol": 0.0}, "tol"),
        ({"tol": 1e-300}, "tol"),
        ({"cache_size": -1}, "cache_size"),
        ({"dtype": torch.int64}, "dtype"),
    ],
)
def test_bad_constructor_arguments_raise_value_error_naming_them(kwargs: dict, name: str) -> None:
    arguments = {"shape": (2,), "seeds": [1], **kwargs}
    with pytest.raises(ValueError, match=f"^{name}:"):
        BrownianPath(**arguments)


def test_bad_query_times_raise_value_error_naming_them() -> None:
    path = BrownianPath((2,), seeds=[1], t0=0.0, t1=1.0)
    for call, name in [
        (lambda: path.increment(0.5, 1.5), "t"),
        (lambda: path.increment(-0.1, 0.5), "s"),
        (lambda: path.increment(0.1, float("nan")), "t"),
        (lambda: path.increment(torch.tensor([0.1, 0.2]), 0.5), "s"),
        (lambda: path.increment("0.1", 0.5), "s"),  # type: ignore[call-overload]
        (lambda: path(1.00001), "t"),
    ]:
        with pytest.raises(ValueError, match=f"^{name}:"):
            call()
    # float32 rounding of the ends is clamped, e.g. float32 sigmas against a path built from float64 ends
    sigma_max = torch.tensor(14.6, dtype=torch.float32)
    assert float(sigma_max) > 14.6
    scaled = BrownianPath((2,), seeds=[1], t0=0.03, t1=14.6)
    assert torch.equal(scaled.increment(sigma_max, 1.0), scaled.increment(14.6, 1.0))
    assert torch.equal(path(1.0000001), path(1.0)) and torch.equal(path.increment(-1e-7, 0.5), path(0.5))
    # tensors and numpy-style scalars are accepted as times
    assert torch.equal(
        path.increment(torch.tensor(0.25), torch.tensor(0.5, dtype=torch.float64)), path.increment(0.25, 0.5)
    )


# ----------------------------------------------------------------------------------------- noise sampler


def test_noise_sampler_is_the_normalised_increment() -> None:
    path = BrownianPath((3,), seeds=SEEDS, t0=0.03, t1=14.6, dtype=torch.float64)
    noise = brownian_noise_sampler(path)
    sigmas = torch.tensor([14.6, 7.0, 3.1, 1.0, 0.3, 0.03], dtype=torch.float64)
    total = torch.zeros(len(SEEDS), 3, dtype=torch.float64)
    for s, t in zip(sigmas[:-1], sigmas[1:], strict=True):  # k-diffusion passes sigma tensors
        z = noise(s, t)
        assert torch.allclose(z, path.increment(float(s), float(t)) / math.sqrt(float(s - t)), rtol=0, atol=1e-15)
        total += z * (s - t).sqrt()
    assert torch.allclose(total, path.increment(14.6, 0.03), rtol=0, atol=1e-12)
    assert torch.allclose(noise(0.3, 1.0), -noise(1.0, 0.3), rtol=0, atol=0)
    with pytest.raises(ValueError, match="^t:"):
        noise(1.0, 1.0)
    # a transform maps the sampler's times to the path's
    log_path = BrownianPath((3,), seeds=SEEDS, t0=math.log(0.03), t1=math.log(14.6), dtype=torch.float64)
    log_noise = brownian_noise_sampler(log_path, transform=math.log)
    expected = log_path.increment(math.log(7.0), math.log(3.1)) / math.sqrt(math.log(7.0) - math.log(3.1))
    assert torch.allclose(log_noise(7.0, 3.1), expected, rtol=0, atol=1e-15)


def test_noise_sampler_steps_are_standard_normal() -> None:
    # One step of a 10-step grid per column: mean 0 and variance 1 (5-SE bounds, N = 20,000 samples per step).
    n = 20_000
    path = BrownianPath((1,), seeds=list(range(n)), t0=0.002, t1=80.0, dtype=torch.float64, tol=1e-4)
    noise = brownian_noise_sampler(path)
    sigmas = torch.linspace(80.0, 0.002, 11, dtype=torch.float64).tolist()
    steps = torch.stack([noise(s, t).flatten() for s, t in zip(sigmas[:-1], sigmas[1:], strict=True)])
    assert (steps.mean(1).abs() < 5 / math.sqrt(n)).all()
    assert ((steps.var(1) - 1).abs() < 5 * math.sqrt(2 / n)).all()
    off = torch.corrcoef(steps) - torch.eye(10, dtype=torch.float64)
    assert off.abs().max() < 5 / math.sqrt(n)


def test_noise_sampler_drives_k_diffusion_per_sample_reproducibly() -> None:
    sampling = pytest.importorskip("k_diffusion.sampling")
    sigmas = sampling.get_sigmas_karras(8, 0.02, 10.0)

    def model(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # a Gaussian data model, exact denoiser
        return x / (1 + sigma[:, None] ** 2)

    def run(seeds: list[int]) -> torch.Tensor:
        x = torch.stack([torch.randn(3, generator=torch.Generator().manual_seed(s)) for s in seeds]) * 10.0
        path = BrownianPath((3,), seeds=seeds, t0=float(sigmas[-2]), t1=float(sigmas[0]))
        return sampling.sample_euler_ancestral(
            model, x, sigmas, disable=True, noise_sampler=brownian_noise_sampler(path)
        )

    batch = run(SEEDS[:4])
    for b, seed in enumerate(SEEDS[:4]):
        assert torch.allclose(run([seed])[0], batch[b], rtol=0, atol=1e-6)
    assert torch.equal(run(SEEDS[:4]), batch)


def test_image_sized_paths_keep_every_promise() -> None:
    # From NATIVE_MIN_NUMEL elements per sample the normals come from torch's generator: the same guarantees.
    shape = (4, 16, 16)
    assert math.prod(shape) >= NATIVE_MIN_NUMEL
    path = BrownianPath(shape, seeds=[5, 6, 7], dtype=torch.float64)
    grid = [0.0, 0.13, 0.5, 0.51, 0.9, 1.0]
    parts = [path.increment(a, b) for a, b in zip(grid[:-1], grid[1:], strict=True)]
    torch.testing.assert_close(sum(parts), path.increment(0.0, 1.0), rtol=0, atol=1e-12)
    alone = BrownianPath(shape, seeds=[6], dtype=torch.float64, cache_size=0)
    for a, b in reversed(list(zip(grid[:-1], grid[1:], strict=True))):
        assert torch.equal(alone.increment(a, b)[0], path.increment(a, b)[1])
    # 3 x 1024 standard normals per step: mean and variance within 5 standard errors
    z = torch.stack([p / math.sqrt(b - a) for p, a, b in zip(parts, grid[:-1], grid[1:], strict=True)])
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n) and abs(float(z.var()) - 1.0) < 5 * math.sqrt(2 / n)
