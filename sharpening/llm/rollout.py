"""Rollouts: G sampled responses per prompt with the log-probs the policy gave them while sampling.

An engine is anything with `generate(prompts, n, max_new_tokens, temperature, top_p, ignore_eos, seed)
-> Rollout`. `HFEngine` is the CPU one: a plain sampling loop over a Hugging Face model with a KV cache,
every sequence of a chunk decoded in one batch. A vLLM engine only has to return the same `Rollout`.

lp_old_tok is log pi_theta(y_t | x, y_<t) from the raw logits of the sampling forward pass: the policy's
own log-probs, whatever temperature / top_p shaped the sampling distribution (with temperature 1 and top_p 1,
the default, the two coincide and the rollout is exactly on-policy). It equals a separate full forward pass
up to float rounding of the KV-cache path (~1e-5 in float32).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sharpening.llm.models import (new_cache, position_ids, sequence_logprobs, token_logprobs,
                                    uses_activation_checkpointing)


@dataclass
class Rollout:
    """B = len(prompts) * n responses, prompt-major (the n samples of prompt 0 first)."""

    prompt_ids: torch.Tensor  # [B, P] left-padded prompt tokens
    prompt_mask: torch.Tensor  # [B, P] 1 on real prompt tokens
    tokens: torch.Tensor  # [B, T] response tokens, right-padded
    mask: torch.Tensor  # [B, T] float, 1 on response tokens (EOS included: its probability is the length choice)
    lp_old_tok: torch.Tensor  # [B, T] log-probs of the sampling policy at sampling time, 0 off the mask
    lengths: torch.Tensor  # [B] response lengths T_i = mask.sum(-1)
    truncated: torch.Tensor  # [B] bool, True when the response hit max_new_tokens without EOS
    texts: list  # B decoded responses (special tokens removed)
    group: torch.Tensor  # [B] index of the prompt each response answers

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def input_ids(self):
        return torch.cat([self.prompt_ids, self.tokens], 1)  # [B, P + T]

    def attention_mask(self):
        return torch.cat([self.prompt_mask, self.mask.to(self.prompt_mask.dtype)], 1)  # [B, P + T]


def response_logprobs(model, roll: Rollout, rows=slice(None), share_prompt: bool = True):
    """log pi(y_t | x, y_<t) of the rollout's response tokens under `model`, [b, T], with grad if enabled.

    share_prompt: each distinct prompt among `rows` runs once and its KV cache serves all of its responses
    (a group's G responses share one prompt, often half the tokens of a sequence), then the responses run on
    top of the cache; gradients flow back through the shared prompt. The same numbers as one full forward
    pass per row (share_prompt=False) up to float rounding. Under activation checkpointing the full pass is
    used: the layer recomputation would replay the cache writes.
    """
    if not share_prompt or uses_activation_checkpointing(model):
        P = roll.prompt_ids.shape[1]
        ids, attn = roll.input_ids()[rows], roll.attention_mask()[rows]
        response = torch.zeros_like(attn)
        response[:, P:] = attn[:, P:]
        return sequence_logprobs(model, ids, attn, response)[:, P:]
    prompt_mask, tokens, mask = roll.prompt_mask[rows], roll.tokens[rows], roll.mask[rows]
    P = prompt_mask.shape[1]
    prompts = torch.cat([roll.prompt_ids[rows], prompt_mask.to(roll.prompt_ids.dtype)], 1)  # [b, 2P]: ids, mask
    distinct, inverse = torch.unique(prompts, dim=0, return_inverse=True)  # [u, 2P]; prompts == distinct[inverse]
    start = int(distinct[:, P:].any(0).float().argmax())  # left padding that every distinct prompt has
    distinct_ids, distinct_mask, prompt_mask = distinct[:, start:P], distinct[:, P + start:], prompt_mask[:, start:]
    out = model(input_ids=distinct_ids, attention_mask=distinct_mask, position_ids=position_ids(distinct_mask),
                past_key_values=new_cache(model), use_cache=True, logits_to_keep=1)
    # index_select, not x[inverse]: its backward (index_add_) is deterministic on CPU, index_put_'s is not
    logp = [token_logprobs(out.logits[:, -1].index_select(0, inverse), tokens[:, 0])[:, None]]  # y_0 | x
    if tokens.shape[1] > 1:
        cache = out.past_key_values
        for layer in cache.layers:  # each response reads its prompt's keys and values
            layer.keys, layer.values = layer.keys.index_select(0, inverse), layer.values.index_select(0, inverse)
        attn = torch.cat([prompt_mask, mask[:, :-1].to(prompt_mask.dtype)], 1)  # the last token predicts nothing
        pos = position_ids(attn)[:, prompt_mask.shape[1]:]
        out = model(input_ids=tokens[:, :-1], attention_mask=attn, position_ids=pos, past_key_values=cache,
                    use_cache=True)
        logp.append(token_logprobs(out.logits, tokens[:, 1:]))  # y_t | x, y_<t for t >= 1
    return torch.cat(logp, 1).masked_fill(mask == 0, 0.0)  # not * mask: a -inf log-prob times 0 is NaN


def sample_next(logits, temperature: float = 1.0, top_p: float = 1.0, generator=None, u=None):
    """One token per row from softmax(logits / temperature), restricted to the top-p nucleus. logits: [B, V].

    Inverse-CDF sampling: one uniform per row against the cumulative probabilities (float64). Exact, and
    several times cheaper than torch.multinomial, which draws one exponential per vocabulary entry.
    u: the rows' uniforms in [0, 1), [B, 1] float64 (default: drawn here from `generator`).
    """
    probs = torch.softmax(logits / temperature, -1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        outside = sorted_p.cumsum(-1) - sorted_p > top_p  # tokens after the nucleus is full
        sorted_p = sorted_p.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    cdf = probs.double().cumsum(-1)  # [B, V]
    total = cdf[:, -1:]
    if u is None:
        u = torch.rand(total.shape, dtype=cdf.dtype, device=cdf.device, generator=generator)
    u = u * total
    u = torch.minimum(u, total.nextafter(torch.zeros_like(total)))  # u < total even after rounding
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)  # first token whose cdf exceeds u: [B]


class HFEngine:
    """Batched sampling from a Hugging Face causal LM with a KV cache (pure sampling by default).

    batch_size: sequences decoded together, rounded to whole groups (at least one prompt's n samples).
    max_total_tokens: a response also stops when its prompt + response reach this many tokens (as vLLM's
    max_model_len stops it; `truncated` then). lockstep: every chunk runs exactly max_new_tokens decoding steps,
    finished rows masked, so that ranks whose forward passes are collectives (FSDP) stay in step.
    """

    def __init__(self, model, tokenizer, batch_size: int = 64, max_total_tokens: int | None = None,
                 lockstep: bool = False):
        from sharpening.llm.distributed import unwrap_ddp

        model = unwrap_ddp(model)  # DDP's wrapper has no generation_config and would sync buffers every token
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.max_total_tokens, self.lockstep = max_total_tokens, lockstep
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        self.eos_ids = torch.tensor(sorted({*eos, tokenizer.eos_token_id}))
        self.pad_id = tokenizer.pad_token_id

    @property
    def device(self):
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(self, prompts, n: int, max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0,
                 ignore_eos: bool = False, seed=None) -> Rollout:
        """n responses to each prompt (prompt-major); `seed` makes the samples reproducible."""
        generator = torch.Generator(self.device).manual_seed(seed) if seed is not None else None
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left",
                             add_special_tokens=False)
        distinct_ids, distinct_mask = enc.input_ids.to(self.device), enc.attention_mask.to(self.device)  # [p, P]
        per_chunk = max(1, self.batch_size // n)  # whole groups: a prompt is run once for its n samples
        was_training = self.model.training
        self.model.eval()
        try:
            chunks = [self._sample(distinct_ids[i:i + per_chunk], distinct_mask[i:i + per_chunk], n,
                                   max_new_tokens, temperature, top_p, ignore_eos, generator)
                      for i in range(0, len(prompts), per_chunk)]
        finally:
            self.model.train(was_training)
        prompt_ids, prompt_mask = (x.repeat_interleave(n, 0) for x in (distinct_ids, distinct_mask))  # [B, P]
        T = max(c[0].shape[1] for c in chunks)
        tokens, mask, lp_old_tok = (torch.cat([_pad_right(c[k], T, v) for c in chunks])
                                    for k, v in ((0, self.pad_id), (1, 0.0), (2, 0.0)))
        truncated = torch.cat([c[3] for c in chunks])
        texts = self.tokenizer.batch_decode(tokens.masked_fill(mask == 0, self.pad_id), skip_special_tokens=True)
        group = torch.arange(len(prompts), device=self.device).repeat_interleave(n)
        return Rollout(prompt_ids, prompt_mask, tokens, mask, lp_old_tok, mask.sum(-1), truncated, texts, group)

    def _sample(self, prompt_ids, prompt_mask, n, max_new_tokens, temperature, top_p, ignore_eos, generator):
        """The decoding loop for n samples of each of a chunk's prompts (prefilled once, their KV cache then
        repeated n times): returns tokens, mask, lp_old_tok [b, T] and truncated [b], b = n * len(prompt_ids).

        A finished row leaves the batch (and its keys and values the cache), so the last steps cost what their
        live rows cost, not the whole chunk's. Each step still draws one uniform for every row of the chunk, in
        row order, so a row's tokens are those of a run that kept every row (the seed -> sample map does not
        depend on when the other rows finish; the logits of a smaller batch differ only by float rounding).
        lockstep keeps every row in the batch to the last step (finished ones masked).
        """
        dev = prompt_ids.device
        b = prompt_ids.shape[0] * n
        budget = (torch.full((b,), max_new_tokens, device=dev) if self.max_total_tokens is None else  # tokens each row may add
                  (self.max_total_tokens - prompt_mask.sum(-1)).clamp(min=1, max=max_new_tokens).repeat_interleave(n))
        pos = position_ids(prompt_mask)
        out = self.model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=pos,
                         past_key_values=new_cache(self.model), use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_repeat_interleave(n)
        logits = out.logits[:, -1].float().repeat_interleave(n, 0)  # [b, V]
        attn, pos = prompt_mask.repeat_interleave(n, 0), pos[:, -1:].repeat_interleave(n, 0)
        tokens = torch.full((b, max_new_tokens), self.pad_id, dtype=torch.long, device=dev)
        mask, lp_old = torch.zeros(b, max_new_tokens, device=dev), torch.zeros(b, max_new_tokens, device=dev)
        ended = torch.zeros(b, dtype=torch.bool, device=dev)  # stopped by EOS
        done = ended.clone()  # stopped by EOS or by the budget
        live = torch.arange(b, device=dev)  # the rows in the batch (all of them under lockstep)
        eos_ids = self.eos_ids.to(dev)
        for t in range(max_new_tokens):
            u = torch.rand((b, 1), dtype=torch.float64, device=dev, generator=generator)[live]  # every row's uniform
            y = sample_next(logits, temperature, top_p, u=u)  # [a]
            going = ~done[live]  # rows of the batch still writing (under lockstep finished rows stay, masked)
            rows = live[going]
            tokens[rows, t] = y[going]
            mask[rows, t] = 1.0
            lp_old[rows, t] = token_logprobs(logits[going], y[going])  # log pi_theta(y)
            if not ignore_eos:
                ended[rows] = torch.isin(y[going], eos_ids)
            done = ended | (t + 1 >= budget)
            if (done.all() and not self.lockstep) or t == max_new_tokens - 1:
                break
            if not self.lockstep and done[live].any():  # drop the finished rows from the batch and the cache
                keep = torch.nonzero(~done[live])[:, 0]
                live, y, attn, pos = live[keep], y[keep], attn[keep], pos[keep]
                for layer in cache.layers:
                    layer.keys, layer.values = layer.keys.index_select(0, keep), layer.values.index_select(0, keep)
            attn, pos = torch.cat([attn, attn.new_ones(len(live), 1)], 1), pos + 1
            out = self.model(input_ids=y[:, None], attention_mask=attn, position_ids=pos, past_key_values=cache,
                             use_cache=True)
            logits = out.logits[:, -1].float()
        T = t + 1
        return tokens[:, :T], mask[:, :T], lp_old[:, :T], ~ended


def _pad_right(x, T: int, value):
    return torch.nn.functional.pad(x, (0, T - x.shape[1]), value=value)
