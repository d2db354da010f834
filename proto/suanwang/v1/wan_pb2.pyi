from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Codec(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODEC_UNSPECIFIED: _ClassVar[Codec]
    CODEC_NONE: _ClassVar[Codec]
    CODEC_FP16: _ClassVar[Codec]
    CODEC_BF16: _ClassVar[Codec]
    CODEC_INT8: _ClassVar[Codec]
    CODEC_INT4: _ClassVar[Codec]
    CODEC_TOPK: _ClassVar[Codec]
    CODEC_SIGN: _ClassVar[Codec]
    CODEC_POWERSGD: _ClassVar[Codec]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_FLOAT64: _ClassVar[DType]
CODEC_UNSPECIFIED: Codec
CODEC_NONE: Codec
CODEC_FP16: Codec
CODEC_BF16: Codec
CODEC_INT8: Codec
CODEC_INT4: Codec
CODEC_TOPK: Codec
CODEC_SIGN: Codec
CODEC_POWERSGD: Codec
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_FLOAT16: DType
DTYPE_BFLOAT16: DType
DTYPE_FLOAT64: DType

class HandshakeRequest(_message.Message):
    __slots__ = ("protocol_version", "job_id", "center", "token")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    job_id: str
    center: str
    token: str
    def __init__(self, protocol_version: _Optional[int] = ..., job_id: _Optional[str] = ..., center: _Optional[str] = ..., token: _Optional[str] = ...) -> None: ...

class HandshakeResponse(_message.Message):
    __slots__ = ("protocol_version", "job_id", "center")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    job_id: str
    center: str
    def __init__(self, protocol_version: _Optional[int] = ..., job_id: _Optional[str] = ..., center: _Optional[str] = ...) -> None: ...

class PayloadHeader(_message.Message):
    __slots__ = ("job_id", "round", "sender", "name", "codec", "dtype", "shape", "num_chunks", "total_bytes", "samples", "codec_params", "sha256")
    class CodecParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SENDER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CODEC_PARAMS_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    round: int
    sender: str
    name: str
    codec: Codec
    dtype: DType
    shape: _containers.RepeatedScalarFieldContainer[int]
    num_chunks: int
    total_bytes: int
    samples: int
    codec_params: _containers.ScalarMap[str, str]
    sha256: str
    def __init__(self, job_id: _Optional[str] = ..., round: _Optional[int] = ..., sender: _Optional[str] = ..., name: _Optional[str] = ..., codec: _Optional[_Union[Codec, str]] = ..., dtype: _Optional[_Union[DType, str]] = ..., shape: _Optional[_Iterable[int]] = ..., num_chunks: _Optional[int] = ..., total_bytes: _Optional[int] = ..., samples: _Optional[int] = ..., codec_params: _Optional[_Mapping[str, str]] = ..., sha256: _Optional[str] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("header", "index", "data", "crc32")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    header: PayloadHeader
    index: int
    data: bytes
    crc32: int
    def __init__(self, header: _Optional[_Union[PayloadHeader, _Mapping]] = ..., index: _Optional[int] = ..., data: _Optional[bytes] = ..., crc32: _Optional[int] = ...) -> None: ...

class PushAck(_message.Message):
    __slots__ = ("accepted", "reason", "bytes_received")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECEIVED_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    reason: str
    bytes_received: int
    def __init__(self, accepted: _Optional[bool] = ..., reason: _Optional[str] = ..., bytes_received: _Optional[int] = ...) -> None: ...

class ProbeRequest(_message.Message):
    __slots__ = ("padding", "reply_bytes")
    PADDING_FIELD_NUMBER: _ClassVar[int]
    REPLY_BYTES_FIELD_NUMBER: _ClassVar[int]
    padding: bytes
    reply_bytes: int
    def __init__(self, padding: _Optional[bytes] = ..., reply_bytes: _Optional[int] = ...) -> None: ...

class ProbeResponse(_message.Message):
    __slots__ = ("padding",)
    PADDING_FIELD_NUMBER: _ClassVar[int]
    padding: bytes
    def __init__(self, padding: _Optional[bytes] = ...) -> None: ...

class StateRequest(_message.Message):
    __slots__ = ("job_id", "center")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    center: str
    def __init__(self, job_id: _Optional[str] = ..., center: _Optional[str] = ...) -> None: ...
