"""The model against `transformers` on random checkpoints of every family, built here.

Tolerances are grounded in the numerics, not tuned to one CPU (a fixed 1e-5 on logits of size ~10 is a few
float32 ulps and moves with the GEMM kernels of the machine):
- against transformers: t5kit in float32 / bfloat16 / float16 is no further from transformers in float64
  than twice transformers' own error in the same precision, plus 4 ulps of the values' size
  (``assert_as_accurate_as_reference``);
- t5kit against itself (cached vs full decoding, packed vs alone, reordered cache rows): the same weights
  and arithmetic in another order, within ``SAME_MATH_ULPS`` float32 ulps of the values' largest size.
"""

from __future__ import annotations

import pytest
import torch
from hf_models import FAMILIES, assert_as_accurate_as_reference, build_hf_model, float64_twin, padded_batch

from t5kit import T5Config, T5Model
from t5kit.kernels import install
from t5kit.model import relative_position_bucket, shift_right

EPS32 = torch.finfo(torch.float32).eps
# The same computation in another order (SDPA vs two matmuls, other batch shapes): measured on an Intel Xeon
# (AMX) within 0-4.7 ulps of the largest logit; 32 leaves room for AVX2's other summation order.
SAME_MATH_ULPS = 32


def _same_math_bound(reference: torch.Tensor) -> float:
    return SAME_MATH_ULPS * EPS32 * float(reference.abs().max())


def _match_transformers(model, hf, ids, mask, labels, what: str, encoder: bool = False) -> None:
    """t5kit's logits and loss (and encoder states) as accurate as transformers' in the same precision."""
    exact = float64_twin(hf)
    with torch.no_grad():
        ours = model(input_ids=ids, attention_mask=mask, labels=labels)
        theirs = hf(input_ids=ids, attention_mask=mask, labels=labels)
        reference = exact(input_ids=ids, attention_mask=mask, labels=labels)
        assert theirs.logits.std() > 0.1  # the comparison is not of near-constant numbers
        assert_as_accurate_as_reference(ours.logits, theirs.logits, reference.logits, f"{what} logits")
        assert_as_accurate_as_reference(ours.loss, theirs.loss, reference.loss, f"{what} loss")
        if encoder:
            assert_as_accurate_as_reference(
                model.encode(ids, mask), hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state,
                exact.encoder(input_ids=ids, attention_mask=mask).last_hidden_state, f"{what} encoder states")


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_checkpoint(request, tmp_path_factory):
    """(family, transformers model, its saved directory)."""
    hf = build_hf_model(request.param)
    directory = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(directory)
    return request.param, hf, directory


def test_bucket_reference_points():
    rel = torch.arange(-200, 201)
    bi = dict(zip(rel.tolist(), relative_position_bucket(rel, bidirectional=True).tolist()))
    causal = dict(zip(rel.tolist(), relative_position_bucket(rel, bidirectional=False).tolist()))
    for r in range(-7, 1):
        assert bi[r] == -r
    assert all(bi[r] == 8 for r in range(-11, -7))
    assert all(bi[r] == 15 for r in range(-200, -90))
    assert [bi[r] for r in range(1, 8)] == list(range(17, 24))
    assert all(bi[r] == 24 for r in range(8, 12))
    assert all(bi[r] == 31 for r in range(91, 201))
    assert bi[-90] == 14 and bi[90] == 30
    for r in range(-15, 1):
        assert causal[r] == -r
    assert all(causal[r] == 16 for r in (-18, -17, -16))
    assert all(causal[r] == 31 for r in range(-200, -112))
    assert causal[-112] == 30
    assert all(causal[r] == 0 for r in range(1, 50))


def test_bucket_matches_transformers_everywhere():
    from transformers.models.t5.modeling_t5 import T5Attention

    rel = torch.arange(-600, 601)[None, :]
    for bidirectional in (True, False):
        for buckets, distance in ((32, 128), (16, 40), (64, 256)):
            ref = T5Attention._relative_position_bucket(rel, bidirectional, buckets, distance)
            assert torch.equal(relative_position_bucket(rel, bidirectional, buckets, distance), ref)


def test_t5_small_parameter_count():
    with torch.device("meta"):
        model = T5Model.from_preset("t5-small")
    assert model.num_parameters() == 60_506_624
    assert model.num_parameters(unique=False) == 76_956_160


def test_logits_loss_and_encoder_states_match_transformers(family_checkpoint):
    family, hf, directory = family_checkpoint
    model = T5Model.from_pretrained(directory)
    ids, mask, labels = padded_batch(hf.config.vocab_size)
    _match_transformers(model, hf, ids, mask, labels, family, encoder=True)
    assert model.tied == (family == "v1.0-relu-tied")


