"""How far can *any* merge of the other silos' models go on a domain left out of training?

    python -m experiments.lodo_ceiling [--runs results/lodo/runs/unseen_Beauty/seed0 ...]
                                       [--granularity task layer tensor] [--steps 800]
                                       [--batch-size 64] [--users 4000]
                                       [--output results/lodo-ceiling] [--publish lodo-ceiling]

Each ``--runs`` folder is a finished leave-one-domain-out run (one evaluation-only domain D; the
weights its seen silos sent under ``received/``). On it, merging weights over the seen silos'
task vectors (θ₀ + Σ_k λ_k ⊙ τ_k, task-, layer- or tensor-wise, started at task arithmetic) are
fitted with the cross-entropy of the true next item of D's *own* validation users, and, task-wise,
chosen on a grid by D's validation Recall@10 itself: oracles a new domain cannot run (it has no
users yet), what a merge in that family could reach if D's own users taught it. Each oracle is evaluated on D's test split beside θ₀, task
arithmetic of the same silos and the run's own learned merges (pseudo-users of the seen domains).
Where the oracle stays below 1.05× θ₀, no merge of those silos' weights reaches the
leave-one-domain-out target on D. Writes ``<output>/<run>/report.{md,json}`` (reused when the
settings and the run match) and the combined ``<output>/report.md``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time
from dataclasses import replace
from pathlib import Path

from common.data import Domain
from common.evaluation import evaluate_model
from common.federated import BASE_LABEL
from common.merging import MergeConfig, build_merge
from common.model import model_from_state
from experiments.finished_run import FinishedRun, load_finished_run, reused_or_made
from experiments.oracle_merge import fit_on_users, validation_users
from experiments.publish import stamp, write_report

METRIC = "recall@10"
TARGET = 1.05
TASK_ARITHMETIC = "task arithmetic"
DEFAULT_RUNS = [f"results/lodo/runs/unseen_{d}/seed0" for d in ("Beauty", "Pantry", "Sports")]


GRID = (0.0, 0.15, 0.3, 0.5, 0.75, 1.0)
GRID_LABEL = "oracle task-wise grid (left-out domain's validation Recall@10)"


def oracle_label(granularity: str) -> str:
    return f"oracle {granularity}-wise (left-out domain's validation users)"


def grid_weights(run: FinishedRun, target: Domain, max_users: int) -> list[float]:
    """The task-wise weights in :data:`GRID` (one per seen silo, every combination) with the
    best Recall@10 on the first ``max_users`` validation users of ``target`` (first best kept)."""
    merge = build_merge(MergeConfig(), run.base, run.finetuned)
    cfg = replace(run.cfg.eval, split="val", max_users=max_users)
    best, best_w = -1.0, list(merge.weights)
    for w in itertools.product(GRID, repeat=len(run.finetuned)):
        model = model_from_state(run.model_cfg, merge.merged(run.base, list(w)))
        r10 = evaluate_model(model, target, run.features[target.name], cfg).metrics[METRIC]
        if r10 > best:
            best, best_w = r10, list(w)
    return best_w


def ceiling(run_dir: Path, granularities: list[str], steps: int, batch_size: int,
            max_users: int) -> dict:
    """θ₀, task arithmetic and each oracle merge on the run's left-out domain (test, and
    validation where the oracles were fitted), with the run's own learned merges (test)."""
    run = load_finished_run(run_dir)
    if len(run.unseen) != 1:
        raise SystemExit(f"{run_dir / 'report.json'}: leaves out {[d.name for d in run.unseen]}; "
                         "a leave-one-domain-out run has exactly one evaluation-only domain")
    target, cfg = run.unseen[0], run.cfg
    feats = run.features[target.name]

    def scores(state: dict) -> dict[str, dict[str, float]]:
        model = model_from_state(run.model_cfg, state)
        return {split: evaluate_model(model, target, feats, replace(cfg.eval, split=split)).metrics
                for split in ("test", "val")}

    merge = build_merge(MergeConfig(), run.base, run.finetuned)
    rows = {BASE_LABEL: scores(run.base), TASK_ARITHMETIC: scores(merge.merged(run.base))}
    start = time.perf_counter()
    grid = grid_weights(run, target, max_users)
    rows[GRID_LABEL], weights, seconds = scores(merge.merged(run.base, grid)), {GRID_LABEL: grid}, {}
    seconds[GRID_LABEL] = round(time.perf_counter() - start, 1)
    print(f"{target.name}, {GRID_LABEL}: weights {grid}, test R@10 "
          f"{rows[GRID_LABEL]['test'][METRIC]:.4f} ({seconds[GRID_LABEL]} s)", flush=True)
    data = [validation_users(target, feats, run.model_cfg.max_len, max_users, cfg.seed)]
    for g in granularities:
        start = time.perf_counter()
        learned = fit_on_users(run.model_cfg, run.base, run.finetuned, data, g, steps, batch_size,
                               cfg.seed)
        label = oracle_label(g)
        rows[label], weights[label] = scores(learned.state_dict), learned.weights
        seconds[label] = round(time.perf_counter() - start, 1)
        print(f"{target.name}, {label}: test R@10 {rows[label]['test'][METRIC]:.4f} "
              f"({seconds[label]} s)", flush=True)
    own = {label: run.report["results"][label][target.name] for label in run.report["learned_weights"]}
    return {"left_out": target.name, "seen": [d.name for d in run.domains],
            "users": run.report["protocol"]["per_silo"][target.name]["users"], "rows": rows, "run_learned": own,
            "learned_weights": weights, "seconds": seconds}


