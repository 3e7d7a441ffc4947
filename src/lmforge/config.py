"""Typed configuration: dataclasses filled from TOML presets or files, strict about keys, with `--set` overrides.

A config has four sections ([model], [tokenizer], [data], [train]) and a few top-level keys. A file may start from a
preset with `extends = "llama-190m"` and change only what differs. Unknown keys are errors that suggest the closest
valid key; values are type-checked. The resolved config is written to every run directory as `config.toml`.
"""
from __future__ import annotations

import difflib
import tomllib
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import tomli_w

from lmforge.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"


def choice(default: str, *choices: str) -> Any:
    return field(default=default, metadata={"choices": (default, *choices)})


@dataclass
class ModelConfig:
    vocab_size: int = 0  # 0: taken from the tokenizer when training starts
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 0  # 0: = n_heads (MHA); 1: MQA; a divisor of n_heads in between: GQA
    head_dim: int = 0  # 0: d_model // n_heads
    d_ff: int = 0  # 0: SwiGLU 8/3·d_model rounded up to a multiple of 64; GELU 4·d_model
    mlp: str = choice("swiglu", "gelu")
    norm: str = choice("rmsnorm", "layernorm")
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_seq_len: int = 256
    tie_embeddings: bool = False
    init_std: float = 0.02
    quant: str = choice("none", "ternary")  # ternary: BitNet b1.58 BitLinear attention/MLP projections
    # Sparse Mixture-of-Experts (model/moe.py). n_experts = 0: every block has a dense MLP.
    n_experts: int = 0
    experts_per_token: int = 2  # top-k; = n_experts gives the dense router-probability-weighted mixture
    moe_every: int = 1  # MoE in layers i with (i + 1) % moe_every == 0: 2 -> layers 1, 3, 5, ... (0-based)
    expert_mlp: str = choice("auto", "gelu", "swiglu")  # auto: the same kind as `mlp`; hidden size is ffn_dim
    moe_aux_loss_weight: float = 0.01  # Switch load-balancing loss
    moe_z_loss_weight: float = 0.001  # ST-MoE router z-loss
    moe_capacity_factor: float = 0.0  # 0: dropless; c > 0: an expert takes at most c·tokens·k/n_experts (training)

    @property
    def expert_kind(self) -> str:
        return self.mlp if self.expert_mlp == "auto" else self.expert_mlp

    @property
    def expert_ffn_dim(self) -> int:
        if self.d_ff or self.expert_kind == self.mlp:
            return self.ffn_dim
        return 64 * -(-int(8 * self.d_model / 3) // 64) if self.expert_kind == "swiglu" else 4 * self.d_model

    def is_moe_layer(self, layer_idx: int) -> bool:
        return self.n_experts > 0 and (layer_idx + 1) % self.moe_every == 0

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def ffn_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":
            return 64 * -(-int(8 * self.d_model / 3) // 64)
        return 4 * self.d_model

    def validate(self) -> None:
        if self.d_model <= 0 or self.n_layers <= 0 or self.n_heads <= 0:
            raise ConfigError("model.d_model, model.n_layers and model.n_heads must be positive")
        if not self.head_dim and self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}; set model.head_dim"
            )
        if self.n_heads % self.kv_heads:
            raise ConfigError(f"model.n_heads={self.n_heads} must be a multiple of model.n_kv_heads={self.kv_heads}")
        if self.dim_head % 2:
            raise ConfigError(f"head dimension {self.dim_head} must be even for RoPE")
        if self.max_seq_len <= 0:
            raise ConfigError("model.max_seq_len must be positive")
        if self.n_experts:
            if self.n_experts < 2:
                raise ConfigError(f"model.n_experts = {self.n_experts}: use 0 (dense) or at least 2 experts")
            if not 1 <= self.experts_per_token <= self.n_experts:
                raise ConfigError(f"model.experts_per_token = {self.experts_per_token} must be between 1 and "
                                  f"model.n_experts = {self.n_experts}")
            if not 1 <= self.moe_every <= self.n_layers:
                raise ConfigError(f"model.moe_every = {self.moe_every} must be between 1 and model.n_layers = "
                                  f"{self.n_layers}")
            for key in ("moe_aux_loss_weight", "moe_z_loss_weight", "moe_capacity_factor"):
                if getattr(self, key) < 0:
                    raise ConfigError(f"model.{key} = {getattr(self, key)} must be >= 0")
        elif self.n_experts < 0:
            raise ConfigError(f"model.n_experts = {self.n_experts} must be >= 0 (0: dense)")


