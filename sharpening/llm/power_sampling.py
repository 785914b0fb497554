"""Power sampling of a Hugging Face causal LM at test time: sharpening.mcmc's sampler, proposals from the model.

    engine = PowerSamplingEngine(HFEngine(model, tokenizer), PowerSampling(alpha=4.0))
    roll = engine.generate(prompts, n=8, max_new_tokens=32, seed=0)   # a PowerRollout

The sampler (block-wise Metropolis-Hastings toward pi(y | x)**alpha, Karan & Du, arXiv 2510.14901) lives in
sharpening.mcmc; this module only proposes suffixes: `HFProposer.extend` samples each chain's new suffix from
the model at the proposal temperature, on top of its prompt (whose KV cache is computed once per call) and the
kept part of its response (re-read each step, a few dozen tokens at most). Each proposed token comes with its
log-prob under the model at temperature 1 (the target's lp) and under the proposal (lq), from the same logits.

The returned rollout is an HFEngine rollout (`sharpening llm eval --sampler power` feeds it to the evaluation
unchanged): lp_old_tok holds log pi(y_t | x, y_<t) of the final response's tokens (equal to a plain forward pass
up to float rounding), and two fields more per response: the Metropolis-Hastings acceptance rate and the tokens
generated to produce it (every block extension and every proposal, accepted or not).

Engines: the hf engine (CPU or GPU). vLLM returns the sampled tokens' log-probs at one temperature only, while
the acceptance ratio needs both lp (temperature 1) and lq (the proposal's); power sampling refuses engine=vllm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sharpening.llm.models import new_cache, position_ids, token_logprobs
from sharpening.llm.rollout import HFEngine, Rollout, sample_next
from sharpening.mcmc import Chains, PowerSampling, Suffix, power_sample


@dataclass
class PowerRollout(Rollout):
    """A Rollout whose responses were power-sampled, with what each one cost."""

    acceptance: torch.Tensor = None  # [B] accepted / proposed Metropolis-Hastings moves (NaN if none proposed)
    generated_tokens: torch.Tensor = None  # [B] tokens generated to produce the response


class HFProposer:
    """Suffix proposals from a causal LM at temperature tau, for the chains of one batch of prompts.

    prompt_ids, prompt_mask: [p, P] the distinct prompts, left-padded; chain_prompt: [C] the prompt of each chain.
    The prompts run once here; each `extend` starts from their cached keys and values. generator: draws the tokens
    on the model's device (default: the generator `extend` is given, which must then live there too).
    """

    def __init__(self, model, prompt_ids, prompt_mask, chain_prompt, eos_ids, tau: float, generator=None):
        self.model, self.tau, self.chain_prompt, self.generator = model, tau, chain_prompt, generator
        self.eos_ids = eos_ids.to(prompt_ids.device)
        self.prompt_mask = prompt_mask
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask),
                    past_key_values=new_cache(model), use_cache=True, logits_to_keep=1)
        self.prompt_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self.prompt_logits = out.logits[:, -1].float()  # [p, V] next-token logits after each prompt

    @property
    def device(self):
        return self.prompt_mask.device

    def extend(self, rows, tokens, keep, limit: int, generator=None) -> Suffix:
        """Sample, for each chain in rows, a suffix after its response's first keep tokens, until EOS or `limit`
        response tokens. tokens: [r, M] (CPU); returns CPU tensors."""
        dev = self.device
        generator = generator if self.generator is None else self.generator
        prompt = self.chain_prompt[rows].to(dev)
        tokens, keep = tokens.to(dev), keep.to(dev)
        cache = new_cache(self.model)
        for layer, (k, v) in zip(cache.layers, self.prompt_kv):
            layer.update(k.index_select(0, prompt), v.index_select(0, prompt))
        attn = self.prompt_mask.index_select(0, prompt)  # [r, P]
        logits = self.prompt_logits.index_select(0, prompt)  # [r, V]
        K = int(keep.max())
        if K > 0:  # re-read the kept tokens, right-aligned so that the last column is each row's last token
            j = torch.arange(K, device=dev)
            real = j >= (K - keep)[:, None]  # [r, K]
            kept = torch.where(real, tokens.gather(1, (j - (K - keep)[:, None]).clamp(min=0)), tokens[:, :1])
            attn = torch.cat([attn, real.to(attn.dtype)], 1)
            out = self.model(input_ids=kept, attention_mask=attn, position_ids=position_ids(attn)[:, -K:],
                             past_key_values=cache, use_cache=True, logits_to_keep=1)
            logits = torch.where((keep > 0)[:, None], out.logits[:, -1].float(), logits)
        budget = limit - keep  # [r] tokens each row may add (>= 1: the sampler never asks for none)
        r, S = len(keep), int(budget.max())
        tok = torch.zeros(r, S, dtype=torch.long, device=dev)
        lp, lq = torch.zeros(r, S, device=dev), torch.zeros(r, S, device=dev)
        length, ended = torch.zeros_like(keep), torch.zeros(r, dtype=torch.bool, device=dev)
        live = torch.arange(r, device=dev)  # rows still generating: the batch shrinks as rows finish
        for s in range(S):
            y = sample_next(logits, self.tau, generator=generator)  # [a] ~ q = softmax(logits / tau)
            tok[live, s] = y
            lp[live, s] = token_logprobs(logits, y)  # log pi(y), temperature 1
            lq[live, s] = token_logprobs(logits / self.tau, y)  # log q(y)
            length[live] += 1
            is_eos = torch.isin(y, self.eos_ids)
            ended[live] = is_eos
            go_on = ~is_eos & (s + 1 < budget[live])
            if not go_on.any():
                break
            if not go_on.all():  # drop the finished rows from the batch and from the cache
                keep_rows = torch.nonzero(go_on)[:, 0]
                live, y, attn = live[keep_rows], y[keep_rows], attn[keep_rows]
                for layer in cache.layers:
                    layer.keys, layer.values = layer.keys[keep_rows], layer.values[keep_rows]
            attn = torch.cat([attn, attn.new_ones(len(attn), 1)], 1)
            out = self.model(input_ids=y[:, None], attention_mask=attn, position_ids=position_ids(attn)[:, -1:],
                             past_key_values=cache, use_cache=True)
            logits = out.logits[:, -1].float()
        return Suffix(tok.cpu(), lp.cpu(), lq.cpu(), length.cpu(), ended.cpu())


class PowerSamplingEngine:
    """An engine whose `generate` power-samples each response (same signature and Rollout as HFEngine).

    engine: the HFEngine holding the model, tokenizer, EOS ids and batch size (chains run together: whole
    groups of n, about batch_size of them). settings: the sampler's knobs (sharpening.mcmc.PowerSampling).
    """

    def __init__(self, engine: HFEngine, settings: PowerSampling):
        if not isinstance(engine, HFEngine):
            raise ValueError(f"power sampling runs on the hf engine, got {type(engine).__name__}: it needs each "
                             "token's log-prob at temperature 1 and under the proposal, which vLLM does not return")
        self.engine, self.settings = engine, settings
        self.tokenizer = engine.tokenizer

    @torch.no_grad()
    def generate(self, prompts, n: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 ignore_eos: bool = False, seed=None) -> PowerRollout:
        """n power samples for each prompt (prompt-major); `seed` makes them reproducible."""
        if temperature != 1.0 or top_p != 1.0 or ignore_eos:
            raise ValueError(f"power sampling targets pi**alpha itself: temperature={temperature}, top_p={top_p}, "
                             f"ignore_eos={ignore_eos} must stay 1.0, 1.0, False (set proposal_temperature instead)")
        engine, model = self.engine, self.engine.model
        generator = torch.Generator().manual_seed(seed) if seed is not None else None  # positions, acceptances
        tokens_generator = generator  # the proposals' tokens, drawn on the model's device
        if engine.device.type != "cpu":
            tokens_generator = torch.Generator(engine.device)
            if seed is None:
                tokens_generator.seed()  # a fresh random seed, as an unseeded CPU run draws
            else:
                tokens_generator.manual_seed(seed)
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left",
                             add_special_tokens=False)
        ids, mask = enc.input_ids.to(engine.device), enc.attention_mask.to(engine.device)  # [p, P]
        per_chunk = max(1, engine.batch_size // n)
        was_training = model.training
        model.eval()
        try:
            chunks = []
            for i in range(0, len(prompts), per_chunk):
                p = len(ids[i:i + per_chunk])
                proposer = HFProposer(model, ids[i:i + per_chunk], mask[i:i + per_chunk],
                                      torch.arange(p).repeat_interleave(n), engine.eos_ids, self.settings.tau,
                                      tokens_generator)
                chunks.append(power_sample(proposer, p * n, max_new_tokens, self.settings, generator, engine.pad_id))
        finally:
            model.train(was_training)
        return self._rollout(ids, mask, n, chunks)

    def _rollout(self, ids, mask, n: int, chunks: list[Chains]) -> PowerRollout:
        cat = lambda name: torch.cat([getattr(c, name) for c in chunks])  # noqa: E731
        length, dev = cat("length"), self.engine.device
        T = int(length.max())
        resp_mask = (torch.arange(T) < length[:, None]).float()
        tokens = cat("tokens")[:, :T]
        texts = self.tokenizer.batch_decode(tokens.masked_fill(resp_mask == 0, self.engine.pad_id),
                                            skip_special_tokens=True)
        prompt_ids, prompt_mask = (x.repeat_interleave(n, 0) for x in (ids, mask))
        group = torch.arange(len(ids), device=dev).repeat_interleave(n)
        acceptance = torch.cat([c.acceptance for c in chunks])
        return PowerRollout(prompt_ids, prompt_mask, tokens.to(dev), resp_mask.to(dev),
                            cat("lp")[:, :T].float().to(dev), resp_mask.sum(-1).to(dev), ~cat("ended").to(dev), texts,
                            group, acceptance=acceptance, generated_tokens=cat("generated"))
