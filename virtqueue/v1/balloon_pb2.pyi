from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Feature(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEATURE_UNSPECIFIED: _ClassVar[Feature]
    STATS_VQ: _ClassVar[Feature]
    DEFLATE_ON_OOM: _ClassVar[Feature]
    FREE_PAGE_HINT: _ClassVar[Feature]
    PAGE_POISON: _ClassVar[Feature]
    REPORTING: _ClassVar[Feature]

class UsedStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DONE: _ClassVar[UsedStatus]
    REFUSED: _ClassVar[UsedStatus]
    DISCARD_FAILED: _ClassVar[UsedStatus]

class HintAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HINT_STATUS: _ClassVar[HintAction]
    HINT_START: _ClassVar[HintAction]
    HINT_STOP: _ClassVar[HintAction]
FEATURE_UNSPECIFIED: Feature
STATS_VQ: Feature
DEFLATE_ON_OOM: Feature
FREE_PAGE_HINT: Feature
PAGE_POISON: Feature
REPORTING: Feature
DONE: UsedStatus
REFUSED: UsedStatus
DISCARD_FAILED: UsedStatus
HINT_STATUS: HintAction
HINT_START: HintAction
HINT_STOP: HintAction

class NegotiateRequest(_message.Message):
    __slots__ = ("guest_id", "ram_bytes", "page_size", "features", "poison_val", "capacity", "previous_session", "host_memory", "balloon", "migration", "touches_in_chain")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    POISON_VAL_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_SESSION_FIELD_NUMBER: _ClassVar[int]
    HOST_MEMORY_FIELD_NUMBER: _ClassVar[int]
    BALLOON_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    TOUCHES_IN_CHAIN_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    ram_bytes: int
    page_size: int
    features: int
    poison_val: int
    capacity: int
    previous_session: str
    host_memory: bool
    balloon: bool
    migration: bool
    touches_in_chain: bool
    def __init__(self, guest_id: _Optional[str] = ..., ram_bytes: _Optional[int] = ..., page_size: _Optional[int] = ..., features: _Optional[int] = ..., poison_val: _Optional[int] = ..., capacity: _Optional[int] = ..., previous_session: _Optional[str] = ..., host_memory: _Optional[bool] = ..., balloon: _Optional[bool] = ..., migration: _Optional[bool] = ..., touches_in_chain: _Optional[bool] = ...) -> None: ...

class Fence(_message.Message):
    __slots__ = ("known", "done_ids")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    DONE_IDS_FIELD_NUMBER: _ClassVar[int]
    known: bool
    done_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, known: _Optional[bool] = ..., done_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class NegotiateReply(_message.Message):
    __slots__ = ("features", "queue_size", "max_chain_ranges", "session", "backend", "shm_path", "discard", "min_order", "fence", "instance", "session_timeout_ms", "host_memory", "balloon", "stats_interval_ms", "migration", "touches_in_chain")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CHAIN_RANGES_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SHM_PATH_FIELD_NUMBER: _ClassVar[int]
    DISCARD_FIELD_NUMBER: _ClassVar[int]
    MIN_ORDER_FIELD_NUMBER: _ClassVar[int]
    FENCE_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    SESSION_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    HOST_MEMORY_FIELD_NUMBER: _ClassVar[int]
    BALLOON_FIELD_NUMBER: _ClassVar[int]
    STATS_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    MIGRATION_FIELD_NUMBER: _ClassVar[int]
    TOUCHES_IN_CHAIN_FIELD_NUMBER: _ClassVar[int]
    features: int
    queue_size: int
    max_chain_ranges: int
    session: str
    backend: str
    shm_path: str
    discard: str
    min_order: int
    fence: Fence
    instance: str
    session_timeout_ms: int
    host_memory: bool
    balloon: bool
    stats_interval_ms: int
    migration: bool
    touches_in_chain: bool
    def __init__(self, features: _Optional[int] = ..., queue_size: _Optional[int] = ..., max_chain_ranges: _Optional[int] = ..., session: _Optional[str] = ..., backend: _Optional[str] = ..., shm_path: _Optional[str] = ..., discard: _Optional[str] = ..., min_order: _Optional[int] = ..., fence: _Optional[_Union[Fence, _Mapping]] = ..., instance: _Optional[str] = ..., session_timeout_ms: _Optional[int] = ..., host_memory: _Optional[bool] = ..., balloon: _Optional[bool] = ..., stats_interval_ms: _Optional[int] = ..., migration: _Optional[bool] = ..., touches_in_chain: _Optional[bool] = ...) -> None: ...

class Chain(_message.Message):
    __slots__ = ("id", "pfn", "order", "touched")
    ID_FIELD_NUMBER: _ClassVar[int]
    PFN_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    TOUCHED_FIELD_NUMBER: _ClassVar[int]
    id: int
    pfn: _containers.RepeatedScalarFieldContainer[int]
    order: _containers.RepeatedScalarFieldContainer[int]
    touched: Touched
    def __init__(self, id: _Optional[int] = ..., pfn: _Optional[_Iterable[int]] = ..., order: _Optional[_Iterable[int]] = ..., touched: _Optional[_Union[Touched, _Mapping]] = ...) -> None: ...

class Touched(_message.Message):
    __slots__ = ("pfn", "count", "seq", "evict_ack")
    PFN_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EVICT_ACK_FIELD_NUMBER: _ClassVar[int]
    pfn: _containers.RepeatedScalarFieldContainer[int]
    count: _containers.RepeatedScalarFieldContainer[int]
    seq: int
    evict_ack: int
    def __init__(self, pfn: _Optional[_Iterable[int]] = ..., count: _Optional[_Iterable[int]] = ..., seq: _Optional[int] = ..., evict_ack: _Optional[int] = ...) -> None: ...

class Pages(_message.Message):
    __slots__ = ("id", "pfn", "actual_pages")
    ID_FIELD_NUMBER: _ClassVar[int]
    PFN_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_PAGES_FIELD_NUMBER: _ClassVar[int]
    id: int
    pfn: _containers.RepeatedScalarFieldContainer[int]
    actual_pages: int
    def __init__(self, id: _Optional[int] = ..., pfn: _Optional[_Iterable[int]] = ..., actual_pages: _Optional[int] = ...) -> None: ...

class BalloonStats(_message.Message):
    __slots__ = ("tag", "value")
    TAG_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    tag: _containers.RepeatedScalarFieldContainer[int]
    value: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tag: _Optional[_Iterable[int]] = ..., value: _Optional[_Iterable[int]] = ...) -> None: ...

