"""The vLLM contract: every vLLM name sharpening/llm/vllm_engine.py uses exists, with that meaning, in the pinned vLLM.

vLLM runs on CUDA only, so its code never runs here. The facts the engine relies on were read once from the
published vllm-0.33.0 wheel (its Python sources and METADATA; no vLLM code is kept in this repository) by
bench/vllm_contract.py, and are listed in VLLM with the source file of each. The tests parse the engine's source
(ast) and check that it uses nothing outside them, and that pyproject's gpu extra pins this vLLM with the torch and
transformers it requires.

On a version bump:
    python -m pip download --no-deps --only-binary :all: vllm==X.Y.Z -d /tmp/vllm
    python bench/vllm_contract.py /tmp/vllm/vllm-X.Y.Z-*.whl
compare its output with VLLM below, change the engine where a name moved, then update VLLM and the gpu extra.
"""

import ast
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "sharpening" / "llm" / "vllm_engine.py"

VLLM = {  # read from vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl by bench/vllm_contract.py
    "version": "0.33.0",
    # METADATA: Requires-Dist lines
    "requires": {"torch": "==2.14.0", "transformers": "<5.21.0,>=5.16.1"},
    # entrypoints/llm.py LLM.__init__ parameters; the rest reach engine/arg_utils.py EngineArgs through **kwargs
    "LLM kwargs": {"model", "dtype", "seed", "gpu_memory_utilization", "max_model_len", "enable_sleep_mode",
                   "distributed_executor_backend", "enable_lora", "max_lora_rank", "max_loras"},
    # entrypoints/llm.py: the LLM methods and their parameters
    "LLM methods": {"generate": ["prompts", "sampling_params", "use_tqdm", "lora_request", "priority",
                                 "tokenization_kwargs", "mm_processor_kwargs"],
                    "sleep": ["level", "mode"], "wake_up": ["tags"], "apply_model": ["func"],
                    "reset_prefix_cache": ["reset_running_requests", "reset_connector"]},
    # LLM.wake_up's docstring: 'Values must be in ("weights", "kv_cache", "scheduling")'; v1/engine/core.py resumes
    # scheduling only once every tag is awake again
    "wake_up tags": {"weights", "kv_cache", "scheduling"},
    # sampling_params.py SamplingParams fields (those the engine could set; the private ones left out)
    "SamplingParams": {"n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p",
                       "top_k", "min_p", "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens",
                       "logprobs", "prompt_logprobs", "detokenize", "skip_special_tokens", "flat_logprobs"},
    # outputs.py RequestOutput(outputs=...) and CompletionOutput fields; logprobs.py Logprob fields. A sample's
    # `logprobs` is list[dict[token id, Logprob]] or FlatLogprobs, both indexed [position][token id]; with
    # SamplingParams(logprobs=0) each position holds the sampled token alone
    "output attributes": {"outputs", "index", "text", "token_ids", "cumulative_logprob", "logprobs", "finish_reason",
                          "stop_reason", "logprob", "rank", "decoded_token"},
    # config/parallel.py DistributedExecutorBackend
    "executor backends": {"ray", "mp", "uni", "external_launcher"},
    # config/model.py: logprobs_mode = "raw_logprobs" (before temperature / top-p: what HFEngine's lp_old_tok holds)
    "logprobs_mode default": "raw_logprobs",
    # v1/engine/__init__.py FINISH_REASON_STRINGS; v1/core/sched/utils.py check_stop ends a request with "length"
    # when request.num_tokens >= max_model_len or its max_tokens are out (max_total_tokens relies on the first)
    "finish reasons": {"stop", "length", "abort", "error", "repetition"},
    # model_executor/models/{llama,qwen2,qwen3}.py: load_weights(weights) of LlamaForCausalLM, Qwen2ForCausalLM,
    # Qwen3ForCausalLM (HF names in); hf_to_vllm_mapper.orig_to_new_stacked of LlamaModel and Qwen2Model
    # (Qwen3Model subclasses Qwen2Model)
    "load_weights params": ["weights"],
    "stacked": {".q_proj": (".qkv_proj", "q"), ".k_proj": (".qkv_proj", "k"), ".v_proj": (".qkv_proj", "v"),
                ".gate_proj": (".gate_up_proj", 0), ".up_proj": (".gate_up_proj", 1)},
    # lora/request.py LoRARequest fields (a msgspec Struct: positional in this order); config/lora.py MaxLoRARanks.
    # Read from the vllm-0.33.0 sdist (the same Python sources as the wheel)
    "LoRARequest": ["lora_name", "lora_int_id", "lora_path", "base_model_name", "load_inplace", "is_3d_lora_weight"],
    "max lora ranks": (1, 8, 16, 32, 64, 128, 256, 320, 512),
}


@pytest.fixture(scope="module")
def engine_tree():
    return ast.parse(ENGINE.read_text())


def calls(tree, name: str) -> list[ast.Call]:
    """Every call of something named `name` (x.name(...) or name(...))."""
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and (getattr(n.func, "attr", None) == name or getattr(n.func, "id", None) == name)]


def function(tree, cls: str, name: str) -> ast.FunctionDef:
    c = next(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls)
    return next(n for n in c.body if isinstance(n, ast.FunctionDef) and n.name == name)