@dataclass
class TokenizerConfig:
    # bpe / unigram: trained on the data sources; gpt2: vocab.json + merges.txt; file: any tokenizer.json or .model
    kind: str = choice("bpe", "unigram", "gpt2", "file")
    vocab_size: int = 4096
    path: str = ""  # for gpt2 / file: the directory or file to load
    special_tokens: list[str] = field(default_factory=lambda: ["<|endoftext|>"])
    train_max_docs: int = 0  # 0: train the tokenizer on every training document


@dataclass
class MixtureSource:
    """One weighted source of a data mixture ([[data.mixture]] tables): its documents, prepared (or streamed) into its
    own token dataset with the run's one tokenizer, and drawn from with probability weight / sum(weights)."""
    name: str = ""
    sources: list[str] = field(default_factory=list)  # like data.sources: files, directories, hf:owner/name[:cfg:split]
    weight: float = 1.0
    text_field: str = ""  # "": data.text_field (code sets often use "content")


@dataclass
class DataConfig:
    # Raw sources: text files / directories, .jsonl(.gz), .parquet, or "hf:owner/name[:split]" Hugging Face datasets.
    sources: list[str] = field(default_factory=list)
    dataset: str = ""  # a prepared token dataset directory; "" = <run dir>/data, prepared from `sources` if missing
    separator: str = "<|endoftext|>"  # document separator line in plain text files
    text_field: str = "text"
    val_fraction: float = 0.02
    max_docs: int = 0  # 0: every document
    workers: int = 0  # 0: one per CPU core
    mixture: list[MixtureSource] = field(default_factory=list)  # weighted sources; when set, replaces data.sources
    streaming: bool = False  # tokenize on the fly through a bounded shuffle buffer instead of preparing shards
    shuffle_buffer: int = 4096  # streaming: windows per shuffled buffer (memory ~ shuffle_buffer x seq_len tokens)


@dataclass
class TrainConfig:
    seed: int = 1337
    device: str = choice("auto", "cpu", "cuda", "mps")
    dtype: str = choice("auto", "fp32", "bf16", "fp16")  # auto: bf16 on GPUs that have it, else fp16 on GPU, fp32 on CPU
    compile: bool = False
    seq_len: int = 0  # 0: model.max_seq_len
    batch_size: int = 16  # sequences per micro-batch
    tokens_per_step: int = 0  # 0: one micro-batch per step; else gradient accumulation reaches this many tokens
    max_steps: int = 1000
    time_limit_min: float = 0.0  # >0: stop after this many minutes; the schedule then follows elapsed time too
    lr: float = 3e-4
    min_lr: float = 3e-5
    schedule: str = choice("cosine", "onecycle", "wsd", "constant")
    warmup_steps: int = 100
    decay_fraction: float = 0.2  # wsd: the last fraction of steps that decays to min_lr
    onecycle_pct_start: float = 0.3
    onecycle_div_factor: float = 25.0
    onecycle_final_div_factor: float = 1e4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # 0: off
    log_every: int = 10
    eval_every: int = 200  # 0: only at the end
    eval_batches: int = 20  # 0: the whole validation split
    checkpoint_every: int = 500  # 0: only at the end
    keep_checkpoints: int = 2
    parallel: str = choice("none", "ddp", "fsdp")  # data parallelism across torchrun processes (FSDP2: sharded)
    activation_checkpointing: bool = False  # recompute each block's activations in backward: less memory, ~30% more compute


@dataclass
class SFTConfig:
    """Supervised fine-tuning (lmforge sft): [model] and [tokenizer] come from the pretrained run (`--from`)."""
    data: list[str] = field(default_factory=list)  # ShareGPT / messages / Alpaca / Dolly JSON(L) files or hf:owner/name
    format: str = choice("auto", "sharegpt", "alpaca")  # auto: detected per record
    prompt_style: str = ""  # chatml / alpaca (data/templates.py); "": chatml for chats, alpaca for instructions.
    # An SFT run records the style it used here, so chat / serve / smoke render prompts the same way.
    system_prompt: str = ""  # default system message for chat (ChatML)
    init_from: str = ""  # the pretrained run or checkpoint (set by --from)
    val_fraction: float = 0.05  # held-out records for eval loss / early stopping
    epochs: float = 3.0  # > 0: sets train.max_steps from the data size; 0: use train.max_steps
    patience: int = 0  # early stopping: evaluations without improvement before stopping; 0: off
    packing: bool = False  # pack several short examples into one row
    max_records: int = 0  # 0: every record


