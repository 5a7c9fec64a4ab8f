"""Merges of the other silos on a domain left out of training, chosen by that domain's own users.

    python -m experiments.lodo_oracle [--runs results/lodo3/runs/unseen_Beauty/seed0 ...]
                                      [--granularity task layer tensor] [--steps 800]
                                      [--batch-size 64] [--users 4000]
                                      [--output results/lodo-oracle] [--publish lodo-oracle]

Each ``--runs`` folder is a finished leave-one-domain-out run (one evaluation-only domain D; the
weights its seen silos sent under ``received/``; evaluated on the test split). Merges of the seen
silos' task vectors (θ₀ + Σ_k λ_k ⊙ τ_k) are chosen with D's *own* validation users, which a
new domain does not have: task weights searched on a grid by D's whole-validation Recall@10,
and task-, layer- or tensor-wise weights (started at task arithmetic) fitted with the
cross-entropy of the true next item of a seeded sample of D's validation users. Each is
evaluated on D's test split beside θ₀, task arithmetic of the same silos and the run's own
learned merges (pseudo-users of the seen domains). The grid searches its family on the very
metric of the leave-one-domain-out target; the fitted weights optimise a loss, not that metric.
Writes ``<output>/<run>/report.{md,json}`` (reused when the settings and the run match) and the
combined ``<output>/report.md``.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from common.data import Domain
from common.evaluation import evaluate_model
from common.federated import BASE_LABEL
from common.merging import MergeConfig, MergeInit, StateDict, build_merge
from common.model import model_from_state, state_hash
from experiments.finished_run import FinishedRun, load_finished_run, reused_or_made
from experiments.oracle_merge import fit_on_users, validation_users
from experiments.publish import grouped_bars, save_and_publish, stamp

METRIC = "recall@10"
TARGET = 1.05
TASK_ARITHMETIC = "task arithmetic"
DEFAULT_RUNS = [f"results/lodo3/runs/unseen_{d}/seed0" for d in ("Beauty", "Pantry", "Sports")]
GRID = (0.0, 0.15, 0.3, 0.5, 0.75, 1.0)
GRID_LABEL = "oracle task-wise grid (left-out domain's validation Recall@10)"


def oracle_label(granularity: str) -> str:
    return f"oracle {granularity}-wise (left-out domain's validation users)"


Metrics = Callable[[StateDict, str], dict[str, float]]


def evaluator(run: FinishedRun, target: Domain) -> Metrics:
    """``metrics(state, split)``: a model's metrics on ``target``'s ``split``, each state (by
    its hash) evaluated once per split, so the grid's points that are θ₀, task arithmetic or
    the point it keeps are not evaluated again."""
    done: dict[tuple[str, str], dict[str, float]] = {}

    def metrics(state: StateDict, split: str) -> dict[str, float]:
        key = (state_hash(state), split)
        if key not in done:
            model = model_from_state(run.model_cfg, state)
            done[key] = evaluate_model(model, target, run.features[target.name],
                                       replace(run.cfg.eval, split=split)).metrics
        return done[key]

    return metrics


def grid_weights(merge: MergeInit, base: StateDict, metrics: Metrics) -> list[float]:
    """The task-wise weights in :data:`GRID` (one per seen silo, every combination) with the
    best validation Recall@10 by ``metrics`` (the first best on ties)."""
    def recall(w: tuple[float, ...]) -> float:
        return metrics(merge.merged(base, list(w)), "val")[METRIC]

    return list(max(itertools.product(GRID, repeat=len(merge.vectors)), key=recall))


def oracles(run_dir: Path, granularities: list[str], steps: int, batch_size: int,
            max_users: int) -> dict:
    """θ₀, task arithmetic and each oracle merge on the run's left-out domain (test, and the
    whole validation split), with the run's own learned merges (test)."""
    run = load_finished_run(run_dir)
    source = run_dir / "report.json"
    if len(run.unseen) != 1:
        raise SystemExit(f"{source}: leaves out {[d.name for d in run.unseen]}; a "
                         "leave-one-domain-out run has exactly one evaluation-only domain")
    if run.cfg.eval.split != "test":
        raise SystemExit(f"{source}: evaluated on the {run.cfg.eval.split} split; the oracles are "
                         "chosen on validation and reported on test, beside a run's test numbers")
    target, cfg = run.unseen[0], run.cfg
    feats = run.features[target.name]
    metrics = evaluator(run, target)

    def scores(state: StateDict) -> dict[str, dict[str, float]]:
        return {split: metrics(state, split) for split in ("test", "val")}

    merge = build_merge(MergeConfig(), run.base, run.finetuned)
    rows = {BASE_LABEL: scores(run.base), TASK_ARITHMETIC: scores(merge.merged(run.base))}
    data = [validation_users(target, feats, run.model_cfg.max_len, max_users, cfg.seed)]

    def grid() -> tuple[dict, object]:
        w = grid_weights(merge, run.base, metrics)
        return merge.merged(run.base, w), w

    def fit(g: str) -> tuple[dict, object]:
        learned = fit_on_users(run.model_cfg, run.base, run.finetuned, data, g, steps, batch_size,
                               cfg.seed)
        return learned.state_dict, learned.weights

    weights: dict[str, object] = {}
    seconds: dict[str, float] = {}
    makers = [(GRID_LABEL, grid), *((oracle_label(g), functools.partial(fit, g))
                                    for g in granularities)]
    for label, make in makers:
        start = time.perf_counter()
        state, weights[label] = make()
        rows[label] = scores(state)
        seconds[label] = round(time.perf_counter() - start, 1)
        print(f"{target.name}, {label}: test R@10 {rows[label]['test'][METRIC]:.4f} "
              f"({seconds[label]} s)", flush=True)
    test_users = len(target.eval_examples("test")[0])
    own = {label: run.report["results"][label][target.name]
           for label in run.report["learned_weights"]}
    return {"left_out": target.name, "seen": [d.name for d in run.domains],
            "users": min(test_users, cfg.eval.max_users or test_users), "rows": rows,
            "run_learned": own, "learned_weights": weights, "seconds": seconds}


