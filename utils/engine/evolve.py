"""Hyperparameter evolution (--evolve N): mutate the best hyps so far, train, record, repeat.

Each generation picks a parent from the best rows of evolve.csv (weighted by fitness), multiplies the
evolvable values by random factors around 1, clips them to their bounds, trains one short run
(final-epoch validation only, no intermediate checkpoints) and appends its metrics and hyps. The best
row is written to hyp_evolve.yaml after every generation.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
import yaml

from utils.engine.options import TrainOptions
from utils.files import append_csv_rows, atomic_write_text, increment_path
from utils.hyp import Hyp

logger = logging.getLogger(__name__)

# Evolvable hyps by hyp key or head flag key (cbbl_um: the head's um): (mutation scale, lower bound, upper bound).
# Others stay as in the --hyp file.
SEARCH_SPACE: dict[str, tuple[float, float, float]] = {
    "lr0": (1.0, 1e-5, 1e-1), "lrf": (1.0, 0.01, 1.0), "momentum": (0.3, 0.6, 0.98),
    "weight_decay": (1.0, 0.0, 0.001), "warmup_epochs": (1.0, 0.0, 5.0), "warmup_momentum": (1.0, 0.0, 0.95),
    "warmup_bias_lr": (1.0, 0.0, 0.2), "box": (1.0, 0.02, 0.2), "cls": (1.0, 0.2, 4.0), "cls_pw": (1.0, 0.5, 2.0),
    "obj": (1.0, 0.2, 4.0), "obj_pw": (1.0, 0.5, 2.0), "anchor_t": (1.0, 2.0, 8.0), "hsv_h": (1.0, 0.0, 0.1),
    "hsv_s": (1.0, 0.0, 0.9), "hsv_v": (1.0, 0.0, 0.9), "degrees": (1.0, 0.0, 45.0), "translate": (1.0, 0.0, 0.9),
    "scale": (1.0, 0.0, 0.9), "shear": (1.0, 0.0, 10.0), "fliplr": (0.0, 0.0, 1.0), "mosaic": (1.0, 0.0, 1.0),
    "mixup": (1.0, 0.0, 1.0), "cbbl_um": (1.0, 0.0, 2.0),
}
MUTATION_PROBABILITY = 0.8  # chance that a given key mutates in a generation
MUTATION_SIGMA = 0.2  # spread of the multiplicative factor
MUTATION_FACTOR_RANGE = (0.3, 3.0)  # bounds of one generation's multiplicative factor
PARENTS = 5  # the best rows a parent is drawn from
METRIC_COLUMNS = ("metrics/precision", "metrics/recall", "metrics/mAP_0.5", "metrics/mAP_0.5:0.95", "fitness")


def mutate(parent: Hyp, rng: np.random.Generator) -> Hyp:
    """A child of ``parent``: each evolvable value times a factor in MUTATION_FACTOR_RANGE, clipped to bounds."""
    keys = list(SEARCH_SPACE)
    scales = np.array([SEARCH_SPACE[key][0] for key in keys])
    factors = np.ones(len(keys))
    while np.all(factors == 1):  # at least one key must change
        chosen = rng.random(len(keys)) < MUTATION_PROBABILITY
        factors = (chosen * rng.standard_normal(len(keys)) * rng.random() * scales * MUTATION_SIGMA + 1)
        factors = factors.clip(*MUTATION_FACTOR_RANGE)
    values = {}
    for key, factor in zip(keys, factors):
        low, high = SEARCH_SPACE[key][1:]
        values[key] = float(np.clip(parent.value(key) * factor, low, high))
    return parent.replace(**values)


def read_evolve_csv(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def select_parent(rows: list[dict[str, Any]], base: Hyp, rng: np.random.Generator) -> Hyp:
    """A parent drawn from the PARENTS fittest rows (probability ~ fitness), or ``base`` when none yet."""
    if not rows:
        return base
    best = sorted(rows, key=lambda row: float(row["fitness"]), reverse=True)[:PARENTS]
    weights = np.array([max(float(row["fitness"]), 0.0) for row in best]) + 1e-6
    row = best[rng.choice(len(best), p=weights / weights.sum())]
    return base.replace(**{key: float(row[key]) for key in SEARCH_SPACE})


def append_row(path: Path, metrics: dict[str, float], hyp: Hyp) -> None:
    row = {key: metrics.get(key, float("nan")) for key in METRIC_COLUMNS}
    row.update({key: hyp.value(key) for key in SEARCH_SPACE})
    header = [] if path.is_file() else [list(row)]
    append_csv_rows(path, [*header, [f"{value:.6g}" for value in row.values()]])


def evolve(opts: TrainOptions, train_fn: Callable[[TrainOptions], Any]) -> Any:
    """Run ``opts.evolve`` generations into <project>/<name>/ (evolve.csv, hyp_evolve.yaml, gen*/)."""
    evolve_dir = increment_path(Path(opts.project) / opts.name, exist_ok=opts.exist_ok, mkdir=True)
    csv_path, rng = evolve_dir / "evolve.csv", np.random.default_rng(opts.seed)
    outcome = None
    for generation in range(opts.evolve):
        hyp = mutate(select_parent(read_evolve_csv(csv_path), opts.hyp, rng), rng)
        run_opts = dataclasses.replace(opts, hyp=hyp, evolve=0, noval=True, nosave=True, noplots=True,
                                       project=str(evolve_dir), name=f"gen{generation}", exist_ok=False)
        outcome = train_fn(run_opts)
        append_row(csv_path, outcome.metrics, hyp)
        best = max(read_evolve_csv(csv_path), key=lambda row: float(row["fitness"]))
        best_hyp = opts.hyp.replace(**{key: float(best[key]) for key in SEARCH_SPACE})
        atomic_write_text(evolve_dir / "hyp_evolve.yaml", yaml.safe_dump(best_hyp.to_dict(), sort_keys=False))
        logger.info("evolve generation %d/%d: fitness %.4f (best %.4f) -> %s", generation + 1, opts.evolve,
                    outcome.metrics.get("fitness", float("nan")), float(best["fitness"]), csv_path)
    return outcome
