#!/usr/bin/env bash
# The agent recipe of issue 12 and its ablation on one GPU, in steps that each fit a 10-minute call. Every
# step skips what exists, and a PPO run that exists resumes from its newest checkpoint, so a call cut
# short continues with the next call. After `source .gpu/setup.sh` on the GPU machine:
#   bash benchmarks/agent_recipe.sh label      # corpus, labels (judge search on the train split), step-0 agents
#   bash benchmarks/agent_recipe.sh train      # the PPO variants side by side on the GPU
#   bash benchmarks/agent_recipe.sh evaluate   # validation (model choice) and test tables beside the text baselines
#   bash benchmarks/agent_recipe.sh collect    # small artefacts to $OUT: labels, policy-only agents, results
#   bash benchmarks/agent_recipe.sh refine     # a policy cloned on refine:truncation's masks, judged alone and under refine
#   bash benchmarks/agent_recipe.sh guard      # refine_guard: settings from train+validation candidates, judged on test
#   bash benchmarks/agent_recipe.sh lookahead  # refine_lookahead: the same with the judge's own continuation (call it
#                                              # until it reaches the test table: ~3 min validation, ~9 min train, ~3 min test)
#   bash benchmarks/agent_recipe.sh span       # refine_lookahead's drop rules (oldest vs oldest+span moves): candidates of
#                                              # train+validation (~2 + 2 x 3.5 min, shards), the pick, then the test split
# Variants (same seed): lm_* observe the reconstructor's per-token features (configs/prod/gpu_pareto.json),
# pos_* only token ids and positions (configs/prod/gpu_pareto_position.json, no LM pass at inference).
#   *_untrained: the policy before any update; *_bc: behaviour cloning only; lm_ppo: PPO only;
#   *_bc_ppo: cloning then PPO (dense judge credit); lm_bc_ppo_terminal: the same with the bonus paid at the end.
set -euo pipefail
LM=${LM_CONFIG:-configs/prod/gpu_pareto.json}
POS=${POS_CONFIG:-configs/prod/gpu_pareto_position.json}
MINUTES=${TRAIN_MINUTES:-6}
TM="python3 -m tokenmask.cli"
step=${1:-all}

if [[ $step == label || $step == all ]]; then
  [[ -f data_out/pydocs/stats.json ]] || $TM prepare-data --data_path data/pydocs.jsonl --output_dir data_out/pydocs
  [[ -f runs/labels/label_config.json ]] || $TM label --data_path data_out/pydocs --split train --span 32 \
    --retention_weight "${LABEL_LAMBDA:-0.5}" --candidates 64 --swap_rounds 0 ${LABEL_DOCS:+--max_documents $LABEL_DOCS} \
    --judge_dtype bfloat16 --no_progress --output_dir runs/labels
  [[ -f runs/lm_untrained/config.json ]] || python3 benchmarks/untrained_agent.py --config "$LM" --run_dir runs/lm_untrained
  [[ -f runs/lm_bc/config.json ]] || python3 benchmarks/untrained_agent.py --config "$LM" --run_dir runs/lm_bc --pretrain runs/labels
  [[ -f runs/pos_bc/config.json ]] || python3 benchmarks/untrained_agent.py --config "$POS" --run_dir runs/pos_bc --pretrain runs/labels
fi

train() {  # name config extra-args...: train (or resume) one variant in the background
  local name=$1 config=$2; shift 2
  local args=(--config "$config" --run_dir "runs/$name" --max_train_minutes "$MINUTES" "$@")
  if [[ -f runs/$name/config.json ]]; then args=(--resume "runs/$name" --max_train_minutes "$MINUTES"); fi
  $TM train "${args[@]}" > "runs/train_$name.log" 2>&1 &
}

if [[ $step == train || $step == all ]]; then
  mkdir -p runs
  train lm_bc_ppo "$LM" --pretrain runs/labels
  train pos_bc_ppo "$POS" --pretrain runs/labels
  train lm_ppo "$LM"
  train lm_bc_ppo_terminal "$LM" --pretrain runs/labels --env.judge_credit terminal
  wait
  tail -n 4 runs/train_*.log
