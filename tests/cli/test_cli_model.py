"""`t5kit info` and `t5kit convert` through the real command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

from t5kit import T5Config, T5Model
from t5kit.model import hf_state_dict


def t5kit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t5kit", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = T5Model(T5Config.from_preset("tiny", vocab_size=120)).eval()
    path = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(path)
    return model, path


def test_info_reports_variant_shapes_and_files(checkpoint):
    model, path = checkpoint
    out = t5kit("info", str(path))
    assert out.returncode == 0, out.stderr
    assert "T5 v1.1 / Flan-T5" in out.stdout and "d_model 64" in out.stdout and "model.safetensors" in out.stdout
    data = json.loads(t5kit("info", str(path), "--json").stdout)
    assert data["parameters_stored"] == model.num_parameters()
    assert data["dtypes"] == {"F32": model.num_parameters()}


def test_convert_legacy_bin_to_sharded_bf16(checkpoint, tmp_path):
    model, path = checkpoint
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text((path / "config.json").read_text())
    torch.save(hf_state_dict(model), legacy / "pytorch_model.bin")
    out = t5kit("convert", str(legacy), str(tmp_path / "new"), "--dtype", "bf16", "--max-shard-size", "50KB")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "new" / "model.safetensors.index.json").exists()
    converted = T5Model.from_pretrained(tmp_path / "new", dtype="auto")
    assert converted.dtype == torch.bfloat16
    assert torch.equal(converted.shared.weight, model.shared.weight.to(torch.bfloat16))


def test_errors_are_one_readable_line_with_the_right_exit_code(tmp_path):
    out = t5kit("info", str(tmp_path / "missing" / "model"))
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "no checkpoint directory" in out.stderr
    out = t5kit("info", "--no-such-flag", str(tmp_path))
    assert out.returncode == 2 and "unrecognized arguments" in out.stderr
    out = t5kit("--debug", "info", str(tmp_path / "missing" / "model"))
    assert out.returncode == 1 and "Traceback" in out.stderr


def test_info_backend_prints_each_layers_kernel_and_honours_a_forced_backend(tmp_path):
    import os

    env = {**os.environ, "T5KIT_CACHE_DIR": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "t5kit", "info", "--backend", "--json"], capture_output=True,
                         text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    choices = json.loads(run.stdout)
    assert {c["rows"] for c in choices} == {1, 4, 16, 64, 256}
    assert all(c["kernel"] in c["timings_us"] and "mkl" in c["timings_us"] for c in choices)  # the built-in is fp32
    assert (tmp_path / "linear-backends.json").is_file()  # timed once, then cached
    forced = subprocess.run([sys.executable, "-m", "t5kit", "info", "--backend"], capture_output=True, text=True,
                            timeout=300, env={**env, "T5KIT_LINEAR_BACKEND": "mkl"})
    assert forced.returncode == 0, forced.stderr
    lines = forced.stdout.splitlines()
    assert lines[0].startswith("CPU: ") and "linear backend: forced mkl" in lines[0]
    linears = [line for line in lines[1:-1] if "decoder layer step" not in line]
    assert len(linears) > 1 and all(line.endswith("rows 1-256 mkl") for line in linears)
    # a forced kernel the native decoder step cannot call: every step through the modules
    steps = [line for line in lines if "decoder layer step" in line]
    assert len(steps) == 1 and re.fullmatch(r"  decoder layer step \(x\d+\): rows 1-16 modules", steps[0]), steps
    # the training products' backend, timed (or read from the cache) like the linear layers' kernels
    assert re.fullmatch(r"training products \(float32\): (mkl|onednn) \(auto; one linear layer's three "
                        r"products: mkl [0-9.]+ ms(, onednn [0-9.]+ ms)?\)", lines[-1]), lines[-1]
    missing = t5kit("info")
    assert missing.returncode != 0 and "t5kit info needs a checkpoint" in missing.stderr
