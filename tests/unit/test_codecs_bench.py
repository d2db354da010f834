"""Smoke test of the codec benchmark (tiny sizes; numbers are not checked)."""

from __future__ import annotations

import json

from suanwang.benchmarks import codecs as bench
from suanwang.benchmarks.common import format_size, format_table, parse_size, timeit


def test_quick_run_writes_every_figure(tmp_path, capsys):
    out = tmp_path / "codecs.json"
    assert bench.main(["--quick", "--threads", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["machine"]["torch_threads"] == 1
    for key in ["copy_GBps", "torch_topk_GBps", "powersgd_hook_s"]:
        assert res[key] > 0
    for name in ["fp16", "bf16", "int8", "int4", "topk", "sign", "powersgd"]:
        c = res["codecs"][name]
        for key in ["encode_GBps", "decode_GBps", "ratio", "rel_err", "encode_vs_copy", "decode_vs_copy"]:
            assert c[key] >= 0, (name, key)
    assert res["codecs"]["int8"]["rel_err"] < 0.01
    assert res["sizes"]["64K"]["codecs"].keys() == res["codecs"].keys()
    assert "enc/copy" in capsys.readouterr().out


def test_helpers():
    assert parse_size("64M") == 64 << 20 and parse_size("4096") == 4096 and parse_size("1.5K") == 1536
    assert format_size(64 << 20) == "64M" and format_size(1000) == "1000"
    t = timeit(lambda: None, repeat=3, warmup=0)
    assert t.repeats == 3 and t.best <= t.median <= t.worst
    table = format_table([{"a": 1.23456, "b": "x"}, {"a": 12345.0, "b": None}])
    assert "1.23" in table and "1.234e+04" in table


def test_device_is_checked_before_anything_runs(capsys, monkeypatch):
    import importlib.util

    import pytest
    import torch

    from suanwang.benchmarks.common import check_device, device_sync

    assert check_device("cpu") == torch.device("cpu") and device_sync("cpu") is None
    with pytest.raises(ValueError, match="not a device name"):
        check_device("gpu0")
    with pytest.raises(ValueError, match="unknown device kind 'meta'"):
        check_device("meta")
    if importlib.util.find_spec("torch_npu") is None:
        with pytest.raises(ValueError, match=r"pip install 'suanwang\[npu\]'"):
            check_device("npu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"torch.cuda.is_available\(\) is False"):
        check_device("cuda")
    with pytest.raises(SystemExit):
        bench.main(["--quick", "--device", "cuda"])
    assert "--device: 'cuda': device 'cuda' requested but torch.cuda.is_available() is False" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="has 1 cuda device"):
        check_device("cuda:1")
    assert device_sync("cuda") is torch.cuda.synchronize