@dataclass
class Config:
    name: str = "run"
    out_dir: str = ""  # "" = runs/<name>
    model: ModelConfig = field(default_factory=ModelConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.out_dir or f"runs/{self.name}")

    def validate(self) -> "Config":
        self.model.validate()
        t = self.train
        if t.batch_size <= 0 or t.max_steps <= 0:
            raise ConfigError("train.batch_size and train.max_steps must be positive")
        seq = t.seq_len or self.model.max_seq_len
        if seq > self.model.max_seq_len:
            raise ConfigError(f"train.seq_len={seq} exceeds model.max_seq_len={self.model.max_seq_len}")
        micro = t.batch_size * seq
        if t.tokens_per_step and t.tokens_per_step % micro:
            raise ConfigError(
                f"train.tokens_per_step={t.tokens_per_step} is not a multiple of batch_size*seq_len={micro}"
            )
        if not 0 <= self.data.val_fraction < 1:
            raise ConfigError("data.val_fraction must be in [0, 1)")
        self._validate_mixture()
        if not 0 <= self.sft.val_fraction < 1:
            raise ConfigError("sft.val_fraction must be in [0, 1)")
        if self.sft.epochs < 0 or self.sft.patience < 0:
            raise ConfigError("sft.epochs and sft.patience must be >= 0")
        return self

    def _validate_mixture(self) -> None:
        names = [m.name for m in self.data.mixture]
        for i, m in enumerate(self.data.mixture):
            where = f"data.mixture[{i}]" + (f" ('{m.name}')" if m.name else "")
            if not m.name or not m.name.replace("-", "").replace("_", "").isalnum():
                raise ConfigError(f"{where}: needs a name of letters, digits, '-' or '_'")
            if names.count(m.name) > 1:
                raise ConfigError(f"{where}: the name '{m.name}' is used twice")
            if not m.sources:
                raise ConfigError(f"{where}: 'sources' is empty")
            if not m.weight > 0:
                raise ConfigError(f"{where}: 'weight' must be positive, got {m.weight}")
        if self.data.shuffle_buffer <= 0:
            raise ConfigError("data.shuffle_buffer must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


# ----------------------------------------------------------------------------------------------------------------------
# Loading


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def _locate(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    preset = PRESET_DIR / f"{name_or_path}.toml"
    if preset.is_file():
        return preset
    close = difflib.get_close_matches(name_or_path, list_presets(), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; presets: {', '.join(list_presets())}"
    raise ConfigError(f"no config file or preset named '{name_or_path}'{hint}")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _raw(name_or_path: str, seen: tuple[str, ...] = ()) -> tuple[dict[str, Any], str]:
    path = _locate(name_or_path)
    if str(path) in seen:
        raise ConfigError(f"{path}: 'extends' makes a cycle: {' -> '.join(seen)}")
    raw = _read_toml(path)
    parent = raw.pop("extends", None)
    if parent is not None:
        if not isinstance(parent, str):
            raise ConfigError(f"{path}: 'extends' must be a preset name or a path")
        base, _ = _raw(parent, seen + (str(path),))
        raw = _merge(base, raw)
    return raw, str(path)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (['train', 'lr'], 3e-4); the value is read as TOML, else kept as a string."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like section.key=value")
    key, value = item.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip().split("."), parsed


def _coerce(value: Any, typ: Any, where: str) -> Any:
    origin = typing.get_origin(typ)
    if origin is list:
        (item_type,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if typ is bool:
        if isinstance(value, bool):
            return value
    elif typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif typ is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: expected {getattr(typ, '__name__', typ)}, got {value!r}")


def _build(cls: type, data: dict[str, Any], where: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    valid = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}{key}"
        if key not in valid:
            close = difflib.get_close_matches(key, list(valid), n=1)
            hint = f"; did you mean '{where}{close[0]}'?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"{source}: unknown config key '{path}'{hint}")
        typ = hints[key]
        if typing.get_origin(typ) is list and is_dataclass(typing.get_args(typ)[0]):  # [[section.key]] tables
            if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"{source}: '{path}' must be a list of tables ([[{path}]])")
            kwargs[key] = [_build(typing.get_args(typ)[0], v, f"{path}[{i}].", source) for i, v in enumerate(value)]
            continue
        if is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: '{path}' must be a table ([{path}])")
            kwargs[key] = _build(typ, value, f"{path}.", source)
            continue
        value = _coerce(value, typ, f"{source}: '{path}'")
        choices = valid[key].metadata.get("choices")
        if choices and value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{source}: '{path}' = {value!r} is not one of {', '.join(choices)}{hint}")
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    return _build(Config, raw, "", source).validate()


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """A preset name or a TOML path, then `section.key=value` overrides, into a validated Config."""
    raw, source = _raw(name_or_path)
    for item in overrides:
        keys, value = parse_override(item)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}': '{k}' is not a section")
        node[keys[-1]] = value
    return config_from_dict(raw, source if not overrides else f"{source} (with --set overrides)")


def save_config(config: Config, path: str | Path) -> None:
    from lmforge.utils.io import atomic_write_text

    atomic_write_text(path, config.to_toml())

