"""``t5kit.tokenizer.byte.ByteTokenizer`` against ``transformers``' ``ByT5Tokenizer``."""

from __future__ import annotations

import pytest
from tokenizer_references import real_texts

from t5kit.errors import TokenizerError
from t5kit.tokenizer import ByteTokenizer, load_tokenizer


def test_byte_tokenizer_matches_transformers_byt5(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.ByT5Tokenizer()
    ours = ByteTokenizer()
    assert ours.vocab_size == len(hf) == 384
    assert ours.sentinel_id(0) == hf.convert_tokens_to_ids("<extra_id_0>")
    assert ours.sentinel_id(124) == hf.convert_tokens_to_ids("<extra_id_124>")
    texts = real_texts()[::5]
    texts += ["a <extra_id_0> b<extra_id_1>", "x </s> y", "<pad>z <unk> w", "é😀", ""]
    texts = [t for t in texts if not t.endswith("</s>")]
    theirs = hf(texts)["input_ids"]
    mine = ours.batch_encode(texts)
    assert sum(a != b for a, b in zip(mine, theirs)) == 0
    assert mine[-2] == [b + 3 for b in "é😀".encode()] + [1]
    for ids in mine[:300] + mine[-5:]:
        assert ours.decode(ids) == hf.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)
    ours.save_pretrained(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)
    assert transformers.AutoTokenizer.from_pretrained(str(tmp_path))("hé")["input_ids"] == ours.encode("hé")
    with pytest.raises(TokenizerError):
        ours.decode([384])
