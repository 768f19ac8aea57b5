"""Tests for utils/engine/evolve.py with a stand-in training function (no real training)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from utils.engine.evolve import SEARCH_SPACE, evolve, mutate, read_evolve_csv, select_parent
from utils.engine.options import parse_options
from utils.hyp import Hyp, load_hyp


@settings(deadline=None, max_examples=20)
@given(seed=st.integers(0, 10_000))
def test_mutation_stays_in_bounds_and_changes_something(seed):
    parent = Hyp()
    child = mutate(parent, np.random.default_rng(seed))
    assert child != parent
    for key, (_, low, high) in SEARCH_SPACE.items():
        assert low <= child.value(key) <= high
    assert child.head.box_loss == parent.head.box_loss and child.head.bins == parent.head.bins


def test_parent_is_drawn_from_the_fittest_rows():
    rows = [{**{key: str(Hyp().value(key)) for key in SEARCH_SPACE}, "fitness": str(f)} for f in (0.0, 0.0)]
    rows.append({**rows[0], "lr0": "0.0123", "fitness": "0.9"})
    picks = [select_parent(rows, Hyp(), np.random.default_rng(i)).lr0 for i in range(20)]
    assert picks.count(0.0123) >= 15
    assert select_parent([], Hyp(lr0=0.002), np.random.default_rng(0)).lr0 == 0.002


def test_evolve_records_each_generation(tmp_path):
    seen = []

    def fake_train(opts):
        seen.append(opts)
        fitness = opts.hyp.lr0  # pretend a higher lr0 is better
        return SimpleNamespace(metrics={"metrics/mAP_0.5": fitness, "fitness": fitness}, save_dir=tmp_path)

    opts = parse_options(["--evolve", "3", "--project", str(tmp_path), "--name", "evo"])
    evolve(opts, fake_train)
    rows = read_evolve_csv(tmp_path / "evo" / "evolve.csv")
    assert len(rows) == 3 and len(seen) == 3
    assert all(o.evolve == 0 and o.noval and o.nosave for o in seen)
    assert [o.name for o in seen] == ["gen0", "gen1", "gen2"]
    best = load_hyp(tmp_path / "evo" / "hyp_evolve.yaml")
    assert best.lr0 == max(float(row["lr0"]) for row in rows)
    assert yaml.safe_load((tmp_path / "evo" / "hyp_evolve.yaml").read_text())["head"]["box_loss"] == "ciou"
