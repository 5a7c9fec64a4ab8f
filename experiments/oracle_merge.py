"""Merging weights fitted on *real* validation users: a non-private reference for learned merging.

    python -m experiments.oracle_merge [--benchmark results/benchmark/benchmark3] [--seeds 0 1]
                                       [--output results/oracle-merge] [--publish oracle-merge]

On a finished benchmark's fine-tuned weights (each seed's ``received/`` folder), the merging weights
are learned task-, layer- or tensor-wise with the recommendation loss on every domain's
validation users and their true next items, instead of pseudo-users and teacher answers, with
the item table re-encoded by the current weights at every step (the loss sees exactly the
model that is evaluated). Each merge is then evaluated on the benchmark's split (test) and on
validation, where it was fitted. Non-private, like joint training: it asks whether real users
would have let the learned merge get further than the pseudo-users did: how much of the gap
between the learned merge and the in-domain models is the merge itself (these weights, merged),
and how much the signal it learns from. Writes ``<output>/seed<k>/report.{md,json}`` (reused
when the settings match) and the combined ``<output>/report.md``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from common.config import from_dict
from common.data import Domain
from common.distill import (DistillConfig, DomainPseudoData, LearnResult, TeacherSignal,
                            learn_merge_weights)
from common.evaluation import EvalConfig, evaluate_model
from common.federated import BASE_LABEL, IN_DOMAIN_LABEL
from common.merging import MergeConfig, StateDict, build_merge
from common.model import TextSeqRec, model_from_state
from common.settings import ModelConfig
from common.io import atomic_write_text
from common.report import markdown_table
from experiments.benchmark import learned_merges, plot, runs_made_by, training_free
from experiments.finished_run import load_finished_run, reused_or_made
from experiments.publish import publish, stamp

ROOT = Path(__file__).resolve().parents[1]


def validation_users(domain: Domain, features: torch.Tensor, max_len: int, max_users: int,
                     seed: int) -> DomainPseudoData:
    """A domain's validation histories (last ``max_len`` items, as evaluation sees them; the
    learner then encodes only those items) labelled with their true next item, shaped as
    pseudo-users with a top-1 'teacher' answer."""
    hist, targets = domain.eval_examples("val")
    order = torch.randperm(len(hist), generator=torch.Generator().manual_seed(seed))[:max_users]
    seqs = [hist[i][-max_len:] for i in order.tolist()]
    labels = torch.tensor([targets[i] for i in order.tolist()])[:, None]
    teacher = TeacherSignal(torch.ones(len(seqs), 1), domain.num_items, labels)
    return DomainPseudoData(domain.name, features, seqs, teacher)


def fit_on_users(model_cfg: ModelConfig, base: StateDict, finetuned: list[StateDict],
                 data: list[DomainPseudoData], granularity: str, steps: int, batch_size: int,
                 seed: int) -> LearnResult:
    """Merging weights over ``finetuned``'s task vectors, started at task arithmetic, fitted
    with the cross-entropy of the true next item of real users (``data``), the item table
    re-encoded with gradient at every step."""
    distill = from_dict(DistillConfig, {"granularity": granularity, "steps": steps, "seed": seed,
                                        "batch_size": batch_size, "item_table": "differentiable",
                                        "loss": {"rec_weight": 1.0, "kd_weight": 0.0}})
    return learn_merge_weights(TextSeqRec(model_cfg), base,
                               build_merge(MergeConfig(), base, finetuned), data, distill)


def _evaluate(model: TextSeqRec, domains: list[Domain], feats: dict[str, torch.Tensor],
              cfg: EvalConfig) -> dict[str, dict[str, float]]:
    row = {d.name: evaluate_model(model, d, feats[d.name], cfg).metrics for d in domains}
    row["average"] = {k: sum(row[d.name][k] for d in domains) / len(domains)
                      for k in row[domains[0].name]}
    return row


def run_oracle(bench: Path, granularities: list[str], steps: int, batch_size: int,
               max_users: int) -> dict:
    """Learn and evaluate the oracle merges; a report with the benchmark's rows for reference."""
    run = load_finished_run(bench)
    bench_report, cfg, domains, feats = run.report, run.cfg, run.domains, run.features
    model_cfg, base, finetuned = run.model_cfg, run.base, run.finetuned
    data = [validation_users(d, feats[d.name], model_cfg.max_len, max_users, cfg.seed) for d in domains]
    free, learned_rows = training_free(bench_report), learned_merges(bench_report)
    results = {m: bench_report["results"][m] for m in (BASE_LABEL, *free, *learned_rows)}
    weights, seconds, fit = {}, {}, {}
    for g in granularities:
        label = f"oracle {g}-wise (real validation users)"
        start = time.perf_counter()
        learned = fit_on_users(model_cfg, base, finetuned, data, g, steps, batch_size, cfg.seed)
        model = model_from_state(model_cfg, learned.state_dict)
        row = _evaluate(model, domains, feats, cfg.eval)
        fit[label] = _evaluate(model, domains, feats, replace(cfg.eval, split="val"))["average"]
        results[label], weights[label] = row, learned.weights
        seconds[label] = round(time.perf_counter() - start, 1)
        print(f"{label}: avg R@10 {row['average']['recall@10']:.4f} ({seconds[label]} s)", flush=True)
    results[IN_DOMAIN_LABEL] = bench_report["results"][IN_DOMAIN_LABEL]
    return {"results": results, "learned_weights": weights,
            "training_free": free, "learned": learned_rows,
            "validation_average": fit, "seconds": seconds, "protocol": bench_report.get("protocol"),
            "oracle": {"steps": steps, "batch_size": batch_size, "users_per_domain": max_users,
                       "loss": "cross-entropy on the true next item", "split_fitted": "val",
                       "item_table": "differentiable"}}


