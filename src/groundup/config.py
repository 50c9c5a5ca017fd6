"""Typed configuration: dataclasses validated at construction, loaded from TOML, overridden by --set.

A run's config has three sections, each a typed dataclass; a field with a fixed set of values is
annotated with a `Literal` alias below, and that alias is the one place its allowed values are
declared (validation and error messages read it):

    [model]  ModelConfig  the architecture (what the weights mean)
    [data]   DataConfig   corpus and tokenizer
    [train]  TrainConfig  optimisation, evaluation, checkpoints, device

Every field name is unique across sections, so `--set max_steps=300` needs no section prefix
(`--set train.max_steps=300` works too). Values are parsed as TOML literals (`--set dropout=0.1`,
`--set positional="rope"` or just `--set positional=rope`).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from groundup.errors import ConfigError


# gelu: the tanh approximation, as GPT-2; swiglu: down(silu(gate(x)) ⊙ up(x)) (Shazeer 2020; Llama, Mixtral)
Activation = Literal["relu", "gelu", "swiglu"]
Positional = Literal["sinusoidal", "learned", "rope"]  # Vaswani et al. 2017 | GPT-2 | RoFormer
Norm = Literal["pre", "post"]  # pre (GPT-2: x + f(LN(x))) | post (2017: LN(x + f(x)))
AttentionPath = Literal["sdpa", "math"]  # F.scaled_dot_product_attention | every step explicit
ReadErrors = Literal["strict", "replace"]  # how to read non-UTF-8 .txt files
EngineName = Literal["torch", "numpy"]
Parallel = Literal["ddp", "fsdp"]  # under torchrun: a full replica per rank | weights, grads, Adam sharded
DType = Literal["auto", "float32", "bfloat16", "float16", "float64"]  # auto: bf16 autocast on CUDA, else fp32


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _or_list(values) -> str:
    quoted = [repr(v) for v in values]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else quoted[0]


def _check_choices(instance, section: str) -> None:
    """Every Literal-typed field holds one of its declared values."""
    for name, annotation in _field_types(type(instance)).items():
        if typing.get_origin(annotation) is Literal:
            value = getattr(instance, name)
            _check(value in typing.get_args(annotation),
                   f"{section}.{name} must be {_or_list(typing.get_args(annotation))}, got {value!r}")


@dataclass
class ModelConfig:
    vocab_size: int = 0  # 0 = take it from the tokenizer
    block_size: int = 64  # context length T
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128  # model width C; each head has d_k = C / n_head
    ffn_mult: int = 4  # feed-forward hidden width = ffn_mult · C
    activation: Activation = "gelu"
    # sinusoidal (Vaswani et al. 2017) | learned (GPT-2) | rope (RoFormer). Default rope: on the classic
    # char recipe it reached val 1.775 at 2000 steps vs 1.931 sinusoidal, 1.895 learned (see configs/).
    positional: Positional = "rope"
    norm: Norm = "pre"
    bias: bool = True  # biases in linear layers and layer norms
    dropout: float = 0.0
    tie_embeddings: bool = True  # the LM head reuses the token-embedding matrix
    attention: AttentionPath = "sdpa"
    # Mixture of experts (groundup/model/moe.py; Shazeer et al. 2017, Switch: Fedus et al. 2021,
    # Mixtral: Jiang et al. 2024). n_experts = 0: a dense FFN in every block.
    n_experts: int = 0  # E experts in each sparse block; 0 = dense, otherwise ≥ 2
    experts_per_token: int = 2  # k, 1 ≤ k ≤ E: experts each token is routed to
    moe_every: int = 1  # block i (0-based) is sparse when (i + 1) % moe_every == 0 (2 = every other, as Switch)
    expert_hidden: int = 0  # hidden width H of each expert; 0 = ffn_mult · n_embd
    dropless: bool = True  # true: every routed token is computed; false: capacity limits each expert
    capacity_factor: float = 1.25  # dropless = false: capacity = ceil(capacity_factor · k · N / E) per expert
    balance_loss: float = 0.01  # α of the Switch load-balancing loss α·E·Σᵢ fᵢ·Pᵢ (0 = off)
    router_z_loss: float = 0.0  # coefficient of the ST-MoE router z-loss mean (logsumexp logits)² (0 = off)
    normalize_gates: bool = True  # true: top-k gates renormalised to sum 1 (Mixtral); false: raw softmax (Switch)

    def __post_init__(self):
        for name in ("block_size", "n_layer", "n_head", "n_embd", "ffn_mult"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                   f"model.{name} must be a positive integer, got {value!r}")
        _check(isinstance(self.vocab_size, int) and self.vocab_size >= 0, f"model.vocab_size must be ≥ 0, got {self.vocab_size!r}")
        _check(self.n_embd % self.n_head == 0,
               f"model.n_embd ({self.n_embd}) must be divisible by model.n_head ({self.n_head}): each head gets n_embd / n_head dimensions")
        _check_choices(self, "model")
        _check(0.0 <= self.dropout < 1.0, f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.positional == "rope":
            _check(self.head_size % 2 == 0,
                   f"rope rotates pairs of dimensions, so the head size n_embd / n_head must be even; got {self.n_embd} / {self.n_head} = {self.head_size}")
        if self.positional == "sinusoidal":
            _check(self.n_embd % 2 == 0, f"sinusoidal positions pair sin and cos, so model.n_embd must be even, got {self.n_embd}")
        self._check_moe()

    def _check_moe(self) -> None:
        for name in ("n_experts", "experts_per_token", "moe_every", "expert_hidden"):
            value = getattr(self, name)
            _check(isinstance(value, int) and not isinstance(value, bool), f"model.{name} must be an integer, got {value!r}")
        _check(self.n_experts >= 0, f"model.n_experts must be ≥ 0 (0 = dense FFN), got {self.n_experts}")
        _check(self.n_experts != 1, "model.n_experts = 1: a router over one expert is a dense FFN; use 0 (dense) or ≥ 2")
        _check(self.moe_every >= 1, f"model.moe_every must be ≥ 1 (1 = every block sparse), got {self.moe_every}")
        _check(self.expert_hidden >= 0, f"model.expert_hidden must be ≥ 0 (0 = ffn_mult · n_embd), got {self.expert_hidden}")
        _check(self.capacity_factor > 0, f"model.capacity_factor must be > 0 (or set dropless = true), got {self.capacity_factor}")
        _check(self.balance_loss >= 0, f"model.balance_loss must be ≥ 0 (0 = off), got {self.balance_loss}")
        _check(self.router_z_loss >= 0, f"model.router_z_loss must be ≥ 0 (0 = off), got {self.router_z_loss}")
        if self.n_experts:
            _check(1 <= self.experts_per_token <= self.n_experts,
                   f"model.experts_per_token must be between 1 and n_experts ({self.n_experts}), got {self.experts_per_token}")
            _check(self.moe_every <= self.n_layer,
                   f"model.moe_every ({self.moe_every}) exceeds n_layer ({self.n_layer}): no block would be sparse; "
                   "lower moe_every or set n_experts = 0")

    def is_sparse(self, layer: int) -> bool:
        """Block `layer` (0-based) has a mixture-of-experts FFN: (layer + 1) % moe_every == 0."""
        return self.n_experts > 0 and (layer + 1) % self.moe_every == 0

    @property
    def hidden_size(self) -> int:
        """Hidden width of the dense FFN: ffn_mult · n_embd."""
        return self.ffn_mult * self.n_embd

    @property
    def expert_size(self) -> int:
        """Hidden width H of each expert: expert_hidden, or ffn_mult · n_embd."""
        return self.expert_hidden or self.ffn_mult * self.n_embd

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


@dataclass
class DataConfig:
    corpus: str = "shakespeare"  # shakespeare | python-docs | python-stdlib | path to .txt file or folder
    tokenizer: str = "char"  # char | bpe (trained on the corpus, cached) | path to a tokenizer file
    bpe_vocab_size: int = 4096  # with tokenizer = "bpe"
    pattern: str = "cl100k"  # pre-tokenizer for bpe / .tiktoken files
    val_fraction: float = 0.1
    errors: ReadErrors = "strict"

    def __post_init__(self):
        _check(0.0 < self.val_fraction < 1.0, f"data.val_fraction must be in (0, 1), got {self.val_fraction}")
        _check_choices(self, "data")
        _check(self.bpe_vocab_size >= 257, f"data.bpe_vocab_size must be at least 257 (256 bytes + <|endoftext|>), got {self.bpe_vocab_size}")


@dataclass
class TrainConfig:
    engine: EngineName = "torch"
    batch_size: int = 12  # sequences per micro-batch per process
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    max_steps: int = 2000
    time_budget: float = 0.0  # seconds; 0 = no limit. Stops early, still evaluates and saves.
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100  # linear warmup from 0
    lr_decay_steps: int = 0  # cosine decay to min_lr over this many steps; 0 = max_steps
    weight_decay: float = 0.1  # decoupled (AdamW), on weight matrices only
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 = off
    eval_interval: int = 250
    eval_iters: int = 40  # fixed val batches per evaluation
    log_interval: int = 10
    checkpoint_interval: int = 500  # 0 = only at the end
    keep_checkpoints: int = 3
    seed: int = 1337
    device: str = "auto"  # auto (cuda, else mps, else cpu) | cpu | cuda | cuda:N | mps
    dtype: DType = "auto"
    compile: bool = False  # torch.compile the model
    kernels: bool = True  # fused CPU kernels where they apply; false = plain PyTorch ops
    parallel: Parallel = "ddp"
    threads: int = 0  # CPU threads for torch; 0 = torch's default
    # guards (see groundup/train/guards.py): a non-finite step is always skipped
    max_bad_steps: int = 3  # this many non-finite steps in a row → roll back to the last good checkpoint
    spike_factor: float = 3.0  # loss > spike_factor × its recent average → roll back; 0 = off
    max_rollbacks: int = 3  # then stop with a report
    lr_backoff: float = 0.5  # each rollback multiplies the learning rate by this

    def __post_init__(self):
        _check_choices(self, "train")
        for name in ("batch_size", "grad_accum_steps", "eval_iters", "log_interval", "eval_interval", "keep_checkpoints"):
            _check(getattr(self, name) >= 1, f"train.{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("max_steps", "warmup_steps", "lr_decay_steps", "checkpoint_interval", "threads"):
            _check(getattr(self, name) >= 0, f"train.{name} must be ≥ 0, got {getattr(self, name)}")
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "time_budget", "eps"):
            _check(getattr(self, name) >= 0, f"train.{name} must be ≥ 0, got {getattr(self, name)}")
        _check(self.min_lr <= self.learning_rate, f"train.min_lr ({self.min_lr}) must not exceed train.learning_rate ({self.learning_rate})")
        for name in ("beta1", "beta2"):
            _check(0.0 <= getattr(self, name) < 1.0, f"train.{name} must be in [0, 1), got {getattr(self, name)}")
        _check(self.max_bad_steps >= 1, f"train.max_bad_steps must be ≥ 1, got {self.max_bad_steps}")
        _check(self.max_rollbacks >= 0, f"train.max_rollbacks must be ≥ 0, got {self.max_rollbacks}")
        _check(self.spike_factor == 0 or self.spike_factor > 1,
               f"train.spike_factor must be > 1 (or 0 to turn spike detection off), got {self.spike_factor}")
        _check(0 < self.lr_backoff <= 1, f"train.lr_backoff must be in (0, 1], got {self.lr_backoff}")

    @property
    def decay_steps(self) -> int:
        return self.lr_decay_steps or self.max_steps


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "RunConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a table of sections [model], [data], [train]")
        unknown = set(d) - set(SECTIONS)
        if unknown:
            raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; expected {list(SECTIONS)}")
        sections = {}
        for name, klass in SECTIONS.items():
            values = d.get(name, {})
            if not isinstance(values, dict):
                raise ConfigError(f"{source}: [{name}] must be a table")
            sections[name] = _build(klass, values, f"{source} [{name}]")
        return cls(**sections)

    def replace(self, **changes) -> "RunConfig":
        """A copy with fields changed by name (any section), validated again."""
        d = self.to_dict()
        for key, value in changes.items():
            section, name = _locate(key)
            d[section][name] = value
        return RunConfig.from_dict(d)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig}


@functools.cache
def _field_types(klass) -> dict[str, type]:
    """Each field's annotation, resolved (a Literal alias stays a Literal)."""
    return typing.get_type_hints(klass)


