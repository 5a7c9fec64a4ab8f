"""What could carry over to a domain no silo trained on? Two measurements on a finished
benchmark seed, on the validation split (an analysis, not a merge):

    python -m experiments.transfer_analysis [--benchmark results/benchmark/benchmark3/seed0]
                                            [--users 10000] [--publish transfer-analysis]

1. **Domain-agnostic history rules** over θ₀'s item vectors: the user vector is a recency-weighted
   sum of the history's item vectors (weight ``decay^k`` for the item ``k`` steps back; decay 0
   is θ₀ itself, checked to score exactly as θ₀), plus a bonus for the last item and for the
   other history items. A rule that lifts every domain is the most that a model learned on
   *other* domains could bring to a new one without its users; the best rule's worst domain
   bounds what one fixed rule gives everywhere (leave-one-domain-out asks ≥ 1.05× θ₀).
2. **Which part of a silo's model transfers**: each silo's fine-tuned weights evaluated on the
   other domains whole, and with only one component kept (the rest at θ₀).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common.data import Domain
from common.evaluation import EvalConfig, evaluate_model
from common.evaluation.evaluate import evaluate_scores
from common.model import TextSeqRec, model_from_state
from common.model.recommender import add_at, pad_sequences, sequence_history_index
from experiments.finished_run import FinishedRun, load_finished_run
from experiments.publish import grouped_bars, save_and_publish

DECAYS = (0.0, 0.2, 0.4, 0.6)
LAST_BONUS = (0.0, -1.0)     # -1: the last item is pushed out of the top ranks
OTHER_BONUS = (0.0, 0.1)     # +0.1: earlier history items promoted (repeat purchases)
COMPONENTS = {"sequence tower": ("seq_tower.",),
              "item tower": ("item_tower.", "text_tower."),
              "history bonus": ("history_weight", "repeat_head.")}
METRIC = "recall@10"


def rule_label(decay: float, last: float, other: float) -> str:
    return f"decay {decay:g}, last {last:+g}, other {other:+g}"


def rule_scores(base: TextSeqRec, item_emb: torch.Tensor, decay: float, last: float,
                other: float):  # type: ignore[no-untyped-def]
    """Score function of one rule: θ₀'s scoring with the user vector
    ``Σ_k decay^k · e_{t-k}`` and the bonuses added to history items."""
    max_len = base.cfg.max_len

    @torch.no_grad()
    def score(hist: list[list[int]]) -> torch.Tensor:
        seqs, lengths = pad_sequences(hist, max_len)
        pos = torch.arange(seqs.shape[1])
        back = (lengths[:, None] - 1 - pos[None]).float()  # steps back from the last item
        # decay 0: weight 1 on the last item and exactly 0 elsewhere (0 ** 0 = 1), as θ₀
        weight = torch.where(back >= 0, decay ** back.clamp(min=0), torch.zeros(()))
        users = (weight[:, :, None] * item_emb[seqs]).sum(1)
        index = sequence_history_index(seqs, lengths, len(item_emb))
        out = base.logits(users, item_emb, index, 1.0)
        if other:
            out = add_at(out, *index, torch.full((len(index[0]),), other))
        if last or other:
            rows = torch.arange(len(seqs))
            out = add_at(out, rows, seqs[rows, lengths - 1], torch.full((len(rows),), last - other))
        return out

    return score


def history_rules(run: FinishedRun, base: TextSeqRec, cfg: EvalConfig) -> dict:
    """Every rule's metrics per domain; refuses to go on if decay 0 without bonuses does not
    reproduce θ₀'s own evaluation."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for d in run.domains:
        with torch.no_grad():
            item_emb = base.encode_items(run.features[d.name].float())
        theta0 = evaluate_model(base, d, run.features[d.name], cfg).metrics
        for decay in DECAYS:
            for last in LAST_BONUS:
                for other in OTHER_BONUS:
                    res = evaluate_scores(rule_scores(base, item_emb, decay, last, other), d, cfg)
                    out.setdefault(rule_label(decay, last, other), {})[d.name] = res.metrics
        if out[rule_label(0.0, 0.0, 0.0)][d.name] != theta0:
            raise RuntimeError(f"{d.name}: the rule 'decay 0' does not reproduce θ₀'s scores")
    return out


def repeats(domain: Domain, cfg: EvalConfig) -> dict[str, float]:
    """Share of evaluated users whose next item is their last item / anywhere in the history."""
    hist, targets = domain.eval_examples(cfg.split)
    hist, targets = hist[: cfg.max_users], targets[: cfg.max_users]
    n = max(len(hist), 1)
    return {"last": sum(t == h[-1] for h, t in zip(hist, targets)) / n,
            "history": sum(t in h for h, t in zip(hist, targets)) / n}


