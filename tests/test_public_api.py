"""What was public before the #16 redesign still imports from where it did, and the new top-level names exist."""

from __future__ import annotations

import subprocess
import sys

import t5kit


def test_top_level_names():
    from t5kit.model import T5Model
    from t5kit.pipeline import Generator
    from t5kit.tokenizer import Tokenizer

    assert t5kit.T5Model is T5Model and t5kit.Generator is Generator and t5kit.Tokenizer is Tokenizer


def test_names_that_moved_keep_their_old_import_paths():
    from t5kit.cache import DecoderCache
    from t5kit.checkpoint import hf_state_dict, load_model, save_model  # noqa: F401
    from t5kit.generate import GenerationConfig, Generator, generate, stream  # noqa: F401
    from t5kit.kernels.inference import precision
    from t5kit.model import DecoderCache as ModelCache
    from t5kit.model import loading
    from t5kit.quantize import PRECISIONS, inference_model
    from t5kit.serve.batcher import Batcher as NewBatcher
    from t5kit.serve.batching import Batcher
    from t5kit.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer  # noqa: F401
    from t5kit.train import TrainConfig, train  # noqa: F401
    from t5kit.train.loop import enable_activation_checkpointing, set_dropout  # noqa: F401

    assert Generator is t5kit.Generator
    assert DecoderCache is ModelCache and Batcher is NewBatcher and load_model is loading.load_model
    assert inference_model is precision.inference_model and PRECISIONS == ("fp32", "bf16", "fp16w", "int8")


def test_every_cli_command_still_answers_help():
    commands = ["demo", "generate", "eval", "train", "pretrain", "plot", "serve", "info", "convert", "tokenizer",
                "data", "adapter"]
    out = subprocess.run([sys.executable, "-m", "t5kit", "--help"], capture_output=True, text=True, check=True).stdout
    for command in commands:
        assert command in out, command
        result = subprocess.run([sys.executable, "-m", "t5kit", command, "--help"], capture_output=True, text=True)
        assert result.returncode == 0 and "usage:" in result.stdout, (command, result.stderr[-500:])
