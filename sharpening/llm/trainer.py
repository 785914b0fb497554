"""The LLM trainer: every regime of DESIGN.md with the reward, advantage and loss of sharpening.objective.

One step (`Trainer.train_step`): generate G responses per prompt -> grade (task reward r) -> lp_ref from the
frozen reference model and lp_old from the policy (only when the regime uses them) -> R = shaped_reward ->
A = RLOO -> token-mean REINFORCE loss -> AdamW step with clipping -> metrics. Nothing here depends on the regime
beyond what `Regime` says, and nothing in the step depends on Hugging Face: the engine (`generate`) and
`response_logprobs` (a forward pass) are the only model calls.

Precision: the policy's weights and AdamW's states are float32 (fp32 master weights: at lr 1e-6 a bf16 weight
would not move), every forward pass runs under autocast in cfg.dtype, and the frozen reference is stored in
cfg.dtype (it never updates). Under FSDP2 accelerate keeps the same split (fp32 shards, bf16 compute).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import shutil
import tempfile
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from sharpening.llm.allocator import retain_freed_memory
from sharpening.llm.checkpoint import (load_latest_intact, remove_stale_staging, save_checkpoint, save_sharded,
                                       staging_dir, truncate_metrics)
from sharpening.llm.config import TrainConfig, save_config, write_atomic
from sharpening.llm.distributed import (Ranks, enable_activation_checkpointing, global_token_count, micro_batches,
                                         token_mean_scale)
from sharpening.llm.gpu_plan import vllm_settings
from sharpening.llm.models import DTYPES, compute_autocast, load_model, load_tokenizer, resolve
from sharpening.llm.rollout import HFEngine, response_logprobs
from sharpening.llm.signals import signal_inputs
from sharpening.objective import pg_loss, rloo_advantages, sequence_sums, shaped_reward, truncated_is_weight


log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """max_bad_steps steps in a row had a NaN/inf loss or gradient."""


def task_rewards(texts, answers, G: int, prefill: str = "", device="cpu", grader: str = "strict"):
    """Task reward r_i = grade(prefill + y_i, answer of prompt i // G), 0 or 1, under `grader` (grading.GRADERS).
    Returns [B] float32."""
    from sharpening.llm.grading import grade_batch

    r = grade_batch([prefill + y for y in texts], [answers[i // G] for i in range(len(texts))], grader=grader)
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


def importance_stats(logp_tok, logp_engine, mask, is_cap) -> dict:
    """How far the trainer's log-probs of the sampled tokens are from the engine's (the rollout's lp_old_tok), and
    the truncated importance weights min(pi_theta / pi_engine, is_cap) that pg_loss applied (when is_cap is set):
    computed once per step over its response tokens. logp_tok, logp_engine, mask: [B, T]."""
    on = mask > 0
    log_ratio = (logp_tok - logp_engine)[on]  # log pi_theta / pi_engine per response token
    m = {"logprob_gap/mean_abs": log_ratio.abs().mean(), "logprob_gap/max_abs": log_ratio.abs().max()}
    if is_cap is not None:
        m["is_weight/mean"] = truncated_is_weight(logp_tok, logp_engine, is_cap)[on].mean()
        m["is_weight/clip_frac"] = (log_ratio > math.log(is_cap)).float().mean()
    return {k: float(v) for k, v in m.items()}  # every row has >= 1 response token: never empty


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def wants_activation_checkpointing(setting, device: torch.device) -> bool:
    """cfg.activation_checkpointing, where None means: on CUDA, as the GPU plan's memory estimate assumes."""
    return device.type == "cuda" if setting is None else setting


def frozen_reference(policy, dtype: str):
    """pi_ref: a copy of the initial weights in the compute dtype, frozen (no gradients, no optimizer: float32
    would only double its memory)."""
    return copy.deepcopy(policy).to(DTYPES[dtype]).eval().requires_grad_(False)


@contextlib.contextmanager
def eval_mode(model):
    """The model in eval mode for a no-grad forward pass (no layer recomputation hooks; dropout is 0 anyway)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def make_engine(cfg: TrainConfig, policy, tokenizer, world_size: int = 1):
    """The rollout engine named by cfg.engine (vLLM gets its memory share and max_model_len from the plan). The hf
    engine decodes in lockstep on several ranks: FSDP's forward passes are collectives."""
    if cfg.engine == "hf":
        return HFEngine(policy, tokenizer, batch_size=cfg.gen_batch_size, max_total_tokens=cfg.max_total_tokens,
                        lockstep=world_size > 1)
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
        policy = policy if policy is not None else load_model(cfg.model, dtype=torch.float32)
        self.policy = policy.to(self.device, torch.float32).train()  # fp32 master weights, whatever cfg.dtype is
        # pi_ref: the initial weights, frozen; kept only when the regime reads lp_ref (a model's worth of memory)
        self.ref = frozen_reference(self.policy, cfg.dtype) if cfg.regime.needs_lp_ref else None
        if (wants_activation_checkpointing(cfg.activation_checkpointing, self.device)
                and not self.ranks.shards_checkpointed_layers):
            enable_activation_checkpointing(self.policy)
        # fused: one kernel over all tensors, ~10x faster than the per-tensor loop on CPU; under FSDP torch's
        # default (its sharded parameters were never run with the fused kernel here)
        fused = True if self.ranks.accelerator is None else None
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
        self.policy, self.opt = self.ranks.prepare(self.policy, self.opt)  # FSDP-wrapped when distributed
        self.engine = make_engine(cfg, self.policy, self.tokenizer, self.ranks.world_size)
        if hasattr(self.engine, "track"):
            self.engine.track(self.opt)  # counts the optimizer's steps: a missed weight sync is an error
        self.template = data.TEMPLATES.get(cfg.template, cfg.template)
        self.prompts = [data.format_prompt(self.tokenizer, p.problem, self.template, cfg.prefill)
                        for p in self.problems]
        self.step, self.bad_steps = 0, 0
        self.best = read_best(self.run_dir)  # {"step", "score"} of the weights in checkpoints/best, or None
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
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        t0 = time.perf_counter()
        self.engine_ready()
        with self.compute():
            roll = self.engine.generate([self.prompts[i] for i in idx], n=G, max_new_tokens=cfg.max_new_tokens,
                                        temperature=cfg.temperature, top_p=cfg.top_p, ignore_eos=cfg.ignore_eos,
                                        seed=cfg.seed * 1_000_003 + step)  # y ~ pi_old, lp_old_tok [B, T]
        self.engine_sleep()  # a colocated vLLM hands the GPU over to training
        t1 = time.perf_counter()
        r = task_rewards(roll.texts, [self.problems[i].answer for i in idx], G, cfg.prefill, roll.mask.device,
                         cfg.grader)
        t2 = time.perf_counter()
        lp_ref_tok = self.forward_logprobs(self.ref, roll) if regime.needs_lp_ref else None  # frozen pi_ref [B, T]
        lp_old_tok = self.lp_old(roll) if regime.needs_lp_old else roll.lp_old_tok  # pi_old [B, T]
        with self.compute(), eval_mode(self.policy):  # label-free r, per-token certainty of pi_old
            signal = signal_inputs(regime, roll, r, G, policy=self.policy, prefill=cfg.prefill, seed=cfg.seed,
                                   step=step, prompt_indices=idx, micro_batch_size=cfg.micro_batch_size)
        t3 = time.perf_counter()
        R = shaped_reward(regime, r if signal.r is None else signal.r, lp_ref_tok, lp_old_tok, mask=roll.mask,
                          certainty=signal.certainty)  # [B]
        A = rloo_advantages(R.view(-1, G)).view(-1)  # [B]
        update = self.update(roll, A, step)  # token-mean REINFORCE, clipping, AdamW
        t4 = time.perf_counter()
        self.last = {"roll": roll, "r": r, "R": R, "A": A, "lp_old_tok": lp_old_tok, "signal": signal}  # for tests
        memory = ({"memory/peak_gib": torch.cuda.max_memory_allocated(self.device) / 2**30}
                  if self.device.type == "cuda" else {})  # this process's tensors (vLLM's pool is its own)
        return {**step_metrics(r, R, A, lp_ref_tok, roll), **signal.metrics, **update, "time/generate": t1 - t0,
                "time/grade": t2 - t1, "time/ref": t3 - t2, "time/train": t4 - t3, "time/step": t4 - t0, **memory}

    def compute(self):
        """The context of every forward pass: autocast to cfg.dtype (the weights stay as they are)."""
        return compute_autocast(self.device, self.cfg.dtype)

    @torch.no_grad()
    def forward_logprobs(self, model, roll):
        """log model(y_t | x, y_<t) of the rollout's response tokens [B, T], no gradient, in micro-batches."""
        with self.compute(), eval_mode(model):
            return torch.cat([response_logprobs(model, roll, mb)
                              for mb in micro_batches(len(roll), self.cfg.micro_batch_size)])

    def lp_old(self, roll):
        """lp_old per token for the shaped reward: the policy's own forward pass before the update (cfg.lp_old_source
        "trainer", as the authors' NeMo-RL code: prev_logprobs), or the engine's sampling log-probs ("engine")."""
        return self.forward_logprobs(self.policy, roll) if self.cfg.lp_old_source == "trainer" else roll.lp_old_tok

    def update(self, roll, A, step: int) -> dict:
        """One AdamW step on the token-mean loss of the whole batch, in micro-batches (exact: each micro-batch's
        token mean is rescaled to its share of all tokens). A NaN/inf loss or gradient skips the step."""
        lr = self.set_lr(step)
        loss, logp_tok = self.accumulate_gradients(roll, A)
        grad_norm = self.ranks.clip_grad_norm(self.policy, self.cfg.max_grad_norm)
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        self.step_or_skip(skipped)
        return {"loss": loss, "grad_norm": grad_norm, "lr": lr, "skipped": int(skipped),
                **importance_stats(logp_tok, roll.lp_old_tok, roll.mask, self.cfg.is_cap)}

    def set_lr(self, step: int) -> float:
        """The warmup's learning rate for `step` (step - 1 updates done so far), set on every parameter group."""
        lr = self.cfg.lr * warmup_factor(step - 1, self.cfg.warmup_start, self.cfg.warmup_steps)
        for group in self.opt.param_groups:
            group["lr"] = lr
        return lr

    def accumulate_gradients(self, roll, A):
        """Backward of each micro-batch's share of the global token-mean loss. Returns the loss and log pi_theta of
        the response tokens at the weights before the step ([B, T], detached)."""
        cfg = self.cfg
        self.opt.zero_grad(set_to_none=True)
        n_tok = global_token_count(roll.mask)  # response tokens of the whole step, over all ranks
        loss, logps = 0.0, []
        for mb in micro_batches(len(roll), cfg.micro_batch_size):
            with self.compute():
                logp_tok = response_logprobs(self.policy, roll, mb)  # log pi_theta [b, T], with grad
            logp_engine = roll.lp_old_tok[mb] if cfg.is_cap is not None else None
            loss_mb = pg_loss(logp_tok, A[mb], roll.mask[mb], logp_engine=logp_engine, is_cap=cfg.is_cap)
            loss_mb = loss_mb * token_mean_scale(roll.mask[mb], n_tok, self.ranks.world_size)
            loss_mb.backward()
            loss += loss_mb.item()
            logps.append(logp_tok.detach())
        return loss, torch.cat(logps)

    def step_or_skip(self, skipped: bool) -> None:
        """AdamW's step and the engine's weight sync, or (non-finite loss or gradient) drop the gradients."""
        if skipped:
            self.opt.zero_grad(set_to_none=True)
        else:
            self.opt.step()
            if hasattr(self.engine, "sync_weights"):
                self.engine.sync_weights(self.policy)
        self.bad_steps = self.bad_steps + 1 if skipped else 0

    def engine_ready(self) -> None:
        """Reload the policy's weights into a colocated engine whose sleep discarded them (vLLM's level 2), e.g.
        after an evaluation or a skipped step; every rank calls this at the same point (FSDP gathers)."""
        if getattr(self.engine, "needs_sync", False):
            self.engine.sync_weights(self.policy)

    def engine_sleep(self) -> None:
        """Let a colocated engine free the GPU for training (vLLM's sleep mode; the hf engine has none)."""
        if hasattr(self.engine, "sleep"):
            self.engine.sleep()

    # -- evaluation and the loop ---------------------------------------------------------------------
    def evaluate(self, step: int) -> dict:
        """pass@k and maj@k of the current policy on each eval dataset: written to eval/step_<N>.json (and
        eval.json after the last step, in the format `sharpening figures` reads), returned as flat metric keys.
        The engine stays awake for the whole evaluation and sleeps once at its end. With keep_best, weights that
        beat the best mean pass@1 so far replace checkpoints/best."""
        from sharpening.llm.evaluation import evaluate

        cfg, main = self.cfg, self.ranks.is_main
        info = {"run": cfg.run_name, "regime": cfg.regime.to_dict(), "model": cfg.model, "step": step}
        # the hf engine on several ranks decodes in lockstep: every rank then runs every call (same forward passes)
        split = None if isinstance(self.engine, HFEngine) and self.ranks.world_size > 1 else self.ranks
        out = self.run_dir / "eval" / f"step_{step:06d}.json" if main else None
        self.engine_ready()
        with self.compute():
            res = evaluate(self.engine, self.eval_sets, n=cfg.eval_n, ks=eval_ks(cfg.eval_n),
                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           prefill=cfg.prefill, template=self.template, tokenizer=self.tokenizer, seed=cfg.eval_seed,
                           out=out, info=info, ranks=split, graders=tuple(dict.fromkeys((cfg.grader, "strict"))),
                           lp_ref=self.eval_lp_ref(step))
        self.engine_sleep()
        if step == cfg.steps and main:
            write_atomic(self.run_dir / "eval.json", json.dumps(res, indent=1))
        score = float(np.mean([d["pass@k"]["1"] for d in res["datasets"].values()]))
        if cfg.keep_best and step > 0 and (self.best is None or score > self.best["score"]):
            self.save_best(step, score)
        return {f"eval/{name}/{metric}@{k}": v for name, d in res["datasets"].items()
                for metric in ("pass", "maj") for k, v in d[f"{metric}@k"].items()}

    def eval_lp_ref(self, step: int):
        """evaluate()'s lp_ref: at step 0 the policy is pi_ref (its engine's log-probs are lp_ref); later the frozen
        reference's forward pass when the regime keeps one; else none."""
        if step == 0:
            return "engine"
        if self.ref is None:
            return None
        return lambda roll: sequence_sums(self.forward_logprobs(self.ref, roll), roll.mask)[0]  # [B]

    def save_best(self, step: int, score: float) -> None:
        """Write the current weights to checkpoints/best (a loadable HF folder with best.json: step, score). Every
        rank calls this (gathering FSDP shards is a collective); rank 0 writes."""
        acc = self.ranks.accelerator
        weights = acc.get_state_dict(self.policy) if acc is not None else None
        self.best = {"step": step, "score": score, "metric": "pass@1, mean over eval_datasets"}
        if self.ranks.is_main:
            model = acc.unwrap_model(self.policy) if acc is not None else self.policy
            write_weights_folder(self.run_dir / "checkpoints" / BEST_DIR, model, self.tokenizer, weights, self.best)
        self.ranks.barrier()

    def train(self) -> list[dict]:
        """Run steps self.step + 1 .. cfg.steps, appending one metrics line per step; returns those lines. With
        eval_at_start, a fresh run first evaluates the initial policy (a metrics line of step 0)."""
        cfg, logged = self.cfg, []
        main = self.ranks.is_main  # rank 0 alone logs and saves
        bar = tqdm(range(self.step + 1, cfg.steps + 1), initial=self.step, total=cfg.steps, desc=cfg.run_name,
                   disable=not main)
        if cfg.eval_at_start and self.eval_sets and self.step == 0 and main:
            truncate_metrics(self.metrics_path, -1)  # a run killed before its first checkpoint evaluates again
        with open(self.metrics_path if main else os.devnull, "a") as log:
            if cfg.eval_at_start and self.eval_sets and self.step == 0:
                m = {"step": 0, **{k: _json_number(v) for k, v in self.evaluate(0).items()}}
                log.write(json.dumps(m) + "\n")
                log.flush()
                logged.append(m)
                if main:
                    tqdm.write("step    0  initial policy: " + "  ".join(f"{k} {v:.3f}" for k, v in m.items()
                                                                        if k.endswith("pass@1")))
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


BEST_DIR = "best"
BEST_FILE = "best.json"


def read_best(run_dir):
    """The step and score of a run's checkpoints/best, or None (no best kept yet)."""
    path = run_dir / "checkpoints" / BEST_DIR / BEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def write_weights_folder(target, model, tokenizer, state_dict, info: dict) -> None:
    """A loadable HF folder (weights, config, tokenizer, and `info` as best.json) written next to `target`, then
    swapped in: best.json exists only in a complete folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-")
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        write_atomic(os.path.join(tmp, BEST_FILE), json.dumps(info, indent=1))
        old = None
        if target.exists():
            old = tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-old-")
            os.replace(target, os.path.join(old, target.name))
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
