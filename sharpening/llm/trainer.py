"""The LLM trainer: every regime of DESIGN.md with the reward, advantage and loss of sharpening.objective.

One step (`Trainer.train_step`): generate G responses per prompt with their lp_old -> grade (task reward r)
-> lp_ref from the frozen reference model (only when the regime uses it) -> R = shaped_reward -> A = RLOO
-> token-mean REINFORCE loss -> AdamW step with clipping -> metrics. Nothing here depends on the regime
beyond what `Regime` says, and nothing in the step depends on Hugging Face: the engine (`generate`) and
`response_logprobs` (a forward pass) are the only model calls.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from sharpening.llm.allocator import retain_freed_memory
from sharpening.llm.checkpoint import (load_latest_intact, remove_stale_staging, save_checkpoint, save_sharded,
                                       staging_dir, truncate_metrics)
from sharpening.llm.config import TrainConfig, save_config, write_atomic
from sharpening.llm.distributed import (Ranks, check_engine, global_token_count, micro_batches, token_mean_scale,
                                         vllm_settings)
from sharpening.llm.models import load_model, load_tokenizer, resolve
from sharpening.llm.rollout import HFEngine, response_logprobs
from sharpening.llm.signals import signal_inputs
from sharpening.objective import pg_loss, rloo_advantages, sequence_sums, shaped_reward, truncated_is_weight


log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """max_bad_steps steps in a row had a NaN/inf loss or gradient."""


def task_rewards(texts, answers, G: int, prefill: str = "", device="cpu"):
    """Task reward r_i = grade(prefill + y_i, answer of prompt i // G), 0 or 1. Returns [B] float32."""
    from sharpening.llm.grading import grade_batch

    r = grade_batch([prefill + y for y in texts], [answers[i // G] for i in range(len(texts))])
    return torch.tensor(r, dtype=torch.float32, device=device)


def step_metrics(r, R, A, lp_ref_tok, roll) -> dict:
    """The per-step metrics documented in docs/llm_trainer.md (lp_ref ones only when lp_ref was computed)."""
    lp_old, T = sequence_sums(roll.lp_old_tok, roll.mask)  # [B], [B]
    m = {"reward/task": r.mean(), "reward/shaped_mean": R.mean(), "reward/shaped_std": R.std(correction=0),
         "adv/mean": A.mean(), "adv/std": A.std(correction=0), "adv/abs_max": A.abs().max(),
         "length/mean": T.mean(), "length/clipped_frac": roll.truncated.float().mean(),
         "entropy": -lp_old.sum() / T.sum().clamp(min=1), "lp_old/mean": lp_old.mean()}
    if lp_ref_tok is not None:
        lp_ref, _ = sequence_sums(lp_ref_tok, roll.mask)
        m.update({"lp_ref/mean": lp_ref.mean(), "kl_ref": (lp_old - lp_ref).mean()})  # Monte Carlo KL(pi || pi_ref)
    return {k: float(v) for k, v in m.items()}


def warmup_factor(step: int, start: float, steps: int) -> float:
    """Linear warmup of the learning rate: start at step 0, 1 from `steps` on."""
    return 1.0 if steps == 0 else start + (1.0 - start) * min(step / steps, 1.0)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def make_engine(cfg: TrainConfig, policy, tokenizer, world_size: int = 1):
    """The rollout engine named by cfg.engine (vLLM gets its memory share and max_model_len from the plan)."""
    check_engine(cfg.engine, world_size)
    if cfg.engine == "hf":
        return HFEngine(policy, tokenizer, batch_size=cfg.gen_batch_size)
    from sharpening.llm.vllm_engine import VLLMEngine, import_vllm

    import_vllm()  # a clear error when vLLM is not installed
    return VLLMEngine(resolve(cfg.model), tokenizer, dtype=cfg.dtype, seed=cfg.seed,
                      **vllm_settings(cfg, world_size))


class Trainer:
    """Owns the policy, the frozen reference, the engine, the optimizer and the run folder."""

    def __init__(self, cfg: TrainConfig, policy=None, tokenizer=None):
        from sharpening.llm import data

        self.ranks = Ranks.from_env()  # rank 0 of 1 without a launcher; FSDP ranks under `accelerate launch`
        self.cfg, self.run_dir = cfg, cfg.run_dir
        self.metrics_path = self.run_dir / "metrics.jsonl"
        # the user's mistakes first, before seconds to minutes of loading weights: the data, then the run folder
        self.problems = data.load_problems(cfg.dataset, split=cfg.split, limit=cfg.limit, seed=cfg.seed)
        self.eval_sets = {d: data.load_problems(d, split=cfg.eval_split, limit=cfg.eval_limit, seed=cfg.eval_seed)
                          for d in cfg.eval_datasets}
        if not cfg.resume and self.metrics_path.exists():
            raise FileExistsError(f"{self.run_dir} already holds a run; pass resume=true to continue it "
                                  "or choose another run_name")
        self.device = self.ranks.accelerator.device if self.ranks.accelerator else pick_device(cfg.device)
        if self.device.type == "cpu":
            retain_freed_memory()  # no page faults on the same tensors every step (sharpening/llm/allocator.py)
        torch.manual_seed(cfg.seed)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
        policy = policy if policy is not None else load_model(cfg.model, dtype=cfg.dtype)
        self.policy = policy.to(self.device).train()
        # pi_ref: the initial weights, frozen; kept only when the regime reads lp_ref (a model's worth of memory)
        self.ref = copy.deepcopy(self.policy).eval().requires_grad_(False) if cfg.regime.needs_lp_ref else None
        # fused: one kernel over all tensors, ~10x faster than the per-tensor loop on CPU; under FSDP torch's
        # default (its sharded parameters were never run with the fused kernel here)
        fused = True if self.ranks.accelerator is None else None
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        self.policy, self.opt = self.ranks.prepare(self.policy, self.opt)  # FSDP-wrapped when distributed
        self.engine = make_engine(cfg, self.policy, self.tokenizer, self.ranks.world_size)
        if hasattr(self.engine, "track"):
            self.engine.track(self.opt)
        self.template = data.TEMPLATES.get(cfg.template, cfg.template)
        self.prompts = [data.format_prompt(self.tokenizer, p.problem, self.template, cfg.prefill)
                        for p in self.problems]
        self.step, self.bad_steps = 0, 0
        self._open_run()

    # -- the run folder ------------------------------------------------------------------------------
    def _open_run(self):
        """Fresh run: a new folder (__init__ refused one holding a run). Resume: load the newest intact checkpoint
        (a damaged one is skipped with a warning), cut metrics to it. Either way the temp folders of killed saves
        go."""
        if self.ranks.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in remove_stale_staging(self.run_dir):  # a save killed mid-write: a model's worth of disk
                log.warning("removed %s, left by a checkpoint save that was killed", stale)
        self.ranks.barrier()  # no rank looks at the checkpoints while rank 0 cleans them
        state = load_latest_intact(self.run_dir, self.policy, self.opt) if self.cfg.resume else None
        if state is not None:
            self.step, self.bad_steps = state["step"], state["bad_steps"]
            if hasattr(self.engine, "sync_weights"):
                self.engine.sync_weights(self.policy)
        if self.ranks.is_main:
            truncate_metrics(self.metrics_path, self.step)
            save_config(self.cfg, self.run_dir / "config.yaml")

    def save(self):
        """Every rank calls this. One process: one folder, renamed into place. Under FSDP: the full weights are
        gathered on rank 0 (a loadable HF folder), every rank writes its shard of weights and optimizer state
        into a shared staging folder, then rank 0 completes and renames it (collectives, in that order)."""
        acc, extra, keep = self.ranks.accelerator, {"bad_steps": self.bad_steps}, self.cfg.keep_checkpoints
        if acc is None:
            return save_checkpoint(self.run_dir, self.step, self.policy, self.tokenizer, self.opt, extra, keep)
        weights = acc.get_state_dict(self.policy)
        staging = staging_dir(self.run_dir, self.step)
        if self.ranks.is_main:  # a staging folder left by a killed save is stale
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self.ranks.barrier()
        save_sharded(staging, self.policy, self.opt)
        self.ranks.barrier()
        if self.ranks.is_main:
            save_checkpoint(self.run_dir, self.step, acc.unwrap_model(self.policy), self.tokenizer, None, extra,
                            keep, state_dict=weights, staging=staging)
        self.ranks.barrier()  # nobody moves on (or resumes) before the checkpoint is in place

    # -- one step ------------------------------------------------------------------------------------
    def batch(self, step: int) -> list[int]:
        """Indices of the prompts of `step` (1-based): consecutive slices of a per-epoch shuffle, seeded."""
        n, k = len(self.problems), self.cfg.prompts_per_step
        positions = range((step - 1) * k, step * k)
        order = {e: np.random.default_rng([self.cfg.seed, e]).permutation(n) for e in {p // n for p in positions}}
        return [int(order[p // n][p % n]) for p in positions]

    def train_step(self, step: int) -> dict:
        cfg, G, regime = self.cfg, self.cfg.group_size, self.cfg.regime
        idx = self.ranks.my_prompts(self.batch(step))  # this rank's whole groups
        self.opt.zero_grad(set_to_none=True)  # last step's gradients: freed, the rollout runs in less memory
        t0 = time.perf_counter()
        roll = self.engine.generate([self.prompts[i] for i in idx], n=G, max_new_tokens=cfg.max_new_tokens,
                                    temperature=cfg.temperature, top_p=cfg.top_p, ignore_eos=cfg.ignore_eos,
                                    seed=cfg.seed * 1_000_003 + step)  # y ~ pi_old, with lp_old_tok [B, T]
        t1 = time.perf_counter()
        r = task_rewards(roll.texts, [self.problems[i].answer for i in idx], G, cfg.prefill, roll.mask.device)
        t2 = time.perf_counter()
        lp_ref_tok = self.lp_ref(roll) if regime.needs_lp_ref else None  # frozen pi_ref [B, T]
        signal = signal_inputs(regime, roll, r, G, policy=self.policy, prefill=cfg.prefill, seed=cfg.seed, step=step,
                               prompt_indices=idx, micro_batch_size=cfg.micro_batch_size)  # label-free r, certainty
        t3 = time.perf_counter()
        R = shaped_reward(regime, r if signal.r is None else signal.r, lp_ref_tok, roll.lp_old_tok, mask=roll.mask,
                          certainty=signal.certainty)  # [B]
        A = rloo_advantages(R.view(-1, G)).view(-1)  # [B]
        update = self.update(roll, A, step)  # token-mean REINFORCE, clipping, AdamW
        t4 = time.perf_counter()
        self.last = {"roll": roll, "r": r, "R": R, "A": A, "signal": signal}  # for inspection and tests
        return {**step_metrics(r, R, A, lp_ref_tok, roll), **signal.metrics, **update, "time/generate": t1 - t0,
                "time/grade": t2 - t1, "time/ref": t3 - t2, "time/train": t4 - t3, "time/step": t4 - t0}

    @torch.no_grad()
    def lp_ref(self, roll):
        return torch.cat([response_logprobs(self.ref, roll, mb)
                          for mb in micro_batches(len(roll), self.cfg.micro_batch_size)])  # [B, T]

    def update(self, roll, A, step: int) -> dict:
        """One AdamW step on the token-mean loss of the whole batch, in micro-batches (exact: each micro-batch's
        token mean is rescaled to its share of all tokens). A NaN/inf loss or gradient skips the step."""
        cfg = self.cfg
        lr = cfg.lr * warmup_factor(step - 1, cfg.warmup_start, cfg.warmup_steps)  # step - 1 updates done so far
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        n_tok = global_token_count(roll.mask)  # response tokens of the whole step, over all ranks
        loss, is_w = 0.0, []
        for mb in micro_batches(len(roll), cfg.micro_batch_size):
            logp_tok = response_logprobs(self.policy, roll, mb)  # log pi_theta [b, T], with grad
            logp_engine = roll.lp_old_tok[mb] if cfg.is_cap is not None else None
            loss_mb = pg_loss(logp_tok, A[mb], roll.mask[mb], logp_engine=logp_engine, is_cap=cfg.is_cap)
            loss_mb = loss_mb * token_mean_scale(roll.mask[mb], n_tok, self.ranks.world_size)
            loss_mb.backward()
            loss += loss_mb.item()
            if logp_engine is not None:  # the weights pg_loss applied, on response tokens
                w = truncated_is_weight(logp_tok.detach(), logp_engine, cap=math.inf)[roll.mask[mb] > 0]
                is_w.append(w)  # pi_theta / pi_engine before the cap
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm))
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if skipped:
            self.opt.zero_grad(set_to_none=True)
        else:
            self.opt.step()
            if hasattr(self.engine, "sync_weights"):
                self.engine.sync_weights(self.policy)
        self.bad_steps = self.bad_steps + 1 if skipped else 0
        m = {"loss": loss, "grad_norm": grad_norm, "lr": lr, "skipped": int(skipped)}
        if is_w:
            w = torch.cat(is_w)
            m["is_weight/mean"] = float(w.clamp(max=cfg.is_cap).mean())
            m["is_weight/clip_frac"] = float((w > cfg.is_cap).float().mean())
        return m

    # -- evaluation and the loop ---------------------------------------------------------------------
    def evaluate(self, step: int) -> dict:
        """pass@k and maj@k of the current policy on each eval dataset: written to eval/step_<N>.json (and
        eval.json after the last step, in the format `sharpening figures` reads), returned as flat metric keys."""
        from sharpening.llm.evaluation import evaluate

        cfg = self.cfg
        info = {"run": cfg.run_name, "regime": cfg.regime.to_dict(), "model": cfg.model, "step": step}
        res = evaluate(self.engine, self.eval_sets, n=cfg.eval_n, ks=eval_ks(cfg.eval_n),
                       max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                       prefill=cfg.prefill, template=self.template, tokenizer=self.tokenizer, seed=cfg.eval_seed,
                       out=self.run_dir / "eval" / f"step_{step:06d}.json", info=info, ranks=self.ranks)
        if step == cfg.steps and self.ranks.is_main:
            write_atomic(self.run_dir / "eval.json", json.dumps(res, indent=1))
        return {f"eval/{name}/{metric}@{k}": v for name, d in res["datasets"].items()
                for metric in ("pass", "maj") for k, v in d[f"{metric}@k"].items()}

    def train(self) -> list[dict]:
        """Run steps self.step + 1 .. cfg.steps, appending one metrics line per step; returns those lines."""
        cfg, logged = self.cfg, []
        main = self.ranks.is_main  # rank 0 alone logs and saves
        bar = tqdm(range(self.step + 1, cfg.steps + 1), initial=self.step, total=cfg.steps, desc=cfg.run_name,
                   disable=not main)
        with open(self.metrics_path if main else os.devnull, "a") as log:
            for step in bar:
                m = {"step": step, **self.train_step(step)}
                m = {k: v if k == "step" else self.ranks.all_mean(v) for k, v in m.items()}  # means over ranks
                self.step = step
                if self.eval_sets and (step == cfg.steps or cfg.eval_every and step % cfg.eval_every == 0):
                    m.update(self.evaluate(step))
                m = {k: _json_number(v) for k, v in m.items()}
                log.write(json.dumps(m) + "\n")
                log.flush()
                logged.append(m)
                bar.set_postfix(reward=f"{m['reward/task']:.2f}", sec=f"{m['time/step']:.1f}")
                if main:
                    tqdm.write(summary(m))
                if self.bad_steps >= cfg.max_bad_steps:
                    raise TrainingDiverged(f"{self.bad_steps} steps in a row had a NaN/inf loss or gradient "
                                           f"(max_bad_steps={cfg.max_bad_steps}); stopped at step {step}")
                if step == cfg.steps or cfg.save_every and step % cfg.save_every == 0:
                    self.save()
        return logged


def eval_ks(n: int) -> tuple:
    """k = 1, 2, 4, ... up to n (and n itself)."""
    return tuple(sorted({2**i for i in range(int(math.log2(n)) + 1)} | {n}))


def _json_number(v):
    """Non-finite floats become null: JSON has no NaN."""
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _fmt(v) -> str:
    return "nan" if v is None else f"{v:.3f}"


def summary(m: dict) -> str:
    """The one-line summary of a step."""
    text = (f"step {m['step']:>4}  r {m['reward/task']:.3f}  R {m['reward/shaped_mean']:+.3f}  "
            f"len {m['length/mean']:.1f}  ent {m['entropy']:.3f}  grad {_fmt(m['grad_norm'])}  "
            f"{m['time/step']:.1f}s")
    if "kl_ref" in m:
        text += f"  kl {m['kl_ref']:.3f}"
    if m["skipped"]:
        text += "  SKIPPED (non-finite loss/gradient)"
    return text
