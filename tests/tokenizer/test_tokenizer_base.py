"""``t5kit.tokenizer.base``: batches (padding, labels, truncation) and input checking, on the T5 vocabulary,
against ``transformers``."""

from __future__ import annotations

import pytest
from tokenizer_references import hf_t5, plain_texts, tok

from t5kit.errors import TokenizerError


def test_batch_call_padding_labels_and_truncation():
    torch = pytest.importorskip("torch")
    hf = hf_t5()
    t = tok()
    texts = plain_texts()[100:164]
    targets = plain_texts()[200:264]
    batch = t(texts, text_target=targets)
    ref = hf(texts, text_target=targets, padding=True, return_tensors="pt")
    assert torch.equal(batch["input_ids"], ref["input_ids"])
    assert torch.equal(batch["attention_mask"], ref["attention_mask"])
    ref_labels = hf(targets, padding=True, return_tensors="pt")
    expected_labels = ref_labels["input_ids"].masked_fill(ref_labels["attention_mask"] == 0, -100)
    assert torch.equal(batch["labels"], expected_labels)
    assert batch.input_ids is batch["input_ids"] and set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch.truncated == [False] * len(texts)

    lists = t(["Hello world", "Das Haus ist wunderbar."], padding="max_length", max_length=8, return_tensors=None)
    assert lists["input_ids"] == [[8774, 296, 1, 0, 0, 0, 0, 0], [644, 4598, 229, 19250, 5, 1, 0, 0]]
    assert lists["attention_mask"][0] == [1, 1, 1, 0, 0, 0, 0, 0]

    long_text = "translate English to German: The house is wonderful."
    with pytest.raises(TokenizerError, match=r"11 tokens long, more than max_length=5"):
        t([long_text], max_length=5)
    with pytest.raises(TokenizerError, match="max_length"):
        t.encode(long_text, max_length=5)
    cut = t([long_text, "Hello world"], max_length=5, truncation=True)
    assert cut["input_ids"].tolist() == [[13959, 1566, 12, 2968, 1], [8774, 296, 1, 0, 0]]
    assert cut.truncated == [True, False]
    assert t.encode(long_text, max_length=5, truncation=True) == [13959, 1566, 12, 2968, 1]
    hf_cut = hf([long_text], max_length=5, truncation=True)["input_ids"]
    assert hf_cut == [[13959, 1566, 12, 2968, 1]]
    with pytest.raises(TokenizerError, match="padding=True"):
        t(["a", "a b c d"], padding=False)


def test_bad_input_raises_clear_errors():
    t = tok()
    for bad in (None, 3, b"bytes", ["ok", 4]):
        with pytest.raises(TokenizerError, match="string"):
            t.encode(bad) if not isinstance(bad, list) else t.batch_encode(bad)
    with pytest.raises(TokenizerError, match=r"text_target\[1\]"):
        t(["a", "b"], text_target=["a", None])
    with pytest.raises(TokenizerError, match="id 32100 is out of range"):
        t.decode([8774, 32100])
    with pytest.raises(TokenizerError, match="-100 is label padding"):
        t.decode([8774, -100])
    with pytest.raises(TokenizerError, match="ints"):
        t.decode([8774, "x"])
