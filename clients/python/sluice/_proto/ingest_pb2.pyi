from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SignalKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNAL_KIND_UNSPECIFIED: _ClassVar[SignalKind]
    SIGNAL_KIND_SLOW_DOWN: _ClassVar[SignalKind]
    SIGNAL_KIND_PAUSE: _ClassVar[SignalKind]
    SIGNAL_KIND_RESUME: _ClassVar[SignalKind]

class SignalReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIGNAL_REASON_UNSPECIFIED: _ClassVar[SignalReason]
    SIGNAL_REASON_GLOBAL: _ClassVar[SignalReason]
    SIGNAL_REASON_STAGE: _ClassVar[SignalReason]
    SIGNAL_REASON_SOURCE: _ClassVar[SignalReason]
    SIGNAL_REASON_MEMORY: _ClassVar[SignalReason]
    SIGNAL_REASON_SHUTDOWN: _ClassVar[SignalReason]
    SIGNAL_REASON_SINK: _ClassVar[SignalReason]

class RejectReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECT_REASON_UNSPECIFIED: _ClassVar[RejectReason]
    REJECT_REASON_GLOBAL_LIMIT: _ClassVar[RejectReason]
    REJECT_REASON_STAGE_LIMIT: _ClassVar[RejectReason]
    REJECT_REASON_SOURCE_LIMIT: _ClassVar[RejectReason]
    REJECT_REASON_NO_CREDIT: _ClassVar[RejectReason]
    REJECT_REASON_MEMORY: _ClassVar[RejectReason]
    REJECT_REASON_RECORD_TOO_LARGE: _ClassVar[RejectReason]
    REJECT_REASON_SHUTTING_DOWN: _ClassVar[RejectReason]
    REJECT_REASON_BATCH_TOO_LARGE: _ClassVar[RejectReason]
    REJECT_REASON_SEQUENCE_GAP: _ClassVar[RejectReason]
    REJECT_REASON_FOLLOWS_REJECT: _ClassVar[RejectReason]
SIGNAL_KIND_UNSPECIFIED: SignalKind
SIGNAL_KIND_SLOW_DOWN: SignalKind
SIGNAL_KIND_PAUSE: SignalKind
SIGNAL_KIND_RESUME: SignalKind
SIGNAL_REASON_UNSPECIFIED: SignalReason
SIGNAL_REASON_GLOBAL: SignalReason
SIGNAL_REASON_STAGE: SignalReason
SIGNAL_REASON_SOURCE: SignalReason
SIGNAL_REASON_MEMORY: SignalReason
SIGNAL_REASON_SHUTDOWN: SignalReason
SIGNAL_REASON_SINK: SignalReason
REJECT_REASON_UNSPECIFIED: RejectReason
REJECT_REASON_GLOBAL_LIMIT: RejectReason
REJECT_REASON_STAGE_LIMIT: RejectReason
REJECT_REASON_SOURCE_LIMIT: RejectReason
REJECT_REASON_NO_CREDIT: RejectReason
REJECT_REASON_MEMORY: RejectReason
REJECT_REASON_RECORD_TOO_LARGE: RejectReason
REJECT_REASON_SHUTTING_DOWN: RejectReason
REJECT_REASON_BATCH_TOO_LARGE: RejectReason
REJECT_REASON_SEQUENCE_GAP: RejectReason
REJECT_REASON_FOLLOWS_REJECT: RejectReason

