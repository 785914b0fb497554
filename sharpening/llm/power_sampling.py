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
    max_new_tokens: the response length limit (the size of the response caches below).

    Prefix reuse: the proposer keeps, for each chain, the keys and values of two responses: the last one it knew
    to be current ("kept") and its last proposal. A proposal resamples from position keep on, so the keys and
    values of the kept tokens are those of whichever stored response shares them (they depend only on the tokens
    before them): `extend` takes the longer matching prefix of the two (matched on the tokens, so it needs no word
    from the sampler about acceptance) and feeds the model only the kept tokens past it, usually just the last one
    (whose logits give the first new token's law). Without a match (any caller's tokens) it re-reads them all.
    """

    def __init__(self, model, prompt_ids, prompt_mask, chain_prompt, eos_ids, tau: float, generator=None,
                 max_new_tokens: int | None = None):
        self.model, self.tau, self.chain_prompt, self.generator = model, tau, chain_prompt, generator
        self.eos_ids = eos_ids.to(prompt_ids.device)
        self.prompt_mask = prompt_mask
        out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=position_ids(prompt_mask),
                    past_key_values=new_cache(model), use_cache=True, logits_to_keep=1)
        self.prompt_kv = [(layer.keys, layer.values) for layer in out.past_key_values.layers]
        self.prompt_logits = out.logits[:, -1].float()  # [p, V] next-token logits after each prompt
        self.fed_tokens = 0  # token positions run through the model by `extend` (re-read kept ones and new ones)
        self.stores = None
        if max_new_tokens is not None:  # [C, M] tokens, [C] how many have keys and values, per layer [C, h, M, d]
            C, M, dev = len(chain_prompt), max_new_tokens, prompt_ids.device
            empty = lambda: {"tokens": torch.full((C, M), -1, dtype=torch.long, device=dev),  # noqa: E731
                             "valid": torch.zeros(C, dtype=torch.long, device=dev),
                             "kv": [(k.new_zeros(C, k.shape[1], M, k.shape[3]), v.new_zeros(C, v.shape[1], M, v.shape[3]))
                                    for k, v in self.prompt_kv]}
            self.stores = {"kept": empty(), "proposal": empty()}

    @property
    def device(self):
        return self.prompt_mask.device

    def _reusable(self, rows, tokens, keep):
        """How many leading response tokens of each row have stored keys and values (0 without stores), after
        making the kept store the better of the two: [r]."""
        if self.stores is None:
            return torch.zeros_like(keep)
        j = torch.arange(tokens.shape[1], device=tokens.device)
        usable = {}
        for name, store in self.stores.items():
            differ = (store["tokens"][rows] != tokens) | (j >= keep[:, None])  # only the kept tokens matter
            common = torch.where(differ.any(1), differ.float().argmax(1), tokens.shape[1])  # first mismatch
            usable[name] = torch.minimum(common, store["valid"][rows])
        take = usable["proposal"] > usable["kept"]  # the last proposal was accepted: it becomes the kept one
        if take.any():
            kept, prop, moved = self.stores["kept"], self.stores["proposal"], rows[take]
            kept["tokens"][moved], kept["valid"][moved] = prop["tokens"][moved], prop["valid"][moved]
            for (k, v), (pk, pv) in zip(kept["kv"], prop["kv"]):
                k[moved], v[moved] = pk[moved], pv[moved]
        return torch.maximum(usable["kept"], usable["proposal"])

    def extend(self, rows, tokens, keep, limit: int, generator=None) -> Suffix:
        """Sample, for each chain in rows, a suffix after its response's first keep tokens, until EOS or `limit`
        response tokens. tokens: [r, M] (CPU); returns CPU tensors."""
        dev = self.device
        generator = generator if self.generator is None else self.generator
        rows, prompt = rows.to(dev), self.chain_prompt[rows].to(dev)
        tokens, keep = tokens.to(dev), keep.to(dev)
        r = len(keep)
        # the cache: prompt columns, then response columns 0..R-1 where each row's first `base` tokens have stored
        # keys and values (the rest of its R columns masked), then the fed kept tokens base..keep-1, right-aligned
        base = torch.minimum(self._reusable(rows, tokens, keep), (keep - 1).clamp(min=0))  # [r]
        R = int(base.max()) if r else 0
        cache = new_cache(self.model)
        for i, (layer, (k, v)) in enumerate(zip(cache.layers, self.prompt_kv)):
            k, v = k.index_select(0, prompt), v.index_select(0, prompt)
            if R > 0:
                sk, sv = self.stores["kept"]["kv"][i]
                k, v = torch.cat([k, sk[rows, :, :R]], 2), torch.cat([v, sv[rows, :, :R]], 2)
            layer.update(k, v)
        j = torch.arange(max(R, 1), device=dev)[:R]
        attn = torch.cat([self.prompt_mask.index_select(0, prompt), (j < base[:, None]).long()], 1)  # [r, P + R]
        prompt_len = self.prompt_mask.index_select(0, prompt).sum(-1)  # [r]
        logits = self.prompt_logits.index_select(0, prompt)  # [r, V]
        columns = [torch.where(j < base[:, None], j, -1)]  # [r, R] the response position of each cache column
        F = int((keep - base).max()) if r else 0
        if F > 0:  # feed the kept tokens past the stored ones, right-aligned (last column: each row's last token)
            f = torch.arange(F, device=dev)
            src = f - F + keep[:, None]  # [r, F] response position fed in column f
            real = (src >= base[:, None]) & (keep[:, None] > 0)
            fed = torch.where(real, tokens.gather(1, src.clamp(min=0)), tokens[:, :1])
            attn = torch.cat([attn, real.to(attn.dtype)], 1)
            pos = (prompt_len[:, None] + src).clamp(min=0)
            out = self.model(input_ids=fed, attention_mask=attn, position_ids=pos, past_key_values=cache,
                             use_cache=True, logits_to_keep=1)
            logits = torch.where((keep > 0)[:, None], out.logits[:, -1].float(), logits)
            self.fed_tokens += int(real.sum())
            columns.append(torch.where(real, src, -1))
        budget = limit - keep  # [r] tokens each row may add (>= 1: the sampler never asks for none)
        S = int(budget.max())
        tok = torch.zeros(r, S, dtype=torch.long, device=dev)
        lp, lq = torch.zeros(r, S, device=dev), torch.zeros(r, S, device=dev)
        length, ended = torch.zeros_like(keep), torch.zeros(r, dtype=torch.bool, device=dev)
        live = torch.arange(r, device=dev)  # rows still generating: the batch shrinks as rows finish
        written = torch.zeros(r, dtype=torch.bool, device=dev)  # the proposal store holds this row's keys, values
        for s in range(S):
            y = sample_next(logits, self.tau, generator=generator)  # [a] ~ q = softmax(logits / tau)
            tok[live, s] = y
            lp[live, s] = token_logprobs(logits, y)  # log pi(y), temperature 1
            lq[live, s] = token_logprobs(logits / self.tau, y)  # log q(y)
            length[live] += 1
            is_eos = torch.isin(y, self.eos_ids)
            ended[live] = is_eos
            go_on = ~is_eos & (s + 1 < budget[live])
            if not go_on.all():  # store the finished rows' keys and values, drop them from the batch and cache
                self._store(rows, tokens, keep, tok, length, cache, torch.cat(columns, 1), live, ~go_on)
                written[live[~go_on]] = True
            if not go_on.any():
                break
            if not go_on.all():
                keep_rows = torch.nonzero(go_on)[:, 0]
                live, y, attn = live[keep_rows], y[keep_rows], attn[keep_rows]
                columns = [c[keep_rows] for c in columns]
                for layer in cache.layers:
                    layer.keys, layer.values = layer.keys[keep_rows], layer.values[keep_rows]
            attn = torch.cat([attn, attn.new_ones(len(attn), 1)], 1)
            columns.append((keep[live] + s)[:, None])  # the token fed now: response position keep + s
            pos = (prompt_len[live] + keep[live] + s)[:, None]
            out = self.model(input_ids=y[:, None], attention_mask=attn, position_ids=pos, past_key_values=cache,
                             use_cache=True)
            logits = out.logits[:, -1].float()
            self.fed_tokens += len(y)
        return Suffix(tok.cpu(), lp.cpu(), lq.cpu(), length.cpu(), ended.cpu())

    def _store(self, rows, tokens, keep, tok, length, cache, columns, live, finished):
        """Write the keys and values of the finished batch rows' proposals (kept prefix + suffix, all but the last
        token, which was never fed) into the proposal store. columns: [a, L_resp] the response position each
        response cache column holds (-1: none); live: [a] batch row -> row of the call; finished: [a] bool."""
        if self.stores is None:
            return
        a = torch.nonzero(finished)[:, 0]
        idx = live[a]  # rows of this call
        chains = rows[idx]
        store, M = self.stores["proposal"], self.stores["proposal"]["tokens"].shape[1]
        total = keep[idx] + length[idx]  # the proposal's length
        j = torch.arange(M, device=tokens.device)
        new = torch.where(j < keep[idx, None], tokens[idx],
                          tok[idx].gather(1, (j - keep[idx, None]).clamp(0, tok.shape[1] - 1)))
        store["tokens"][chains] = torch.where(j < total[:, None], new, -1)
        store["valid"][chains] = total - 1
        col = columns[a]  # [f, L_resp]
        have = col >= 0
        P = cache.layers[0].keys.shape[2] - columns.shape[1]
        for (sk, sv), layer in zip(store["kv"], cache.layers):
            k, v = layer.keys[a][:, :, P:], layer.values[a][:, :, P:]  # [f, h, L_resp, d]
            b_i, c_i = torch.nonzero(have, as_tuple=True)
            sk[chains[b_i], :, col[b_i, c_i]] = k[b_i, :, c_i]
            sv[chains[b_i], :, col[b_i, c_i]] = v[b_i, :, c_i]


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
                                      tokens_generator, max_new_tokens=max_new_tokens)
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
