"""Fine-tuning step time: the autograd item side, the fused one and the fused sampled softmax,
side by side.

    python -m experiments.step_benchmark [--data-dir ../shared/data/amazon] [--steps 30] [--rounds 3]

The benchmark's architecture (``benchmark.yaml``: frozen MiniLM vectors, 64-wide item adapter,
repeat head) from θ₀, trained with AdamW on the first ``--steps`` batches of an epoch, at the
batch sizes the benchmark's silos use (Beauty and Sports 32, Pantry 256) and at the joint
training's 256 on the largest catalogue (Sports). Each round times the three step
implementations one after the other on the same batches (the first 5 steps of each are warm-up
and not counted), so all see the same machine; the ratios are to the autograd step. The
sampled step (``train.loss: sampled_softmax``) draws as many items per step as the benchmark's
sampled-softmax silos (their ``train.negatives``): a different loss, timed for its cost. Also
recorded: the autograd and fused losses on the first batch (the same computation). Writes
``experiments/reports/step-speed/`` (report, JSON summary, plot).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from pathlib import Path

import torch

from common.backbone import base_model, model_config_for
from common.config import load_yaml, with_overrides
from common.data import load_mergerec_json
from common.settings import PipelineConfig
from common.text import center_features, item_features, make_encoder
from common.training.batching import bucketed_batches, training_sequences
from common.training.finetune import fused_next_item_loss, next_item_loss
from common.training.fused_items import Buffers
from common.training.softmax_loss import LogitsWorkspace
from experiments.publish import publish

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [("Beauty", 32), ("Pantry", 256), ("Sports", 32), ("Sports", 256)]
KINDS = ("autograd", "fused", "sampled")
WARMUP = 5


def sampled_negatives(cfg: PipelineConfig) -> int:
    """Items drawn per step by the benchmark's sampled-softmax silos (one value for all)."""
    own = [with_overrides(cfg.train, changes, f"federation.silo_train.{name}")
           for name, changes in cfg.federation.silo_train.items()]
    values = {t.negatives for t in own if t.loss == "sampled_softmax"}
    if len(values) != 1:
        raise SystemExit(f"benchmark.yaml: expected one sampled-softmax 'negatives' among the "
                         f"silos' own settings, found {sorted(values)}")
    return values.pop()


def time_steps(kind: str, model_fn, text: torch.Tensor, batches: list,
               negatives: int) -> tuple[list[float], float]:
    """Seconds per step of one fresh θ₀ trained on ``batches``, and the first step's loss."""
    model = model_fn()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=0.003)
    workspace, buffers = LogitsWorkspace(), Buffers()
    times, first = [], float("nan")
    for i, batch in enumerate(batches):
        torch.manual_seed(i)  # the same dropout masks for every kind
        start = time.perf_counter()
        if kind == "fused":
            loss = fused_next_item_loss(model, text, batch, workspace, buffers)
        elif kind == "sampled":
            drawn = torch.randint(len(text), (negatives,))
            loss = fused_next_item_loss(model, text, batch, workspace, buffers, drawn)
        else:
            loss = next_item_loss(model, model.encode_items(text), batch, workspace, text)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
        if i == 0:
            first = float(loss.detach())
    return times[WARMUP:], first


