"""The one table between Hugging Face tensor names and t5kit parameter names, read in both directions.

Each rule is written once, as a pair of templates with named fields (``{stack}``, ``{i}`` ...), each field
with the values it may take. Both directions are compiled from the same pairs, so a rule added or fixed
here holds for loading and for saving alike (the two hand-written regex lists this replaces had to be kept
in step by hand). A rule whose two templates do not name the same fields fails at import.
"""

from __future__ import annotations

import re
import string

# The values each field may take: a tuple of literal words, or a regex.
FIELDS: dict[str, tuple[str, ...] | str] = {
    "stack": ("encoder", "decoder"),
    "i": r"\d+",
    "proj": ("q", "k", "v", "o"),
    "ffn": ("wi", "wi_0", "wi_1", "wo"),
    "matrix": ("shared", "lm_head"),
}

# (Hugging Face template, t5kit template).
RULES: tuple[tuple[str, str], ...] = (
    ("{stack}.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight",
     "{stack}.layers.{i}.self_attn.relative_bias.weight"),
    ("{stack}.block.{i}.layer.0.SelfAttention.{proj}.weight", "{stack}.layers.{i}.self_attn.{proj}.weight"),
    ("{stack}.block.{i}.layer.0.layer_norm.weight", "{stack}.layers.{i}.self_attn_norm.weight"),
    ("encoder.block.{i}.layer.1.DenseReluDense.{ffn}.weight", "encoder.layers.{i}.ffn.{ffn}.weight"),
    ("encoder.block.{i}.layer.1.layer_norm.weight", "encoder.layers.{i}.ffn_norm.weight"),
    ("decoder.block.{i}.layer.1.EncDecAttention.{proj}.weight", "decoder.layers.{i}.cross_attn.{proj}.weight"),
    ("decoder.block.{i}.layer.1.layer_norm.weight", "decoder.layers.{i}.cross_attn_norm.weight"),
    ("decoder.block.{i}.layer.2.DenseReluDense.{ffn}.weight", "decoder.layers.{i}.ffn.{ffn}.weight"),
    ("decoder.block.{i}.layer.2.layer_norm.weight", "decoder.layers.{i}.ffn_norm.weight"),
    ("{stack}.final_layer_norm.weight", "{stack}.final_norm.weight"),
    ("{matrix}.weight", "{matrix}.weight"),
)

# Tensors that published checkpoints carry but the model does not use (an unused cross-attention table
# that old transformers versions saved).
IGNORED_KEYS = frozenset({"decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"})
# Copies of ``shared.weight`` that Hugging Face files may hold under other names.
ALIAS_KEYS = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def _fields(template: str) -> list[str]:
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def _compile(template: str) -> re.Pattern[str]:
    """The regex matching exactly the names a template can produce, one named group per field."""
    parts = []
    for literal, name, _, _ in string.Formatter().parse(template):
        parts.append(re.escape(literal))
        if name:
            values = FIELDS[name]
            alternatives = values if isinstance(values, str) else "|".join(map(re.escape, values))
            parts.append(f"(?P<{name}>{alternatives})")
    return re.compile("".join(parts))


def _direction(source: int) -> list[tuple[re.Pattern[str], str]]:
    table = []
    for rule in RULES:
        if sorted(_fields(rule[0])) != sorted(_fields(rule[1])):  # pragma: no cover - a mistake in RULES
            raise AssertionError(f"name rule {rule} does not use the same fields on both sides")
        table.append((_compile(rule[source]), rule[1 - source]))
    return table


_HF_TO_T5KIT = _direction(0)
_T5KIT_TO_HF = _direction(1)


def _rename(name: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, target in table:
        match = pattern.fullmatch(name)
        if match:
            return target.format(**match.groupdict())
    return None


def hf_to_t5kit_name(name: str) -> str | None:
    """The t5kit parameter name of a Hugging Face key, or None if the key is not a T5 parameter."""
    return _rename(name, _HF_TO_T5KIT)


def t5kit_to_hf_name(name: str) -> str:
    """The Hugging Face key of a t5kit parameter name (KeyError for a name the table does not know)."""
    hf = _rename(name, _T5KIT_TO_HF)
    if hf is None:
        raise KeyError(f"no Hugging Face name for parameter {name!r}")
    return hf