def summary(report: dict) -> str:
    """The results table, then each learned merge (pseudo-users, as the method runs, and fitted
    on real users) against the best training-free merge and the in-domain models."""
    res = report["results"]
    best_free = max(report["training_free"], key=lambda m: res[m]["average"]["recall@10"])
    tf = res[best_free]["average"]["recall@10"]
    in_domain = res[IN_DOMAIN_LABEL]["average"]["recall@10"]
    lines = [markdown_table(report), "",
             f"Best training-free merge: {best_free} {tf:.4f}; in-domain fine-tuned {in_domain:.4f}.", ""]
    for label in [*report["learned"], *report["learned_weights"]]:
        r = res[label]["average"]["recall@10"]
        line = f"- {label}: {r:.4f} ({r / tf - 1:+.1%} over {best_free}, {r / in_domain:.1%} of in-domain)"
        if label in report["learned_weights"]:
            line += (f"; on validation, where it was fitted, "
                     f"{report['validation_average'][label]['recall@10']:.4f}; "
                     f"{report['seconds'][label]} s")
        lines.append(line)
    return "\n".join(lines)


def oracle_seed(bench: Path, out: Path, settings: dict, made_by: dict[str, str]) -> dict:
    """:func:`run_oracle` on one benchmark seed into ``out``, reused when finished on the same
    run with the same settings."""
    return reused_or_made(bench, out, settings, made_by, lambda: run_oracle(bench, **settings),
                          summary)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--benchmark", default="results/benchmark/benchmark3",
                    help="a benchmark's results folder, with one seed<k>/ per seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--output", default="results/oracle-merge")
    ap.add_argument("--granularity", nargs="+", default=["task", "layer", "tensor"],
                    choices=["task", "layer", "tensor"])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--users", type=int, default=4000, help="validation users per domain")
    ap.add_argument("--publish", metavar="NAME",
                    help="write the combined report to experiments/reports/NAME/")
    args = ap.parse_args(argv)
    settings = {"granularities": args.granularity, "steps": args.steps,
                "batch_size": args.batch_size, "max_users": args.users}
    out, loaded = Path(args.output), stamp()  # the code this process imported
    reports = {seed: oracle_seed(Path(args.benchmark) / f"seed{seed}", out / f"seed{seed}",
                                 settings, loaded) for seed in args.seeds}
    head = (f"Benchmark: `{args.benchmark}`; {len(reports)} seed(s); {runs_made_by(reports)}. "
            f"Merging weights fitted on {args.users} real validation users per domain, "
            f"{args.steps} steps of {args.batch_size}; metrics on the test split.")
    text = "\n\n".join([head,
                         *(f"## Seed {s}\n\n{summary(r)}" for s, r in reports.items())])
    atomic_write_text(out / "report.md", text + "\n")
    print(text)
    if args.publish:
        image = plot(reports, out / "oracle_merge.png")
        where = publish(args.publish, "Learned merges vs merging weights fitted on real users",
                        text, {"settings": settings, "benchmark": args.benchmark,
                               "seeds": {s: {k: r[k] for k in ("results", "learned_weights",
                                                               "validation_average", "seconds",
                                                               "stamp")}
                                         for s, r in reports.items()}}, [image])
        print(f"published to {where}")


if __name__ == "__main__":
    main()
