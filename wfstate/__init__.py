"""wfstate: a crash-safe write-ahead-log state store for workflow engines.

The public surface is re-exported here; everything else is internal and may change.
"""

from wfstate.errors import (
    BackendError,
    ClosedError,
    CorruptionError,
    FormatVersionError,
    LockTimeoutError,
    NotFoundError,
    SchemaVersionError,
    StaleOwnerError,
    StorePoisonedError,
    TornWriteError,
    TransactionError,
    ValidationError,
    WfstateError,
)
from wfstate.format import FORMAT_VERSION
from wfstate.model import SCHEMA_VERSION
from wfstate.schema import SchemaUpgrades
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
    "SCHEMA_VERSION",
    "BackendError",
    "ClosedError",
    "Compression",
    "CorruptionError",
    "Durability",
    "FormatVersionError",
    "LockTimeoutError",
    "Log",
    "LogDamage",
    "NotFoundError",
    "Record",
    "RecoveryMode",
    "SchemaUpgrades",
    "SchemaVersionError",
    "StaleOwnerError",
    "StorePoisonedError",
    "TornWriteError",
    "TransactionError",
    "ValidationError",
    "WfstateError",
    "__version__",
]
