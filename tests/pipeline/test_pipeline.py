"""The text pipeline (``t5kit.Generator``): texts in order across sorted batches, task prefixes from the
model's config and from the one registry, streaming through the one incremental detokenizer, and the
inference precision it applies (the converted model is the one that decodes, in its format).
"""

from __future__ import annotations

import pytest
import torch
from conftest import T5_VOCAB
from hf_models import build_hf_model, padded_batch

import t5kit
from t5kit import T5Model
from t5kit.data.prefixes import PREFIXES
from t5kit.generate import GenerationError, generate
from t5kit.kernels.inference.precision import PRECISIONS, PrecisionError, inference_model
from t5kit.pipeline import Generator, TextStream
from t5kit.tokenizer import ByteTokenizer

VOCAB = T5_VOCAB
MAX_NEW = 24



@pytest.fixture(scope="module")
def text_generator():
    assert (VOCAB / "spiece.model").is_file(), f"the T5 vocabulary is missing from {VOCAB}"
    from t5kit import T5Config
    from t5kit.tokenizer import Tokenizer

    torch.manual_seed(0)
    config = T5Config.from_preset("tiny", d_model=32, d_ff=48, num_heads=2, d_kv=16, num_decoder_layers=1,
                                  num_layers=1)
    config.extra["task_specific_params"] = {
        "summarization": {"early_stopping": True, "length_penalty": 2.0, "max_length": 9, "min_length": 4,
                          "no_repeat_ngram_size": 3, "num_beams": 2, "prefix": "summarize: "}}
    model = T5Model(config).eval()
    with torch.no_grad():
        model.lm_head.weight[1] *= 3.0
    return Generator(model, Tokenizer.from_pretrained(VOCAB))


def test_generator_texts_order_batching_and_tasks(text_generator):
    gen = text_generator
    texts = ["A long paragraph for summarization, with many words in it.", "Hello world", "Das Haus ist wunderbar.",
             "translate English to German: The house is wonderful."]
    results = gen.generate(texts, batch_size=2, max_new_tokens=10)
    one_by_one = [gen.generate(t, max_new_tokens=10)[0] for t in texts]
    assert [r.token_ids for r in results] == [r.token_ids for r in one_by_one]  # order kept across sorted batches
    for text, r in zip(texts, results):
        assert r.input_tokens == len(gen.tokenizer.encode(text))
        assert r.output_tokens == len(r.token_ids) and r.stop_reason in ("eos", "length")
        assert r.text == gen.tokenizer.decode(r.token_ids, skip_special_tokens=True)
        assert all(t < 32100 for t in r.token_ids)  # ids the tokenizer cannot decode are never produced
    prefix, options = gen.task_options("summarization")
    assert prefix == "summarize: " and options["num_beams"] == 2 and options["max_new_tokens"] == 8
    task = gen.generate(texts[0], task="summarization")[0]
    assert task.input_tokens == len(gen.tokenizer.encode("summarize: " + texts[0]))
    assert 4 <= task.output_tokens <= 8
    with pytest.raises(GenerationError, match="summarization"):
        gen.generate("x", task="summarisation")


def test_generator_stream_pieces_join_to_the_text(text_generator):
    gen = text_generator
    for text in ["Hello world", "translate English to German: The house is wonderful."]:
        pieces = list(gen.stream(text, max_new_tokens=16, suppress_tokens=[1]))
        full = gen.generate(text, max_new_tokens=16, suppress_tokens=[1])[0]
        assert "".join(pieces) == full.text
        assert len(pieces) > 3 and not pieces[0].startswith(" ")  # word starts become spaces, not the first


def test_generator_tasks_from_the_prefix_registry(text_generator):
    gen = text_generator
    assert gen.task_options("translate_en_de") == (PREFIXES["translate_en_de"], {})
    result = gen.generate("The house is wonderful.", task="translate_en_de", max_new_tokens=4)[0]
    assert result.input_tokens == len(gen.tokenizer.encode("translate English to German: The house is wonderful."))
    with pytest.raises(GenerationError, match="translate_en_de"):  # the closest names are suggested
        gen.task_options("translate_en_dee")


def test_top_level_names():
    assert t5kit.Generator is Generator and t5kit.Tokenizer.__name__ == "Tokenizer"


