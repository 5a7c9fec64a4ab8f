"""Is the benchmark's ID-based SASRec a fair "train alone" reference? Its training schedule
varied, evaluated with and without history masking beside the benchmark's fine-tuned text model
of the same silo, and set against published SASRec numbers:

    python -m experiments.sasrec_check [--config experiments/configs/sasrec-check.yaml]
                                       [--publish sasrec-check]

Every variant is trained in the silo's data (the benchmark's seed), chosen on the validation
split (NDCG@10, the early-stopping criterion) and reported on test. Published SASRec numbers are
usually measured with the user's history removed from the ranking, the project's protocol keeps
it (as the paper): both are given, for every model.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, replace
from pathlib import Path

from common.config import load_yaml, with_overrides
from common.evaluation import EvalConfig, evaluate_model
from common.model import model_from_state
from common.training.id_baseline import evaluate_sasrec, sasrec_cached
from experiments.finished_run import FinishedRun, load_finished_run
from experiments.publish import save_and_publish

METRICS = ("recall@10", "ndcg@10")
PROTOCOLS = {"history kept": False, "history masked": True}
TEXT_MODEL = "fine-tuned text model (benchmark)"


@dataclass
class SASRecCheckConfig:
    """What to compare: a finished benchmark seed, its domains to check, SASRec variants (each
    a change to the benchmark's ``id_baseline``) and published numbers with their source."""

    benchmark: str = "results/benchmark/benchmark3/seed0"
    domains: list[str] = field(default_factory=lambda: ["Beauty", "Sports"])
    variants: dict[str, dict] = field(default_factory=lambda: {"benchmark": {}})
    published: dict[str, dict[str, float]] = field(default_factory=dict)
    published_source: str = ""
    checkpoints: str = "results/sasrec-check/checkpoints"


def _metrics(evaluate, split: str) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    """``{protocol: {metric: value}}`` of ``evaluate(EvalConfig)`` on ``split``."""
    return {name: {m: v for m, v in evaluate(EvalConfig(split=split, ks=(10,), mask_history=mask))
                   .metrics.items() if m in METRICS}
            for name, mask in PROTOCOLS.items()}


def check(cfg: SASRecCheckConfig, run: FinishedRun) -> dict:
    """Every variant's and the text models' metrics per domain, split and protocol."""
    if run.cfg.id_baseline is None:
        raise SystemExit(f"{cfg.benchmark}: the benchmark ran without id_baseline")
    by_name = {d.name: (d, state) for d, state in zip(run.domains, run.finetuned)}
    unknown = [d for d in cfg.domains if d not in by_name]
    if unknown:
        raise SystemExit(f"{cfg.benchmark}: no seen domain {unknown} (it has {sorted(by_name)})")
    base = replace(run.cfg.id_baseline, seed=run.cfg.seed)
    out: dict = {"benchmark": cfg.benchmark, "domains": {}}
    for name in cfg.domains:
        domain, state = by_name[name]
        text = model_from_state(run.model_cfg, state)
        theta0 = model_from_state(run.model_cfg, run.base)
        rows: dict = {}
        for label, model in (("zero-shot base θ₀", theta0), (TEXT_MODEL, text)):
            rows[label] = {split: _metrics(lambda c, m=model: evaluate_model(
                m, domain, run.features[name], c), split) for split in ("val", "test")}
        for label, changes in cfg.variants.items():
            sas_cfg = with_overrides(base, changes, f"variants.{label}")
            model, stats = sasrec_cached(domain, sas_cfg, Path(cfg.checkpoints) / name)
            rows[f"SASRec: {label}"] = {
                split: _metrics(lambda c, m=model: evaluate_sasrec(m, domain, c), split)
                for split in ("val", "test")}
            rows[f"SASRec: {label}"]["training"] = {
                "settings": {k: getattr(sas_cfg, k) for k in ("epochs", "lr", "batch_size",
                                                                "patience", "hidden", "dropout")},
                "epochs run": int(stats["epochs_run"]), "best epoch": int(stats["best_epoch"]),
                "seconds": stats["seconds"]}
        out["domains"][name] = rows
    return out


def chosen_sasrec(rows: dict) -> str:
    """The SASRec variant with the best validation NDCG@10 (history kept)."""
    return max((r for r in rows if r.startswith("SASRec")),
               key=lambda r: rows[r]["val"]["history kept"]["ndcg@10"])


def markdown(report: dict, cfg: SASRecCheckConfig) -> str:
    lines = [f"Benchmark seed: `{report['benchmark']}`; full ranking over each catalogue, all "
             "users. 'kept': the project's protocol (the history stays in the ranking, as the "
             "paper); 'masked': the user's history items removed from the ranking.", ""]
    for name, rows in report["domains"].items():
        lines += [f"## {name}", "",
                  "| model | val N@10 (kept) | test R@10 kept | test N@10 kept | test R@10 masked "
                  "| test N@10 masked | epochs run (best) | seconds |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, r in rows.items():
            t, train = r["test"], r.get("training")
            extra = (f"{train['epochs run']} ({train['best epoch']}) | {train['seconds']:.0f}"
                     if train else "— | —")
            lines.append(f"| {label} | {r['val']['history kept']['ndcg@10']:.4f} | "
                         + " | ".join(f"{t[p][m]:.4f}" for p in PROTOCOLS for m in METRICS)
                         + f" | {extra} |")
        best = chosen_sasrec(rows)
        lines += ["", f"Chosen on validation: **{best}**. Text model / SASRec on test: "
                  + "; ".join(f"{m} {p} {rows[TEXT_MODEL]['test'][p][m] / rows[best]['test'][p][m]:.2f}×"
                              for p in PROTOCOLS for m in METRICS) + "."]
        if name in cfg.published:
            pub = cfg.published[name]
            lines.append("Published SASRec (" + cfg.published_source + "): "
                         + ", ".join(f"{m} {v:.3f} (chosen variant, masked: "
                                     f"{rows[best]['test']['history masked'][m] / v:.2f}×)"
                                     for m, v in pub.items()) + ".")
        lines.append("")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    """Test Recall@10 per model and protocol, one panel per domain."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = list(report["domains"])
    fig, axes = plt.subplots(1, len(domains), figsize=(6 * len(domains), 3.5), squeeze=False)
    for ax, name in zip(axes[0], domains):
        rows = report["domains"][name]
        labels = list(rows)
        for i, p in enumerate(PROTOCOLS):
            ax.barh([j + 0.4 * i for j in range(len(labels))],
                    [rows[r]["test"][p]["recall@10"] for r in labels], 0.4, label=p)
        ax.set_yticks([j + 0.2 for j in range(len(labels))], labels)
        ax.invert_yaxis()
        ax.set_title(name)
        ax.set_xlabel("test Recall@10")
    axes[0][-1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="experiments/configs/sasrec-check.yaml")
    ap.add_argument("--output", default="results/sasrec-check")
    ap.add_argument("--publish", metavar="NAME", help="also write experiments/reports/NAME/")
    args = ap.parse_args(argv)
    cfg = load_yaml(SASRecCheckConfig, args.config)
    report = check(cfg, load_finished_run(Path(cfg.benchmark)))
    save_and_publish(Path(args.output), "Is the ID-based SASRec a fair reference?",
                     markdown(report, cfg), report, plot, "sasrec.png", args.publish)


if __name__ == "__main__":
    main()
