"""Merging weights fitted on *real* validation users: a non-private reference for learned merging.

    python -m experiments.oracle_merge [--benchmark results/benchmark-silo-settings]
                                       [--output results/oracle-merge] [--steps 800]

On a finished benchmark's fine-tuned weights (its ``received/`` folder), the merging weights
are learned task-, layer- or tensor-wise with the recommendation loss on every domain's
validation users and their true next items, instead of pseudo-users and teacher answers, with
the item table re-encoded by the current weights at every step (the loss sees exactly the
model that is evaluated). Each merge is then evaluated on the benchmark's split (test) and on
validation, where it was fitted. Non-private, like joint training: it asks whether real users
would have let the learned merge get further than the pseudo-users did.
Writes ``report.md`` and ``report.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file

from common.config import from_dict
from common.data import Domain
from common.distill import DistillConfig, DomainPseudoData, TeacherSignal, learn_merge_weights
from common.evaluation import EvalConfig, evaluate_model
from common.experiment import load_domains
from common.federated import RunSettings
from common.federated.coordinator import safe_name
from common.merging import MergeConfig, build_merge
from common.backbone import resolve_base
from common.model import TextSeqRec, model_from_state, state_hash
from common.pipeline import PipelineConfig, local_silos
from common.report import markdown_table, write_report
from common.merging import TRAINING_FREE_LABELS

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_ROWS = ("zero-shot base θ₀", "in-domain fine-tuned", *TRAINING_FREE_LABELS, "mergerec task-wise",
                  "mergerec layer-wise")


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


def _evaluate(model: TextSeqRec, domains: list[Domain], feats: dict[str, torch.Tensor],
              cfg: EvalConfig) -> dict[str, dict[str, float]]:
    row = {d.name: evaluate_model(model, d, feats[d.name], cfg).metrics for d in domains}
    row["average"] = {k: sum(row[d.name][k] for d in domains) / len(domains)
                      for k in row[domains[0].name]}
    return row


def run_oracle(bench: Path, granularities: list[str], steps: int, batch_size: int,
               max_users: int) -> dict:
    """Learn and evaluate the oracle merges; a report with the benchmark's rows for reference."""
    source = bench / "report.json"
    if not source.is_file():
        raise SystemExit(f"{source}: not found (run python -m experiments.benchmark first)")
    bench_report = json.loads(source.read_text())
    cfg = from_dict(PipelineConfig, bench_report["config"], str(source))
    domains = [d for d in load_domains(cfg.data) if d.name not in cfg.federation.eval_only]
    model_cfg, base = resolve_base(cfg.encoder, cfg.model, cfg.seed)
    if state_hash(base) != bench_report["base_hash"]:
        raise SystemExit(f"{source}: θ₀ of this code differs from the benchmark's; re-run it")
    finetuned = []
    for d in domains:
        path = bench / "received" / f"{safe_name(d.name)}.safetensors"
        if not path.is_file():
            raise SystemExit(f"{path}: the benchmark kept no weights for silo {d.name}")
        finetuned.append(load_file(str(path)))
    run = RunSettings(cfg.encoder, cfg.center_features, model_cfg)
    feats = {s.cfg.name: s.features(run) for s in local_silos(cfg, domains)}
    data = [validation_users(d, feats[d.name], model_cfg.max_len, max_users, cfg.seed) for d in domains]
    results = {m: bench_report["results"][m] for m in REFERENCE_ROWS if m in bench_report["results"]}
    weights, seconds, fit = {}, {}, {}
    for g in granularities:
        label = f"oracle {g}-wise (real validation users)"
        distill = from_dict(DistillConfig, {"granularity": g, "steps": steps, "seed": cfg.seed,
                                            "batch_size": batch_size, "item_table": "differentiable",
                                            "loss": {"rec_weight": 1.0, "kd_weight": 0.0}})
        start = time.perf_counter()
        learned = learn_merge_weights(TextSeqRec(model_cfg), base,
                                      build_merge(MergeConfig(), base, finetuned), data, distill)
        model = model_from_state(model_cfg, learned.state_dict)
        row = _evaluate(model, domains, feats, cfg.eval)
        fit[label] = _evaluate(model, domains, feats, replace(cfg.eval, split="val"))["average"]
        results[label], weights[label] = row, learned.weights
        seconds[label] = round(time.perf_counter() - start, 1)
        print(f"{label}: avg R@10 {row['average']['recall@10']:.4f} ({seconds[label]} s)", flush=True)
    return {"benchmark": str(bench), "results": results, "learned_weights": weights,
            "validation_average": fit, "seconds": seconds, "protocol": bench_report.get("protocol"),
            "oracle": {"steps": steps, "batch_size": batch_size, "users_per_domain": max_users,
                       "loss": "cross-entropy on the true next item", "split_fitted": "val",
                       "item_table": "differentiable"}}


def summary(report: dict) -> str:
    """The results table and how each merge fitted on real users compares with the best
    training-free merge and the in-domain models."""
    res = report["results"]
    free = [m for m in TRAINING_FREE_LABELS if m in res]
    best_free = max(free, key=lambda m: res[m]["average"]["recall@10"])
    tf = res[best_free]["average"]["recall@10"]
    in_domain = res["in-domain fine-tuned"]["average"]["recall@10"]
    lines = [markdown_table(report), "",
             f"Best training-free merge: {best_free} {tf:.4f}; in-domain fine-tuned {in_domain:.4f}.", ""]
    for label in report["learned_weights"]:
        r = res[label]["average"]["recall@10"]
        v = report["validation_average"][label]["recall@10"]
        lines.append(f"- {label}: {r:.4f} ({r / tf - 1:+.1%} over {best_free}, "
                     f"{r / in_domain:.1%} of in-domain); on validation, where it was fitted, "
                     f"{v:.4f}; {report['seconds'][label]} s")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--benchmark", default="results/benchmark/amazon3-silo-settings/seed0")
    ap.add_argument("--output", default="results/oracle-merge")
    ap.add_argument("--granularity", nargs="+", default=["task", "layer", "tensor"],
                    choices=["task", "layer", "tensor"])
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--users", type=int, default=4000, help="validation users per domain")
    args = ap.parse_args()
    report = run_oracle(Path(args.benchmark), args.granularity, args.steps, args.batch_size, args.users)
    text = summary(report)
    write_report(report, Path(args.output), text)
    print(text)


if __name__ == "__main__":
    main()
