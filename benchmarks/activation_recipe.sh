#!/usr/bin/env bash
# Issue 13 on one GPU, in steps that each fit a 10-minute call; every step skips what exists. After
# `source .gpu/setup.sh` on the GPU machine (kvpress steps: with the kvpress wheels installed to $KV_SITE,
# see below):
#   bash benchmarks/activation_recipe.sh train      # the rate-0.3 and rate-0.5 layer plans, judge frozen (freeze_base)
#   bash benchmarks/activation_recipe.sh evaluate   # test split: trained plans beside every kvpress press + truncation,
#                                                   # and perplexity on the test split (tokenmask activation evaluate)
#   bash benchmarks/activation_recipe.sh memory     # benchmarks/kv_memory.py at 4k and 8k tokens, rates 0.3 / 0.5
#   bash benchmarks/activation_recipe.sh collect    # small artefacts to $OUT
# kvpress 0.5.x needs transformers < 5.3: its wheels (kvpress 0.5.5, transformers 5.2.0, tokenizers 0.22,
# cachetools, fire, termcolor) are installed with `pip install --target $KV_SITE --no-deps` and put first on
# PYTHONPATH for the evaluate and memory steps (tokenmask runs on that transformers line too).
set -euo pipefail
TM="python3 -m tokenmask.cli"
KV_SITE=${KV_SITE:-/tmp/kvpress-site}
step=${1:-all}
kv() { PYTHONPATH="$KV_SITE:$PYTHONPATH" "$@"; }
mkdir -p runs
[[ -f data_out/pydocs/stats.json ]] || $TM prepare-data --data_path data/pydocs.jsonl --output_dir data_out/pydocs

if [[ $step == train || $step == all ]]; then
  for r in 30 50; do
    [[ -d runs/activation_smollm2_rate$r/model ]] || {
      $TM activation train --config configs/prod/activation_train_rate$r.json > runs/activation_train_rate$r.log 2>&1
      }
    tail -n 5 runs/activation_train_rate$r.log
  done
fi

PRESSES=kvpress:expected_attention,kvpress:snapkv,kvpress:knorm,kvpress:tova,kvpress:streaming_llm
if [[ $step == evaluate || $step == all ]]; then
  [[ -f runs/eval_inmodel_test/results.json ]] || kv $TM evaluate --corpus data_out/pydocs --split test \
    --num_documents 30 --rates 0.3,0.5 --device cuda --overwrite --output_dir runs/eval_inmodel_test \
    --methods "activation:runs/activation_smollm2_rate30/model,activation:runs/activation_smollm2_rate50/model,$PRESSES,truncation"
  for r in 30 50; do
    [[ -f runs/activation_smollm2_rate$r/eval/results.json ]] || \
      $TM activation evaluate --config configs/prod/activation_evaluate_rate$r.json > runs/activation_eval_rate$r.log 2>&1
    tail -n 12 runs/activation_eval_rate$r.log
  done
fi

if [[ $step == memory || $step == all ]]; then
  kv python3 benchmarks/kv_memory.py --random-weights --contexts 4096,8192 --rates 0.3,0.5 --batch-size "${BATCH:-auto}" --fill "${FILL:-0.45}" \
    --methods "none,activation:configs/dev/activation_method_rate50.json,kvpress:expected_attention,kvpress:snapkv" \
    --time-limit "${TIME_LIMIT:-500}" --json runs/kv_memory_gpu.json
fi

if [[ $step == collect || $step == all ]]; then
  out=${OUT:-runs/collected}
  mkdir -p "$out"
  tar czf "$out/inmodel.tgz" --exclude='*.safetensors' --exclude='*.bin' runs/eval_inmodel_test runs/activation_* \
    runs/kv_memory_gpu.json 2>/dev/null || true
  ls -la "$out"
fi
