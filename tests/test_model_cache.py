"""The converted SmolLM2 cache: its folder is keyed by what the conversion depends on, a folder converted under
another key is never used, and the conversion (GGUF -> float32 safetensors) gives the GGUF's own weights."""

import hashlib
import json
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

from sharpening.llm import models

pytestmark = pytest.mark.llm


def expected_key() -> str:
    gguf = Path(models.smollm2_gguf_dir()) / models.SMOLLM2_GGUF
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    return f"{sha[:16]}-transformers{version('transformers')}-gguf{version('gguf')}"


def test_cache_key_names_the_gguf_hash_and_the_library_versions():
    assert models.smollm2_cache_key() == expected_key()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_conversion_under_another_key_is_not_used_and_a_fresh_one_matches_the_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARPENING_CACHE", str(tmp_path))
    # stale folders, complete as far as a loader can tell: the unkeyed name of before and another GGUF's key
    for name in ("smollm2-135m-instruct-f32", "smollm2-135m-instruct-f32-0123456789abcdef-transformers5.0.0-gguf0.1"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 1}))
    folder = Path(models.resolve("smollm2"))
    assert folder == tmp_path / f"smollm2-135m-instruct-f32-{expected_key()}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["smollm2-135m-instruct-f32", "smollm2-135m-instruct-f32-0123456789abcdef-transformers5.0.0-gguf0.1",
         folder.name])  # the stale folders are left alone, no temp folder is left behind
    converted = models.load_model("smollm2").state_dict()
    direct = gguf_weights()
    assert len(direct) == 2 + 9 * 30  # embeddings, final norm, 9 tensors in each of the 30 layers
    for name, weight in direct.items():
        if name.endswith(("q_proj.weight", "k_proj.weight")):  # rows permuted for the rotary layout: same values
            assert torch.equal(converted[name].flatten().sort().values, weight.flatten().sort().values), name
        else:
            assert torch.equal(converted[name], weight), name
    assert models.resolve("smollm2") == str(folder)  # a second load reuses it


GGUF_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "ffn_down": "mlp.down_proj",
              "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "attn_q": "self_attn.q_proj",
              "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj"}


def gguf_weights() -> dict:
    """Every tensor of the GGUF file dequantized by the gguf package itself, under its Hugging Face name."""
    import gguf

    reader = gguf.GGUFReader(Path(models.smollm2_gguf_dir()) / models.SMOLLM2_GGUF)
    weights = {}
    for t in reader.tensors:
        parts = t.name.split(".")  # token_embd.weight, output_norm.weight, blk.<i>.<what>.weight
        name = {"token_embd": "model.embed_tokens", "output_norm": "model.norm"}.get(parts[0])
        if parts[0] == "blk":
            name = f"model.layers.{parts[1]}.{GGUF_NAMES[parts[2]]}"
        weights[f"{name}.weight"] = torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type).copy()).float()
    return weights