def ratio(report: dict, metrics: dict[str, float], split: str = "test") -> float:
    return metrics[METRIC] / report["rows"][BASE_LABEL][split][METRIC]


def standard_error(report: dict) -> float:
    """One standard error of θ₀'s test Recall@10 on the left-out domain (binomial)."""
    p = report["rows"][BASE_LABEL]["test"][METRIC]
    return math.sqrt(p * (1 - p) / report["users"])


def markdown(report: dict) -> str:
    """One left-out domain: every row's test Recall@10 / NDCG@10 and ratio to θ₀, its
    whole-validation ratio beside it (the run's learned merges: test only)."""
    lines = [f"### Left out: {report['left_out']} (merging {' + '.join(report['seen'])}; "
             f"{report['users']} users, θ₀'s R@10 ± {standard_error(report):.4f})", "",
             "| method | test R@10 | test N@10 | × θ₀ (test) | × θ₀ (validation) |",
             "|---|---:|---:|---:|---:|"]
    for label, split in report["rows"].items():
        m, val = split["test"], ratio(report, split["val"], "val")
        lines.append(f"| {label} | {m[METRIC]:.4f} | {m['ndcg@10']:.4f} | {ratio(report, m):.3f} "
                     f"| {val:.3f} |")
    for label, m in report["run_learned"].items():
        lines.append(f"| {label} (the run's, pseudo-users) | {m[METRIC]:.4f} | {m['ndcg@10']:.4f} "
                     f"| {ratio(report, m):.3f} | — |")
    return "\n".join(lines)


def merge_tests(report: dict) -> dict[str, dict[str, float]]:
    """Test metrics of every merge: the rows but θ₀, then the run's own learned merges."""
    return {**{lb: r["test"] for lb, r in report["rows"].items() if lb != BASE_LABEL},
            **report["run_learned"]}


def best_merge(report: dict) -> tuple[str, float]:
    """The merge (:func:`merge_tests`) with the highest test ratio to θ₀, and that ratio:
    picked on test, so an optimistic summary."""
    tests = merge_tests(report)
    label = max(tests, key=lambda lb: ratio(report, tests[lb]))
    return label, ratio(report, tests[label])


def combined(reports: dict[str, dict], settings: dict) -> str:
    head = (f"Task weights searched on the grid {list(GRID)} per silo by the left-out domain's "
            "Recall@10 on its whole validation split; weights fitted with the cross-entropy of "
            f"the true next item of {settings['max_users']} of its validation users (a seeded "
            f"sample), {settings['steps']} steps of {settings['batch_size']}. Metrics on its "
            "test split (each user's last item; validation: the item before), and on its whole "
            "validation split in the last column. Runs: "
            + ", ".join(f"`{name}` (`{r['stamp']['commit']}`)" for name, r in reports.items())
            + ".")
    verdict = ["Highest test Recall@10 of any merge of the seen silos (picked on test):"]
    for r in reports.values():
        label, best = best_merge(r)
        verdict.append(f"- {r['left_out']}: {label}, {best:.3f}× θ₀ "
                       f"({'at or above' if best >= TARGET else 'below'} {TARGET}×)")
    return "\n\n".join([head, "\n".join(verdict), *(markdown(r) for r in reports.values())])


def plot(reports: dict[str, dict], path: Path) -> Path:
    """Test ratio to θ₀ of task arithmetic, the run's learned merges and each oracle, one group
    of bars per merge, one bar per left-out domain, with the target line."""
    runs = list(reports.values())
    labels = list(merge_tests(runs[0]))
    series = {f"left out: {r['left_out']}": [ratio(r, merge_tests(r)[lb]) for lb in labels]
              for r in runs}
    return grouped_bars(labels, series, "Recall@10 on the left-out domain / θ₀'s (test)", path,
                        row_height=0.35 * len(runs), target=TARGET, zoom=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", default=DEFAULT_RUNS,
                    help="finished leave-one-domain-out runs (one evaluation-only domain each)")
    ap.add_argument("--granularity", nargs="+", default=["task", "layer", "tensor"],
                    choices=["task", "layer", "tensor"])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--users", type=int, default=4000,
                    help="validation users of the left-out domain the weights are fitted on")
    ap.add_argument("--output", default="results/lodo-oracle")
    ap.add_argument("--publish", metavar="NAME", help="also write experiments/reports/NAME/")
    args = ap.parse_args(argv)
    settings = {"granularities": args.granularity, "steps": args.steps,
                "batch_size": args.batch_size, "max_users": args.users}
    out, made_by = Path(args.output), stamp()
    reports = {}
    for run in map(Path, args.runs):
        name = "_".join(run.parts[-2:])
        reports[name] = reused_or_made(run, out / name, {**settings, "grid": list(GRID)}, made_by,
                                       lambda run=run: oracles(run, **settings), markdown)
    save_and_publish(out, "Leave one domain out: merges of the other silos chosen by the "
                     "left-out domain's own users", combined(reports, settings),
                     {"settings": settings, "runs": reports}, lambda rep, p: plot(rep["runs"], p),
                     "lodo_oracle.png", args.publish)


if __name__ == "__main__":
    main()
