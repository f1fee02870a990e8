"""``t5kit.tokenizer.convert``: a T5 tokenizer rebuilt from ``tokenizer.json`` alone encodes as SentencePiece."""

from __future__ import annotations

import shutil

from sentencepiece import sentencepiece_model_pb2 as pb
from tokenizer_references import TOKENIZER_JSON, VOCAB, plain_texts, spm

from t5kit.tokenizer import Tokenizer, load_tokenizer
from t5kit.tokenizer.convert import proto_from_tokenizer_json


def test_tokenizer_json_without_spiece_model(tmp_path):
    shutil.copy(TOKENIZER_JSON, tmp_path / "tokenizer.json")
    from_json = Tokenizer.from_pretrained(tmp_path)
    assert (from_json.vocab_size, from_json.num_sentinels) == (32100, 100)
    texts = plain_texts()
    assert from_json.batch_encode(texts) == [x + [1] for x in spm().encode(texts)]
    assert isinstance(load_tokenizer(tmp_path), Tokenizer)


def test_tokenizer_json_rebuilds_the_pieces_and_normaliser_of_spiece_model():
    """Read back with SentencePiece's own schema: every piece, score and type, and the normaliser (its charsmap
    included), equal those of the T5 spiece.model; the special ids are T5's."""
    proto, sentinels = proto_from_tokenizer_json(TOKENIZER_JSON)
    rebuilt = pb.ModelProto.FromString(proto)
    original = pb.ModelProto.FromString((VOCAB / "spiece.model").read_bytes())
    assert sentinels == 100 and len(rebuilt.pieces) == 32000
    assert rebuilt.pieces == original.pieces
    assert rebuilt.normalizer_spec == original.normalizer_spec
    spec = rebuilt.trainer_spec
    assert (spec.pad_id, spec.eos_id, spec.unk_id, spec.bos_id) == (0, 1, 2, -1)
