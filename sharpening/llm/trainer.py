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
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from sharpening.llm.allocator import retain_freed_memory
from sharpening.llm import runs
from sharpening.llm.checkpoint import (latest_checkpoint, load_latest_intact, remove_stale_staging, save_checkpoint,
                                       save_sharded, staging_dir)
from sharpening.llm.config import TrainConfig
from sharpening.llm.distributed import (Ranks, enable_activation_checkpointing, global_token_count, micro_batches,
                                         token_mean_scale)
from sharpening.llm.gpu_plan import vllm_settings
from sharpening.llm.lora import adapter_off, apply_lora, trainable_parameters
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


def step_metrics(r, R, A, lp_ref_tok, roll, G: int | None = None) -> dict:
    """The per-step metrics documented in docs/llm_trainer.md (lp_ref ones only when lp_ref was computed).
    G: the group size, for frac_reward_zero_std (the share of groups whose shaped rewards are all equal: their
    advantages are 0 and they teach nothing; TRL's name)."""
    lp_old, T = sequence_sums(roll.lp_old_tok, roll.mask)  # [B], [B]
    m = {"reward/task": r.mean(), "reward/shaped_mean": R.mean(), "reward/shaped_std": R.std(correction=0),
         "adv/mean": A.mean(), "adv/std": A.std(correction=0), "adv/abs_max": A.abs().max(),
         "length/mean": T.mean(), "length/clipped_frac": roll.truncated.float().mean(),
         "entropy": -lp_old.sum() / T.sum().clamp(min=1), "lp_old/mean": lp_old.mean()}
    if G is not None:
        groups = R.view(-1, G)
        m["frac_reward_zero_std"] = (groups == groups[:, :1]).all(1).float().mean()
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
                      lora_rank=cfg.lora.r if cfg.lora is not None else None, **vllm_settings(cfg, world_size))