def ratio(report: dict, metrics: dict[str, float], split: str = "test") -> float:
    return metrics[METRIC] / report["rows"][BASE_LABEL][split][METRIC]


def standard_error(report: dict) -> float:
    """One standard error of θ₀'s test Recall@10 on the left-out domain (binomial)."""
    p = report["rows"][BASE_LABEL]["test"][METRIC]
    return math.sqrt(p * (1 - p) / report["users"])


def markdown(report: dict) -> str:
    """One left-out domain: every row's test Recall@10 / NDCG@10 and ratio to θ₀, the
    oracles' validation ratio beside it."""
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


def best_oracle(report: dict) -> tuple[str, float]:
    """The oracle with the highest test ratio to θ₀, and that ratio."""
    oracles = [label for label in report["rows"] if label.startswith("oracle ")]
    label = max(oracles, key=lambda o: ratio(report, report["rows"][o]["test"]))
    return label, ratio(report, report["rows"][label]["test"])


def combined(reports: dict[str, dict], settings: dict) -> str:
    head = (f"Merging weights fitted on up to {settings['max_users']} validation users of the "
            f"left-out domain, {settings['steps']} steps of {settings['batch_size']} (the grid: "
            f"task weights in {list(GRID)} per silo); metrics on its test split (the same users, "
            "their next item) and, in the last column, on its whole validation split. Runs: "
            + ", ".join(f"`{name}` (`{r['stamp']['commit']}`)" for name, r in reports.items())
            + ".")
    verdict = []
    for r in reports.values():
        label, best = best_oracle(r)
        verdict.append(f"- {r['left_out']}: the best oracle ({label}) reaches {best:.3f}× θ₀ on "
                       f"test ({'at or above' if best >= TARGET else 'below'} {TARGET}×)")
    return "\n\n".join([head, "\n".join(verdict), *(markdown(r) for r in reports.values())])


def plot(reports: dict[str, dict], path: Path) -> Path:
    """Test ratio to θ₀ of task arithmetic, the run's learned merges and each oracle, one group
    of bars per left-out domain, with the target line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(reports.values())
    labels = [*[lb for lb in runs[0]["rows"] if lb != BASE_LABEL], *runs[0]["run_learned"]]
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(labels) * len(runs) + 1.5))
    height, lowest = 0.8 / len(runs), 1.0
    for i, r in enumerate(runs):
        values = [ratio(r, r["rows"][lb]["test"] if lb in r["rows"] else r["run_learned"][lb])
                  for lb in labels]
        lowest = min(lowest, *values)
        ax.barh([j + i * height for j in range(len(labels))], values, height,
                label=f"left out: {r['left_out']}")
    ax.set_xlim(lowest - 0.05, TARGET + 0.05)  # the differences are a few percent
    ax.axvline(1.0, color="black", lw=0.8)
    ax.axvline(TARGET, color="red", lw=0.8, ls="--", label=f"{TARGET}× θ₀")
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(labels))], labels)
    ax.invert_yaxis()
    ax.set_xlabel("Recall@10 on the left-out domain / θ₀'s (test)")
    ax.legend(loc="lower left", bbox_to_anchor=(1.0, 0.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", nargs="+", default=DEFAULT_RUNS,
                    help="finished leave-one-domain-out runs (one evaluation-only domain each)")
    ap.add_argument("--granularity", nargs="+", default=["task", "layer", "tensor"],
                    choices=["task", "layer", "tensor"])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--users", type=int, default=4000, help="validation users of the left-out domain")
    ap.add_argument("--output", default="results/lodo-ceiling")
    ap.add_argument("--publish", metavar="NAME", help="also write experiments/reports/NAME/")
    args = ap.parse_args(argv)
    settings = {"granularities": args.granularity, "steps": args.steps,
                "batch_size": args.batch_size, "max_users": args.users}
    out, made_by = Path(args.output), stamp()
    reports = {}
    for run in map(Path, args.runs):
        name = "_".join(run.parts[-2:])
        reports[name] = reused_or_made(run, out / name, settings, made_by,
                                       lambda run=run: ceiling(run, **settings), markdown)
    write_report(out, "Leave one domain out: the ceiling of merging the other silos",
                 combined(reports, settings),
                 {"settings": settings, "runs": reports}, lambda rep, p: plot(rep["runs"], p),
                 "lodo_ceiling.png", args.publish)


if __name__ == "__main__":
    main()
