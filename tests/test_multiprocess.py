"""`accelerate launch` with 2 CPU processes (gloo): both ranks end with identical adapters."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from .conftest import REPO, train_overrides


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_hold_identical_adapters(tiny_model, demo_cache, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(_free_port()),
           str(REPO / "tests" / "scripts" / "ddp_train.py"), str(out),
           *train_overrides(tiny_model, demo_cache, out, **{"training.batch_size": 1, "training.max_steps": 4})]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world 2" in proc.stdout
    r0, r1 = load_file(str(out / "rank0.safetensors")), load_file(str(out / "rank1.safetensors"))
    assert r0.keys() == r1.keys()
    for k in r0:  # each rank saw different batches: only the gradient all-reduce makes these equal
        assert (r0[k] == r1[k]).all(), k
    assert any(v.abs().max() > 0 for k, v in r0.items() if "lora_B" in k)
    saved = load_file(str(out / "pytorch_lora_weights.safetensors"))
    for k, v in r0.items():
        assert (saved["transformer." + k] == v).all()