def _locate(key: str) -> tuple[str, str]:
    """'max_steps' or 'train.max_steps' → ('train', 'max_steps'); unknown keys get suggestions."""
    if "." in key:
        section, name = key.split(".", 1)
        if section in SECTIONS and name in _field_types(SECTIONS[section]):
            return section, name
    else:
        for section, klass in SECTIONS.items():
            if key in _field_types(klass):
                return section, key
    every = [n for k in SECTIONS.values() for n in _field_types(k)]
    close = difflib.get_close_matches(key.split(".")[-1], every, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(every)}"
    raise ConfigError(f"unknown config key {key!r}{hint}")


def _coerce(value, annotation, where: str):
    """Check a TOML value against a field's annotation (ints are accepted where floats are; a
    Literal's values are checked when the section is built)."""
    expected = type(typing.get_args(annotation)[0]) if typing.get_origin(annotation) is Literal else annotation
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, bool) and expected is not bool:
        raise ConfigError(f"{where} must be {expected.__name__}, got a boolean ({value})")
    if not isinstance(value, expected):
        raise ConfigError(f"{where} must be {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(klass, values: dict, source: str):
    types_ = _field_types(klass)
    unknown = [k for k in values if k not in types_]
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(types_), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known keys: {', '.join(types_)}"
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}{hint}")
    kwargs = {k: _coerce(v, types_[k], f"{source} {k}") for k, v in values.items()}
    try:
        return klass(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def parse_override(text: str) -> tuple[str, object]:
    """'key=value' → (key, value); the value is a TOML literal, or a bare string."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word such as rope or ../my.txt
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a TOML file (or start from defaults) and apply `key=value` overrides."""
    d: dict = {name: {} for name in SECTIONS}
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist (shipped configs live in configs/)")
        if path.is_dir():
            raise ConfigError(f"config path {path} is a directory; pass a .toml file")
        try:
            loaded = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
        for section, values in loaded.items():
            d.setdefault(section, {})
            if isinstance(values, dict):
                d[section].update(values)
            else:
                d[section] = values
        source = str(path)
    for text in overrides:
        key, value = parse_override(text)
        section, name = _locate(key)
        d[section][name] = value
    return RunConfig.from_dict(d, source)