def test_text_stream_never_emits_half_a_character():
    """Byte-level ids (ByT5: byte + 3) of "é" come one byte at a time: nothing until the character is whole."""
    def decode(ids: list[int]) -> str:  # a decoder that shows an incomplete character as U+FFFD
        return bytes(i - 3 for i in ids).decode("utf-8", errors="replace")

    pieces = TextStream(decode)
    ids = [b + 3 for b in "aé€".encode()]
    emitted = [pieces.push(i) for i in ids]
    assert emitted == ["a", "", "é", "", "", "€"]
    assert pieces.finish() == ""
    tail = TextStream(decode)
    assert tail.push(ids[1]) == "" and tail.finish() == "\ufffd"  # an incomplete tail, decoded as it is


# ---------------------------------------------------------------------------------------------- precision


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> T5Model:
    """A random untied gated checkpoint with a boosted EOS row, so greedy outputs end at varied steps. Its
    300 ids hold every ASCII byte of ByT5's byte vocabulary, so a ByteTokenizer can drive it as text."""
    hf = build_hf_model("v1.1-gated-untied")
    with torch.no_grad():
        hf.lm_head.weight[1] *= 1.6
    directory = tmp_path_factory.mktemp("gated-untied")
    hf.save_pretrained(directory)
    return T5Model.from_pretrained(directory).eval()


def teacher_forced_logits(model, decoding_model, ids, mask):
    ref = generate(model, ids, mask, max_new_tokens=MAX_NEW, warn_on_length_limit=False)
    with torch.no_grad():
        a = model(input_ids=ids, attention_mask=mask, decoder_input_ids=ref.sequences[:, :-1]).logits.float()
        b = decoding_model(input_ids=ids, attention_mask=mask, decoder_input_ids=ref.sequences[:, :-1]).logits.float()
    valid = torch.zeros(a.shape[:2], dtype=torch.bool)
    for i, n in enumerate(ref.num_new_tokens):
        valid[i, :n] = True
    return a[valid], b[valid]


@pytest.mark.parametrize("precision,threshold", [("bf16", 0.9), ("fp16w", 0.9), ("int8", 0.9)])
def test_low_precision_mostly_agrees_with_fp32(model, precision, threshold):
    """Teacher-forced next-token agreement with fp32 over the fp32 greedy outputs is at least 90%
    (the untied random head gives well-separated logits)."""
    ids, mask, _ = padded_batch(model.config.vocab_size, batch=3)
    low = inference_model(model, precision)
    assert inference_model(model, precision) is low  # converted once
    a, b = teacher_forced_logits(model, low, ids, mask)
    agreement = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    assert agreement >= threshold, agreement


BF16_UNIT_ROUNDOFF = 2.0 ** -8  # 8 significant bits: one rounding changes a value by at most this, relatively
INT8_ROUNDING = 0.01  # one int8 rounding of a Gaussian tensor, relative to its rms (see below)
FP16_UNIT_ROUNDOFF = 2.0 ** -11  # fp16w rounds the weights only (activations and sums stay fp32)


def relative_error_bound(model: T5Model, precision: str) -> float:
    """An upper bound on ||logits_low - logits_fp32|| / ||logits_fp32||, from the formats' precision.

    At first order the relative errors of successive blocks add; the blocks are the encoder and decoder
    layers plus the embedding and the head. bf16 rounds a block's input, weights and output (3 roundings of
    at most 2^-8 each). int8 (dynamic quantization) rounds each Linear's weights to 255 levels over +-max
    and its input to 256 levels over [min, max]; a level step s leaves an error of rms s / sqrt(12), and
    these Gaussian tensors span about 8 rms, so one rounding is about 8 / 255 / 3.46 = 0.9% of the rms;
    two per block (per-channel weight scales only make the weight steps smaller). fp16w rounds each
    block's weights once, by at most 2^-11. For this 2 + 2 layer model: 0.070 (bf16), 0.0029 (fp16w) and
    0.12 (int8); measured 0.010, 0.0005 and 0.043.
    """
    blocks = model.config.num_layers + model.config.num_decoder_layers + 2
    per_block = {"bf16": 3 * BF16_UNIT_ROUNDOFF, "fp16w": FP16_UNIT_ROUNDOFF}.get(precision, 2 * INT8_ROUNDING)
    return blocks * per_block


