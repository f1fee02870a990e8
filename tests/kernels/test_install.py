"""The one rule that installs the fast paths (t5kit.kernels.install): what it swaps, where, and that a swap
changes no parameter, no name and no eval-mode output."""

from __future__ import annotations

import pytest
import torch

from t5kit import T5Config, T5Model
from t5kit.kernels import KERNELS, install, installed, uninstall
from t5kit.model import Attention, Dropout, FeedForward, RMSNorm


def _tiny() -> T5Model:
    torch.manual_seed(0)
    return T5Model(T5Config.from_preset("tiny", feed_forward_proj="relu", dropout_rate=0.1))


def test_install_swaps_classes_in_place_and_keeps_every_parameter():
    model = _tiny()
    before = {name: (p.data_ptr(), p.shape) for name, p in model.named_parameters()}
    install(model, "train")
    assert installed(model) == ["FastDropout", "TrainingAttention", "TrainingFeedForward", "TrainingLinear",
                                "TrainingRMSNorm", "TrainingT5Model"]
    assert {name: (p.data_ptr(), p.shape) for name, p in model.named_parameters()} == before
    install(model)  # both modes: the norm gets the training and the inference kernel, in that order
    norm_class = type(model.encoder.layers[0].self_attn_norm)
    assert [c.__name__ for c in norm_class.__mro__[:4]] == [
        norm_class.__name__, "TrainingRMSNorm", "InferenceRMSNorm", "RMSNorm"]
    # each linear: its training products on the backend timed for training, no-grad calls on the chosen kernel
    assert [c.__name__ for c in type(model.lm_head).__mro__[:4]] == [
        "TrainingBackendLinear", "TrainingLinear", "BackendLinear", "Linear"]
    uninstall(model)
    assert installed(model) == [] and type(model) is T5Model
    assert {type(m) for m in model.modules()} >= {Attention, Dropout, FeedForward, RMSNorm}


def test_eval_outputs_are_the_plain_models(monkeypatch):
    """Under no_grad (inference), installing changes no output bit when the linear backend is forced to
    PyTorch's own kernel (the chosen kernels round in their own order: tests/kernels/test_linear_backend.py
    bounds them). With autograd recording, the float32 RMS norm kernel runs (it speeds up backward), as it
    did before #16, and rounds in another order; the inference RMS norm is bit-identical to the plain one
    (tests/kernels/test_inference_kernels.py)."""
    monkeypatch.setenv("T5KIT_LINEAR_BACKEND", "mkl")
    model = _tiny().eval()
    ids = torch.randint(3, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        plain = model(input_ids=ids, labels=ids[:, :5]).logits
        fast = install(model)(input_ids=ids, labels=ids[:, :5]).logits
    assert torch.equal(plain, fast)


def test_devices_without_a_measured_kernel_keep_the_plain_model():
    """Every kernel was measured on CPU only; on any other device the plain path runs."""
    assert all(k.devices == ("cpu",) for k in KERNELS)
    with torch.device("meta"):
        model = T5Model.from_preset("tiny")
    assert installed(install(model)) == []


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown kernel mode 'training'"):
        install(_tiny(), "training")
