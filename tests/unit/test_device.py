"""Device layer: backends per kind, lazy torch_npu with a clear error, NPU logic faked."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from suanwang.runtime import device


def test_backends():
    assert device.backend_for("cpu") == "gloo"
    assert device.backend_for("cuda") == "nccl"
    assert device.backend_for("npu") == "hccl"
    with pytest.raises(ValueError, match="unknown device kind 'tpu'"):
        device.backend_for("tpu")


def test_cpu_device_and_resources():
    assert device.torch_device("cpu", 3) == torch.device("cpu")
    assert device.ray_resources("cpu") == {}
    assert device.ray_resources("cuda") == {"GPU": 1.0}
    assert device.ray_resources("npu") == {"NPU": 1.0}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_missing_is_a_clear_error():
    with pytest.raises(device.DeviceUnavailable, match="torch.cuda.is_available"):
        device.torch_device("cuda")


def test_npu_without_torch_npu_names_the_extra():
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("torch_npu is installed here")
    with pytest.raises(device.DeviceUnavailable, match=r"pip install 'suanwang\[npu\]'"):
        device.torch_device("npu")


def test_npu_path_with_faked_torch_npu():
    # In a subprocess: a fake torch_npu registers the `npu` device name the way the real one
    # does (renaming PrivateUse1) and provides torch.npu; nothing leaks into this process.
    code = textwrap.dedent(
        """
        import sys, types, torch
        fake = types.ModuleType("torch_npu")
        torch.utils.rename_privateuse1_backend("npu")
        torch.npu = types.SimpleNamespace(is_available=lambda: True, device_count=lambda: 2)
        sys.modules["torch_npu"] = fake
        from suanwang.runtime import device
        d = device.torch_device("npu", 3)
        assert (d.type, d.index) == ("npu", 1), d
        assert device.backend_for("npu") == "hccl"
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr
