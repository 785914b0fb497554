"""Continue the responses of results/cpu/task2_length that hit the 64-token cap, up to 64 more tokens (one
sample each, from the response's text re-tokenized): where would they have stopped under a 128-token budget?
Run from the repository root with PYTHONPATH=$PWD; reads and writes the paths below (docs/llm_evidence.md)."""
import json
from sharpening.llm.data import format_prompt
from sharpening.llm.models import load_model, load_tokenizer
from sharpening.llm.rollout import HFEngine
s = [json.loads(l) for l in open('results/cpu/task2_length/samples.jsonl')]
cut = [x for x in s if x['truncated']]
tok = load_tokenizer('smollm2'); eng = HFEngine(load_model('smollm2'), tok)
prompts = [format_prompt(tok, x['question'], 'partial_sums') + x['text'] for x in cut]
roll = eng.generate(prompts, n=1, max_new_tokens=64, seed=0)
out = [{"total": x['length'] + int(T), "still_cut": bool(c), "extra": t[:80]} for x, T, c, t in
       zip(cut, roll.lengths.tolist(), roll.truncated.tolist(), roll.texts)]
json.dump(out, open('results/cpu/task2_length/cap_continuation.json', 'w'), indent=1)
for o in out: print(o)
