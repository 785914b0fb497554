"""Write configs/paper/<model>/<run>.yaml, the authors' run grid: python configs/make_paper_configs.py

Every value follows the authors' NeMo-RL fork, github.com/sarthmit/dist_sharpening @ 1bf5837 (AUTHORS_SOURCE):
examples/configs/dist_sharpening/rloo_math_lighteval.yaml and its _fixed twin (the 3B models, MATH),
rloo_deepscaler_4096.yaml (Qwen3-4B-Instruct-2507), the runs of run_all.sh and nemo_rl/algorithms/rloo.py.
Their keys in ours:

    num_prompts_per_step x num_generations_per_prompt   prompts_per_step x group_size (32 x 8; 64 x 8)
    max_total_sequence_length (prompt + response)         max_total_tokens (2048; 4096), max_new_tokens the same
    generation.ignore_eos_token (the *_fixed configs)    ignore_eos (the *_fixed.yaml files here)
    LinearLR 0.1 -> 1 over 50 steps, AdamW 1e-6, wd 0.01  warmup_start, warmup_steps, lr, weight_decay
    truncated_importance_sampling_ratio 20 (tis)          is_cap
    prev_logprobs: the policy's forward pass              lp_old_source: trainer
    val_period 20, val_at_start, one sample per problem  eval_every, eval_at_start, eval_n 1
      (AIME2024: 16, NeMo-RL's AIME2024Dataset repeats    eval_n 16 for Qwen3-4B
      its 30 problems repeat=16 times by default,
      nemo_rl/data/datasets/response_datasets/aime24.py)
    validation: MATH-lighteval test (max 5000); AIME2024  eval_datasets, eval_limit
    checkpointing: save_period 20, keep_top_k 1 by val    save_every, keep_best
    train_micro_batch_size 4; 2 for Qwen3-4B              micro_batch_size
    examples/prompts/cot.txt through str.format          template: paper

The runs: run_all.sh launches, for Qwen2.5-3B and Llama-3.2-3B, the fixed-length variant (rloo_math_lighteval_fixed)
of task reward (optimization, alpha 0, beta_inv 1), sharpening (optimization, alpha 1, beta_inv 0) and sampling
with alpha in {4, 2, 1, 1.25, 0.5} x beta_inv in {0, 100, 10000} (beta_inv 0: our `tempered`, else `tilted`); its
commented-out blocks hold the same grid with EOS (rloo_math_lighteval) and, for Qwen3-4B, sharpening and sampling
with beta_inv in {0, 10000} (their Qwen3-4B task-reward line is commented out too; ours is an ADDITION, marked in
its file). Not reproduced: their tensor parallelism 2 for Qwen3-4B's training (here FSDP2 over the GPUs: the dry
run sizes it) and their sequence packing (a speed-up with the same loss).
"""

from pathlib import Path

import yaml

from sharpening.objective import TEMPERED_ALPHAS

AUTHORS_SOURCE = "github.com/sarthmit/dist_sharpening @ 1bf5837"
MATH_TEST = "DigitalLearningGmbH/MATH-lighteval"  # the authors' MATH-lighteval test split, 5000 problems (HF hub)
COMMON = {"lr": 1e-6, "weight_decay": 0.01, "warmup_start": 0.1, "warmup_steps": 50, "max_grad_norm": 1.0,
          "group_size": 8, "temperature": 1.0, "top_p": 1.0, "seed": 42, "dtype": "bfloat16", "engine": "vllm",
          "is_cap": 20.0, "lp_old_source": "trainer", "template": "paper", "eval_every": 20, "eval_at_start": True,
          "eval_n": 1, "eval_split": "test", "save_every": 20, "keep_best": True, "out_dir": "runs/paper"}
