"""M2N2's parts: resource competition keeps niches, attraction pairs complements,
crossover stays between its parents, and merge refuses models of another shape."""

from __future__ import annotations

import click
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks.m2n2 import parse_seeds, summarise
from models_onnx.errors import ModelError
from models_onnx.m2n2 import (
    Episode,
    M2N2Config,
    NetShape,
    Site,
    compare,
    crossover,
    diagnose,
    merge,
    shared_fitness,
    site_f1,
    train_site_model,
)


def test_a_model_alone_on_its_points_outranks_a_crowd_on_more_points() -> None:
    # three generalists win points 0-5; a specialist alone wins points 6-7
    scores = np.array([[1, 1, 1, 1, 1, 1, 0, 0]] * 3 + [[0, 0, 0, 0, 0, 0, 1, 1]], dtype=np.float64)
    fit = shared_fitness(scores, alpha=1.0)
    assert fit[3] == 2.0 and fit[0] == pytest.approx(2.0)  # 6 points shared 3 ways
    assert shared_fitness(scores, alpha=0.0)[3] < shared_fitness(scores, alpha=0.0)[0]


def test_site_capacity_makes_a_small_site_worth_as_much_as_a_big_one() -> None:
    # member 0 alone wins a big site's 6 points, member 1 alone a small site's 2 points
    scores = np.array([[1, 1, 1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1]], dtype=np.float64)
    assert shared_fitness(scores, 1.0).tolist() == [6.0, 2.0]
    capacity = np.array([8 / (2 * 6)] * 6 + [8 / (2 * 2)] * 2)  # each site holds 4 of 8
    assert shared_fitness(scores, 1.0, capacity).tolist() == pytest.approx([4.0, 4.0])


@given(seed=st.integers(0, 2**32 - 1), slerp=st.booleans())
def test_linear_crossover_stays_within_its_parents(seed: int, slerp: bool) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=50), rng.normal(size=50)
    child = crossover(a, b, np.random.default_rng(seed), slerp=False)
    assert np.all(child >= np.minimum(a, b) - 1e-12) and np.all(child <= np.maximum(a, b) + 1e-12)
    same = crossover(a, a.copy(), np.random.default_rng(seed), slerp=slerp)
    assert np.allclose(same, a)


def _site(name: str, seed: int, shift: float) -> Site:
    rng = np.random.default_rng(seed)

    def episode(i: int) -> Episode:
        x = rng.normal(size=(700, 3)) + np.array([1.0, -1.0, 0.5])
        x[:, 2] = x[:, 0] + x[:, 1] + 0.05 * rng.normal(size=700)  # a relation to learn
        labels = np.zeros(700, dtype=np.bool_)
        labels[550:650] = True
        x[550:650, 2] += shift  # the relation breaks: the anomaly
        return Episode(x, labels, f"{name}/{i}")

    return Site(name, (episode(0), episode(1)), (episode(2),), (episode(3),))


def test_merge_runs_from_site_models_and_the_result_detects_anomalies() -> None:
    shape = NetShape(3, lags=0, hidden=(4, 2, 4))
    cfg = M2N2Config(archive_size=4, generations=20, calibration_rows=400, span=3)
    sites = [_site("a", 1, 4.0), _site("b", 2, 6.0)]
    seeds = [train_site_model(s, shape, cal_rows=400) for s in sites]
    result = merge(sites, seeds, shape, cfg)
    assert len(result.archive) == 4 and len(result.history) == 20
    assert result.history[-1] >= result.history[0]  # the archive never loses its best
    assert site_f1(result.best, sites[0].held_out, shape, cfg) > 0.5


@pytest.mark.parametrize("site_capacity", [False, True])
def test_merge_says_where_each_member_came_from_and_which_it_shipped(site_capacity: bool) -> None:
    shape = NetShape(3, lags=0, hidden=(4, 2, 4))
    cfg = M2N2Config(
        archive_size=5, generations=8, calibration_rows=400, span=3, site_capacity=site_capacity
    )
    sites = [_site("a", 1, 4.0), _site("b", 2, 6.0)]
    singles = {s.name: train_site_model(s, shape, cal_rows=400) for s in sites}
    result = merge(sites, list(singles.values()), shape, cfg)
    average = np.mean(list(singles.values()), axis=0)
    for member, origin in zip(result.archive, result.origins, strict=True):
        if origin in singles:
            assert member is singles[origin]
        elif origin == "average":
            assert np.array_equal(member, average)
        else:
            assert 1 <= int(origin.removeprefix("child ")) <= cfg.generations
    assert result.archive[result.shipped] is result.best
    why = diagnose(sites, result, singles, shape, cfg)
    archive = why["archive"]
    assert isinstance(archive, list) and [m["origin"] for m in archive] == list(result.origins)
    assert sum(m["shipped"] for m in archive) == 1
    disagree = why["held_out_disagreement"]
    assert isinstance(disagree, dict) and all(0.0 <= v <= 1.0 for v in disagree.values())
    figures = compare(sites, result.best, singles, shape, cfg).as_json()
    assert figures["merged_beats_both"] == (
        figures["beats_best_single"] and figures["beats_average"]
    )
    selection = figures["selection_scores"]
    assert isinstance(selection, dict) and set(selection) == {"merged", "best_single", "averaged"}


def test_seeds_are_read_as_ranges_and_lists_and_bad_ones_are_named() -> None:
    assert parse_seeds("0-2,5") == [0, 1, 2, 5]
    with pytest.raises(click.BadParameter, match="'1,x'"):
        parse_seeds("1,x")
    with pytest.raises(click.BadParameter, match="a seed twice"):
        parse_seeds("0-2,1")


def _run(seed: int, merged: float, single: float, averaged: float) -> dict[str, object]:
    per = {"merged": merged, "best_single": single, "averaged": averaged}
    return {
        "seed": seed,
        "merged_score": merged,
        "best_single_score": single,
        "averaged_score": averaged,
        "merged_beats_both": merged > max(single, averaged),
        "beats_best_single": merged > single,
        "beats_average": merged > averaged,
        "per_site": {"x": per, "y": per},
        "selection_scores": per,
    }


def test_the_summary_counts_seeds_and_pairs_merged_with_each_baseline() -> None:
    runs = [_run(0, 0.8, 0.7, 0.75), _run(1, 0.5, 0.6, 0.4), _run(2, 0.6, 0.5, 0.7)]
    out = summarise(runs)
    assert out["seeds"] == [0, 1, 2] and out["seeds_beating_both"] == 1
    assert out["seeds_beating_best_single"] == 2 and out["seeds_beating_average"] == 2
    assert out["merged_score"] == pytest.approx((0.8 + 0.5 + 0.6) / 3, abs=1e-4)
    per_seed = out["paired"]["best_single"]["per_seed"]
    assert per_seed["merged_higher"] == 2 and per_seed["merged_lower"] == 1
    assert out["paired"]["averaged"]["per_seed_and_site"]["n"] == 6


def test_merge_refuses_a_model_of_another_shape() -> None:
    shape = NetShape(3, lags=0, hidden=(4, 2, 4))
    with pytest.raises(ModelError, match="model 1 has 7 weights"):
        merge([_site("a", 1, 4.0)], [np.zeros(shape.size), np.zeros(7)], shape, M2N2Config())
