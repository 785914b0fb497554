#!/usr/bin/env bash
# LoRA on the CPU evidence task (docs/lora.md, issue #26): task reward and sharpening, seeds 1-3, one run at a time,
# beside the full-training runs results/cpu/{task_reward,sharpening}_seed{1,2,3} (configs/cpu/grid/base.yaml).
#
# Chosen before any result was seen: r 16, alpha 32 (scale 2), lr 2e-4 = 10x the full-training lr 2e-5 of base.yaml.
# Why 10x: the adapter starts at B = 0 and moves W only through the product B A, whose update per step is ~lr x |A|
# smaller than a full weight's; LoRA studies (Hu et al. 2021; Schulman et al., "LoRA Without Regret", 2025) find the
# best LoRA lr ~10x the full-training one at this scale. Every other setting is base.yaml's.
#
#   OMP_NUM_THREADS=1 nice -n 10 bash bench/cpu_lora.sh      # results/cpu_lora/<run>/: config, metrics, eval only
set -euo pipefail
cd "$(dirname "$0")/.."
LORA="lora={r: 16, alpha: 32}"
LR="lr=2.0e-4"
for seed in 1 2 3; do
  for regime in task_reward sharpening; do
    name="${regime}_lora_seed${seed}"
    dest="results/cpu_lora/${name}"
    [ -f "${dest}/config.yaml" ] && continue   # done
    resume=false; [ -f "runs/cpu_lora/${name}/metrics.jsonl" ] && resume=true
    echo "$(date -u +%H:%M) ${name}"
    python -m sharpening.cli llm train --config configs/cpu/grid/base.yaml "regime=${regime}" "seed=${seed}" \
      "${LORA}" "${LR}" "run_name=${name}" out_dir=runs/cpu_lora "resume=${resume}" > "runs/cpu_lora/${name}.log" 2>&1
    mkdir -p "${dest}"
    for f in metrics.jsonl eval.json config.yaml; do cp "runs/cpu_lora/${name}/${f}" "${dest}/${f}"; done
    rm -rf "runs/cpu_lora/${name}/checkpoints"
  done
done