def test_llm_is_built_with_arguments_vllm_takes(engine_tree):
    (llm,) = calls(engine_tree, "LLM")
    kwargs = {k.arg: k.value for k in llm.keywords}
    assert set(kwargs) <= VLLM["LLM kwargs"] and not llm.args
    assert {"max_model_len", "enable_sleep_mode", "gpu_memory_utilization"} <= set(kwargs)  # issue #11, defect 4
    assert ast.literal_eval(kwargs["distributed_executor_backend"]) in VLLM["executor backends"]
    assert "logprobs_mode" not in kwargs  # the default, raw_logprobs, is what lp_old_tok means


def test_llm_methods_and_their_arguments_exist(engine_tree):
    used = [n for n in ast.walk(engine_tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and isinstance(n.func.value, ast.Attribute) and n.func.value.attr == "llm"]  # self.llm.<method>(...)
    assert {c.func.attr for c in used} == set(VLLM["LLM methods"])  # no other attribute of LLM is reached
    for c in used:
        params = VLLM["LLM methods"][c.func.attr]
        assert len(c.args) <= len(params) and {k.arg for k in c.keywords} <= set(params), c.func.attr


def test_sleep_tags_and_levels(engine_tree):
    tags = {ast.literal_eval(c.args[0]) for c in calls(engine_tree, "_wake")}
    assert tags == {"weights", "kv_cache"} and tags <= VLLM["wake_up tags"]
    # the engine must wake every tag a level-1 sleep took before generating: vLLM schedules only when fully awake
    generate = function(engine_tree, "VLLMEngine", "generate")
    assert any(getattr(c.func, "attr", None) == "wake_up" for c in ast.walk(generate) if isinstance(c, ast.Call))


def test_sampling_params_and_outputs(engine_tree):
    (params,) = calls(engine_tree, "SamplingParams")
    kwargs = {k.arg: k.value for k in params.keywords}
    assert set(kwargs) <= VLLM["SamplingParams"]
    assert ast.literal_eval(kwargs["logprobs"]) == 0  # the sampled token's log-prob only
    generate = function(engine_tree, "_VLLMBackend", "generate")
    read = {n.attr for n in ast.walk(generate) if isinstance(n, ast.Attribute)
            and not (isinstance(n.value, ast.Name) and n.value.id == "self")
            and not (isinstance(n.value, ast.Attribute) and n.value.attr in ("vllm", "llm"))}
    assert read and read <= VLLM["output attributes"], read
    reasons = {ast.literal_eval(c.comparators[0]) for c in ast.walk(generate) if isinstance(c, ast.Compare)
               and getattr(c.left, "attr", None) == "finish_reason"}
    assert reasons == {"length"} <= VLLM["finish reasons"]  # truncated = stopped by max_tokens or max_model_len


def test_weights_load_through_vllms_own_loader_with_its_fusion():
    from sharpening.llm.vllm_engine import FUSED

    tree = ast.parse(ENGINE.read_text())
    load = function(tree, "_VLLMBackend", "load_weights")
    (call,) = calls(load, "load_weights")  # model.load_weights(pairs), inside the function given to apply_model
    assert len(call.args) == len(VLLM["load_weights params"]) and not call.keywords
    assert calls(load, "apply_model")  # LLM.apply_model: the model of the in-process worker
    ours = {k.rstrip("."): (v.rstrip("."), shard) for k, (v, shard) in FUSED.items()}
    assert ours == VLLM["stacked"]


def test_gpu_extra_pins_vllm_with_the_torch_and_transformers_it_requires():
    from packaging.requirements import Requirement
    from packaging.version import Version

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    gpu = {r.name: r.specifier for r in map(Requirement, extras["gpu"])}
    assert str(gpu["vllm"]) == f"=={VLLM['version']}"
    assert gpu["torch"] == Requirement("torch" + VLLM["requires"]["torch"]).specifier
    assert gpu["transformers"] == Requirement("transformers" + VLLM["requires"]["transformers"]).specifier
    llm = {r.name: r.specifier for r in map(Requirement, extras["llm"])}
    # `pip install -e ".[gpu,llm]"` must resolve: some transformers satisfies both extras (5.20.0 does)
    assert Version("5.20.0") in gpu["transformers"] and Version("5.20.0") in llm["transformers"]


def test_lora_is_served_through_vllms_lora_support(engine_tree):
    """LoRA runs: LLM(enable_lora, max_lora_rank, max_loras), one LoRARequest(lora_name, lora_int_id, lora_path) per
    adapter folder passed to LLM.generate, and max_lora_rank one of the ranks vLLM takes."""
    from sharpening.llm.vllm_engine import VLLM_LORA_RANKS

    (request,) = calls(engine_tree, "LoRARequest")
    assert not request.keywords and len(request.args) == 3  # lora_name, lora_int_id, lora_path
    assert VLLM["LoRARequest"][:3] == ["lora_name", "lora_int_id", "lora_path"]
    assert VLLM_LORA_RANKS == VLLM["max lora ranks"]
    (generate,) = [c for c in calls(function(engine_tree, "_VLLMBackend", "generate"), "generate")]
    assert "lora_request" in {k.arg for k in generate.keywords} and "lora_request" in VLLM["LLM methods"]["generate"]