class Trainer:
    """Owns the policy, the frozen reference, the engine, the optimizer and the run folder."""

    def __init__(self, cfg: TrainConfig, policy=None, tokenizer=None):
        from sharpening.llm import data

        self.ranks = Ranks.from_env()  # rank 0 of 1 without a launcher; FSDP ranks under `accelerate launch`
        self.cfg, self.run = cfg, runs.RunFolder(cfg.run_dir)
        self.run_dir, self.metrics_path = self.run.path, self.run.metrics_path
        # the user's mistakes first, before seconds to minutes of loading weights: the data, then the run folder
        self.problems = data.load_problems(cfg.dataset, split=cfg.split, limit=cfg.limit, seed=cfg.seed)
        # a JSONL path is named by its stem, as `sharpening llm eval` names it: metric keys eval/<name>/pass@k
        self.eval_sets = {Path(d).stem if d.endswith(".jsonl") else d:
                          data.load_problems(d, split=cfg.eval_split, limit=cfg.eval_limit, seed=cfg.eval_seed)
                          for d in cfg.eval_datasets}
        self.device = self.ranks.accelerator.device if self.ranks.accelerator else pick_device(cfg.device)
        try:
            self._init(policy, tokenizer, data)
        except BaseException:
            if self.ranks.is_main:
                self.run.undo_start()  # a run that never trained leaves no config behind to block the next start
            self.run.close()
            raise

    def _init(self, policy, tokenizer, data):
        cfg = self.cfg
        if self.ranks.is_main:
            self._take_run_folder()  # one writer; identity checked; before the weights load
        self.ranks.barrier()
        if self.device.type == "cpu":
            retain_freed_memory()  # no page faults on the same tensors every step (sharpening/llm/allocator.py)
        torch.manual_seed(cfg.seed)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
        self.template = data.TEMPLATES.get(cfg.template, cfg.template)
        self.prompts = [data.format_prompt(self.tokenizer, p.problem, self.template, cfg.prefill)
                        for p in self.problems]
        context = policy.config.max_position_embeddings if policy is not None else model_context(cfg.model)
        check_context(cfg, self.tokenizer, context, {cfg.dataset: (self.problems, self.prompts)},
                      {d: (ps, [data.format_prompt(self.tokenizer, p.problem, self.template, cfg.prefill) for p in ps])
                       for d, ps in self.eval_sets.items()})
        policy = policy if policy is not None else load_model(cfg.model, dtype=torch.float32)
        if cfg.lora is not None:  # the base frozen in cfg.dtype, the adapter fp32; pi_ref = the adapter off
            self.policy = apply_lora(policy, cfg.lora, DTYPES[cfg.dtype], cfg.model).to(self.device).train()
        else:
            self.policy = policy.to(self.device, torch.float32).train()  # fp32 master weights, whatever cfg.dtype is
        # pi_ref: the initial weights, frozen; kept only when the regime reads lp_ref (a model's worth of memory).
        # Under LoRA the policy with its adapter off is pi_ref: no copy.
        self.ref = (frozen_reference(self.policy, cfg.dtype) if cfg.regime.needs_lp_ref and cfg.lora is None
                    else None)
        if (wants_activation_checkpointing(cfg.activation_checkpointing, self.device)
                and not self.ranks.shards_checkpointed_layers):
            enable_activation_checkpointing(self.policy)
        # fused: one kernel over all tensors, ~10x faster than the per-tensor loop on CPU; under FSDP torch's
        # default (its sharded parameters were never run with the fused kernel here)
        fused = True if self.ranks.accelerator is None else None
        self.opt = torch.optim.AdamW(trainable_parameters(self.policy), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     fused=fused)
        self.policy, self.opt = self.ranks.prepare(self.policy, self.opt)  # FSDP-wrapped when distributed
        self.engine = make_engine(cfg, self.policy, self.tokenizer, self.ranks.world_size)
        if hasattr(self.engine, "track"):
            self.engine.track(self.opt)  # counts the optimizer's steps: a missed weight sync is an error
        self.step, self.bad_steps, self.pending = 0, 0, None
        self.best = self.run.read_best()  # {"step", "score"} of the weights in checkpoints/best, or None
        self._open_run()

    # -- the run folder ------------------------------------------------------------------------------
    def _take_run_folder(self):
        """Lock the run folder for this process, then check what it holds: a fresh run needs a folder holding no
        part of a run; a resumed one a config that differs only where runs.RESUMABLE allows (or accept_changes).
        The config, the code version and the environment are recorded (sharpening/llm/runs.py)."""
        cfg = self.cfg
        self.run.lock()
        env = runs.environment(self.device, cfg.dtype, cfg.engine)
        if not cfg.resume:
            held = self.run.parts_of_a_run()
            if held:
                raise runs.RunFolderError(f"{self.run_dir} already holds a run ({', '.join(held)}); pass --resume "
                                          "(or resume=true) to continue it, or choose another run_name")
            self.run.start(cfg.to_dict(), env)
        else:
            latest = latest_checkpoint(self.run_dir)
            first_step = 1 + (int(latest.name.split("_")[1]) if latest is not None else 0)
            self.run.resume(cfg.to_dict(), env, first_step, accept_changes=cfg.accept_changes)

    def _open_run(self):
        """Resume: load the newest intact checkpoint (a damaged one is skipped with a warning), cut metrics to it;
        a checkpoint saved before its step's metrics line was written (an interrupt, the final evaluation) leaves
        that line pending. Either way the temp folders of killed saves go."""
        if self.ranks.is_main:
            for stale in remove_stale_staging(self.run_dir):  # a save killed mid-write: a model's worth of disk
                log.warning("removed %s, left by a checkpoint save that was killed", stale)
        self.ranks.barrier()  # no rank looks at the checkpoints while rank 0 cleans them
        state = load_latest_intact(self.run_dir, self.policy, self.opt) if self.cfg.resume else None
        if state is not None:
            self.step, self.bad_steps = state["step"], state["bad_steps"]
            if hasattr(self.engine, "sync_weights"):
                self.engine.sync_weights(self.policy)
        if self.ranks.is_main:
            self.run.truncate_metrics(self.step)
        if state is not None and state.get("metrics") is not None and \
                all(m["step"] != self.step for m in self.run.metrics()):
            self.pending = state["metrics"]  # the step's training metrics; its evaluation and line are to come

    def save(self, metrics: dict | None = None):
        """Every rank calls this. One process: one folder, renamed into place. Under FSDP: the full weights are
        gathered on rank 0 (a loadable HF folder), every rank writes its shard of weights and optimizer state
        into a shared staging folder, then rank 0 completes and renames it (collectives, in that order).
        metrics: the step's training metrics, kept with the checkpoint until its metrics line is written. A full
        disk is runs.DiskFull, one line; the temp folder goes and the previous checkpoint is kept."""
        previous = latest_checkpoint(self.run_dir)
        try:
            with runs.disk_full_is_one_line(self.run.checkpoints / f"step_{self.step:06d}"):
                return self._save(metrics)
        except runs.DiskFull as err:
            kept = f"the previous checkpoint {previous} is kept" if previous is not None else "no checkpoint is kept"
            raise runs.DiskFull(err.errno, f"{err.strerror}; {kept}: free space, then resume") from None

    def _save(self, metrics):
        acc, keep = self.ranks.accelerator, self.cfg.keep_checkpoints
        extra = {"bad_steps": self.bad_steps, "metrics": metrics}
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
        lp_ref_tok = self.ref_logprobs(roll) if regime.needs_lp_ref else None  # frozen pi_ref [B, T]
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
        return {**step_metrics(r, R, A, lp_ref_tok, roll, G), **signal.metrics, **update, "time/generate": t1 - t0,
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

    def ref_logprobs(self, roll):
        """lp_ref per token [B, T]: the frozen copy's forward pass, or under LoRA the policy's with its adapter off."""
        if self.ref is not None:
            return self.forward_logprobs(self.ref, roll)
        with adapter_off(self.policy):
            return self.forward_logprobs(self.policy, roll)

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
        clipped = int(not skipped and grad_norm > self.cfg.max_grad_norm)  # grad_norm is the norm before clipping
        return {"loss": loss, "grad_norm": grad_norm, "grad_norm/clipped": clipped, "lr": lr, "skipped": int(skipped),
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
        self.engine_ready()
        with self.compute():
            res = evaluate(self.engine, self.eval_sets, n=cfg.eval_n, ks=eval_ks(cfg.eval_n),
                           max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                           prefill=cfg.prefill, template=self.template, tokenizer=self.tokenizer, seed=cfg.eval_seed,
                           info=info, ranks=split, graders=tuple(dict.fromkeys((cfg.grader, "strict"))),
                           lp_ref=self.eval_lp_ref(step))
        self.engine_sleep()
        if main:
            self.run.write_eval(res, step, final=step == cfg.steps)
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
            write_weights_folder(self.run.best_dir, model, self.tokenizer, weights, self.best)
        self.ranks.barrier()

    def train(self) -> list[dict]:
        """Run steps self.step + 1 .. cfg.steps, one metrics line per step (runs.RunFolder.log); returns those lines.
        With eval_at_start, a fresh run first evaluates the initial policy (a metrics line of step 0).

        Order within a step: train, then save when due (every save_every steps, the last step, or a stop request),
        then evaluate when due, then the metrics line: the final evaluation runs with a final checkpoint on disk.
        SIGINT/SIGTERM (runs.StopRequests): the step under way finishes, is saved and the run stops with
        runs.Interrupted (how to resume); a second signal abandons it (KeyboardInterrupt; the previous checkpoint
        stays). The run folder's lock is released on return."""
        main = self.ranks.is_main  # rank 0 alone logs and saves
        if main:
            self.run.lock()
            self.run.sinks = runs.open_sinks(self.run, self.cfg.report_to, self.cfg.run_name, self.cfg.to_dict())
        try:
            with runs.StopRequests() as stop:
                return self._train(stop)
        finally:
            self.run.close()

    def _train(self, stop) -> list[dict]:
        cfg, logged, main = self.cfg, [], self.ranks.is_main
        if cfg.eval_at_start and self.eval_sets and self.step == 0:
            if main:
                self.run.truncate_metrics(-1)  # a run killed before its first checkpoint evaluates again
            logged.append(self._log(0, self.evaluate(0)))
            if main:
                tqdm.write("step    0  initial policy: " + "  ".join(f"{k} {v:.3f}" for k, v in logged[-1].items()
                                                                    if k.endswith("pass@1") and v is not None))
        if self.pending is not None:  # saved, then stopped before its evaluation and metrics line
            logged.append(self._finish_step(self.step, self.pending))
            self.pending = None
        bar = tqdm(range(self.step + 1, cfg.steps + 1), initial=self.step, total=cfg.steps, desc=cfg.run_name,
                   disable=not main)
        for step in bar:
            m = self.train_step(step)
            m = {k: self.ranks.all_mean(v) for k, v in m.items()}  # means over ranks
            m.update(throughput(m, cfg.prompts_per_step * cfg.group_size))
            self.step = step
            if self.bad_steps >= cfg.max_bad_steps:
                logged.append(self._log(step, m))
                raise TrainingDiverged(f"{self.bad_steps} steps in a row had a NaN/inf loss or gradient "
                                       f"(max_bad_steps={cfg.max_bad_steps}); stopped at step {step}")
            if step == cfg.steps or cfg.save_every and step % cfg.save_every == 0 or stop.requested:
                self.save(metrics=m)
            if stop.requested:
                raise runs.Interrupted(f"stopped by {stop.requested} after step {step} (checkpoint step_{step:06d} "
                                       f"saved); continue with: sharpening llm train --config "
                                       f"{self.run.config_path} --resume")
            logged.append(self._finish_step(step, m))
            bar.set_postfix(reward=f"{m['reward/task']:.2f}", sec=f"{m['time/step']:.1f}")
        return logged

    def _finish_step(self, step: int, m: dict) -> dict:
        """Evaluate when due, then write the step's metrics line."""
        cfg = self.cfg
        if self.eval_sets and (step == cfg.steps or cfg.eval_every and step % cfg.eval_every == 0):
            m = {**m, **self.evaluate(step)}
        row = self._log(step, m)
        if self.ranks.is_main:
            tqdm.write(summary(row))
        return row

    def _log(self, step: int, m: dict) -> dict:
        """The metrics line of a step: written by rank 0 (the JSONL file and the report_to sinks)."""
        return self.run.log(step, m) if self.ranks.is_main else runs.finite_or_null({"step": step, **m})


def throughput(m: dict, sequences: int) -> dict:
    """Tokens per second of a step: response tokens generated (all ranks) over the step's time and over the
    generation's time."""
    tokens = m["length/mean"] * sequences
    return {"throughput/tokens_per_sec": tokens / max(m["time/step"], 1e-9),
            "throughput/gen_tokens_per_sec": tokens / max(m["time/generate"], 1e-9)}


def model_context(name: str) -> int:
    """The model's context length (max_position_embeddings of its config; no weights are read)."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(resolve(name)).max_position_embeddings)


def check_context(cfg: TrainConfig, tokenizer, context: int, train_sets: dict, eval_sets: dict) -> None:
    """Refuse, in one line, a prompt + response that cannot fit the model's context: max_new_tokens (or
    max_total_tokens) beyond it, or a problem whose prompt alone leaves no room for max_new_tokens. A prompt's
    tokens never outnumber its UTF-8 bytes, so only long prompts are tokenized."""
    if cfg.max_total_tokens is not None and cfg.max_total_tokens > context:
        raise ValueError(f"max_total_tokens={cfg.max_total_tokens} exceeds the model's context of {context} tokens")
    if cfg.max_total_tokens is None and cfg.max_new_tokens >= context:
        raise ValueError(f"max_new_tokens={cfg.max_new_tokens} leaves no room for a prompt in the model's context "
                         f"of {context} tokens (or set max_total_tokens <= {context} to cap prompt + response)")
    # the longest prompt that still leaves its response room: a capped response stops at max_total_tokens
    room = cfg.max_total_tokens - 1 if cfg.max_total_tokens is not None else context - cfg.max_new_tokens
    for name, (problems, prompts) in {**train_sets, **eval_sets}.items():
        for problem, prompt in zip(problems, prompts):
            if len(prompt.encode()) <= room:
                continue
            n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
            if n > room:
                budget = ("max_total_tokens=" + str(cfg.max_total_tokens) if cfg.max_total_tokens
                          else f"max_new_tokens={cfg.max_new_tokens}")
                raise ValueError(f"{name}: problem {problem.id!r} has a {n}-token prompt: with {budget} it does not "
                                 f"fit the model's context of {context} tokens; shorten or drop it")


BEST_DIR = runs.BEST_DIR
BEST_FILE = runs.BEST_FILE


def read_best(run_dir):
    """The step and score of a run's checkpoints/best, or None (no best kept yet)."""
    return runs.RunFolder(run_dir).read_best()


def write_weights_folder(target, model, tokenizer, state_dict, info: dict) -> None:
    """A loadable HF folder (weights, config, tokenizer, and `info` as best.json) written next to `target`, then
    swapped in: best.json exists only in a complete folder."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=target.parent, prefix=f".tmp-{target.name}-")
    try:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        runs.write_json(os.path.join(tmp, BEST_FILE), info)
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
