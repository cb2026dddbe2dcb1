"""Every merge method against an independent reference written here from the paper's formula
(small random fp32 tensors, max abs diff ≤ 1e-6), plus the edge cases and pitfalls."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from merge.methods.base import Job, kth_largest, one_chunk, uniform  # noqa: E402
from merge.methods.breadcrumbs import breadcrumbs  # noqa: E402
from merge.methods.dare import dare  # noqa: E402
from merge.methods.della import della  # noqa: E402
from merge.methods.linear import Linear, linear  # noqa: E402
from merge.methods.model_stock import model_stock  # noqa: E402
from merge.methods.nuslerp import nuslerp  # noqa: E402
from merge.methods.passthrough import passthrough  # noqa: E402
from merge.methods.registry import METHODS  # noqa: E402
from merge.methods.slerp import slerp  # noqa: E402
from merge.methods.task_arithmetic import task_arithmetic  # noqa: E402
from merge.methods.ties import ties  # noqa: E402

TOL = 1e-6


def rnd(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def trio() -> tuple[torch.Tensor, list[torch.Tensor]]:
    base = rnd(24, 16, seed=1)
    return base, [base + 0.1 * rnd(24, 16, seed=2), base + 0.1 * rnd(24, 16, seed=3)]


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert float((a - b).abs().max()) <= TOL


# ------------------------------------------------------------------ references (elementwise loops)
def ref_topk_mask(d: torch.Tensor, density: float) -> torch.Tensor:
    if density >= 1:
        return torch.ones_like(d, dtype=torch.bool)
    if density <= 0:
        return torch.zeros_like(d, dtype=torch.bool)
    k = max(1, int(density * d.numel()))
    order = sorted(range(d.numel()), key=lambda i: -abs(float(d.view(-1)[i])))
    m = torch.zeros(d.numel(), dtype=torch.bool)
    m[order[:k]] = True
    return m.view(d.shape)


def ref_disjoint(base: torch.Tensor, deltas: list[torch.Tensor], w: list[float], normalize: bool,
                 lam: float, consensus: bool = True) -> torch.Tensor:
    out = base.clone().view(-1)
    for j in range(out.numel()):
        vals = [float(d.view(-1)[j]) * wi for d, wi in zip(deltas, w, strict=False)]
        if consensus:
            gamma = 1.0 if sum(vals) >= 0 else -1.0
            sel = [(v, wi) for v, wi in zip(vals, w, strict=False) if v != 0 and math.copysign(1, v) == gamma]
        else:
            sel = list(zip(vals, w, strict=False))
        num = sum(v for v, _ in sel)
        den = sum(wi for _, wi in sel) if consensus else sum(w)
        if normalize:
            num = num / (den if den != 0 else 1.0)
        out[j] = out[j] + lam * num
    return out.view(base.shape)


# ------------------------------------------------------------------ linear / task arithmetic
def test_linear_reference(trio: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    base, (a, b) = trio
    w = [0.2, 0.5, 1.3]
    close(linear([base, a, b], w), (0.2 * base + 0.5 * a + 1.3 * b) / 2.0)
    close(linear([base, a, b], w, normalize=False), 0.2 * base + 0.5 * a + 1.3 * b)


def test_linear_all_equal_models_is_identity() -> None:
    x = rnd(7, 5)
    close(linear([x, x.clone(), x.clone()], [1.0, 2.0, 3.0]), x)


def test_linear_zero_sum_weights_is_an_error() -> None:
    x = rnd(4)
    with pytest.raises(ValueError, match="sum to 0"):
        linear([x, x], [1.0, -1.0])
    job = Job("t", (4,), False, {"normalize": True}, [{"weight": 1.0}, {"weight": -1.0}])
    with pytest.raises(ValueError, match="sum to 0"):
        Linear().validate(job)


def test_linear_zero_weight_drops_a_model(trio: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    base, (a, _) = trio
    close(linear([base, a], [0.0, 2.0]), a)


def test_task_arithmetic_reference(trio: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    base, (a, b) = trio
    close(task_arithmetic(base, [a, b], [0.7, -0.3], lambda_=1.5),
          base + 1.5 * (0.7 * (a - base) - 0.3 * (b - base)))
    close(task_arithmetic(base, [a, b], [1.0, 3.0], normalize=True),
          base + (1.0 * (a - base) + 3.0 * (b - base)) / 4.0)
    with pytest.raises(ValueError, match="sum to 0"):
        task_arithmetic(base, [a, b], [1.0, -1.0], normalize=True)


def test_task_arithmetic_zero_weights_gives_base(trio: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    base, (a, b) = trio
    close(task_arithmetic(base, [a, b], [0.0, 0.0]), base)


# ------------------------------------------------------------------ TIES
@pytest.mark.parametrize("densities", [(0.3, 0.6), (1.0, 1.0), (0.0, 0.5), (0.0, 0.0), (0.01, 0.99)])
@pytest.mark.parametrize("normalize", [True, False])
def test_ties_reference(trio: tuple[torch.Tensor, list[torch.Tensor]], densities: tuple[float, float],
                        normalize: bool) -> None:
    base, xs = trio
    w = [0.6, 1.4]
    deltas = [(x - base) * ref_topk_mask(x - base, d) for x, d in zip(xs, densities, strict=False)]
    close(ties(base, xs, w, densities, lambda_=0.9, normalize=normalize),
          ref_disjoint(base, deltas, w, normalize, 0.9))


def test_ties_sign_election_uses_weighted_deltas() -> None:
    # one entry: deltas +1 and -0.6; unweighted sum +0.4 elects +, weighted (0.2, 1.0) sum -0.4 elects −
    base = torch.zeros(1)
    out = ties(base, [torch.tensor([1.0]), torch.tensor([-0.6])], [0.2, 1.0], [1.0, 1.0])
    close(out, torch.tensor([-0.6]))  # only the second (agreeing) delta, weighted mean = -0.6·1/1


def test_ties_all_equal_models_gives_that_model(trio: tuple[torch.Tensor, list[torch.Tensor]]) -> None:
    base, (a, _) = trio
    close(ties(base, [a, a.clone(), a.clone()], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]), a)


def test_kth_largest_exact_on_big_and_adversarial_inputs() -> None:
    x = rnd(300_000).abs()
    srt = x.sort(descending=True).values
    for k in (1, 7, 150_000, 299_999, 300_000):
        assert kth_largest(lambda: iter([x[:100_000], x[100_000:]]), x.numel(), k) == float(srt[k - 1])
    y = torch.cat([torch.zeros(200_000), torch.ones(100_000)])  # heavy ties defeat the sample bracket
    assert kth_largest(lambda: iter([y]), y.numel(), 150_000) == 0.0
    assert kth_largest(lambda: iter([y]), y.numel(), 100_000) == 1.0


def test_kth_largest_streaming_path_when_select_buffers_are_busy() -> None:
    """Other worker threads may hold every in-memory selection buffer: the sampled streaming
    path (and fresh buffers for small streams) must give the same exact answers."""
    from merge.methods import base as mb

    held = [mb._take_select_buffers() for _ in range(mb.WHOLE_SELECT_SLOTS)]
    try:
        assert mb._take_select_buffers() is None
        for n in (100, 5_000, 300_000):
            x = rnd(n).abs()
            srt = x.sort(descending=True).values
            for k in {1, n // 3 or 1, n}:
                assert kth_largest(lambda x=x, n=n: iter([x[: n // 2], x[n // 2 :]]), n, k) == float(srt[k - 1])
    finally:
        for bufs in held:
            if bufs is not None:
                mb._give_select_buffers(bufs)


# ------------------------------------------------------------------ DARE
def ref_dare(base: torch.Tensor, xs: list[torch.Tensor], w: list[float], dens: list[float], seed: int, name: str,
             consensus: bool, normalize: bool, lam: float) -> torch.Tensor:
    deltas = []
    for i, (x, d) in enumerate(zip(xs, dens, strict=False)):
        u = uniform((seed, name, i), 0, base.numel()).view(base.shape)  # the documented random stream
        if d >= 1:
            deltas.append(x - base)
        else:
            deltas.append(torch.where(u < d, (x - base) / d, 0.0) if d > 0 else torch.zeros_like(base))
    return ref_disjoint(base, deltas, w, normalize, lam, consensus=consensus)


@pytest.mark.parametrize("consensus", [False, True])
@pytest.mark.parametrize("dens", [(0.3, 0.7), (1.0, 1.0), (0.0, 0.4)])
def test_dare_reference(trio: tuple[torch.Tensor, list[torch.Tensor]], consensus: bool,
                        dens: tuple[float, float]) -> None:
    base, xs = trio
    w = [0.5, 1.0]
    got = dare(base, xs, w, dens, consensus=consensus, seed=3, name="t", lambda_=1.1)
    close(got, ref_dare(base, xs, w, list(dens), 3, "t", consensus, False, 1.1))


def test_dare_rescale_keeps_expected_delta() -> None:
    base = torch.zeros(200_000)
    x = torch.ones(200_000)
    out = dare(base, [x], [1.0], [0.25], consensus=False, seed=1, name="m")
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 4.0))  # survivors scaled by 1/(1−p) = 1/density
    assert abs(float(out.mean()) - 1.0) < 0.02  # unbiased
    assert abs(kept.numel() / 200_000 - 0.25) < 0.01


def test_dare_is_seeded_and_chunk_invariant() -> None:
    a = uniform((0, "x", 0), 0, 3_000_000)
    b = torch.cat([uniform((0, "x", 0), 0, 1_234_567), uniform((0, "x", 0), 1_234_567, 3_000_000 - 1_234_567)])
    assert torch.equal(a, b)
    assert not torch.equal(uniform((1, "x", 0), 0, 1000), uniform((0, "x", 0), 0, 1000))


# ------------------------------------------------------------------ breadcrumbs
def ref_band_mask(d: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    if density >= 1:
        return torch.ones_like(d, dtype=torch.bool)
    n = d.numel()
    target, n_top = int(density * n), int(gamma * n)
    n_bot = max(0, n - target - n_top)
    order = sorted(range(n), key=lambda i: abs(float(d.view(-1)[i])))  # ascending
    m = torch.zeros(n, dtype=torch.bool)
    m[order[n_bot:n_bot + target]] = True
    return m.view(d.shape)


@pytest.mark.parametrize("consensus", [False, True])
@pytest.mark.parametrize("dg", [((0.8, 0.05), (0.5, 0.01)), ((0.5, 0.0), (0.9, 0.2)), ((1.0, 0.1), (0.0, 0.1)),
                                ((0.3, 0.9), (0.6, 0.5))])
def test_breadcrumbs_reference(trio: tuple[torch.Tensor, list[torch.Tensor]], consensus: bool,
                               dg: tuple[tuple[float, float], tuple[float, float]]) -> None:
    base, xs = trio
    w = [0.7, 0.3]
    dens, gam = [p[0] for p in dg], [p[1] for p in dg]
    deltas = [(x - base) * ref_band_mask(x - base, d, g) for x, d, g in zip(xs, dens, gam, strict=False)]
    got = breadcrumbs(base, xs, w, dens, gam, consensus=consensus, normalize=consensus)
    close(got, ref_disjoint(base, deltas, w, consensus, 1.0, consensus=consensus))


def test_breadcrumbs_empty_top_set_keeps_the_largest() -> None:
    # gamma·n < 1: no outliers to drop; the kept band must reach the largest entry, not be empty
    base = torch.zeros(10)
    x = torch.arange(1.0, 11.0)
    out = breadcrumbs(base, [x], [1.0], [0.3], [0.05], consensus=False)
    close(out, torch.tensor([0.0] * 7 + [8.0, 9.0, 10.0]))


# ------------------------------------------------------------------ DELLA
@pytest.mark.parametrize("consensus", [False, True])
def test_della_reference(trio: tuple[torch.Tensor, list[torch.Tensor]], consensus: bool) -> None:
    base, xs = trio
    w, dens, eps = [0.5, 1.0], [0.4, 0.6], [0.1, 0.2]
    deltas = []
    for i, (x, d, e) in enumerate(zip(xs, dens, eps, strict=False)):
        delta = x - base
        u = uniform((5, "t", i), 0, base.numel()).view(base.shape)
        out = torch.zeros_like(delta)
        c = delta.shape[1]
        for r in range(delta.shape[0]):
            order = sorted(range(c), key=lambda j: (abs(float(delta[r, j])), j))
            for rank, j in enumerate(order):
                p = (d - e) + 2 * e * rank / (c - 1)
                if float(u[r, j]) < p:
                    out[r, j] = delta[r, j] / p
        deltas.append(out)
    got = della(base, xs, w, dens, eps, consensus=consensus, seed=5, name="t", normalize=consensus)
    close(got, ref_disjoint(base, deltas, w, consensus, 1.0, consensus=consensus))


def test_della_rejects_bad_epsilon() -> None:
    m = METHODS["della"]
    job = Job("t", (4, 4), True, {"normalize": True, "lambda": 1.0, "rescale": True, "int8_mask": False},
              [{"weight": 1.0, "density": 0.1, "epsilon": 0.2}])
    with pytest.raises(ValueError, match="epsilon"):
        m.validate(job)


# ------------------------------------------------------------------ SLERP / NuSLERP
def ref_slerp(t: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    a, b = v0.double().view(-1), v1.double().view(-1)
    cos = float(a @ b / (a.norm() * b.norm()))
    if abs(cos) > 0.9995:
        return ((1 - t) * a + t * b).view(v0.shape).float()
    om = math.acos(cos)
    return ((math.sin((1 - t) * om) * a + math.sin(t * om) * b) / math.sin(om)).view(v0.shape).float()


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 1.0])
def test_slerp_reference(t: float) -> None:
    v0, v1 = rnd(12, 9, seed=1), rnd(12, 9, seed=2)
    close(slerp(t, v0, v1), ref_slerp(t, v0, v1))


def test_slerp_endpoints_and_colinear() -> None:
    v0, v1 = rnd(30, seed=1), rnd(30, seed=2)
    close(slerp(0.0, v0, v1), v0)
    close(slerp(1.0, v0, v1), v1)
    close(slerp(0.3, v0, 2 * v0), 0.7 * v0 + 0.3 * 2 * v0)  # colinear → lerp
    close(slerp(0.5, v0, v0.clone()), v0)  # all-equal models


def test_slerp_preserves_norm_for_unit_vectors() -> None:
    v0, v1 = rnd(50, seed=1), rnd(50, seed=2)
    v0, v1 = v0 / v0.norm(), v1 / v1.norm()
    assert abs(float(slerp(0.37, v0, v1).norm()) - 1.0) < 1e-6


@pytest.mark.parametrize("flatten,row_wise", [(True, False), (False, False), (False, True)])
@pytest.mark.parametrize("with_base", [False, True])
def test_nuslerp_reference(flatten: bool, row_wise: bool, with_base: bool) -> None:
    base = rnd(6, 5, seed=1)
    x0, x1 = base + rnd(6, 5, seed=2), base + rnd(6, 5, seed=3)
    w = [0.3, 0.9]
    t = 0.9 / 1.2
    u0, u1 = (x0 - base, x1 - base) if with_base else (x0, x1)

    def one(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return ref_slerp_exact(t, a, b)

    if flatten:
        r = one(u0, u1)
    elif row_wise:
        r = torch.stack([one(u0[:, j], u1[:, j]) for j in range(5)], dim=1)
    else:
        r = torch.stack([one(u0[i], u1[i]) for i in range(6)])
    want = base + r if with_base else r
    close(nuslerp([x0, x1], w, base if with_base else None, flatten=flatten, row_wise=row_wise), want)


def ref_slerp_exact(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """NuSLERP's slerp: no lerp threshold except exact colinearity."""
    a64, b64 = a.double(), b.double()
    cos = float((a64 / a64.norm()) @ (b64 / b64.norm())) if a.dim() == 1 else \
        float((a64.view(-1) / a64.norm()) @ (b64.view(-1) / b64.norm()))
    om = math.acos(max(-1.0, min(1.0, cos)))
    return ((math.sin((1 - t) * om) * a64 + math.sin(t * om) * b64) / math.sin(om)).float()