@pytest.mark.parametrize("kernels", [False, True], ids=["plain", "kernels"])
def test_gradients_match_transformers(family_checkpoint, kernels):
    """Training gradients of the plain model, and of the model with the CPU training kernels installed (a tied
    model then takes the in-place embedding gradient), against transformers' with dropout off."""
    family, hf, directory = family_checkpoint
    model = T5Model.from_pretrained(directory)
    if kernels:
        install(model)
    model.train()
    model.set_dropout(0.0)
    ids, mask, labels = padded_batch(hf.config.vocab_size)
    hf.zero_grad()
    hf(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    pairs = [
        (hf.shared.weight.grad, model.shared.weight.grad),
        (hf.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.grad,
         model.encoder.layers[0].self_attn.relative_bias.weight.grad),
        (hf.decoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.grad,
         model.decoder.layers[0].self_attn.relative_bias.weight.grad),
        (hf.encoder.block[-1].layer[-1].DenseReluDense.wo.weight.grad, model.encoder.layers[-1].ffn.wo.weight.grad),
    ]
    for ref, ours in pairs:
        assert ref.abs().max() > 0
        assert (ref - ours).abs().max() <= 1e-5 * max(1.0, ref.abs().max().item()), family
    hf.zero_grad()


def test_transformers_loads_what_t5kit_saves(family_checkpoint, tmp_path):
    family, hf, directory = family_checkpoint
    model = T5Model.from_pretrained(directory)
    model.save_pretrained(tmp_path)
    reloaded = type(hf).from_pretrained(tmp_path).eval()
    ids, mask, labels = padded_batch(hf.config.vocab_size, seed=5)
    _match_transformers(model, reloaded, ids, mask, labels, family)


@pytest.mark.parametrize("kernels", [False, True], ids=["plain", "kernels"])
def test_cached_decoding_equals_full_pass(family_checkpoint, kernels):
    """Decoding with the cache, one position at a time (also with the inference kernels installed), gives the
    full teacher-forced pass's logits."""
    family, _, directory = family_checkpoint
    model = T5Model.from_pretrained(directory)
    if kernels:
        install(model, "inference")
    ids, mask, labels = padded_batch(model.config.vocab_size, target=30)
    decoder_ids = shift_right(labels)
    with torch.no_grad():
        enc = model.encode(ids, mask)
        full = model(decoder_input_ids=decoder_ids, attention_mask=mask, encoder_hidden_states=enc).logits
        cache = model.new_cache(enc, mask, max_length=40)
        pieces = [model.decode_step(decoder_ids[:, :4], cache)]  # a multi-token prefix, then one at a time
        for t in range(4, decoder_ids.shape[1]):
            pieces.append(model.decode_step(decoder_ids[:, t : t + 1], cache))
        assert cache.length == decoder_ids.shape[1]
        # Reordering the batch (as beam search does) keeps each row's state.
        order = torch.tensor([2, 0, 1])
        reordered = cache.select(order)
        nxt = torch.full((3, 1), 7)
        a = model.decode_step(nxt, reordered)
        b = model.decode_step(nxt, cache)[order]
    assert (torch.cat(pieces, 1) - full).abs().max() <= _same_math_bound(full), family
    assert (a - b).abs().max() <= _same_math_bound(b)


def test_published_and_transformers5_tie_spellings(tmp_path):
    """A v1.1-style untied model read from the published spelling and from transformers 5.x's spelling."""
    import json

    hf = build_hf_model("v1.1-gated-untied")
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is True and cfg["scale_decoder_outputs"] is False  # 5.x spelling
    ids, mask, labels = padded_batch(hf.config.vocab_size)
    _match_transformers(T5Model.from_pretrained(tmp_path), hf, ids, mask, labels, "transformers 5.x spelling")
    cfg.pop("scale_decoder_outputs")
    cfg["tie_word_embeddings"] = False  # the published spelling
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    published = T5Model.from_pretrained(tmp_path)
    assert not published.tied and not published.config.rescale_decoder_output
    _match_transformers(published, hf, ids, mask, labels, "published spelling")


def test_bf16_and_fp16(family_checkpoint):
    """In bfloat16 and float16, t5kit is as accurate as transformers run in the same precision."""
    import copy

    family, hf, directory = family_checkpoint
    ids, mask, labels = padded_batch(hf.config.vocab_size)
    exact = float64_twin(hf)
    with torch.no_grad():
        reference = exact(input_ids=ids, attention_mask=mask, labels=labels)
        for dtype in (torch.bfloat16, torch.float16):
            model = T5Model.from_pretrained(directory, dtype=dtype)
            assert model.dtype == dtype
            if dtype == torch.float16:
                assert model.encoder.layers[0].ffn.wo.weight.dtype == torch.float32
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            theirs = copy.deepcopy(hf).to(dtype)(input_ids=ids, attention_mask=mask, labels=labels)
            assert out.logits.dtype == dtype
            assert torch.isfinite(out.logits).all()
            assert_as_accurate_as_reference(out.logits, theirs.logits, reference.logits, f"{family} {dtype}")
            assert_as_accurate_as_reference(out.loss, theirs.loss, reference.loss, f"{family} {dtype} loss")


def test_fp16_stays_finite_when_activations_overflow():
    torch.manual_seed(0)
    model = T5Model(T5Config.from_preset("tiny", vocab_size=100))
    with torch.no_grad():
        for layer in model.encoder.layers:
            layer.ffn.wo.weight.mul_(3000.0)  # FFN outputs far beyond 65504
    model.set_dtype(torch.float16)
    ids = torch.randint(3, 100, (2, 9))
    with torch.no_grad():
        out = model(input_ids=ids, labels=ids)
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)


