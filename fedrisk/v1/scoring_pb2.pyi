from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Purpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PURPOSE_UNSPECIFIED: _ClassVar[Purpose]
    APPLICATION: _ClassVar[Purpose]
    PREAPPROVAL: _ClassVar[Purpose]
    MONITORING: _ClassVar[Purpose]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    APPROVE: _ClassVar[Outcome]
    DECLINE: _ClassVar[Outcome]
    REFER: _ClassVar[Outcome]

class PartyState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PARTY_STATE_UNSPECIFIED: _ClassVar[PartyState]
    COVERED: _ClassVar[PartyState]
    NOT_COVERED: _ClassVar[PartyState]
    UNAVAILABLE: _ClassVar[PartyState]
    TIMEOUT: _ClassVar[PartyState]
    CIRCUIT_OPEN: _ClassVar[PartyState]

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    SCORECARD: _ClassVar[ModelKind]
    TREE_ROUTING: _ClassVar[ModelKind]
    STACK: _ClassVar[ModelKind]

class Branch(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BRANCH_UNSPECIFIED: _ClassVar[Branch]
    LEFT: _ClassVar[Branch]
    RIGHT: _ClassVar[Branch]
PURPOSE_UNSPECIFIED: Purpose
APPLICATION: Purpose
PREAPPROVAL: Purpose
MONITORING: Purpose
OUTCOME_UNSPECIFIED: Outcome
APPROVE: Outcome
DECLINE: Outcome
REFER: Outcome
PARTY_STATE_UNSPECIFIED: PartyState
COVERED: PartyState
NOT_COVERED: PartyState
UNAVAILABLE: PartyState
TIMEOUT: PartyState
CIRCUIT_OPEN: PartyState
MODEL_KIND_UNSPECIFIED: ModelKind
SCORECARD: ModelKind
TREE_ROUTING: ModelKind
STACK: ModelKind
BRANCH_UNSPECIFIED: Branch
LEFT: Branch
RIGHT: Branch

class Application(_message.Message):
    __slots__ = ("application_id", "sme_id", "declared_annual_revenue", "requested_amount", "features", "estimate_only", "purpose")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    SME_ID_FIELD_NUMBER: _ClassVar[int]
    DECLARED_ANNUAL_REVENUE_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    ESTIMATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    application_id: str
    sme_id: str
    declared_annual_revenue: float
    requested_amount: float
    features: _containers.ScalarMap[str, float]
    estimate_only: bool
    purpose: Purpose
    def __init__(self, application_id: _Optional[str] = ..., sme_id: _Optional[str] = ..., declared_annual_revenue: _Optional[float] = ..., requested_amount: _Optional[float] = ..., features: _Optional[_Mapping[str, float]] = ..., estimate_only: _Optional[bool] = ..., purpose: _Optional[_Union[Purpose, str]] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("party", "code", "text")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    party: str
    code: str
    text: str
    def __init__(self, party: _Optional[str] = ..., code: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class PartyStatus(_message.Message):
    __slots__ = ("party", "state", "latency_ms", "detail", "points")
    PARTY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    party: str
    state: PartyState
    latency_ms: float
    detail: str
    points: float
    def __init__(self, party: _Optional[str] = ..., state: _Optional[_Union[PartyState, str]] = ..., latency_ms: _Optional[float] = ..., detail: _Optional[str] = ..., points: _Optional[float] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("application_id", "sme_id", "outcome", "probability_of_default", "score", "credit_limit", "currency", "risk_band", "reasons", "parties", "model_version", "policy_version", "latency_ms", "degraded", "recorded", "index", "points")
    APPLICATION_ID_FIELD_NUMBER: _ClassVar[int]
    SME_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_OF_DEFAULT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CREDIT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    RISK_BAND_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    RECORDED_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    application_id: str
    sme_id: str
    outcome: Outcome
    probability_of_default: float
    score: int
    credit_limit: int
    currency: str
    risk_band: str
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    parties: _containers.RepeatedCompositeFieldContainer[PartyStatus]
    model_version: str
    policy_version: str
    latency_ms: float
    degraded: bool
    recorded: bool
    index: int
    points: float
    def __init__(self, application_id: _Optional[str] = ..., sme_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., probability_of_default: _Optional[float] = ..., score: _Optional[int] = ..., credit_limit: _Optional[int] = ..., currency: _Optional[str] = ..., risk_band: _Optional[str] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., parties: _Optional[_Iterable[_Union[PartyStatus, _Mapping]]] = ..., model_version: _Optional[str] = ..., policy_version: _Optional[str] = ..., latency_ms: _Optional[float] = ..., degraded: _Optional[bool] = ..., recorded: _Optional[bool] = ..., index: _Optional[int] = ..., points: _Optional[float] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeDescription(_message.Message):
    __slots__ = ("model_version", "policy_version", "label_holder", "feature_holders", "bank_features", "id_format", "sandbox", "parties")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_HOLDER_FIELD_NUMBER: _ClassVar[int]
    FEATURE_HOLDERS_FIELD_NUMBER: _ClassVar[int]
    BANK_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ID_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    PARTIES_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    policy_version: str
    label_holder: str
    feature_holders: _containers.RepeatedScalarFieldContainer[str]
    bank_features: _containers.RepeatedScalarFieldContainer[str]
    id_format: str
    sandbox: str
    parties: _containers.RepeatedCompositeFieldContainer[PartyStatus]
    def __init__(self, model_version: _Optional[str] = ..., policy_version: _Optional[str] = ..., label_holder: _Optional[str] = ..., feature_holders: _Optional[_Iterable[str]] = ..., bank_features: _Optional[_Iterable[str]] = ..., id_format: _Optional[str] = ..., sandbox: _Optional[str] = ..., parties: _Optional[_Iterable[_Union[PartyStatus, _Mapping]]] = ...) -> None: ...

class PartyScoreRequest(_message.Message):
    __slots__ = ("request_id", "model_version", "kind", "sme_ids", "max_reasons", "deadline_ms", "split_ids", "bases")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SME_IDS_FIELD_NUMBER: _ClassVar[int]
    MAX_REASONS_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_MS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_IDS_FIELD_NUMBER: _ClassVar[int]
    BASES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    model_version: str
    kind: ModelKind
    sme_ids: _containers.RepeatedScalarFieldContainer[str]
    max_reasons: int
    deadline_ms: int
    split_ids: _containers.RepeatedScalarFieldContainer[int]
    bases: _containers.RepeatedCompositeFieldContainer[BaseModelRequest]
    def __init__(self, request_id: _Optional[str] = ..., model_version: _Optional[str] = ..., kind: _Optional[_Union[ModelKind, str]] = ..., sme_ids: _Optional[_Iterable[str]] = ..., max_reasons: _Optional[int] = ..., deadline_ms: _Optional[int] = ..., split_ids: _Optional[_Iterable[int]] = ..., bases: _Optional[_Iterable[_Union[BaseModelRequest, _Mapping]]] = ...) -> None: ...

class BaseModelRequest(_message.Message):
    __slots__ = ("model_version", "kind", "max_reasons", "split_ids")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MAX_REASONS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_IDS_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    kind: ModelKind
    max_reasons: int
    split_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model_version: _Optional[str] = ..., kind: _Optional[_Union[ModelKind, str]] = ..., max_reasons: _Optional[int] = ..., split_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class BaseModelPart(_message.Message):
    __slots__ = ("model_version", "scorecard", "routing")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SCORECARD_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    scorecard: ScorecardPart
    routing: TreeRouting
    def __init__(self, model_version: _Optional[str] = ..., scorecard: _Optional[_Union[ScorecardPart, _Mapping]] = ..., routing: _Optional[_Union[TreeRouting, _Mapping]] = ...) -> None: ...

class ScorecardPart(_message.Message):
    __slots__ = ("partial_score", "reasons")
    PARTIAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    partial_score: float
    reasons: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, partial_score: _Optional[float] = ..., reasons: _Optional[_Iterable[str]] = ...) -> None: ...

class TreeRouting(_message.Message):
    __slots__ = ("branches",)
    class BranchesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: Branch
        def __init__(self, key: _Optional[int] = ..., value: _Optional[_Union[Branch, str]] = ...) -> None: ...
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    branches: _containers.ScalarMap[int, Branch]
    def __init__(self, branches: _Optional[_Mapping[int, Branch]] = ...) -> None: ...

class PartyAnswer(_message.Message):
    __slots__ = ("sme_id", "state", "scorecard", "routing", "parts")
    SME_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SCORECARD_FIELD_NUMBER: _ClassVar[int]
    ROUTING_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    sme_id: str
    state: PartyState
    scorecard: ScorecardPart
    routing: TreeRouting
    parts: _containers.RepeatedCompositeFieldContainer[BaseModelPart]
    def __init__(self, sme_id: _Optional[str] = ..., state: _Optional[_Union[PartyState, str]] = ..., scorecard: _Optional[_Union[ScorecardPart, _Mapping]] = ..., routing: _Optional[_Union[TreeRouting, _Mapping]] = ..., parts: _Optional[_Iterable[_Union[BaseModelPart, _Mapping]]] = ...) -> None: ...

class PartyScoreResponse(_message.Message):
    __slots__ = ("request_id", "party", "model_version", "answers", "error_code", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PARTY_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    party: str
    model_version: str
    answers: _containers.RepeatedCompositeFieldContainer[PartyAnswer]
    error_code: int
    error: str
    def __init__(self, request_id: _Optional[str] = ..., party: _Optional[str] = ..., model_version: _Optional[str] = ..., answers: _Optional[_Iterable[_Union[PartyAnswer, _Mapping]]] = ..., error_code: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...
