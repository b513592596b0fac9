#!/usr/bin/env bash
# The agent recipe of issue 12 and its ablation, on one GPU, in steps that each fit a 10-minute call and are
# skipped when their output exists (a call cut short resumes with the next call on the same machine).
#   bash benchmarks/agent_recipe.sh train      # corpus, labels, then 4 variants side by side on the GPU
#   bash benchmarks/agent_recipe.sh evaluate   # the test-split table: variants beside the text baselines
# Variants: untrained policy, behaviour cloning only, PPO only, cloning + PPO (same config, same seed).
set -euo pipefail
CONFIG=${CONFIG:-configs/prod/gpu_pareto.json}
TM="python3 -m tokenmask.cli"
step=${1:-all}
if [[ $step == train || $step == all ]]; then
  [[ -d data_out/pydocs ]] || $TM prepare-data --data_path data/pydocs.jsonl --output_dir data_out/pydocs
  [[ -f runs/labels/label_config.json ]] || $TM label --data_path data_out/pydocs --split train --span 32 \
    --retention_weight 0.25 --candidates 64 --swap_rounds 0 --max_documents "${LABEL_DOCS:-256}" \
    --judge_dtype bfloat16 --output_dir runs/labels
  [[ -f runs/untrained/config.json ]] || python3 benchmarks/untrained_agent.py --config "$CONFIG" --run_dir runs/untrained
  [[ -f runs/bc/config.json ]] || python3 benchmarks/untrained_agent.py --config "$CONFIG" --run_dir runs/bc --pretrain runs/labels
  pids=()
  for v in ppo bc_ppo; do
    extra=(); [[ $v == bc_ppo ]] && extra=(--pretrain runs/labels)
    if [[ -f runs/$v/config.json ]]; then extra=(--resume runs/$v); fi
    $TM train --config "$CONFIG" --run_dir runs/$v "${extra[@]}" > runs/train_$v.log 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  tail -n 3 runs/train_ppo.log runs/train_bc_ppo.log
fi
if [[ $step == evaluate || $step == all ]]; then
  $TM evaluate --corpus data_out/pydocs --split test --num_documents 30 --rates 0.3,0.5,0.7 --device cuda \
    --methods agent:runs/untrained,agent:runs/bc,agent:runs/ppo,agent:runs/bc_ppo,truncation,truncation_first,span_self_information,self_information,frequency,length,random \
    --output_dir runs/eval_test --overwrite
fi
