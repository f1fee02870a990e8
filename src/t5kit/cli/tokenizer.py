"""``t5kit tokenizer``: train a T5 SentencePiece vocabulary, and encode/decode with any T5 tokenizer."""

from __future__ import annotations

import argparse
import json
import sys

TRAIN_EPILOG = """\
example:
  t5kit tokenizer train --input corpus/*.txt --vocab-size 32000 --out my-vocab
  t5kit tokenizer encode "Hello <extra_id_0> world" --model my-vocab

Inputs are plain text, one sentence or paragraph per line. Large inputs are sampled
(--input-sentence-size lines, reservoir sampling while streaming), never loaded whole.
The output directory holds spiece.model, tokenizer_config.json and special_tokens_map.json,
loadable by t5kit and by transformers' T5Tokenizer. The model's vocabulary is
vocab-size + num-sentinels ids (round the embedding up to a multiple of 128).
"""

MODEL_HELP = "tokenizer or checkpoint directory, hub repo id, or t5 (the T5 vocabulary shipped in t5kit)"

ENCODE_EPILOG = """\
example:
  t5kit tokenizer encode "translate English to German: The house is wonderful." --model t5
  echo "Hello world" | t5kit tokenizer encode - --model t5 --pieces

--model t5 is the T5 vocabulary shipped in t5kit (that of T5, T5 v1.1 and Flan-T5).
"""

DECODE_EPILOG = """\
example:
  t5kit tokenizer decode 8774 296 1 --model t5

--model t5 is the T5 vocabulary shipped in t5kit (that of T5, T5 v1.1 and Flan-T5).
"""


def _train(args: argparse.Namespace) -> int:
    from t5kit.tokenizer import train_tokenizer

    tok = train_tokenizer(
        args.input,
        args.vocab_size,
        args.out,
        byte_fallback=args.byte_fallback,
        num_sentinels=args.num_sentinels,
        input_sentence_size=args.input_sentence_size,
        character_coverage=args.character_coverage,
        num_threads=args.threads,
        seed=args.seed,
        quiet=not args.verbose,
    )
    print(
        f"wrote {args.out}/spiece.model: {tok.num_pieces} pieces + {tok.num_sentinels} sentinels "
        f"= vocab_size {tok.vocab_size} (<extra_id_0> = {tok.sentinel_id(0) if tok.num_sentinels else 'none'})"
    )
    return 0


def _encode(args: argparse.Namespace) -> int:
    from t5kit.tokenizer import load_tokenizer

    tok = load_tokenizer(args.model, legacy=args.legacy)
    texts = sys.stdin.read().splitlines() if args.text == ["-"] else [" ".join(args.text)]
    rows = tok.batch_encode(texts, add_eos=not args.no_eos)
    for ids in rows:
        if args.pieces and hasattr(tok, "convert_ids_to_tokens"):
            print(json.dumps(tok.convert_ids_to_tokens(ids), ensure_ascii=False))
        else:
            print(" ".join(map(str, ids)))
    return 0


def _decode(args: argparse.Namespace) -> int:
    from t5kit.tokenizer import load_tokenizer

    tok = load_tokenizer(args.model)
    print(tok.decode(args.ids, skip_special_tokens=args.skip_special_tokens))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenizer",
        help="train a SentencePiece vocabulary; encode or decode text",
        description="Train a T5 SentencePiece vocabulary, or encode/decode text with a T5 tokenizer.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    train = sub.add_parser(
        "train",
        help="train a unigram vocabulary with T5's conventions",
        description="Train a SentencePiece unigram vocabulary with T5's conventions: pad 0, eos 1, unk 2, "
        "no bos, sentinels <extra_id_N> appended above the pieces.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--input", nargs="+", required=True, metavar="FILE", help="plain-text training files")
    train.add_argument("--vocab-size", type=int, required=True, help="SentencePiece pieces, specials included")
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--byte-fallback", action="store_true", help="spell unknown characters as UTF-8 bytes")
    train.add_argument("--num-sentinels", type=int, default=100, help="sentinels to append (default 100)")
    train.add_argument(
        "--input-sentence-size", type=int, default=2_000_000, help="lines sampled from the input (default 2e6)"
    )
    train.add_argument("--character-coverage", type=float, default=0.9995, help="default 0.9995")
    train.add_argument("--threads", type=int, default=None, help="training threads (default: all cores, max 16)")
    train.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    train.add_argument("--verbose", action="store_true", help="show SentencePiece's training log")
    train.set_defaults(func=_train)

    encode = sub.add_parser(
        "encode",
        help="print the ids of a text",
        description="Print the ids of TEXT (or of each stdin line with '-'), EOS appended.",
        epilog=ENCODE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    encode.add_argument("text", nargs="+", help="text to encode ('-' reads lines from stdin)")
    encode.add_argument("--model", required=True, help=MODEL_HELP)
    encode.add_argument("--legacy", action="store_true", help="transformers' ids after inline special tokens")
    encode.add_argument("--no-eos", action="store_true", help="do not append EOS")
    encode.add_argument("--pieces", action="store_true", help="print pieces instead of ids")
    encode.set_defaults(func=_encode)

    decode = sub.add_parser(
        "decode",
        help="print the text of ids",
        description="Print the text of a sequence of ids.",
        epilog=DECODE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    decode.add_argument("ids", nargs="+", type=int, help="token ids")
    decode.add_argument("--model", required=True, help=MODEL_HELP)
    decode.add_argument("--skip-special-tokens", action="store_true", help="drop pad, EOS and sentinels")
    decode.set_defaults(func=_decode)