MODELS = {
    "llama3.2-3b": {"model": "meta-llama/Llama-3.2-3B-Instruct", "dataset": "math_train", "prompts_per_step": 32,
                    "steps": 500, "max_new_tokens": 2048, "max_total_tokens": 2048, "micro_batch_size": 4,
                    "eval_datasets": [MATH_TEST], "eval_limit": 5000},
    "qwen2.5-3b": {"model": "Qwen/Qwen2.5-3B-Instruct", "dataset": "math_train", "prompts_per_step": 32,
                   "steps": 500, "max_new_tokens": 2048, "max_total_tokens": 2048, "micro_batch_size": 4,
                   "eval_datasets": [MATH_TEST], "eval_limit": 5000},
    "qwen3-4b": {"model": "Qwen/Qwen3-4B-Instruct-2507", "dataset": "agentica-org/DeepScaleR-Preview-Dataset",
                 "prompts_per_step": 64, "steps": 1000, "max_new_tokens": 4096, "max_total_tokens": 4096,
                 "micro_batch_size": 2, "eval_datasets": ["aime24"], "eval_limit": None},
}
EVAL_N = {"qwen3-4b": 16}  # samples per validation problem where not 1: NeMo-RL's AIME2024Dataset(repeat=16)
FIXED_LENGTH_MODELS = ("llama3.2-3b", "qwen2.5-3b")  # the authors' rloo_math_lighteval_fixed.yaml; none for DeepScaleR
BETA_INVS = {"llama3.2-3b": (100.0, 10000.0), "qwen2.5-3b": (100.0, 10000.0), "qwen3-4b": (10000.0,)}
ADDITIONS = {("qwen3-4b", "task_reward"): "their Qwen3-4B task-reward run is commented out in run_all.sh; ours "
                                          "gives the comparison the other models have"}
RUNNER = {"llama3.2-3b": "run_llama_3b{fixed}.sh", "qwen2.5-3b": "run_qwen_3b{fixed}.sh",
          "qwen3-4b": "run_qwen3_4b_deepscaler.sh 4096"}


def regimes(model: str) -> dict:
    """File stem -> (regime spec as written in the YAML, the authors' alpha beta_inv mode)."""
    out = {"task_reward": ("task_reward", "0.0 1.0 optimization"), "sharpening": ("sharpening", "1.0 0.0 optimization")}
    for a in TEMPERED_ALPHAS:
        out[f"tempered_a{a:g}"] = ({"preset": "tempered", "alpha": a}, f"{float(a)} 0.0 sampling")
        for b in BETA_INVS[model]:
            tilted = {"preset": "tilted", "alpha": a, "beta_inv": b}
            out[f"tilted_a{a:g}_b{b:g}"] = (tilted, f"{float(a)} {float(b)} sampling")  # as run_all.sh writes them
    return out


def runs() -> dict:
    """(model folder, file stem) -> (config dict, header comment)."""
    out = {}
    for model, settings in MODELS.items():
        for stem, (regime, args) in regimes(model).items():
            for fixed in ((False, True) if model in FIXED_LENGTH_MODELS else (False,)):
                name = stem + ("_fixed" if fixed else "")
                runner = RUNNER[model].format(fixed="_fixed" if fixed else "")
                cfg = {"run_name": f"{model}_{name}", **settings, "regime": regime, "ignore_eos": fixed, **COMMON}
                cfg["eval_n"] = EVAL_N.get(model, COMMON["eval_n"])
                header = [f"{model}, {name}: generated by configs/make_paper_configs.py from the authors' settings",
                          f"({AUTHORS_SOURCE});", f"their launch: {runner} {args} sum 0.0"]
                if (model, stem) in ADDITIONS:
                    header += ["ADDITION (not one of the authors' runs):", ADDITIONS[model, stem]]
                out[model, name] = (cfg, header)
    return out


def main(root=Path(__file__).parent / "paper") -> None:
    for old in root.glob("*/*.yaml"):  # runs dropped from the grid must not linger
        old.unlink()
    for (model, name), (cfg, header) in runs().items():
        (root / model).mkdir(parents=True, exist_ok=True)
        text = "".join(f"# {line}\n" for line in header) + yaml.safe_dump(cfg, sort_keys=False)
        (root / model / f"{name}.yaml").write_text(text)


if __name__ == "__main__":
    main()