class GuestMessage(_message.Message):
    __slots__ = ("chain", "touched", "inflate", "deflate", "stats", "hint", "dirty", "image")
    CHAIN_FIELD_NUMBER: _ClassVar[int]
    TOUCHED_FIELD_NUMBER: _ClassVar[int]
    INFLATE_FIELD_NUMBER: _ClassVar[int]
    DEFLATE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    HINT_FIELD_NUMBER: _ClassVar[int]
    DIRTY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    chain: Chain
    touched: Touched
    inflate: Pages
    deflate: Pages
    stats: BalloonStats
    hint: FreePageHint
    dirty: DirtyLog
    image: ImageChecked
    def __init__(self, chain: _Optional[_Union[Chain, _Mapping]] = ..., touched: _Optional[_Union[Touched, _Mapping]] = ..., inflate: _Optional[_Union[Pages, _Mapping]] = ..., deflate: _Optional[_Union[Pages, _Mapping]] = ..., stats: _Optional[_Union[BalloonStats, _Mapping]] = ..., hint: _Optional[_Union[FreePageHint, _Mapping]] = ..., dirty: _Optional[_Union[DirtyLog, _Mapping]] = ..., image: _Optional[_Union[ImageChecked, _Mapping]] = ...) -> None: ...

class DirtyLog(_message.Message):
    __slots__ = ("round", "pfn", "count", "paused", "more")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PFN_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    round: int
    pfn: _containers.RepeatedScalarFieldContainer[int]
    count: _containers.RepeatedScalarFieldContainer[int]
    paused: bool
    more: bool
    def __init__(self, round: _Optional[int] = ..., pfn: _Optional[_Iterable[int]] = ..., count: _Optional[_Iterable[int]] = ..., paused: _Optional[bool] = ..., more: _Optional[bool] = ...) -> None: ...