def test_train_mode_dropout_is_active_and_eval_is_deterministic():
    torch.manual_seed(0)
    model = T5Model(T5Config.from_preset("tiny", vocab_size=100, dropout_rate=0.3))
    ids = torch.randint(3, 100, (2, 9))
    model.train()
    a, b = model(input_ids=ids, labels=ids).loss, model(input_ids=ids, labels=ids).loss
    assert a.item() != b.item()
    model.eval()
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).loss.item() == model(input_ids=ids, labels=ids).loss.item()


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    c = T5Config.from_preset("tiny", d_model=256, d_ff=1024, num_heads=4, d_kv=64, vocab_size=2000)
    model = T5Model(c)
    attn = model.encoder.layers[0].self_attn
    assert attn.q.weight.std().item() == pytest.approx((c.d_model * c.d_kv) ** -0.5, rel=0.05)
    assert attn.k.weight.std().item() == pytest.approx(c.d_model**-0.5, rel=0.05)
    assert attn.o.weight.std().item() == pytest.approx(c.inner_dim**-0.5, rel=0.05)
    assert model.encoder.layers[0].ffn.wo.weight.std().item() == pytest.approx(c.d_ff**-0.5, rel=0.05)
    assert model.shared.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert model.encoder.final_norm.weight.eq(1).all()


def test_bad_ids_give_clear_errors():
    model = T5Model(T5Config.from_preset("tiny", vocab_size=100))
    with pytest.raises(ValueError, match=r"outside \[0, 100\)"):
        model(input_ids=torch.tensor([[5, 100]]), labels=torch.tensor([[1]]))
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.tensor([5, 6]))
    with pytest.raises(TypeError, match="integer"):
        model.encode(torch.tensor([[0.5]]))


@pytest.mark.parametrize("preset_family", ["v1.0-relu-tied", "umt5-per-layer-bias"])
def test_packed_examples_match_the_same_examples_alone(preset_family, tmp_path):
    """With segment ids and positions, a packed example attends only to itself and gets its own logits."""
    from t5kit.data import Collator

    hf = build_hf_model(preset_family)
    hf.save_pretrained(tmp_path)
    model = T5Model.from_pretrained(tmp_path)
    g = torch.Generator().manual_seed(3)
    examples = [{"inputs": torch.randint(3, 300, (n,), generator=g).tolist() + [1],
                 "targets": torch.randint(3, 300, (m,), generator=g).tolist() + [1]}
                for n, m in ((5, 3), (11, 6), (3, 2), (20, 9), (7, 4))]
    packed = Collator(pack=True, inputs_length=40, targets_length=16)(examples)
    assert packed["input_ids"].shape[0] < len(examples)  # several examples really share rows
    with torch.no_grad():
        out = model(**packed)
        seen = 0
        for row in range(packed["input_ids"].shape[0]):
            for segment in packed["decoder_segment_ids"][row].unique().tolist():
                if segment == 0:
                    continue
                where = packed["decoder_segment_ids"][row] == segment
                labels = packed["labels"][row][where]
                example = next(e for e in examples if e["targets"] == labels.tolist())
                alone = model(input_ids=torch.tensor([example["inputs"]]), labels=torch.tensor([example["targets"]]))
                assert (out.logits[row][where] - alone.logits[0]).abs().max() <= _same_math_bound(alone.logits)
                seen += 1
        assert seen == len(examples)
        # Without the segment ids the examples would see each other: the logits differ.
        leaky = model(input_ids=packed["input_ids"], attention_mask=packed["attention_mask"],
                      decoder_input_ids=packed["decoder_input_ids"]).logits
        assert (leaky - out.logits).abs().max() > 1e-3
    with pytest.raises(ValueError, match="packed batches need"):
        model(input_ids=packed["input_ids"], labels=packed["labels"], encoder_segment_ids=packed["encoder_segment_ids"])