fi

if [[ $step == refine ]]; then
  # the policy taught refine:truncation's choice (labels need no continuation), then judged alone and as refine's base
  [[ -f data_out/pydocs/stats.json ]] || $TM prepare-data --data_path data/pydocs.jsonl --output_dir data_out/pydocs
  [[ -f runs/labels_refine/label_config.json ]] || $TM label --data_path data_out/pydocs --split train --span 8 \
    --family refine --retention_weight 0 --candidates 0 --swap_rounds 0 ${LABEL_DOCS:+--max_documents $LABEL_DOCS} \
    --judge_dtype bfloat16 --no_progress --output_dir runs/labels_refine
  [[ -f runs/refine_bc/config.json ]] || python3 benchmarks/untrained_agent.py --config configs/prod/gpu_refine_clone.json \
    --run_dir runs/refine_bc --pretrain runs/labels_refine
  for split in validation test; do
    [[ -f runs/eval_refine_bc_$split/results.json ]] || $TM evaluate --corpus data_out/pydocs --split $split --num_documents 30 \
      --rates 0.3,0.5,0.7 --device "${DEVICE:-cuda}" --no_progress --output_dir runs/eval_refine_bc_$split --overwrite \
      --methods agent:runs/refine_bc,refine:agent:runs/refine_bc,truncation,refine:truncation
  done
fi

if [[ $step == guard ]]; then
  # refine_guard's settings: every candidate's judged R and F on train and validation (the continuation is read
  # only to choose the settings, never by the method), the pick printed by candidate_analysis.py (its defaults are
  # refine.GUARD_*), then the test split beside every text baseline
  [[ -f data_out/pydocs/stats.json ]] || $TM prepare-data --data_path data/pydocs.jsonl --output_dir data_out/pydocs
  for split in validation train; do
    [[ -f runs/cand2_$split.json ]] || python3 benchmarks/run_candidates.py --split $split --device "${DEVICE:-cuda}" \
      --moves 8,16,24,32,48 --stride 8 --guards 8,16,32 --chunk 8 --json runs/cand2_$split.json
  done
  python3 benchmarks/candidate_analysis.py guard --files runs/cand2_train.json,runs/cand2_validation.json --top 4
  [[ -f runs/eval_guard_test/results.json ]] || $TM evaluate --corpus data_out/pydocs --split test --num_documents 30 \
    --rates 0.3,0.5,0.7 --device "${DEVICE:-cuda}" --no_progress --output_dir runs/eval_guard_test --overwrite \
    --methods refine_guard:truncation,truncation,refine:truncation,truncation_first,span_self_information,self_information,frequency,length,random
fi

