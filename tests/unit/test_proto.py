"""The committed generated code matches proto/suanwang/v1/*.proto."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"


def test_generated_code_matches_proto(tmp_path):
    pytest.importorskip("grpc_tools")
    protos = sorted(p.relative_to(PROTO) for p in (PROTO / "suanwang" / "v1").glob("*.proto"))
    assert protos
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *map(str, protos)],
        check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated
    for rel in generated:
        committed = PROTO / rel
        assert committed.exists(), f"{rel} is generated but not committed"
        assert committed.read_text() == (tmp_path / rel).read_text(), f"{rel} is stale: regenerate it"


def test_every_codec_enum_value_has_a_codec():
    import suanwang.runtime.compress as compress
    from suanwang.runtime.compress.registry import codec_for_enum
    from suanwang.v1 import wan_pb2

    for value in wan_pb2.Codec.values():
        if value != wan_pb2.CODEC_UNSPECIFIED:
            assert codec_for_enum(value).kind == value
    assert compress.CODECS