@pytest.mark.parametrize("precision", ["bf16", "fp16w", "int8"])
def test_low_precision_logits_differ_within_the_formats_precision(model, precision):
    """The converted copy really computes in its format: its logits differ from fp32's (a copy that ignored
    the precision would give exactly fp32's), and by no more than the format's rounding explains."""
    ids, mask, _ = padded_batch(model.config.vocab_size, batch=3)
    a, b = teacher_forced_logits(model, inference_model(model, precision), ids, mask)
    relative = ((a - b).norm() / a.norm()).item()
    assert relative > 2.0 ** -16, relative  # far above float32 rounding (2^-24), far below the formats'
    assert relative < relative_error_bound(model, precision), relative


def test_precision_copies_are_in_their_format_and_leave_the_model_alone(model):
    from torch import nn

    from t5kit.kernels import installed
    from t5kit.kernels.inference.linear import BackendLinear

    linears = [name for name, m in model.named_modules() if type(m) is nn.Linear and name != "lm_head"]
    assert linears
    bf16 = inference_model(model, "bf16")
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    for precision, stored in (("fp16w", "fp16"), ("int8", "int8")):
        copy = inference_model(model, precision)
        for name in linears:  # the format's copy of the weight, the fp32 weight dropped
            layer = copy.get_submodule(name)
            assert type(layer) is BackendLinear and layer.storages() == (stored,) and layer.weight.numel() == 0
            held = layer.weight_int8.dequantize() if stored == "int8" else layer.weight_fp16.float()
            original = model.get_submodule(name).weight
            # rounding moves a weight by half a step: int8's step is max |row| / 127; fp16's is 2^-10 relative
            # (11 significant bits), and 2^-24 absolute below its smallest normal number (subnormals)
            step = original.abs().amax(1, keepdim=True) / 127 if stored == "int8" else original.abs() * 2**-10 + 2**-24
            assert ((held - original).abs() <= step / 2 * (1 + 1e-6)).all()
        # the head keeps its fp32 weight beside the copy: the backend takes whichever is faster per row count
        assert copy.lm_head.storages() == (stored, "fp32") and copy.lm_head.weight.dtype == torch.float32
        assert "InferenceRMSNorm" in installed(copy)
    assert "InferenceRMSNorm" in installed(bf16)  # the inference kernels come with the copy
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert all(type(model.get_submodule(name)) is nn.Linear for name in linears) and not installed(model)
    assert inference_model(model, "fp32") is model


@pytest.mark.filterwarnings("ignore::t5kit.generate.LengthLimitWarning")
@pytest.mark.parametrize("precision", PRECISIONS)
def test_generator_decodes_with_the_converted_model(model, precision):
    """``Generator(..., precision=)`` decodes with that precision's copy: its decode steps run, the fp32
    model's do not, and the texts are those of searching the copy directly."""
    tokenizer = ByteTokenizer()
    gen = Generator(model, tokenizer, precision=precision)
    decoding = gen.decoding_model
    assert decoding is inference_model(model, precision)
    assert (decoding is model) == (precision == "fp32")
    texts = ["hello world", "a longer line of plain text"]
    ids = [tokenizer.encode(t, add_eos=True) for t in texts]
    expected = [generate(decoding, torch.tensor([row]), max_new_tokens=MAX_NEW, warn_on_length_limit=False)
                for row in ids]
    steps: list[str] = []

    def spy(owner, label):
        original = owner.decode_step

        def decode_step(tokens, cache):
            steps.append(label)
            return original(tokens, cache)

        owner.decode_step = decode_step

    spy(decoding, precision)
    if decoding is not model:
        spy(model, "fp32 original")
    try:
        results = gen.generate(texts, batch_size=1, max_new_tokens=MAX_NEW)  # int8 quantizes per batch
        streamed = "".join(gen.stream(texts[0], max_new_tokens=MAX_NEW))
    finally:
        del decoding.decode_step
        model.__dict__.pop("decode_step", None)
    assert steps and set(steps) == {precision}
    for result, out in zip(results, expected):
        assert result.token_ids == out.sequences[0, 1: 1 + out.num_new_tokens[0]].tolist()
    assert streamed == results[0].text
    with pytest.raises(PrecisionError, match="fp32, bf16, fp16w, int8"):
        Generator(model, tokenizer, precision="fp8")