class ImageChecked(_message.Message):
    __slots__ = ("image", "pages_checked", "pages_lost", "error")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PAGES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    PAGES_LOST_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    image: str
    pages_checked: int
    pages_lost: int
    error: str
    def __init__(self, image: _Optional[str] = ..., pages_checked: _Optional[int] = ..., pages_lost: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class FreePageHint(_message.Message):
    __slots__ = ("cmd", "cmd_id", "pfn", "order")
    CMD_FIELD_NUMBER: _ClassVar[int]
    CMD_ID_FIELD_NUMBER: _ClassVar[int]
    PFN_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    cmd: bool
    cmd_id: int
    pfn: _containers.RepeatedScalarFieldContainer[int]
    order: int
    def __init__(self, cmd: _Optional[bool] = ..., cmd_id: _Optional[int] = ..., pfn: _Optional[_Iterable[int]] = ..., order: _Optional[int] = ...) -> None: ...

class Used(_message.Message):
    __slots__ = ("id", "discarded_pages", "status", "reason", "detail", "errno", "resident_bytes", "notice", "config")
    ID_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_PAGES_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    NOTICE_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    id: int
    discarded_pages: int
    status: UsedStatus
    reason: str
    detail: str
    errno: int
    resident_bytes: int
    notice: Notice
    config: BalloonConfig
    def __init__(self, id: _Optional[int] = ..., discarded_pages: _Optional[int] = ..., status: _Optional[_Union[UsedStatus, str]] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., errno: _Optional[int] = ..., resident_bytes: _Optional[int] = ..., notice: _Optional[_Union[Notice, _Mapping]] = ..., config: _Optional[_Union[BalloonConfig, _Mapping]] = ...) -> None: ...

class BalloonConfig(_message.Message):
    __slots__ = ("num_pages", "free_page_hint_cmd_id", "dirty_round", "pause", "check_image")
    NUM_PAGES_FIELD_NUMBER: _ClassVar[int]
    FREE_PAGE_HINT_CMD_ID_FIELD_NUMBER: _ClassVar[int]
    DIRTY_ROUND_FIELD_NUMBER: _ClassVar[int]
    PAUSE_FIELD_NUMBER: _ClassVar[int]
    CHECK_IMAGE_FIELD_NUMBER: _ClassVar[int]
    num_pages: int
    free_page_hint_cmd_id: int
    dirty_round: int
    pause: bool
    check_image: str
    def __init__(self, num_pages: _Optional[int] = ..., free_page_hint_cmd_id: _Optional[int] = ..., dirty_round: _Optional[int] = ..., pause: _Optional[bool] = ..., check_image: _Optional[str] = ...) -> None: ...

class Notice(_message.Message):
    __slots__ = ("evicted_pfn", "evicted_count", "touch_seq", "delay_us", "major_faults", "minor_faults", "evict_id")
    EVICTED_PFN_FIELD_NUMBER: _ClassVar[int]
    EVICTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOUCH_SEQ_FIELD_NUMBER: _ClassVar[int]
    DELAY_US_FIELD_NUMBER: _ClassVar[int]
    MAJOR_FAULTS_FIELD_NUMBER: _ClassVar[int]
    MINOR_FAULTS_FIELD_NUMBER: _ClassVar[int]
    EVICT_ID_FIELD_NUMBER: _ClassVar[int]
    evicted_pfn: _containers.RepeatedScalarFieldContainer[int]
    evicted_count: _containers.RepeatedScalarFieldContainer[int]
    touch_seq: int
    delay_us: int
    major_faults: int
    minor_faults: int
    evict_id: int
    def __init__(self, evicted_pfn: _Optional[_Iterable[int]] = ..., evicted_count: _Optional[_Iterable[int]] = ..., touch_seq: _Optional[int] = ..., delay_us: _Optional[int] = ..., major_faults: _Optional[int] = ..., minor_faults: _Optional[int] = ..., evict_id: _Optional[int] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("session", "self_only")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SELF_ONLY_FIELD_NUMBER: _ClassVar[int]
    session: str
    self_only: bool
    def __init__(self, session: _Optional[str] = ..., self_only: _Optional[bool] = ...) -> None: ...

class GuestStats(_message.Message):
    __slots__ = ("guest_id", "ram_bytes", "resident_bytes", "lazily_free_bytes", "discarded_bytes", "reported_bytes", "chains", "refused_chains", "touched_bytes", "poison_skipped_chains", "peak_resident_bytes", "measured_by_kernel", "failed_chains", "sessions", "swapped_bytes", "major_faults", "minor_faults")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RAM_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAZILY_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_BYTES_FIELD_NUMBER: _ClassVar[int]
    REPORTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_CHAINS_FIELD_NUMBER: _ClassVar[int]
    TOUCHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    POISON_SKIPPED_CHAINS_FIELD_NUMBER: _ClassVar[int]
    PEAK_RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    MEASURED_BY_KERNEL_FIELD_NUMBER: _ClassVar[int]
    FAILED_CHAINS_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    SWAPPED_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAJOR_FAULTS_FIELD_NUMBER: _ClassVar[int]
    MINOR_FAULTS_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    ram_bytes: int
    resident_bytes: int
    lazily_free_bytes: int
    discarded_bytes: int
    reported_bytes: int
    chains: int
    refused_chains: int
    touched_bytes: int
    poison_skipped_chains: int
    peak_resident_bytes: int
    measured_by_kernel: bool
    failed_chains: int
    sessions: int
    swapped_bytes: int
    major_faults: int
    minor_faults: int
    def __init__(self, guest_id: _Optional[str] = ..., ram_bytes: _Optional[int] = ..., resident_bytes: _Optional[int] = ..., lazily_free_bytes: _Optional[int] = ..., discarded_bytes: _Optional[int] = ..., reported_bytes: _Optional[int] = ..., chains: _Optional[int] = ..., refused_chains: _Optional[int] = ..., touched_bytes: _Optional[int] = ..., poison_skipped_chains: _Optional[int] = ..., peak_resident_bytes: _Optional[int] = ..., measured_by_kernel: _Optional[bool] = ..., failed_chains: _Optional[int] = ..., sessions: _Optional[int] = ..., swapped_bytes: _Optional[int] = ..., major_faults: _Optional[int] = ..., minor_faults: _Optional[int] = ...) -> None: ...

class HostStats(_message.Message):
    __slots__ = ("guests", "capacity_bytes", "resident_bytes", "peak_resident_bytes", "reclaimed_bytes", "chains", "refused_chains", "refusals", "backend", "self", "failed_chains", "discard_errors", "instance", "host_memory_bytes", "swap_bytes", "swap_used_bytes", "swap_ins", "swap_outs", "oom_kills", "vmm_overhead_bytes")
    class RefusalsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class DiscardErrorsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    GUESTS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PEAK_RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECLAIMED_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHAINS_FIELD_NUMBER: _ClassVar[int]
    REFUSED_CHAINS_FIELD_NUMBER: _ClassVar[int]
    REFUSALS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SELF_FIELD_NUMBER: _ClassVar[int]
    FAILED_CHAINS_FIELD_NUMBER: _ClassVar[int]
    DISCARD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    HOST_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    SWAP_BYTES_FIELD_NUMBER: _ClassVar[int]
    SWAP_USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    SWAP_INS_FIELD_NUMBER: _ClassVar[int]
    SWAP_OUTS_FIELD_NUMBER: _ClassVar[int]
    OOM_KILLS_FIELD_NUMBER: _ClassVar[int]
    VMM_OVERHEAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    guests: _containers.RepeatedCompositeFieldContainer[GuestStats]
    capacity_bytes: int
    resident_bytes: int
    peak_resident_bytes: int
    reclaimed_bytes: int
    chains: int
    refused_chains: int
    refusals: _containers.ScalarMap[str, int]
    backend: str
    self: GuestStats
    failed_chains: int
    discard_errors: _containers.ScalarMap[str, int]
    instance: str
    host_memory_bytes: int
    swap_bytes: int
    swap_used_bytes: int
    swap_ins: int
    swap_outs: int
    oom_kills: int
    vmm_overhead_bytes: int
    def __init__(self_, guests: _Optional[_Iterable[_Union[GuestStats, _Mapping]]] = ..., capacity_bytes: _Optional[int] = ..., resident_bytes: _Optional[int] = ..., peak_resident_bytes: _Optional[int] = ..., reclaimed_bytes: _Optional[int] = ..., chains: _Optional[int] = ..., refused_chains: _Optional[int] = ..., refusals: _Optional[_Mapping[str, int]] = ..., backend: _Optional[str] = ..., self: _Optional[_Union[GuestStats, _Mapping]] = ..., failed_chains: _Optional[int] = ..., discard_errors: _Optional[_Mapping[str, int]] = ..., instance: _Optional[str] = ..., host_memory_bytes: _Optional[int] = ..., swap_bytes: _Optional[int] = ..., swap_used_bytes: _Optional[int] = ..., swap_ins: _Optional[int] = ..., swap_outs: _Optional[int] = ..., oom_kills: _Optional[int] = ..., vmm_overhead_bytes: _Optional[int] = ...) -> None: ...

class BalloonRequest(_message.Message):
    __slots__ = ("guest_id", "set_target", "target_bytes")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SET_TARGET_FIELD_NUMBER: _ClassVar[int]
    TARGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    set_target: bool
    target_bytes: int
    def __init__(self, guest_id: _Optional[str] = ..., set_target: _Optional[bool] = ..., target_bytes: _Optional[int] = ...) -> None: ...

class BalloonStatus(_message.Message):
    __slots__ = ("guest_id", "balloon", "target_bytes", "actual_bytes", "stats", "stats_age_ms", "inflated_pages", "deflated_pages")
    class StatsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BALLOON_FIELD_NUMBER: _ClassVar[int]
    TARGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    ACTUAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    STATS_AGE_MS_FIELD_NUMBER: _ClassVar[int]
    INFLATED_PAGES_FIELD_NUMBER: _ClassVar[int]
    DEFLATED_PAGES_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    balloon: bool
    target_bytes: int
    actual_bytes: int
    stats: _containers.ScalarMap[str, int]
    stats_age_ms: int
    inflated_pages: int
    deflated_pages: int
    def __init__(self, guest_id: _Optional[str] = ..., balloon: _Optional[bool] = ..., target_bytes: _Optional[int] = ..., actual_bytes: _Optional[int] = ..., stats: _Optional[_Mapping[str, int]] = ..., stats_age_ms: _Optional[int] = ..., inflated_pages: _Optional[int] = ..., deflated_pages: _Optional[int] = ...) -> None: ...

class HintRequest(_message.Message):
    __slots__ = ("guest_id", "action", "acknowledge_on_stop")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGE_ON_STOP_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    action: HintAction
    acknowledge_on_stop: bool
    def __init__(self, guest_id: _Optional[str] = ..., action: _Optional[_Union[HintAction, str]] = ..., acknowledge_on_stop: _Optional[bool] = ...) -> None: ...

class HintStatus(_message.Message):
    __slots__ = ("guest_id", "hinting", "host_cmd", "has_guest_cmd", "guest_cmd", "hinted_pages", "runs")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    HINTING_FIELD_NUMBER: _ClassVar[int]
    HOST_CMD_FIELD_NUMBER: _ClassVar[int]
    HAS_GUEST_CMD_FIELD_NUMBER: _ClassVar[int]
    GUEST_CMD_FIELD_NUMBER: _ClassVar[int]
    HINTED_PAGES_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    hinting: bool
    host_cmd: int
    has_guest_cmd: bool
    guest_cmd: int
    hinted_pages: int
    runs: int
    def __init__(self, guest_id: _Optional[str] = ..., hinting: _Optional[bool] = ..., host_cmd: _Optional[int] = ..., has_guest_cmd: _Optional[bool] = ..., guest_cmd: _Optional[int] = ..., hinted_pages: _Optional[int] = ..., runs: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("guest_id", "use_hints", "unsafe_trust_hints", "max_rounds")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    USE_HINTS_FIELD_NUMBER: _ClassVar[int]
    UNSAFE_TRUST_HINTS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    use_hints: bool
    unsafe_trust_hints: bool
    max_rounds: int
    def __init__(self, guest_id: _Optional[str] = ..., use_hints: _Optional[bool] = ..., unsafe_trust_hints: _Optional[bool] = ..., max_rounds: _Optional[int] = ...) -> None: ...

class SnapshotReport(_message.Message):
    __slots__ = ("guest_id", "pages_copied", "pages_skipped", "zero_pages", "rounds", "downtime_us", "total_us", "pages_checked", "pages_lost", "hinted_pages", "image")
    GUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PAGES_COPIED_FIELD_NUMBER: _ClassVar[int]
    PAGES_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    ZERO_PAGES_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    DOWNTIME_US_FIELD_NUMBER: _ClassVar[int]
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    PAGES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    PAGES_LOST_FIELD_NUMBER: _ClassVar[int]
    HINTED_PAGES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    guest_id: str
    pages_copied: int
    pages_skipped: int
    zero_pages: int
    rounds: int
    downtime_us: int
    total_us: int
    pages_checked: int
    pages_lost: int
    hinted_pages: int
    image: str
    def __init__(self, guest_id: _Optional[str] = ..., pages_copied: _Optional[int] = ..., pages_skipped: _Optional[int] = ..., zero_pages: _Optional[int] = ..., rounds: _Optional[int] = ..., downtime_us: _Optional[int] = ..., total_us: _Optional[int] = ..., pages_checked: _Optional[int] = ..., pages_lost: _Optional[int] = ..., hinted_pages: _Optional[int] = ..., image: _Optional[str] = ...) -> None: ...

class CloseRequest(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: str
    def __init__(self, session: _Optional[str] = ...) -> None: ...

class CloseReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