if [[ $step == lookahead ]]; then
  # refine_lookahead's settings: every candidate's judged R, F, stand-ins and lookahead NLL (the judge's expected F
  # along its own greedy continuation) on 300 train and all validation documents; the pick of
  # candidate_analysis.py lookahead (its defaults are refine.LOOKAHEAD_*); then the test split beside the text baselines
  [[ -f data_out/pydocs/stats.json ]] || $TM prepare-data --data_path data/pydocs.jsonl --output_dir data_out/pydocs
  for split in validation:68 train:300; do
    [[ -f runs/cand3_${split%%:*}.json ]] || python3 benchmarks/run_candidates.py --split ${split%%:*} \
      --max_documents ${split##*:} --device "${DEVICE:-cuda}" --moves 8,16,24,32,48 --guards 8,16,32 --pseudo 3 \
      --soft 64 --json runs/cand3_${split%%:*}.json
  done
  python3 benchmarks/candidate_analysis.py lookahead --files runs/cand3_train.json,runs/cand3_validation.json --top 8
  [[ -f runs/eval_lookahead_test/results.json ]] || $TM evaluate --corpus data_out/pydocs --split test --num_documents 30 \
    --rates 0.3,0.5,0.7 --device "${DEVICE:-cuda}" --no_progress --output_dir runs/eval_lookahead_test --overwrite \
    --methods refine_lookahead:truncation,refine_guard:truncation,truncation,truncation_first,span_self_information,self_information,frequency,length,random,agent:default
fi

if [[ $step == span ]]; then
  # every candidate of the oldest moves and of the span moves (the least surprising kept run, sparing the last 32
  # kept tokens), judged with the lookahead NLL, in shards of <= 150 documents; validation also along 4 judge
  # paths (greedy + 3 sampled: s = their mean); the pick of candidate_analysis.py lookahead --drops o,os; the test split
  [[ -f data_out/pydocs/stats.json ]] || $TM prepare-data --data_path data/pydocs.jsonl --output_dir data_out/pydocs
  C="python3 benchmarks/run_candidates.py --device ${DEVICE:-cuda} --moves 8,16,24,32,48 --drops oldest,span --soft 64"
  [[ -f runs/cd_validation.json ]] || $C --split validation --max_documents 68 --json runs/cd_validation.json
  [[ -f runs/cd4_validation.json ]] || $C --split validation --max_documents 68 --soft_paths 4 --json runs/cd4_validation.json
  [[ -f runs/cd_train0.json ]] || $C --split train --max_documents 150 --json runs/cd_train0.json
  [[ -f runs/cd_train1.json ]] || $C --split train --skip 150 --max_documents 150 --json runs/cd_train1.json
  python3 benchmarks/candidate_analysis.py lookahead --files runs/cd_train0.json,runs/cd_train1.json,runs/cd_validation.json \
    --drops o,os --top 8
  E="$TM evaluate --corpus data_out/pydocs --split test --rates 0.3,0.5,0.7 --device ${DEVICE:-cuda} --no_progress --overwrite"
  [[ -f runs/eval_span_test/results.json ]] || $E --num_documents 30 --output_dir runs/eval_span_test \
    --methods refine_lookahead:oldest+span:truncation,refine_lookahead:truncation,truncation,truncation_first,span_self_information,self_information,frequency,length,random,agent:default,refine_lookahead:oldest+span:agent:default
  [[ -f runs/eval_span_test64/results.json ]] || $E --num_documents 64 --recoverability_documents 64 \
    --output_dir runs/eval_span_test64 \
    --methods refine_lookahead:oldest+span:truncation,refine_lookahead:truncation,truncation,truncation_first,span_self_information
fi

AGENTS=agent:runs/lm_untrained,agent:runs/lm_bc,agent:runs/lm_ppo,agent:runs/lm_bc_ppo,agent:runs/lm_bc_ppo_terminal,agent:runs/pos_bc,agent:runs/pos_bc_ppo
if [[ $step == evaluate || $step == all ]]; then
  [[ -f runs/eval_validation/results.json ]] || $TM evaluate --corpus data_out/pydocs --split validation --num_documents 30 \
    --rates 0.3,0.5,0.7 --device cuda --methods "$AGENTS,truncation,truncation_first,span_self_information" \
    --output_dir runs/eval_validation --overwrite
  [[ -f runs/eval_test/results.json ]] || $TM evaluate --corpus data_out/pydocs --split test --num_documents 30 \
    --rates 0.3,0.5,0.7 --device cuda \
    --methods "$AGENTS,truncation,truncation_first,span_self_information,self_information,frequency,length,random" \
    --output_dir runs/eval_test --overwrite
fi

if [[ $step == collect || $step == all ]]; then
  # policy-only agent folders (`tokenmask export`, float16, a few MB each: what comes back from the GPU machine);
  # the shipped agent is `tokenmask export runs/pos_bc --output_dir tokenmask/agents/default --float16`
  out=${OUT:-runs/collected}
  mkdir -p "$out" runs/export
  for run in runs/lm_* runs/pos_*; do
    name=$(basename "$run")
    [[ -d runs/export/$name ]] || $TM export "$run" --output_dir "runs/export/$name" --float16 --machine "$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)"
  done
  tar czf "$out/labels.tgz" runs/labels
  tar czf "$out/results.tgz" runs/eval_* runs/train_*.log
  tar czf "$out/agents_pos.tgz" runs/export/pos_*
  tar czf "$out/agents_lm.tgz" runs/export/lm_*
  ls -la "$out"
fi