def test_nuslerp_zero_weights_uses_half() -> None:
    a, b = rnd(10, seed=1), rnd(10, seed=2)
    close(nuslerp([a, b], [0.0, 0.0]), ref_slerp_exact(0.5, a, b))


# ------------------------------------------------------------------ model stock / passthrough
@pytest.mark.parametrize("filter_wise", [False, True])
def test_model_stock_reference(filter_wise: bool) -> None:
    base = rnd(8, 6, seed=1)
    xs = [base + 0.1 * rnd(8, 6, seed=s) + 0.05 for s in (2, 3, 4)]
    n = len(xs)

    def t_of(offs: list[torch.Tensor]) -> float:
        cs = []
        for i in range(n):
            for j in range(i + 1, n):
                a, b = offs[i].double(), offs[j].double()
                cs.append(float(a @ b / (a.norm() * b.norm())))
        c = sum(cs) / len(cs)
        return n * c / (1 + (n - 1) * c)

    avg = sum(xs) / n
    if filter_wise:
        want = torch.stack([t_of([x[r] - base[r] for x in xs]) * avg[r] +
                            (1 - t_of([x[r] - base[r] for x in xs])) * base[r] for r in range(8)])
    else:
        t = t_of([(x - base).view(-1) for x in xs])
        want = t * avg + (1 - t) * base
    close(model_stock(base, xs, filter_wise=filter_wise), want)


