"""The one Hugging Face <-> t5kit name table: every rule both ways, and every family's names round trip."""

from __future__ import annotations

import itertools
import string

import pytest
from hf_models import FAMILIES, build_hf_model

from t5kit import T5Config, T5Model
from t5kit.checkpoint import names
from t5kit.checkpoint.names import ALIAS_KEYS, FIELDS, IGNORED_KEYS, RULES, hf_to_t5kit_name, t5kit_to_hf_name

# One written-out example per rule, in the order of RULES: what the table must give in each direction.
EXAMPLES = [
    ("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
     "encoder.layers.0.self_attn.relative_bias.weight"),
    ("decoder.block.11.layer.0.SelfAttention.q.weight", "decoder.layers.11.self_attn.q.weight"),
    ("decoder.block.2.layer.0.layer_norm.weight", "decoder.layers.2.self_attn_norm.weight"),
    ("encoder.block.5.layer.1.DenseReluDense.wi_1.weight", "encoder.layers.5.ffn.wi_1.weight"),
    ("encoder.block.5.layer.1.layer_norm.weight", "encoder.layers.5.ffn_norm.weight"),
    ("decoder.block.3.layer.1.EncDecAttention.o.weight", "decoder.layers.3.cross_attn.o.weight"),
    ("decoder.block.3.layer.1.layer_norm.weight", "decoder.layers.3.cross_attn_norm.weight"),
    ("decoder.block.7.layer.2.DenseReluDense.wo.weight", "decoder.layers.7.ffn.wo.weight"),
    ("decoder.block.7.layer.2.layer_norm.weight", "decoder.layers.7.ffn_norm.weight"),
    ("encoder.final_layer_norm.weight", "encoder.final_norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
]


def test_one_example_per_rule():
    assert len(EXAMPLES) == len(RULES)


@pytest.mark.parametrize(("hf", "ours"), EXAMPLES, ids=[hf for hf, _ in EXAMPLES])
def test_every_rule_both_ways(hf, ours):
    assert hf_to_t5kit_name(hf) == ours
    assert t5kit_to_hf_name(ours) == hf


def _filled(template: str) -> list[tuple[dict[str, str], str]]:
    """Every name a template produces (layer indices 0, 1 and 23), with the field values used."""
    names = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    choices = [("0", "1", "23") if isinstance(FIELDS[n], str) else FIELDS[n] for n in names]
    return [(dict(zip(names, values)), template.format(**dict(zip(names, values))))
            for values in itertools.product(*choices)]


def test_every_filled_rule_round_trips_and_matches_one_rule_only():
    """The reverse is derived, not a second copy: each direction inverts the other on every name a rule
    can produce, and no name is claimed by two rules (the first match would silently win)."""
    count = 0
    for hf_template, ours_template in RULES:
        for values, hf in _filled(hf_template):
            ours = ours_template.format(**values)
            assert hf_to_t5kit_name(hf) == ours and t5kit_to_hf_name(ours) == hf
            assert len([p for p, _ in names._HF_TO_T5KIT if p.fullmatch(hf)]) == 1, hf
            assert len([p for p, _ in names._T5KIT_TO_HF if p.fullmatch(ours)]) == 1, ours
            count += 1
    assert count == 85  # 11 rules over 2 stacks, 3 indices, 4 projections, 4 feed-forward matrices, 2 matrices


@pytest.mark.parametrize("name", [
    "encoder.block.0.layer.2.DenseReluDense.wo.weight",  # the encoder has no third sub-layer
    "encoder.block.0.layer.1.EncDecAttention.q.weight",  # nor cross-attention
    "decoder.block.x.layer.0.layer_norm.weight",
    "encoder.block.0.layer.0.SelfAttention.bias",
    "encoder.block.0.layer.0.layer_norm.weightx",
    "prefix.shared.weight",
])
def test_names_outside_the_table(name):
    assert hf_to_t5kit_name(name) is None


def test_unknown_t5kit_name_raises():
    with pytest.raises(KeyError, match="no Hugging Face name for parameter 'decoder.layers.0.ffn_norm.bias'"):
        t5kit_to_hf_name("decoder.layers.0.ffn_norm.bias")


@pytest.mark.parametrize("family", list(FAMILIES))
def test_round_trip_over_every_parameter_of_each_family(family, tmp_path):
    hf = build_hf_model(family)
    hf.config.save_pretrained(tmp_path)
    ours = T5Model(T5Config.from_json_file(tmp_path))
    hf_names = {n for n in hf.state_dict() if n not in IGNORED_KEYS and n not in ALIAS_KEYS}
    our_names = set(ours.state_dict())  # the tied head included: it has a name of its own in both layouts
    assert {hf_to_t5kit_name(n) for n in hf_names} == our_names, family
    assert {t5kit_to_hf_name(n) for n in our_names} == hf_names, family
    assert all(t5kit_to_hf_name(hf_to_t5kit_name(n)) == n for n in hf_names)