def component_transfer(run: FinishedRun, cfg: EvalConfig) -> dict:
    """{silo: {domain: {variant: metrics}}} for every other domain: the silo's weights whole,
    and each component alone over θ₀."""
    out: dict = {}
    for source, weights in zip(run.domains, run.finetuned):
        variants = {"whole model": weights}
        for comp, prefixes in COMPONENTS.items():
            variants[f"{comp} only"] = {k: (v if k.startswith(prefixes) else run.base[k])
                                        for k, v in weights.items()}
        for d in run.domains:
            if d.name != source.name:
                out.setdefault(source.name, {})[d.name] = {
                    name: evaluate_model(model_from_state(run.model_cfg, state), d,
                                         run.features[d.name], cfg).metrics
                    for name, state in variants.items()}
    return out


def analyse(bench: Path, users: int | None) -> dict:
    """Both measurements on the validation split (``users`` per domain, None: all)."""
    run = load_finished_run(bench)
    cfg = EvalConfig(split="val", ks=(10,), mask_history=False, max_users=users)
    base = model_from_state(run.model_cfg, run.base)
    theta0 = {d.name: evaluate_model(base, d, run.features[d.name], cfg).metrics for d in run.domains}
    return {"benchmark": str(bench), "users": {d.name: len(d.eval_examples("val")[0][:users])
                                               for d in run.domains},
            "theta0": theta0, "rules": history_rules(run, base, cfg),
            "repeats": {d.name: repeats(d, cfg) for d in run.domains},
            "transfer": component_transfer(run, cfg)}


def ratio(metrics: dict[str, float], theta0: dict[str, float]) -> float:
    return metrics[METRIC] / max(theta0[METRIC], 1e-12)


def best_universal_rule(report: dict) -> tuple[str, float, str]:
    """The rule whose worst domain (ratio to θ₀) is best: (rule, that ratio, that domain)."""
    def worst(rule: str) -> tuple[float, str]:
        return min((ratio(m, report["theta0"][d]), d) for d, m in report["rules"][rule].items())
    rule = max(report["rules"], key=lambda r: worst(r)[0])
    return (rule, *worst(rule))


def markdown(report: dict) -> str:
    domains = list(report["theta0"])
    th = report["theta0"]
    lines = [f"Benchmark seed: `{report['benchmark']}`. Validation split, full ranking, history "
             "not masked; users per domain: "
             + ", ".join(f"{d} {n:,}" for d, n in report["users"].items()) + ".", "",
             "## 1. Domain-agnostic history rules over θ₀'s item vectors", "",
             "Recall@10 (ratio to θ₀). decay: weight of the item k steps back is decay^k (0: the "
             "last item only, θ₀); last / other: bonus added to the last item's / earlier history "
             "items' cosine.", "",
             "| rule | " + " | ".join(domains) + " | worst domain |",
             "|---|" + "---:|" * (len(domains) + 1)]
    for rule, per in report["rules"].items():
        cells = [f"{per[d][METRIC]:.4f} ({ratio(per[d], th[d]):.3f}×)" for d in domains]
        lines.append(f"| {rule} | " + " | ".join(cells)
                     + f" | {min(ratio(per[d], th[d]) for d in domains):.3f}× |")
    rule, worst, where = best_universal_rule(report)
    lines += ["", "Next item already in the history: " + ", ".join(
        f"{d} {r['history']:.1%} (the last item {r['last']:.1%})"
        for d, r in report["repeats"].items()) + ".", "",
        f"Best single rule for every domain: **{rule}**, worst domain {where} at {worst:.3f}× θ₀."]
    for d in domains:
        best = max(report["rules"], key=lambda r: ratio(report["rules"][r][d], th[d]))
        lines.append(f"- best rule on {d} alone: {best} ({ratio(report['rules'][best][d], th[d]):.3f}×)")
    lines += ["", "## 2. A silo's fine-tuned model on the other domains", "",
              "Recall@10 as a ratio to θ₀ on the target domain; '… only': that component from the "
              "silo, every other weight θ₀'s.", ""]
    variants = list(next(iter(next(iter(report["transfer"].values())).values())))
    lines += ["| silo → domain | " + " | ".join(variants) + " |", "|---|" + "---:|" * len(variants)]
    for source, per in report["transfer"].items():
        for d, res in per.items():
            lines.append(f"| {source} → {d} | "
                         + " | ".join(f"{ratio(res[v], th[d]):.3f}×" for v in variants) + " |")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> Path:
    """Each rule's ratio to θ₀ per domain, with the leave-one-domain-out target line."""
    rules = list(report["rules"])
    series = {d: [ratio(report["rules"][r][d], th) for r in rules]
              for d, th in report["theta0"].items()}
    return grouped_bars(rules, series, "Recall@10 / θ₀'s (validation)", path, row_height=0.3,
                        target=1.05)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--benchmark", default="results/benchmark/benchmark3/seed0",
                    help="a finished benchmark seed's folder")
    ap.add_argument("--users", type=int, default=10000, help="validation users per domain")
    ap.add_argument("--output", default="results/transfer-analysis")
    ap.add_argument("--publish", metavar="NAME", help="also write experiments/reports/NAME/")
    args = ap.parse_args(argv)
    report = analyse(Path(args.benchmark), args.users)
    save_and_publish(Path(args.output), "What could carry over to a new domain",
                     markdown(report), report, plot, "rules.png", args.publish)


if __name__ == "__main__":
    main()
