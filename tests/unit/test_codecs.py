"""The codec contract: one set of tests that every codec passes.

Each case names a codec configuration and how its decoded output may differ from the
input, checked against a float64 reference over dtypes x shapes. Then: error feedback
keeps the running sums of inputs and outputs together; NaN/Inf follow the documented
policy; corrupted payloads raise PayloadError and nothing else; a payload cut into
chunks and put back together decodes the same, with a decoder built with no arguments
(as the receiving gateway builds it).
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from suanwang.runtime.compress import CODECS, CodecState, Encoded, PayloadError, codec_for_enum, make_codec
from suanwang.runtime.compress import lossless as _lossless_stage
from suanwang.runtime.compress.base import Codec
from suanwang.runtime.compress.powersgd import matrix_shape
from suanwang.v1 import wan_pb2

# the lossless stage needs the optional zstandard package (the `compress` and `test` extras)
ZSTD = pytest.param(
    True, marks=pytest.mark.skipif(not _lossless_stage.available(), reason="zstandard is not installed (extra 'compress')")
)

F64 = torch.float64


# -- per-codec error bounds ------------------------------------------------------------


def _blocks(x: torch.Tensor, block: int) -> torch.Tensor:
    """x (flat float64) zero-padded and viewed as (blocks, block)."""
    pad = (-x.numel()) % block
    return torch.cat([x, x.new_zeros(pad)]).view(-1, block)


# Each check gets the input and output as flat float64, and ``slack``: how much decoding
# into the input's (narrow) dtype may round each output element on top of the codec's error.


def exact(x, y, codec, shape, slack):
    assert torch.equal(x, y)


def relative(rel: float, floor: float):
    def check(x, y, codec, shape, slack):
        assert bool(((y - x).abs() <= rel * x.abs() + floor + slack).all())

    return check


def blockquant(x, y, codec, shape, slack):
    """|y - x| <= half a quantization step (a whole step with stochastic rounding)."""
    if x.numel() == 0:
        return
    step = _blocks(x, codec.block_size).abs().amax(dim=1, keepdim=True) / codec.qmax
    step = step.expand(-1, codec.block_size).reshape(-1)[: x.numel()]
    frac = 0.5 if codec.rounding == "nearest" else 1.0
    assert bool(((y - x).abs() <= step * (frac + 1e-4) + 1e-6 * x.abs() + slack).all())


def sign(x, y, codec, shape, slack):
    """y = sign(x) * mean |x| over the block (the mean over the real elements of a tail)."""
    if x.numel() == 0:
        return
    b = _blocks(x, codec.block_size)
    counts = torch.full((b.shape[0],), float(codec.block_size), dtype=F64)
    counts[-1] = x.numel() - (b.shape[0] - 1) * codec.block_size
    scale = (b.abs().sum(dim=1) / counts).unsqueeze(1).expand_as(b).reshape(-1)[: x.numel()]
    ref = torch.where(x < 0, -scale, scale)
    assert bool(((y - ref).abs() <= 1e-5 * ref.abs() + 1e-30 + slack).all())


def topk(x, y, codec, shape, slack):
    """k values kept (up to their value format), the rest zero, none dropped larger than
    one kept."""
    n = x.numel()
    k = codec.k_for(n)
    kept = y != 0
    nkept = int(kept.sum())
    assert nkept <= k
    # (a kept value that rounds to zero would count as dropped; with random data none does)
    assert nkept == min(k, int((x != 0).sum()))
    if nkept == 0:
        return
    rel = {"fp32": 1e-7, "fp16": 2.0**-11, "int8": None}[codec.values]
    xk, yk = x[kept], y[kept]
    if rel is None:
        tol = xk.abs().max() / 127 * 0.5001  # one int8 scale per 256 values: a loose bound
    else:
        tol = rel * xk.abs()
    assert bool(((yk - xk).abs() <= tol + slack[kept]).all())
    dropped = x[~kept].abs()
    if dropped.numel():
        assert float(dropped.max()) <= float(xk.abs().min())


def powersgd(x, y, codec, shape, slack):
    """y is M projected on span(M Q0), as one power iteration from the seeded Q0 gives."""
    plan = codec.plan(shape)
    if plan is None:
        assert torch.equal(x, y)
        return
    rows, cols, rank = plan
    m = torch.cat([x, x.new_zeros(rows * cols - x.numel())]).view(rows, cols)
    q0 = codec._warm_q(None, rank, cols, torch.device("cpu")).to(F64).t()
    p, _ = torch.linalg.qr(m @ q0)
    ref = (p @ (p.t() @ m)).reshape(-1)[: x.numel()]
    assert float((y - ref).norm()) <= 1e-4 * float(x.norm()) + float(slack.norm()) + 1e-12


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    kind: str
    kw: dict
    check: Callable
    # error feedback: bound on |sum of inputs - sum of outputs| after 100 steps, in units
    # of one input's norm (None: the codec has no error feedback)
    ef_bound: float | None = None

    def build(self, **extra) -> Codec:
        return make_codec(self.kind, **{**self.kw, **extra})


CASES = [
    Case("none", "none", {}, exact),
    Case("fp16", "fp16", {}, relative(2.0**-11, 2.0**-24), ef_bound=0.01),
    Case("bf16", "bf16", {}, relative(2.0**-8, 1e-30), ef_bound=0.01),
    Case("int8", "int8", {}, blockquant, ef_bound=0.05),
    Case("int8-stochastic", "int8", {"rounding": "stochastic", "block_size": 32}, blockquant, ef_bound=0.05),
    Case("int4", "int4", {}, blockquant, ef_bound=0.5),
    Case("topk", "topk", {"ratio": 0.1}, topk, ef_bound=12.0),
    Case("topk-fp16", "topk", {"ratio": 0.05, "values": "fp16"}, topk, ef_bound=25.0),
    Case("topk-int8", "topk", {"ratio": 0.1, "values": "int8"}, topk, ef_bound=12.0),
    Case("sign", "sign", {"block_size": 64}, sign, ef_bound=12.0),
    Case("powersgd", "powersgd", {"rank": 2, "min_compress_numel": 0}, powersgd, ef_bound=20.0),
    Case("powersgd-dense", "powersgd", {}, powersgd, ef_bound=0.01),
]
IDS = [c.id for c in CASES]


def test_cases_cover_every_codec():
    assert {c.kind for c in CASES} == set(CODECS)


# -- round trip over dtypes x shapes ---------------------------------------------------

SHAPES = {
    "empty": lambda g: torch.randn(0, generator=g),
    "one": lambda g: torch.randn(1, generator=g),
    "odd7": lambda g: torch.randn(7, generator=g),
    "odd1001": lambda g: torch.randn(1001, generator=g) * 1e-3,
    "matrix33x5": lambda g: torch.randn(33, 5, generator=g),
    "strided": lambda g: torch.randn(24, 60, generator=g)[:, ::3],
    "transposed": lambda g: torch.randn(40, 30, generator=g).t(),
    "conv4d": lambda g: torch.randn(16, 8, 3, 3, generator=g),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
OUT_EPS = {torch.float32: 1e-6, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}


@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("dtype_id", list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_round_trip_within_bound(case, dtype_id, shape_id):
    g = torch.Generator().manual_seed(zlib.crc32(f"{case.id}/{dtype_id}/{shape_id}".encode()))
    dtype = DTYPES[dtype_id]
    x = SHAPES[shape_id](g).to(dtype)
    codec = case.build()
    enc = codec.encode(x)
    assert enc.codec == codec.kind and enc.shape == tuple(x.shape) and enc.dtype == dtype
    assert enc.data.dtype == torch.uint8 and enc.data.dim() == 1 and enc.data.device.type == "cpu"
    y = codec.decode(enc)
    assert y.shape == x.shape and y.dtype == dtype
    out = torch.full_like(x, float("nan"))
    assert codec.decode(enc, out=out) is out
    torch.testing.assert_close(out, y, rtol=0, atol=0)
    x64 = x.reshape(-1).to(F64)
    y64 = y.reshape(-1).to(F64)
    case.check(x64, y64, codec, tuple(x.shape), OUT_EPS[dtype] * y64.abs())


def test_decoded_size_and_ratio_match_estimate():
    x = torch.randn(50_000)
    for case in CASES:
        codec = case.build()
        enc = codec.encode(x)
        est = codec.estimate_ratio(x.numel(), x.dtype)
        assert est == pytest.approx(x.numel() * 4 / enc.nbytes, rel=0.02), case.id


# -- error feedback --------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c.ef_bound is not None], ids=lambda c: c.id)
def test_error_feedback_keeps_running_sums_together(case):
    g = torch.Generator().manual_seed(7)
    shape = (40, 50)
    base = torch.randn(shape, generator=g)
    codec, state = case.build(), CodecState()
    sum_in = torch.zeros(shape, dtype=F64)
    sum_out = torch.zeros(shape, dtype=F64)
    plain = case.build()
    sum_plain = torch.zeros(shape, dtype=F64)
    for _ in range(100):
        x = base + 0.3 * torch.randn(shape, generator=g)
        sum_in += x
        sum_out += codec.decode(codec.encode(x, state))
        sum_plain += plain.decode(plain.encode(x))
    assert state.step == 100
    gap = float((sum_in - sum_out).norm()) / float(base.norm())
    assert gap <= case.ef_bound, f"{case.id}: running sums {gap:.3f} input norms apart"
    # The gap is exactly what the state still holds back.
    residual = state.tensors.get("residual", torch.zeros(base.numel()))[: base.numel()].to(F64).view(shape)
    torch.testing.assert_close(sum_in - sum_out, residual, rtol=1e-4, atol=1e-4 * float(base.norm()))
    if case.kind in ("topk", "sign", "powersgd") and case.ef_bound > 1:
        # Biased codecs drift without feedback; with it they do not.
        assert float((sum_in - sum_plain).norm()) / float(base.norm()) > 3 * gap


def test_error_feedback_state_survives_a_checkpoint():
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(64, 80, generator=g) for _ in range(6)]
    for kind, kw in [("powersgd", {"rank": 2, "min_compress_numel": 0}), ("topk", {"ratio": 0.05}), ("sign", {})]:
        a, sa = make_codec(kind, **kw), CodecState()
        b, sb = make_codec(kind, **kw), CodecState()
        for i, x in enumerate(xs):
            ea, eb = a.encode(x, sa), b.encode(x, sb)
            assert torch.equal(ea.data, eb.data), (kind, i)
            if i == 2:
                sb = CodecState.from_state_dict(sb.state_dict())
                b = make_codec(kind, **kw)


# -- NaN / Inf -------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c.kind != "none"], ids=lambda c: c.id)
def test_nonfinite_inputs(case):
    x = torch.randn(300)
    x[[3, 100, 250]] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    codec, state = case.build(), CodecState()
    warm = torch.randn(300)
    codec.encode(warm, state)
    before = {k: v.clone() for k, v in state.tensors.items()}
    with pytest.raises(ValueError, match="3 non-finite"):
        codec.encode(x, state)
    # A refused input leaves the state as it was.
    assert state.step == 1
    for k, v in before.items():
        assert torch.equal(state.tensors[k], v), k

    zeroing = case.build(nonfinite="zero")
    y = zeroing.decode(zeroing.encode(x))
    assert bool(torch.isfinite(y).all())
    clean = torch.where(torch.isfinite(x), x, 0.0)
    ref = case.build()
    assert torch.equal(y, ref.decode(ref.encode(clean)))


def test_nonfinite_policy_is_validated():
    with pytest.raises(ValueError, match="nonfinite"):
        make_codec("int8", nonfinite="ignore")


# -- untrusted payloads ----------------------------------------------------------------


def _payload(case: Case, lossless: bool = False) -> Encoded:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(37, 29, generator=g)
    if lossless:
        x = x * (torch.rand(37, 29, generator=g) < 0.05)  # compressible
    return case.build(**({"lossless": True} if lossless and case.kind != "none" else {})).encode(x)


MUTATIONS = st.one_of(
    st.tuples(st.just("flip"), st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
    st.tuples(st.just("extend"), st.binary(min_size=1, max_size=64)),
    st.tuples(
        st.just("param"),
        st.tuples(
            st.sampled_from(["k", "block", "values", "rows", "cols", "rank", "mode", "lossless", "raw_nbytes", "x"]),
            st.one_of(
                st.none(),
                st.sampled_from(["", "0", "1", "-1", "7", "8", "64", "1e3", "fp16", "int8", "dense", "lowrank", "zstd"]),
                st.integers(0, 2**70).map(str),
            ),
        ),
    ),
    st.tuples(st.just("shape"), st.lists(st.integers(0, 10**7), max_size=4)),
    st.tuples(st.just("dtype"), st.sampled_from([torch.float16, torch.float64, torch.int32, torch.uint8, torch.bool])),
    st.tuples(st.just("codec"), st.integers(-1, 12)),
)


def _mutate(enc: Encoded, mutation) -> Encoded:
    what, arg = mutation
    data, params, shape, dtype, codec = enc.data.clone(), dict(enc.params), enc.shape, enc.dtype, enc.codec
    if what == "flip" and data.numel():
        for pos, bits in arg:
            data[pos % data.numel()] ^= bits
    elif what == "truncate":
        data = data[: arg % max(1, data.numel())]
    elif what == "extend":
        data = torch.cat([data, torch.frombuffer(bytearray(arg), dtype=torch.uint8)])
    elif what == "param":
        key, value = arg
        if value is None:
            params.pop(key, None)
        else:
            params[key] = value
    elif what == "shape":
        shape = tuple(arg)
    elif what == "dtype":
        dtype = arg
    elif what == "codec":
        codec = arg
    return Encoded(codec, shape, dtype, data, params)


@pytest.mark.parametrize("lossless", [False, ZSTD], ids=["raw", "zstd"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=MUTATIONS)
def test_corrupted_payload_raises_payload_error(case, lossless, mutation):
    enc = _mutate(_payload(case, lossless), mutation)
    decoder = type(case.build())()
    try:
        y = decoder.decode(enc)
    except PayloadError:
        return
    # What still decodes is a well-formed tensor of the announced shape.
    assert tuple(y.shape) == tuple(enc.shape) and y.dtype == enc.dtype
    assert bool(torch.isfinite(y).all())


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_truncations_and_wrong_params_are_refused(case):
    enc = _payload(case)
    decoder = type(case.build())()
    for cut in sorted({0, 1, enc.nbytes // 2, enc.nbytes - 1} - {enc.nbytes}):
        with pytest.raises(PayloadError):
            decoder.decode(dataclasses.replace(enc, data=enc.data[:cut]))
    with pytest.raises(PayloadError):
        decoder.decode(dataclasses.replace(enc, params={**enc.params, "unexpected": "1"}))
    with pytest.raises(PayloadError):
        decoder.decode(dataclasses.replace(enc, shape=(37, 29, 1_000_000)))
    with pytest.raises(PayloadError, match="over the limit"):
        decoder.decode(dataclasses.replace(enc, shape=(1 << 40,)))
    with pytest.raises(PayloadError):
        decoder.decode(dataclasses.replace(enc, codec=wan_pb2.CODEC_UNSPECIFIED))
    with pytest.raises(PayloadError):
        decoder.decode(enc, out=torch.empty(29, 37))


# -- chunked transport -----------------------------------------------------------------


@pytest.mark.parametrize("lossless", [False, ZSTD], ids=["raw", "zstd"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_chunked_round_trip(case, lossless):
    encoder = case.build(**({"lossless": True} if lossless and case.kind != "none" else {}))
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3000, generator=g) * (torch.rand(3000, generator=g) < (0.05 if lossless else 2))
    enc = encoder.encode(x)
    if lossless and case.kind in ("fp16", "bf16", "int8", "int4"):
        assert enc.params.get("lossless") == "zstd", "mostly-zero input should compress"
    expected = encoder.decode(enc)
    raw = enc.data.numpy().tobytes()
    pieces = [raw[i : i + 97] for i in range(0, len(raw), 97)]
    # Reassembled at an odd offset, as a receive buffer may hand it over.
    buf = torch.empty(len(raw) + 1, dtype=torch.uint8)
    pos = 1
    for p in pieces:
        buf[pos : pos + len(p)] = torch.frombuffer(bytearray(p), dtype=torch.uint8)
        pos += len(p)
    wire = Encoded(int(enc.codec), tuple(int(s) for s in enc.shape), enc.dtype, buf[1:], dict(enc.params))
    enc.release()
    # The receiver knows only the enum; its decoder has default parameters.
    got = codec_for_enum(wire.codec)().decode(wire)
    assert torch.equal(got, expected)


def test_pooled_buffers_are_reused_only_after_release():
    codec = make_codec("int8")
    x = torch.randn(10_000)
    a = codec.encode(x)
    b = codec.encode(x)
    assert a.data.data_ptr() != b.data.data_ptr()
    ptr = a.data.data_ptr()
    a.release()
    assert a.data.numel() == 0
    with codec.encode(x) as c:
        assert c.data.data_ptr() == ptr
        assert torch.equal(c.data, b.data)
    a.release()  # idempotent


def test_matrix_views():
    assert matrix_shape((64, 3, 7, 7), 64 * 147) == (64, 147)
    assert matrix_shape((8192 * 8192,), 8192 * 8192) == (8192, 8192)
    for n in [2, 3, 5, 17, 1000, 10**6 + 1]:
        rows, cols = matrix_shape((n,), n)
        assert 0 <= rows * cols - n < cols and cols == math.isqrt(n - 1) + 1
