"""wfstate: a crash-safe write-ahead-log state store for workflow engines.

The public surface is re-exported here; everything else is internal and may change.
"""

from wfstate.api import MILESTONE_TAG, AutoCheckpoints, WorkflowStore, open_store
from wfstate.asyncapi import AsyncWorkflowStore
from wfstate.backends.local import LocalStore, Session
from wfstate.backends.memory import MemoryStore
from wfstate.checkpointindex import CheckpointInfo, CheckpointType
from wfstate.checkpointpolicy import MANUAL_ONLY, CheckpointPolicy
from wfstate.checkpointreports import (
    CheckpointCheck,
    CompactionReport,
    RecoverySuggestion,
    StoreStats,
)
from wfstate.config import PRESETS, StoreConfig, resolve_config
from wfstate.durable import DurableRun, StepRecord
from wfstate.errors import (
    BackendError,
    ClosedError,
    CorruptionError,
    FormatVersionError,
    LockTimeoutError,
    NotFoundError,
    SchemaVersionError,
    StaleOwnerError,
    StepFailedError,
    StorageIOError,
    StorePoisonedError,
    SyncFailedError,
    TornWriteError,
    TransactionError,
    ValidationError,
    WfstateError,
)
from wfstate.format import FORMAT_VERSION
from wfstate.hooks import (
    CheckpointCreated,
    Event,
    Hooks,
    Recovery,
    SessionEnded,
    SessionStarted,
    StepCompleted,
    StepFailed,
    StepStarted,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from wfstate.metrics import Alert, Metrics, MetricsSnapshot, OperationStats, Thresholds
from wfstate.model import SCHEMA_VERSION, WorkflowContext, WorkflowState, WorkflowStep
from wfstate.mutations import (
    CreateWorkflow,
    DeleteWorkflow,
    Mutation,
    PutStepOutput,
    ReplaceState,
    SetAgentState,
    SetStepStatus,
    SetWorkflowStatus,
    UpdateContext,
)
from wfstate.retention import RetentionPlan, RetentionPolicy
from wfstate.schema import SchemaUpgrades
from wfstate.sessions import CrashedSession, SessionInfo, WorkflowPlan
from wfstate.store import Store
from wfstate.wal import (
    Compression,
    Durability,
    Log,
    LogDamage,
    Record,
    RecoveryMode,
)

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "MANUAL_ONLY",
    "MILESTONE_TAG",
    "PRESETS",
    "SCHEMA_VERSION",
    "Alert",
    "AsyncWorkflowStore",
    "AutoCheckpoints",
    "BackendError",
    "CheckpointCheck",
    "CheckpointCreated",
    "CheckpointInfo",
    "CheckpointPolicy",
    "CheckpointType",
    "ClosedError",
    "CompactionReport",
    "Compression",
    "CorruptionError",
    "CrashedSession",
    "CreateWorkflow",
    "DeleteWorkflow",
    "Durability",
    "DurableRun",
    "Event",
    "FormatVersionError",
    "Hooks",
    "LocalStore",
    "LockTimeoutError",
    "Log",
    "LogDamage",
    "MemoryStore",
    "Metrics",
    "MetricsSnapshot",
    "Mutation",
    "NotFoundError",
    "OperationStats",
    "PutStepOutput",
    "Record",
    "Recovery",
    "RecoveryMode",
    "RecoverySuggestion",
    "ReplaceState",
    "RetentionPlan",
    "RetentionPolicy",
    "SchemaUpgrades",
    "SchemaVersionError",
    "Session",
    "SessionEnded",
    "SessionInfo",
    "SessionStarted",
    "SetAgentState",
    "SetStepStatus",
    "SetWorkflowStatus",
    "StaleOwnerError",
    "StepCompleted",
    "StepFailed",
    "StepFailedError",
    "StepRecord",
    "StepStarted",
    "StorageIOError",
    "Store",
    "StoreConfig",
    "StorePoisonedError",
    "StoreStats",
    "SyncFailedError",
    "Thresholds",
    "TornWriteError",
    "TransactionError",
    "UpdateContext",
    "ValidationError",
    "WfstateError",
    "WorkflowCompleted",
    "WorkflowContext",
    "WorkflowFailed",
    "WorkflowPlan",
    "WorkflowStarted",
    "WorkflowState",
    "WorkflowStep",
    "WorkflowStore",
    "__version__",
    "open_store",
    "resolve_config",
]
