"""The corpus and the independent references the tokenizer tests compare t5kit with.

Every reference is computed independently of t5kit (SentencePiece called directly, ``transformers``'
tokenizers, the ids printed in ``shared/T5_SPEC.md``); nothing here compares t5kit with itself.
The text is gathered from the machine (man pages, licences, gettext catalogues), deterministically.
"""

from __future__ import annotations

import gettext
import gzip
import re
import shutil
import time
from pathlib import Path

import pytest
from conftest import T5_TOKENIZER_JSON, T5_VOCAB

from t5kit.tokenizer import Tokenizer

VOCAB = T5_VOCAB
TOKENIZER_JSON = T5_TOKENIZER_JSON
assert (VOCAB / "spiece.model").is_file(), f"the T5 vocabulary is missing from {VOCAB}"
assert TOKENIZER_JSON.is_file(), f"the T5 tokenizer.json test data is missing: {TOKENIZER_JSON}"
SPECIAL_RE = re.compile(r"<extra_id_\d+>|</s>|<pad>|<unk>")

EDGE_CASES = [
    "",
    " ",
    "\n\n",
    "   leading and trailing   ",
    "runs    of     spaces",
    "tabs\tbetween\t\twords",
    "new\nlines\n\nand\r\nCRLF",
    'braces {like} {{these}} and json {"a": 1}',
    "digits 0123456789 3.14159 1,000,000 2024-01-31",
    "see https://example.com/path?q=1&r=two#frag or http://t5.io",
    "accents: café naïve Ærøskøbing Zürich São Paulo señor",
    "unicode: 日本語のテキスト, 中文, 한국어, Ελληνικά, русский, עברית, العربية",
    "ligatures ﬁ ﬂ, full-width ＡＢＣ１２３, ideographic\u3000space, nbsp\u00a0here",
    "emoji 😀👍🏽 and symbols ™ © ® € £ ¥ § ¶ • … — –",
    "zero\u200bwidth and soft\u00adhyphen and combining e\u0301",
    "math: x² + y² = z², ½ ¼ ∑ ∫ √",
    "▁literal ▁ underscores ▁▁",
    "<not a special token> <extra_id_> <extra_id_x> <extra_id_100> <extra_id_007>",
    "a" * 300,
    "word " * 200,
]


def _gather_real_texts() -> list[str]:
    """Real, varied strings from this machine: deterministic (sorted files, fixed strides and caps), fast."""
    out: list[str] = []
    man = sorted(Path("/usr/share/man").glob("*/*.gz"))
    for path in man[:: max(1, len(man) // 150)][:150]:
        try:
            text = gzip.decompress(path.read_bytes()).decode("utf-8", "replace")
        except (OSError, EOFError):
            continue
        lines = text.splitlines()
        out.extend([line for line in lines if line.strip()][:40])
        out.append("\n".join(lines[5:12]))  # multi-line chunks keep newlines, indentation, roff escapes
    licences = Path("/usr/share/common-licenses")
    if licences.is_dir():
        for path in sorted(p for p in licences.iterdir() if p.is_file())[:30]:
            text = path.read_text("utf-8", "replace")
            out.extend(text.splitlines()[:40])
            out.extend(text.split("\n\n")[:5])  # paragraphs: runs of spaces, newlines
    catalogues = sorted(Path("/usr/share/locale").glob("*/LC_MESSAGES/*.mo"))
    for path in catalogues[:: max(1, len(catalogues) // 200)][:200]:
        try:
            with open(path, "rb") as f:
                catalog = gettext.GNUTranslations(f)._catalog
        except (OSError, UnicodeDecodeError):
            continue
        items = sorted((str(k), v) for k, v in catalog.items() if isinstance(v, str) and k)
        out.extend(v for _k, v in items[:40])
    return out + EDGE_CASES


CACHE: dict[str, object] = {}


def real_texts() -> list[str]:
    if "texts" not in CACHE:
        start = time.perf_counter()
        texts = _gather_real_texts()
        CACHE["texts"] = texts
        print(f"gathered {len(texts)} strings in {time.perf_counter() - start:.2f}s")
    return CACHE["texts"]  # type: ignore[return-value]


def plain_texts() -> list[str]:
    """Texts without inline special tokens (those are tested on their own)."""
    return [t for t in real_texts() if not SPECIAL_RE.search(t)]


def spm():
    import sentencepiece

    if "sp" not in CACHE:
        CACHE["sp"] = sentencepiece.SentencePieceProcessor(model_file=str(VOCAB / "spiece.model"))
    return CACHE["sp"]


def hf_t5(tmp_path_factory=None):
    """transformers' T5Tokenizer built from spiece.model alone (as installed: the 5.x tokenizers class)."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("google.protobuf")
    if "hf" not in CACHE:
        import tempfile

        d = Path(tempfile.mkdtemp(prefix="t5kit-hf-spm-"))
        shutil.copy(VOCAB / "spiece.model", d / "spiece.model")
        CACHE["hf"] = transformers.T5Tokenizer.from_pretrained(str(d))
    return CACHE["hf"]


def tok(legacy: bool = False) -> Tokenizer:
    key = f"tok{legacy}"
    if key not in CACHE:
        CACHE[key] = Tokenizer.from_pretrained(VOCAB, legacy=legacy)
    return CACHE[key]  # type: ignore[return-value]


def score(ids: list[int], sp=None) -> float:
    sp = sp or spm()
    return sum(sp.get_score(i) for i in ids if i < sp.get_piece_size() and not sp.is_unknown(i))


def near_tie(text: str, a: list[int], b: list[int], sp=None) -> bool:
    """Two segmentations of the same text that the unigram model scores equally, up to float rounding.

    Either exact ties (the same pieces in another order, e.g. "????" as "???"+"?" or "?"+"???"), which
    SentencePiece and ``tokenizers`` break differently, or near-ties in very long strings: SentencePiece
    sums lattice scores in float32, ``tokenizers`` in float64, and over thousands of pieces the float32
    rounding (about 1e-3 at a total of -20,000) can flip two segmentations closer than that.
    """
    sp = sp or spm()
    same_text = "".join(sp.id_to_piece(i) for i in a) == "".join(sp.id_to_piece(i) for i in b)
    exact_tie = sorted(a) == sorted(b)
    long_near_tie = len(a) > 1000 and abs(score(a, sp) - score(b, sp)) < 5e-3
    return same_text and (exact_tie or long_near_tie)
