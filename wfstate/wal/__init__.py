"""The write-ahead log: segments of checksummed, chained, compressed records (docs/format.md)."""

from wfstate.format import LogStart
from wfstate.wal.codec import Compression
from wfstate.wal.log import DEFAULT_SEGMENT_SIZE, DURABILITY_LEVELS, Durability, Log
from wfstate.wal.reader import (
    RECOVERY_MODES,
    LogDamage,
    LogScan,
    Record,
    RecoveryMode,
    list_segments,
)

__all__ = [
    "DEFAULT_SEGMENT_SIZE",
    "DURABILITY_LEVELS",
    "RECOVERY_MODES",
    "Compression",
    "Durability",
    "Log",
    "LogDamage",
    "LogScan",
    "LogStart",
    "Record",
    "RecoveryMode",
    "list_segments",
]
