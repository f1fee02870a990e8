"""T5Config: the shape of a T5 model, read and written as a Hugging Face ``config.json``.

Every key of a Hugging Face T5 / mT5 / UMT5 config is a field here, with the defaults that old
configs imply when a key is absent (``feed_forward_proj`` -> relu, ``tie_word_embeddings`` -> true,
``relative_attention_max_distance`` -> 128). Keys t5kit does not use (``architectures``,
``task_specific_params``, ``transformers_version`` ...) are kept in ``extra`` and written back
unchanged, so a load-save round trip loses nothing.

Tying, and what ``transformers`` 5.x changed
---------------------------------------------
Two separate facts hide behind ``tie_word_embeddings`` in published checkpoints:

* whether ``lm_head`` shares the embedding matrix (``tie_word_embeddings`` here), and
* whether the decoder output is multiplied by ``d_model ** -0.5`` before the head
  (``scale_decoder_outputs`` here; ``None`` means "same as tie_word_embeddings", which is what
  every published checkpoint and every ``transformers`` 4.x save means).

``transformers`` 5.x always records ``"tie_word_embeddings": true`` and stores the rescaling as
``"scale_decoder_outputs": false`` for untied models, with a separate ``lm_head.weight`` in the file.
t5kit reads both spellings; ``checkpoint.py`` settles the sharing from what the file holds.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from t5kit.errors import ConfigError, closest_names
from t5kit.io import write_json

# Activation names accepted in ``feed_forward_proj`` ("gated-" prefix optional), mapped to the function
# t5kit uses. "gated-gelu" means the tanh approximation for historical reasons (transformers maps it to
# gelu_new); a plain "gelu" is the exact erf form.
ACTIVATIONS = ("relu", "gelu", "gelu_new", "gelu_pytorch_tanh", "silu", "swish")

# Keys of Hugging Face configs that t5kit understands but does not store as fields: they are derived.
_DERIVED_KEYS = {"dense_act_fn", "is_gated_act"}
# Generic keys of Hugging Face configs, kept in ``extra`` as they are (never mistaken for typos of T5 keys).
_GENERIC_HF_KEYS = {
    "bos_token_id", "sep_token_id", "cls_token_id", "mask_token_id", "unk_token_id", "n_positions", "output_past",
    "gradient_checkpointing", "torch_dtype", "dtype", "transformers_version", "architectures", "task_specific_params",
    "num_labels", "id2label", "label2id", "is_decoder", "tokenizer_class", "max_length", "min_length",
    "tie_encoder_decoder", "output_attentions", "output_hidden_states", "return_dict", "_name_or_path",
    "problem_type", "prefix", "decoder_end_token_id", "forced_eos_token_id", "forced_bos_token_id",
}


@dataclass
class T5Config:
    vocab_size: int = 32128
    d_model: int = 512
    d_kv: int = 64
    d_ff: int = 2048
    num_layers: int = 6
    num_decoder_layers: int | None = None
    num_heads: int = 8
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    initializer_factor: float = 1.0
    feed_forward_proj: str = "relu"
    tie_word_embeddings: bool = True
    scale_decoder_outputs: bool | None = None
    is_encoder_decoder: bool = True
    use_cache: bool = True
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0
    classifier_dropout: float = 0.0
    model_type: str = "t5"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        self._validate()

    # ------------------------------------------------------------------ derived facts
    @property
    def is_gated(self) -> bool:
        return self.feed_forward_proj.startswith("gated-")

    @property
    def activation(self) -> str:
        """The activation's canonical name: relu, gelu (erf), gelu_tanh or silu."""
        if self.feed_forward_proj == "gated-gelu":
            return "gelu_tanh"
        name = self.feed_forward_proj.split("-")[-1]
        return {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "swish": "silu"}.get(name, name)

    @property
    def rescale_decoder_output(self) -> bool:
        """Multiply the decoder output by d_model^-0.5 before the head (true for the original tied T5)."""
        if self.scale_decoder_outputs is None:
            return self.tie_word_embeddings
        return self.scale_decoder_outputs

    @property
    def per_layer_position_bias(self) -> bool:
        """UMT5 gives every self-attention layer its own position-bias table; T5 and mT5 only the first."""
        return self.model_type == "umt5"

    @property
    def inner_dim(self) -> int:
        return self.num_heads * self.d_kv

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        def check(name: str, kinds: tuple[type, ...], positive: bool = False, minimum: float | None = None):
            value = getattr(self, name)
            if isinstance(value, bool) and bool not in kinds:
                raise ConfigError(f"config key {name!r} must be {kinds[0].__name__}, got {value!r}")
            if not isinstance(value, kinds):
                names = " or ".join(k.__name__ for k in kinds)
                raise ConfigError(f"config key {name!r} must be {names}, got {type(value).__name__} {value!r}")
            if positive and value <= 0:
                raise ConfigError(f"config key {name!r} must be positive, got {value!r}")
            if minimum is not None and value < minimum:
                raise ConfigError(f"config key {name!r} must be >= {minimum}, got {value!r}")

        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_heads",
                     "relative_attention_num_buckets", "relative_attention_max_distance"):
            check(name, (int,), positive=True)
        for name in ("num_layers", "num_decoder_layers"):
            check(name, (int,), minimum=0)
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            check(name, (int,), minimum=0)
        for name in ("dropout_rate", "classifier_dropout"):
            check(name, (int, float), minimum=0)
            if getattr(self, name) >= 1:
                raise ConfigError(f"config key {name!r} must be below 1, got {getattr(self, name)!r}")
        check("layer_norm_epsilon", (int, float), positive=True)
        check("initializer_factor", (int, float), positive=True)
        for name in ("tie_word_embeddings", "is_encoder_decoder", "use_cache"):
            check(name, (bool,))
        if self.scale_decoder_outputs is not None:
            check("scale_decoder_outputs", (bool,))
        check("feed_forward_proj", (str,))
        parts = self.feed_forward_proj.split("-")
        if (len(parts) == 2 and parts[0] != "gated") or len(parts) > 2 or parts[-1] not in ACTIVATIONS:
            raise ConfigError(
                f"config key 'feed_forward_proj' has unknown value {self.feed_forward_proj!r}; "
                f"use one of 'relu', 'gated-gelu', 'gated-silu', 'gelu' or another of {ACTIVATIONS} "
                "with an optional 'gated-' prefix"
            )
        if self.model_type not in ("t5", "mt5", "umt5"):
            raise ConfigError(
                f"config key 'model_type' is {self.model_type!r}; t5kit reads 't5', 'mt5' and 'umt5' checkpoints"
            )
        if self.num_layers < 1 and self.num_decoder_layers < 1:
            raise ConfigError("config keys 'num_layers'/'num_decoder_layers' must give at least one layer")

    # ------------------------------------------------------------------ JSON in / out
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> T5Config:
        """Build from a ``config.json`` dict: known keys become fields, the rest is kept in ``extra``.

        A key that is not a T5 key but is one typo away from one (``d_modle``) is rejected rather than
        kept, since keeping it would silently build the wrong model.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"a T5 config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = dict(data.get("extra", {})) if isinstance(data.get("extra"), dict) else {}
        for key, value in data.items():
            if key == "extra":
                continue
            if key in known:
                kwargs[key] = value
            elif key in _DERIVED_KEYS:
                continue
            else:
                typo = closest_names(key, known, n=1)
                if typo and key not in _GENERIC_HF_KEYS and _is_typo(key, known):
                    raise ConfigError(f"unknown config key {key!r}.{typo}")
                extra[key] = value
        # Old configs without the key were relu, tied, max distance 128: the dataclass defaults.
        if kwargs.get("num_decoder_layers") is None:
            kwargs.pop("num_decoder_layers", None)
        if isinstance(kwargs.get("eos_token_id"), list):  # some configs list several ids; T5 uses the first
            extra["eos_token_id_list"] = kwargs["eos_token_id"]
            kwargs["eos_token_id"] = kwargs["eos_token_id"][0]
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict. Written so that both transformers 4.x and 5.x read it correctly."""
        out: dict[str, Any] = dict(self.extra)
        for f in dataclasses.fields(self):
            if f.name == "extra":
                continue
            out[f.name] = getattr(self, f.name)
        out.pop("eos_token_id_list", None)
        if "eos_token_id_list" in self.extra:
            out["eos_token_id"] = self.extra["eos_token_id_list"]
        out["scale_decoder_outputs"] = self.rescale_decoder_output
        out.setdefault("architectures", [_ARCHITECTURES[self.model_type]])
        # transformers 4.x and published checkpoints read tie_word_embeddings as "untied, no rescale";
        # a model whose head is untied but rescaled (or tied but not rescaled) is spelled out by
        # scale_decoder_outputs, which transformers 5.x reads.
        out["dense_act_fn"] = {"gelu_tanh": "gelu_new"}.get(self.activation, self.activation)
        out["is_gated_act"] = self.is_gated
        return out

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> T5Config:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.exists():
            raise ConfigError(
                f"no config.json at {path}: a T5 checkpoint directory needs config.json next to its weights "
                "(save one with T5Config(...).save_pretrained(dir) or copy it from the original checkpoint)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path} is not valid JSON ({err}); restore it from the original checkpoint") from err
        return cls.from_dict(data)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        return write_json(Path(directory) / "config.json", self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> T5Config:
        """A copy with some fields changed (validated like a new config)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            key = sorted(unknown)[0]
            names = [f.name for f in dataclasses.fields(self)]
            raise ConfigError(f"unknown config key {key!r}.{closest_names(key, names)}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> T5Config:
        """A named published shape (``t5-small``, ``flan-t5-base``, ``mt5-small``, ``tiny`` ...)."""
        key = name.split("/")[-1].lower().replace("t5-v1.1", "t5-v1_1")
        if key not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}.{closest_names(key, PRESETS)} Presets: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[key], **overrides})


def _is_typo(key: str, known: set[str]) -> bool:
    return bool(difflib.get_close_matches(key, list(known), n=1, cutoff=0.85))


_ARCHITECTURES = {"t5": "T5ForConditionalGeneration", "mt5": "MT5ForConditionalGeneration",
                  "umt5": "UMT5ForConditionalGeneration"}


def _v11(d_model: int, d_ff: int, layers: int, heads: int, vocab: int = 32128, model_type: str = "t5") -> dict:
    return dict(d_model=d_model, d_ff=d_ff, num_layers=layers, num_decoder_layers=layers, num_heads=heads, d_kv=64,
                vocab_size=vocab, feed_forward_proj="gated-gelu", tie_word_embeddings=False, model_type=model_type)


def _v10(d_model: int, d_ff: int, layers: int, heads: int, d_kv: int = 64) -> dict:
    return dict(d_model=d_model, d_ff=d_ff, num_layers=layers, num_decoder_layers=layers, num_heads=heads, d_kv=d_kv,
                vocab_size=32128, feed_forward_proj="relu", tie_word_embeddings=True)


_V11_SHAPES = {"small": (512, 1024, 8, 6), "base": (768, 2048, 12, 12), "large": (1024, 2816, 24, 16),
               "xl": (2048, 5120, 24, 32), "xxl": (4096, 10240, 24, 64)}

PRESETS: dict[str, dict[str, Any]] = {
    "t5-small": _v10(512, 2048, 6, 8),
    "t5-base": _v10(768, 3072, 12, 12),
    "t5-large": _v10(1024, 4096, 24, 16),
    "t5-3b": _v10(1024, 16384, 24, 32, d_kv=128),
    "t5-11b": _v10(1024, 65536, 24, 128, d_kv=128),
    **{f"t5-v1_1-{size}": _v11(*shape) for size, shape in _V11_SHAPES.items()},
    **{f"flan-t5-{size}": _v11(*shape) for size, shape in _V11_SHAPES.items()},
    **{f"mt5-{size}": _v11(*shape, vocab=250112, model_type="mt5") for size, shape in _V11_SHAPES.items()},
    **{f"umt5-{size}": _v11(*shape, vocab=256384, model_type="umt5") for size, shape in _V11_SHAPES.items()},
    "byt5-small": dict(d_model=1472, d_ff=3584, num_layers=12, num_decoder_layers=4, num_heads=6, d_kv=64,
                       vocab_size=384, feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    # For tests and examples: builds and runs in milliseconds on a CPU.
    "tiny": dict(d_model=64, d_ff=128, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16, vocab_size=32128,
                 feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0),
}