def test_model_stock_all_equal_models() -> None:
    base = rnd(5, 4, seed=1)
    x = base + 0.1
    close(model_stock(base, [x, x.clone()]), x)  # cos = 1 → t = 1 → the average


def test_passthrough() -> None:
    x = rnd(3, 3)
    assert passthrough(x) is x
    close(passthrough(x, 0.5), x * 0.5)


def test_registry_names_match_mergekit() -> None:
    assert set(METHODS) >= {"linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "breadcrumbs",
                            "breadcrumbs_ties", "della", "della_linear", "slerp", "nuslerp", "model_stock",
                            "passthrough"}


# ------------------------------------------------------------------ chunk invariance through the Method API
@pytest.mark.parametrize("name,shared,per", [
    ("ties", {"normalize": True, "lambda": 1.0, "rescale": False, "int8_mask": False},
     [{"weight": 1.0, "density": 0.3}, {"weight": 0.5, "density": 0.6}]),
    ("breadcrumbs_ties", {"normalize": True, "lambda": 1.0, "rescale": False, "int8_mask": False},
     [{"weight": 1.0, "density": 0.3, "gamma": 0.05}, {"weight": 0.5, "density": 0.6, "gamma": 0.0}]),
    ("dare_ties", {"normalize": False, "lambda": 1.0, "rescale": True, "int8_mask": False},
     [{"weight": 1.0, "density": 0.3}, {"weight": 0.5, "density": 0.6}]),
    ("della", {"normalize": True, "lambda": 1.0, "rescale": True, "int8_mask": False},
     [{"weight": 1.0, "density": 0.3, "epsilon": 0.1}, {"weight": 0.5, "density": 0.6, "epsilon": 0.1}]),
    ("model_stock", {"filter_wise": False}, [{}, {}]),
    ("nuslerp", {"nuslerp_flatten": True, "nuslerp_row_wise": False}, [{"weight": 1.0}, {"weight": 2.0}]),
])
def test_chunked_equals_whole(name: str, shared: dict[str, object], per: list[dict[str, object]]) -> None:
    m = METHODS[name]
    base = rnd(300, 40, seed=1)
    xs = [base, base + 0.1 * rnd(300, 40, seed=2), base + 0.1 * rnd(300, 40, seed=3)]
    job = Job("layer.w", (300, 40), True, shared, per, seed=7, model_ids=[0, 1])
    whole = m.apply(job, [x.view(-1) for x in xs], m.stats(job, one_chunk(xs)), 0)
    rows = 37
    ranges = [(r, min(r + rows, 300)) for r in range(0, 300, rows)]

    def chunks():  # type: ignore[no-untyped-def]
        return ((r0 * 40, [x[r0:r1].reshape(-1) for x in xs]) for r0, r1 in ranges)

    state = m.stats(job, chunks)
    parts = [m.apply(job, [x[r0:r1].reshape(-1) for x in xs], state, r0 * 40) for r0, r1 in ranges]
    assert float((torch.cat(parts) - whole).abs().max()) <= TOL


def test_ties_keeps_every_entry_tied_with_the_threshold() -> None:
    """Deliberate difference from mergekit (which breaks ties by sort order): density 0.5 of 4
    entries is k = 2, but three entries share the 2nd-largest magnitude — all three are kept."""
    base = torch.zeros(4)
    x = torch.tensor([1.0, -1.0, 1.0, 0.5])
    out = ties(base, [x], [1.0], [0.5], normalize=False)
    close(out, torch.tensor([1.0, -1.0, 1.0, 0.0]))


def test_breadcrumbs_density_zero_and_one() -> None:
    base = rnd(50, seed=1)
    x = base + rnd(50, seed=2)
    close(breadcrumbs(base, [x], [1.0], [1.0], [0.3], consensus=False), x)  # density 1: untouched
    close(breadcrumbs(base, [x], [1.0], [0.0], [0.0], consensus=False), base)  # density 0: nothing kept