def measure(data_dir: Path, cache: Path | None, steps: int, rounds: int) -> list[dict]:
    cfg = load_yaml(PipelineConfig, ROOT / "experiments/configs/pipelines/benchmark.yaml")
    cache = cache or cfg.data.cache()
    negatives = sampled_negatives(cfg)
    encoder = make_encoder(cfg.encoder)
    model_cfg = model_config_for(cfg.model, encoder)
    rows = []
    for name, batch_size in SETTINGS:
        domain = load_mergerec_json(data_dir / f"{name}.tar.gz", cache_dir=cache / "data")
        text = item_features(domain, encoder, cache / "features").float()
        text = center_features(text) if cfg.center_features else text
        seqs = training_sequences(domain.train, model_cfg.max_len)
        per_epoch = sum(1 for _ in bucketed_batches([seqs], batch_size, model_cfg.max_len,
                                                    torch.Generator().manual_seed(0)))
        batches = list(itertools.islice(bucketed_batches(
            [seqs], batch_size, model_cfg.max_len, torch.Generator().manual_seed(0)), steps))
        times: dict[str, list[float]] = {kind: [] for kind in KINDS}
        losses: dict[str, float] = {}
        for _ in range(rounds):
            for kind in times:
                got, losses[kind] = time_steps(kind, lambda: base_model(model_cfg, encoder, 0),
                                               text, batches, negatives)
                times[kind] += got
        mean = {k: sum(v) / len(v) for k, v in times.items()}
        rows.append({"domain": name, "items": domain.num_items, "batch_size": batch_size,
                     "steps_per_epoch": per_epoch, "negatives": negatives,
                     "timed_steps": len(times["fused"]),
                     **{f"{k}_ms": 1000 * mean[k] for k in KINDS},
                     "ratio": mean["fused"] / mean["autograd"],
                     "sampled_ratio": mean["sampled"] / mean["autograd"],
                     **{f"{k}_epoch_s": mean[k] * per_epoch for k in KINDS},
                     "first_loss_autograd": losses["autograd"], "first_loss_fused": losses["fused"]})
        print(rows[-1], flush=True)
    return rows


def markdown(rows: list[dict], steps: int, rounds: int) -> str:
    lines = [f"The benchmark's architecture from θ₀, AdamW, {os.cpu_count()} CPU cores; per "
             f"setting {rounds} rounds of the three step implementations one after the other "
             f"on the same first {steps} batches of an epoch ({WARMUP} warm-up steps each not "
             "counted). Sampled: the fused step with the sampled softmax over "
             f"{rows[0]['negatives']:,} drawn items plus the batch's targets and history items (a "
             "different loss). Epoch seconds = mean step × steps per epoch (training steps "
             "only, without the validation pass).", "",
             "| domain | items | users per step | ms / step: autograd, fused, sampled | "
             "fused / autograd | sampled / autograd | epoch s: autograd, fused, sampled | "
             "first-step loss (autograd, fused) |",
             "|---|---:|---:|---|---:|---:|---|---|"]
    lines += [f"| {r['domain']} | {r['items']:,} | {r['batch_size']} | "
              + ", ".join(f"{r[f'{k}_ms']:.0f}" for k in KINDS)
              + f" | {r['ratio']:.2f} | {r['sampled_ratio']:.2f} | "
              + ", ".join(f"{r[f'{k}_epoch_s']:.0f}" for k in KINDS)
              + f" | {r['first_loss_autograd']:.5f}, {r['first_loss_fused']:.5f} |"
              for r in rows]
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r['domain']}\n{r['batch_size']} users" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for j, kind in enumerate(KINDS):
        ax.bar([i + 0.27 * (j - 1) for i in x], [r[f"{kind}_ms"] for r in rows], 0.27,
               label=kind)
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("ms per training step")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared/data/amazon"))
    parser.add_argument("--cache-dir", help="data and text-vector cache (default: the "
                        "pipeline's, $MERGEREC_CACHE or ~/.cache/mergerec)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if args.steps <= WARMUP or args.rounds < 1:
        raise SystemExit(f"--steps must exceed the {WARMUP} warm-up steps and --rounds be >= 1")
    rows = measure(Path(args.data_dir), Path(args.cache_dir) if args.cache_dir else None,
                   args.steps, args.rounds)
    text = markdown(rows, args.steps, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        image = plot(rows, Path(tmp) / "step_speed.png")
        where = publish("step-speed", "Fine-tuning step time: autograd, fused and sampled "
                        "softmax steps",
                        text, {"steps": args.steps, "rounds": args.rounds, "settings": rows},
                        [image])
    print(text)
    print(f"published to {where}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