class SourceMessage(_message.Message):
    __slots__ = ("open", "batch", "backlog", "release")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    open: Open
    batch: Batch
    backlog: Backlog
    release: Release
    def __init__(self, open: _Optional[_Union[Open, _Mapping]] = ..., batch: _Optional[_Union[Batch, _Mapping]] = ..., backlog: _Optional[_Union[Backlog, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ...) -> None: ...

class Backlog(_message.Message):
    __slots__ = ("records", "bytes")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    records: int
    bytes: int
    def __init__(self, records: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("revoke_id", "records", "bytes")
    REVOKE_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    revoke_id: int
    records: int
    bytes: int
    def __init__(self, revoke_id: _Optional[int] = ..., records: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Open(_message.Message):
    __slots__ = ("source_id", "pipeline", "protocol_version", "backlog", "first_unacked_seq")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    PIPELINE_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    FIRST_UNACKED_SEQ_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    pipeline: str
    protocol_version: int
    backlog: Backlog
    first_unacked_seq: int
    def __init__(self, source_id: _Optional[str] = ..., pipeline: _Optional[str] = ..., protocol_version: _Optional[int] = ..., backlog: _Optional[_Union[Backlog, _Mapping]] = ..., first_unacked_seq: _Optional[int] = ...) -> None: ...

class Batch(_message.Message):
    __slots__ = ("first_seq", "records", "batch_id")
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    records: _containers.RepeatedCompositeFieldContainer[Record]
    batch_id: int
    def __init__(self, first_seq: _Optional[int] = ..., records: _Optional[_Iterable[_Union[Record, _Mapping]]] = ..., batch_id: _Optional[int] = ...) -> None: ...

class Record(_message.Message):
    __slots__ = ("key", "payload", "attributes", "event_time_ms")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    payload: bytes
    attributes: _containers.ScalarMap[str, str]
    event_time_ms: int
    def __init__(self, key: _Optional[bytes] = ..., payload: _Optional[bytes] = ..., attributes: _Optional[_Mapping[str, str]] = ..., event_time_ms: _Optional[int] = ...) -> None: ...

class EngineMessage(_message.Message):
    __slots__ = ("opened", "credit", "signal", "ack", "reject", "outcome", "revoke")
    OPENED_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REVOKE_FIELD_NUMBER: _ClassVar[int]
    opened: Opened
    credit: Credit
    signal: Signal
    ack: Ack
    reject: Reject
    outcome: BatchOutcome
    revoke: Revoke
    def __init__(self, opened: _Optional[_Union[Opened, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., signal: _Optional[_Union[Signal, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ..., outcome: _Optional[_Union[BatchOutcome, _Mapping]] = ..., revoke: _Optional[_Union[Revoke, _Mapping]] = ...) -> None: ...

class BatchOutcome(_message.Message):
    __slots__ = ("batch_id", "first_seq", "duplicates", "admitted", "reject", "credit")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_FIELD_NUMBER: _ClassVar[int]
    REJECT_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    first_seq: int
    duplicates: int
    admitted: int
    reject: Reject
    credit: Credit
    def __init__(self, batch_id: _Optional[int] = ..., first_seq: _Optional[int] = ..., duplicates: _Optional[int] = ..., admitted: _Optional[int] = ..., reject: _Optional[_Union[Reject, _Mapping]] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ...) -> None: ...

class Revoke(_message.Message):
    __slots__ = ("revoke_id", "records", "bytes")
    REVOKE_ID_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    revoke_id: int
    records: int
    bytes: int
    def __init__(self, revoke_id: _Optional[int] = ..., records: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Opened(_message.Message):
    __slots__ = ("admitted_through_seq", "acked_through_seq", "credit", "max_batch_records", "max_message_bytes", "protocol_version", "window", "guaranteed", "credit_lease_ms", "max_unacked_records", "max_record_bytes", "large_record_bytes")
    ADMITTED_THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    ACKED_THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_RECORDS_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    GUARANTEED_FIELD_NUMBER: _ClassVar[int]
    CREDIT_LEASE_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_UNACKED_RECORDS_FIELD_NUMBER: _ClassVar[int]
    MAX_RECORD_BYTES_FIELD_NUMBER: _ClassVar[int]
    LARGE_RECORD_BYTES_FIELD_NUMBER: _ClassVar[int]
    admitted_through_seq: int
    acked_through_seq: int
    credit: Credit
    max_batch_records: int
    max_message_bytes: int
    protocol_version: int
    window: Credit
    guaranteed: Credit
    credit_lease_ms: int
    max_unacked_records: int
    max_record_bytes: int
    large_record_bytes: int
    def __init__(self, admitted_through_seq: _Optional[int] = ..., acked_through_seq: _Optional[int] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ..., max_batch_records: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., protocol_version: _Optional[int] = ..., window: _Optional[_Union[Credit, _Mapping]] = ..., guaranteed: _Optional[_Union[Credit, _Mapping]] = ..., credit_lease_ms: _Optional[int] = ..., max_unacked_records: _Optional[int] = ..., max_record_bytes: _Optional[int] = ..., large_record_bytes: _Optional[int] = ...) -> None: ...

class Credit(_message.Message):
    __slots__ = ("records", "bytes")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    records: int
    bytes: int
    def __init__(self, records: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class Signal(_message.Message):
    __slots__ = ("kind", "reason", "utilization", "retry_after_ms", "stage", "sink", "target_records_per_second")
    KIND_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    UTILIZATION_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    SINK_FIELD_NUMBER: _ClassVar[int]
    TARGET_RECORDS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    kind: SignalKind
    reason: SignalReason
    utilization: float
    retry_after_ms: int
    stage: str
    sink: str
    target_records_per_second: float
    def __init__(self, kind: _Optional[_Union[SignalKind, str]] = ..., reason: _Optional[_Union[SignalReason, str]] = ..., utilization: _Optional[float] = ..., retry_after_ms: _Optional[int] = ..., stage: _Optional[str] = ..., sink: _Optional[str] = ..., target_records_per_second: _Optional[float] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("through_seq", "delivered", "dead_lettered", "filtered", "completed")
    THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    FILTERED_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    through_seq: int
    delivered: int
    dead_lettered: int
    filtered: int
    completed: _containers.RepeatedCompositeFieldContainer[SeqRange]
    def __init__(self, through_seq: _Optional[int] = ..., delivered: _Optional[int] = ..., dead_lettered: _Optional[int] = ..., filtered: _Optional[int] = ..., completed: _Optional[_Iterable[_Union[SeqRange, _Mapping]]] = ...) -> None: ...

class SeqRange(_message.Message):
    __slots__ = ("first", "last")
    FIRST_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    first: int
    last: int
    def __init__(self, first: _Optional[int] = ..., last: _Optional[int] = ...) -> None: ...

class Reject(_message.Message):
    __slots__ = ("first_seq", "count", "reason", "message", "retry_after_ms", "admitted_through_seq", "credit")
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_MS_FIELD_NUMBER: _ClassVar[int]
    ADMITTED_THROUGH_SEQ_FIELD_NUMBER: _ClassVar[int]
    CREDIT_FIELD_NUMBER: _ClassVar[int]
    first_seq: int
    count: int
    reason: RejectReason
    message: str
    retry_after_ms: int
    admitted_through_seq: int
    credit: Credit
    def __init__(self, first_seq: _Optional[int] = ..., count: _Optional[int] = ..., reason: _Optional[_Union[RejectReason, str]] = ..., message: _Optional[str] = ..., retry_after_ms: _Optional[int] = ..., admitted_through_seq: _Optional[int] = ..., credit: _Optional[_Union[Credit, _Mapping]] = ...) -> None: ...
