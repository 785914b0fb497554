"""The roofline of SmolLM2 on this machine: how far sampling and the training step are from the hardware.

    OMP_NUM_THREADS=2 python bench/roofline.py [--batch 8] [--prompt 100] [--tokens 32] [--threads 2]

Measured in one process, one after another (so under the same load): the memory bandwidth (a numpy copy of
256 MiB, read + write bytes), the matmul throughput in float32 and bfloat16 at a decode step's shape (batch rows
x hidden 576 -> MLP 1536) and at a training step's shape (batch * (prompt + tokens) rows), then the engine:
HFEngine.generate of `batch` sequences of `tokens` new tokens after a `prompt`-token prompt (EOS ignored), and one
training forward + backward (response_logprobs of those sequences, summed, backward).

Per decode step the model must read every weight once (the tied embedding is read as the LM head; the input
embedding only reads `batch` rows) and the KV cache of the context so far; it does 2 FLOPs per weight per row
plus the attention's 4 * context * heads * head_dim per layer per row. The roofline time of a step is the larger
of bytes / bandwidth and FLOPs / matmul throughput; the printout gives each, the engine's measured time, and the
engine's tokens/s as a fraction of the roofline's. The training step: 6 FLOPs per weight per token (forward 2,
backward 4), against the measured matmul throughput at the training shape.

Also printed: the share of a decode step that is matrix multiplication (the step's weight matmuls run alone,
torch.nn.functional.linear, same shapes), i.e. what a leaner decode loop could save at most.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` calls (after one warm-up): the machine's capability, not its load."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def copy_bandwidth(mib: int = 256, repeats: int = 8) -> float:
    """Bytes per second of a numpy copy, counting the read and the write."""
    a = np.ones(mib * 2**20 // 8)
    b = np.empty_like(a)
    return 2 * a.nbytes / best_time(lambda: np.copyto(b, a), repeats)


def matmul_flops(rows: int, k: int, n: int, dtype, repeats: int = 10) -> float:
    """FLOP/s of x [rows, k] @ W.T, W [n, k] (the nn.Linear layout) in dtype."""
    x, w = torch.randn(rows, k, dtype=dtype), torch.randn(n, k, dtype=dtype)
    return 2 * rows * k * n / best_time(lambda: torch.nn.functional.linear(x, w), repeats)


def decode_cost(config, n_params: int, batch: int, context: int, bytes_per_weight: int = 4):
    """(bytes, FLOPs) of one decode step of `batch` rows at `context` tokens of KV cache."""
    layers, kv_heads, heads = config.num_hidden_layers, config.num_key_value_heads, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_bytes = 2 * layers * kv_heads * head_dim * context * batch * 4  # keys and values, float32
    weight_flops = 2 * n_params * batch  # every weight once per row (the tied embedding as the LM head)
    attn_flops = 4 * layers * heads * head_dim * context * batch  # q.k and p.v
    return n_params * bytes_per_weight + kv_bytes, weight_flops + attn_flops


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="sequences decoded together (default 8)")
    parser.add_argument("--prompt", type=int, default=100, help="prompt tokens (default 100)")
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per sequence (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sharpening.llm.models import load_model, load_tokenizer
    from sharpening.llm.rollout import HFEngine, response_logprobs

    B, P, T = args.batch, args.prompt, args.tokens
    bw = copy_bandwidth()
    peak = {(name, shape): matmul_flops(rows, 576, 1536, dtype)
            for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16))
            for shape, rows in (("decode", B), ("train", B * (P + T)))}
    model, tok = load_model("smollm2"), load_tokenizer("smollm2")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{torch.get_num_threads()} torch threads; SmolLM2: {n_params / 1e6:.1f}M parameters "
          f"({n_params * 4 / 1e6:.0f} MB float32)")
    print(f"copy bandwidth (read + write): {bw / 1e9:.1f} GB/s")
    for (name, shape), f in peak.items():
        print(f"matmul {name:8} {shape:6} shape: {f / 1e9:7.1f} GFLOP/s")

    # the engine: B sequences of T tokens after a P-token prompt (one prompt, its cache repeated B times)
    engine = HFEngine(model, tok, batch_size=B)
    prompt = tok.decode(torch.randint(1000, 20000, (P,), generator=torch.Generator().manual_seed(0)))
    P = len(tok(prompt, add_special_tokens=False).input_ids)
    engine.generate([prompt], n=B, max_new_tokens=2, ignore_eos=True, seed=0)  # warm-up
    t = time.perf_counter()
    roll = engine.generate([prompt], n=B, max_new_tokens=T, ignore_eos=True, seed=0)
    t_gen = time.perf_counter() - t
    # roofline of the same T steps (context P + t at step t), float32 weights and bf16 weights
    steps = [decode_cost(model.config, n_params, B, P + t) for t in range(T)]
    t_bw = sum(b for b, _ in steps) / bw
    t_bw16 = sum(b - n_params * 2 for b, _ in steps) / bw
    t_fl = sum(f for _, f in steps) / peak[("float32", "decode")]
    roof = max(t_bw, t_fl)
    print(f"\ndecode, batch {B}, prompt {P}, {T} tokens:")
    print(f"  bandwidth limit  {t_bw:7.2f} s  (float32 weights + KV cache; bf16 weights: {t_bw16:.2f} s)")
    print(f"  compute limit    {t_fl:7.2f} s  (float32 matmul at the decode shape)")
    print(f"  engine           {t_gen:7.2f} s  = {B * T / t_gen:.1f} tokens/s, {roof / t_gen:.2f} of the roofline "
          f"({t_gen / roof:.2f}x the roofline time)")

    # the share of a decode step that is weight matmuls
    lin = [(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    x = {w.shape[1]: torch.randn(B, w.shape[1]) for w in lin}
    t_lin = best_time(lambda: [torch.nn.functional.linear(x[w.shape[1]], w) for w in lin], 5)
    from sharpening.llm.models import new_cache
    with torch.no_grad():
        out = model(input_ids=roll.prompt_ids[:, -P:], past_key_values=new_cache(model), use_cache=True,
                    logits_to_keep=1)
        cache, y = out.past_key_values, roll.tokens[:, :1]
        step_times = []
        for _ in range(8):
            t = time.perf_counter()
            model(input_ids=y, past_key_values=cache, use_cache=True)
            step_times.append(time.perf_counter() - t)
    t_step = statistics.median(step_times)
    print(f"  one decode step  {t_step * 1e3:7.1f} ms, of which weight matmuls alone {t_lin * 1e3:.1f} ms "
          f"({t_lin / t_step:.0%}); the rest (attention, norms, rotary, Python) is at most what a lean loop saves")

    # the training step's forward + backward on the same sequences
    model.train()
    tokens = int(roll.mask.sum()) + P  # the shared prompt runs once
    flops = 6 * n_params * tokens
    t = time.perf_counter()
    response_logprobs(model, roll).sum().backward()
    t_train = time.perf_counter() - t
    t_train_fl = flops / peak[("float32", "train")]
    t_train_bw = 3 * n_params * 4 / bw  # weights read forward and backward, gradients written
    print(f"\ntraining forward + backward, {tokens} tokens: {t_train:.2f} s; compute limit {t_train_fl:.2f} s, "
          f"bandwidth limit {t_train_bw:.2f} s -> {max(t_train_fl, t_train_bw) / t_train:.2f} of the roofline")


if __name__ == "__main__":
    main()
