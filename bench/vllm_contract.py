"""Read, from a vLLM wheel, the facts sharpening's vLLM engine relies on, into tests/data/vllm_contract.json
(which tests/test_vllm_contract.py checks the engine against).

    python -m pip download --no-deps --only-binary :all: vllm==0.33.0 -d /tmp/vllm
    python bench/vllm_contract.py /tmp/vllm/vllm-0.33.0-*.whl          # writes tests/data/vllm_contract.json

Nothing is imported or installed: the wheel's Python sources are parsed (ast) and its METADATA read (the wheel,
not the source archive: vLLM's sdist computes its requirements at build time, which needs CUDA). The JSON states
the version and the wheel's SHA-256 it came from. On a version bump, run this on the new wheel and read the diff
of the JSON: a name that moved is a change to make in sharpening/llm/vllm_engine.py (and in the gpu extra of
pyproject.toml).
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "vllm_contract.json"

SOURCES = {  # the files of the wheel each fact comes from
    "llm": "vllm/entrypoints/llm.py",
    "engine_args": "vllm/engine/arg_utils.py",
    "sampling_params": "vllm/sampling_params.py",
    "outputs": "vllm/outputs.py",
    "logprobs": "vllm/logprobs.py",
    "parallel": "vllm/config/parallel.py",
    "model_config": "vllm/config/model.py",
    "stop": "vllm/v1/core/sched/utils.py",
    "finish": "vllm/v1/engine/__init__.py",
    "llama": "vllm/model_executor/models/llama.py",
    "qwen2": "vllm/model_executor/models/qwen2.py",
    "qwen3": "vllm/model_executor/models/qwen3.py",
    "worker": "vllm/v1/worker/gpu_worker.py",
    "launcher": "vllm/v1/executor/uniproc_executor.py",
}
LLM_METHODS = ("generate", "sleep", "wake_up", "apply_model", "reset_prefix_cache")
# LLM(...) keyword arguments the engine passes (the constructor's own, or EngineArgs fields through **kwargs): add a
# name here when sharpening/llm/vllm_engine.py starts passing it
LLM_KWARGS = ("model", "dtype", "seed", "gpu_memory_utilization", "max_model_len", "enable_sleep_mode",
              "distributed_executor_backend")


def _class(tree, name):
    return next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name)


def _method(cls, name):
    return next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == name)


def _params(fn) -> list[str]:
    a = fn.args
    return [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg != "self"]


def _fields(cls) -> list[str]:
    return [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]


def _default(cls, field):
    node = next(n for n in cls.body if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", None) == field)
    return ast.literal_eval(node.value)


def _stacked(tree, cls_name) -> dict:
    """The orig_to_new_stacked mapping of a model class's hf_to_vllm_mapper (HF projection -> fused, shard)."""
    cls = _class(tree, cls_name)
    for node in cls.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "hf_to_vllm_mapper":
            call = node.value
            if isinstance(call, ast.Call):
                kw = next(k for k in call.keywords if k.arg == "orig_to_new_stacked")
                return ast.literal_eval(kw.value)
            return {"inherits": ast.unparse(call)}
    return {"inherits": [ast.unparse(b) for b in cls.bases]}


def read_facts(wheel: str) -> dict:
    with zipfile.ZipFile(wheel) as z:
        text = {k: z.read(v).decode() for k, v in SOURCES.items()}
        metadata = next(z.read(n).decode() for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    tree = {k: ast.parse(v) for k, v in text.items()}
    llm = _class(tree["llm"], "LLM")
    wake_doc = ast.get_docstring(_method(llm, "wake_up"))
    requires = dict(re.findall(r"^Requires-Dist: (torch|transformers)((?:[<>=!~]=?)[^;\s]*)\s*$", metadata, re.M))
    backends = re.search(r"DistributedExecutorBackend = Literal\[([^\]]*)\]", text["parallel"]).group(1)
    return {
        "version": re.search(r"^Version: (\S+)", metadata, re.M).group(1),
        "requires": requires,
        "LLM kwargs": {k: "LLM.__init__" if k in _params(_method(llm, "__init__")) else "EngineArgs"
                       for k in LLM_KWARGS if k in _params(_method(llm, "__init__"))
                       or k in _fields(_class(tree["engine_args"], "EngineArgs"))},
        "LLM methods": {m: _params(_method(llm, m)) for m in LLM_METHODS},
        "wake_up tags": re.findall(r'"(\w+)"', re.search(r"Values must be in\s*`\(([^)]*)\)`", wake_doc).group(1)),
        "SamplingParams": _fields(_class(tree["sampling_params"], "SamplingParams")),
        "RequestOutput.__init__": _params(_method(_class(tree["outputs"], "RequestOutput"), "__init__")),
        "CompletionOutput": _fields(_class(tree["outputs"], "CompletionOutput")),
        "Logprob": _fields(_class(tree["logprobs"], "Logprob")),
        "executor backends": ast.literal_eval(f"[{backends}]"),
        "logprobs_mode default": _default(_class(tree["model_config"], "ModelConfig"), "logprobs_mode"),
        "finish reasons": ast.literal_eval(re.search(r"FINISH_REASON_STRINGS = (\([^)]*\))", text["finish"]).group(1)),
        "stops at max_model_len": "request.num_tokens >= max_model_len" in text["stop"],
        "SamplingParams.detokenize default": _default(_class(tree["sampling_params"], "SamplingParams"),
                                                      "detokenize"),
        # LLM.sleep's docstring: the levels it documents ("- Level N: ..."), and whether level 2 discards weights
        "sleep levels": sorted({int(n) for n in re.findall(r"- Level (\d):", ast.get_docstring(_method(llm, "sleep")))}),
        "sleep level 2 discards weights": "Level 2: Discard all GPU memory (weights + KV cache)"
                                          in ast.get_docstring(_method(llm, "sleep")),
        # gpu_worker.py Worker.sleep(level == 2) keeps the model's buffers (rotary caches) on the CPU and
        # wake_up(["weights"]) restores them: only the parameters need the sync
        "level 2 keeps buffers": "self._sleep_saved_buffers = {" in text["worker"]
                                 and "buffer.data.copy_(self._sleep_saved_buffers[name].data)" in text["worker"],
        # uniproc_executor.py ExecutorWithExternalLauncher reads these torchrun variables (env:// init)
        "launcher env": sorted(set(re.findall(r'os\.environ\["(\w+)"\]', text["launcher"]))
                               | set(re.findall(r"# - (MASTER_\w+)", text["launcher"]))),
        "load_weights": {f"{m}.{c}": _params(_method(_class(tree[m], c), "load_weights"))
                         for m, c in (("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM"),
                                      ("qwen3", "Qwen3ForCausalLM"))},
        "stacked": {c: _stacked(tree[m], c) for m, c in (("llama", "LlamaModel"), ("qwen2", "Qwen2Model"),
                                                          ("qwen3", "Qwen3Model"))},
    }


def main(wheel: str, out: Path = OUT) -> dict:
    facts = {"generated by": "bench/vllm_contract.py", "from": Path(wheel).name,
             "sha256": hashlib.sha256(Path(wheel).read_bytes()).hexdigest(), "sources": SOURCES,
             **read_facts(wheel)}
    out.write_text(json.dumps(facts, indent=1) + "\n")  # tuples become lists
    return facts


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    facts = main(sys.argv[1])
    print(f"wrote {OUT} (vLLM {facts['version']}, {len(facts)} entries)")
