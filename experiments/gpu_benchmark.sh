#!/usr/bin/env bash
# The full-size benchmark of the paper's setting (whole encoder fine-tuned) on a CUDA GPU:
#   experiments/gpu_benchmark.sh [SEED ...]        (default seeds: 0 1)
# Where torch sees no GPU it says so and exits 0 without running: the CPU benchmark is
# experiments/configs/pipelines/benchmark.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA GPU visible to torch: the full-encoder benchmark is prepared, not run"
  exit 0
fi
seeds=("$@"); [ ${#seeds[@]} -eq 0 ] && seeds=(0 1)
# the user as the sequence tower over item vectors, then as the encoder over the history's text
for name in gpu-full-encoder gpu-full-encoder-history-text; do
  MERGEREC_DEVICE=cuda python -m experiments.benchmark \
    --config "experiments/configs/pipelines/$name.yaml" --seeds "${seeds[@]}" --publish "benchmark-$name"
done
