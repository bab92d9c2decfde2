"""The write-ahead log: append records durably, read them back, survive crashes.

Durability levels (DESIGN.md §4), named by what they can lose:

* ``always``: ``append`` returns once its record is covered by a completed ``fdatasync``.
  Group commit: threads appending at the same time share one ``write`` and one ``fdatasync``
  (the first to find no flush running becomes the leader and takes everything queued; there is
  no deliberate delay). Loses nothing on a process or OS crash.
* ``interval``: ``append`` returns after ``write()``; a background thread syncs every
  ``sync_interval_ms``. Loses nothing on a process crash, up to that interval on an OS crash.
* ``none``: ``append`` returns after ``write()``; the OS flushes when it likes. Loses nothing
  on a process crash, everything since the OS last flushed on an OS crash.

Whatever the level, before a segment is left for the next one it is fsynced, ``sync()`` makes
everything appended durable, and ``close()`` syncs.

Dictionaries (docs/format.md §2.1.1, §2.3): under zstd with ``Compression.dictionary``, the
writer samples the payloads it writes while its segment has none, trains a dictionary once the
sample is large enough (:data:`DICTIONARY_TRIGGER`), and rotates to a segment carrying it
("dictionary rotation", like a full segment's rotation: the old segment synced first); a full
segment's successor inherits the dictionary. Threads compress outside the lock with the
dictionary of the segment they expect; the writer, which alone knows where a record lands,
recompresses a codec-3 record whose dictionary is not its segment's (only around a rotation),
so no record is ever written with another segment's dictionary.

Several processes (or several ``Log`` handles) may open one log (docs/format.md §8). Only the
holder of the writers' lock appends: a handle takes the lock when it has records to write (its
*tenure*), catches up on what other writers appended (handing their records to ``on_foreign``)
and repairs what a writer that died holding the lock left, assigns LSNs, writes and syncs, writes
the durability hint, and gives the lock back once nothing is queued. Readers take no lock
(:meth:`Log.follow`). A handle that has held the lock for ``_MAX_TENURE_S`` while its own threads
kept it busy lets it go for ``_YIELD_PAUSE_S``, so other processes get a turn.

The beginning of the log can be discarded (:meth:`Log.discard_before`, docs/format.md §2.2):
``wal/START`` then names the first segment and carries an *anchor*, opaque bytes from the layer
above that stand in for the records discarded. A handle whose view ends in a segment another
handle discarded continues from START when it catches up, handing the anchor to
``on_discard`` before the records from START's segment.

A failed write or sync *poisons* the log: the failing append and every later one raise
:class:`StorePoisonedError`; nothing is retried (after a failed fsync the kernel may have
dropped the pages and report later fsyncs as successful). Reopening recovers from the disk.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, Literal, NamedTuple

from wfstate.errors import (
    ClosedError,
    CorruptionError,
    LockTimeoutError,
    NotFoundError,
    StorePoisonedError,
    ValidationError,
)
from wfstate.format import (
    CODEC_ZSTD_DICT,
    FLAG_AFTER_SYNC,
    HINT_SIZE,
    LOCK_FILE,
    MAX_PAYLOAD,
    RECORD_DATA,
    RECORD_HEADER_SIZE,
    START_MIN_SEQ,
    LogStart,
    SegmentHeader,
    frame_record,
    pack_hint,
    pad8,
    read_hint,
    segment_name,
    unpack_hint,
)
from wfstate.fs import OS_FS, FileSystem, make_dirs
from wfstate.wal.codec import (
    DICTIONARY_MAX_PAYLOAD,
    Compression,
    Dictionary,
    compress,
    train_dictionary,
)
from wfstate.wal.index import RecordIndex, read_record_at
from wfstate.wal.reader import (
    DamageCallback,
    LogDamage,
    LogScan,
    Record,
    RecoveryMode,
    TailPosition,
    check_mode,
    log_files,
)
from wfstate.wal.recovery import create_segment, delete_segments, recover
from wfstate.wal.segment import SegmentFile, read_head, read_segment_header
from wfstate.wal.start import write_start
from wfstate.wal.tail import Followed, follow

Durability = Literal["always", "interval", "none"]
DURABILITY_LEVELS: Final[tuple[Durability, ...]] = ("always", "interval", "none")
DEFAULT_SEGMENT_SIZE: Final = 16 * 1024 * 1024
DEFAULT_MAX_RECORD_SIZE: Final = 16 * 1024 * 1024

DEFAULT_LOCK_TIMEOUT: Final = 30.0

_LOGGER: Final = logging.getLogger("wfstate.wal")

# A prepared record: (type, codec, raw length, stored body, payload, dictionary compressed with)
_Prepared = tuple[int, int, int, bytes, bytes, Dictionary | None]
# A queued record: (lsn, *prepared)
_Queued = tuple[int, int, int, int, bytes, bytes, Dictionary | None]
ForeignCallback = Callable[[Record], None]
DiscardCallback = Callable[[bytes, int], None]
SyncObserver = Callable[[float], None]

#: Waiting for the writers' lock polls it, backing off from the first delay to the last.
_FIRST_POLL_S: Final = 0.00005
_LAST_POLL_S: Final = 0.001
#: Fairness between processes (module docstring).
_MAX_TENURE_S: Final = 0.05
_YIELD_PAUSE_S: Final = 0.002


class DictionaryTrigger(NamedTuple):
    """When a writer trains a dictionary (docs/format.md §2.3), and how large a one."""

    min_bytes: int
    """Raw payload bytes the sample must hold."""
    min_samples: int
    """Payloads the sample must hold."""
    max_samples: int
    """The sample keeps the last this many payloads ..."""
    max_bytes: int
    """... and at most this many bytes of them."""
    size: int
    """The dictionary's size in bytes."""


#: 256 KiB and 100 payloads: zstd's trainer wants about 100 samples and ten times the
#: dictionary's size to learn from (fewer gives a dictionary that saves less than plain zstd on
#: ~1 KB records); on the store's ~1 KB records that is ~250 records, well inside the first
#: 16 MiB segment, and training on it takes ~0.05 s once per writer. 16 KiB is where the saving
#: on the fixture records levels off (67-69 % against JSON, against 41 % without).
DICTIONARY_TRIGGER = DictionaryTrigger(
    min_bytes=256 * 1024, min_samples=100, max_samples=1000, max_bytes=2 * 1024 * 1024, size=16384
)


def _positive_int(field: str, value: object, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValidationError(field, f"must be an int >= {minimum}, not {value!r}")
    return value


class Log:
    """An open write-ahead log in one directory. Thread-safe. Create with :meth:`open`."""

    def __init__(self, *, _token: object) -> None:
        if _token is not _OPEN_TOKEN:
            raise TypeError("use Log.open(path, ...)")
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[_Queued] = []
        self._flushing = False
        self._closed = False
        self._poison: BaseException | None = None
        self._sync_failed = False
        self._syncer: threading.Thread | None = None
        self._stop_syncer = threading.Event()
        self._payload_bytes = 0  # of the records this handle queued: before compression
        self._stored_bytes = 0  # and after
        # the writers' lock (docs/format.md §8)
        self._tenure = False  # this handle holds it
        self._tenure_since = 0.0
        self._reserved = 0  # open writing() blocks; the lock is kept while any is open
        self._polling = False  # one thread at a time polls for the lock
        self._yielding = False
        self._resume_at = 0.0  # after yielding, do not take the lock back before this
        self._index = RecordIndex()  # records read, written or followed by this handle
        self._start: LogStart | None = None  # the log start this handle's view is under
        self._new_segment_at: set[int] = set()  # LSNs that must begin a segment (start_segment)
        self._on_sync: SyncObserver | None = None
        # dictionaries (module docstring); the writer alone (flush leader or lock holder)
        # touches the sample and the stored-bytes correction
        self._dictionary: Dictionary | None = None  # the current segment's
        self._samples: collections.deque[bytes] = collections.deque()
        self._sample_bytes = 0
        self._trained = False  # this handle trained (or failed to): never again
        self._stored_correction = 0  # stored bytes changed by recompressing in the writer
        self.dictionary_trigger = DICTIONARY_TRIGGER
        """When this handle trains a dictionary (tests make it small)."""

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        path: str,
        *,
        durability: Durability = "always",
        sync_interval_ms: int = 100,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        compression: Compression | None = None,
        max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
        mode: RecoveryMode = "tolerate_torn_tail",
        on_damage: DamageCallback | None = None,
        on_foreign: ForeignCallback | None = None,
        on_discard: DiscardCallback | None = None,
        lock_path: str | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        epoch: int | None = None,
        fs: FileSystem = OS_FS,
    ) -> Log:
        """Open (creating if needed) the log in directory ``path``, recovering it first.

        Recovery follows ``mode`` (docs/format.md §6) and runs holding the writers' lock
        (``lock_path``, default ``<path>/LOCK``; waited for up to ``lock_timeout`` seconds, then
        ``LockTimeoutError``, which is retryable); everything it found is in :attr:`recovery`,
        and each item is also passed to ``on_damage``. When ``open`` returns, every record in
        the log is durable (the tail segment and directory are synced), so the ``AFTER_SYNC``
        flags written from here on are truthful. ``on_foreign`` receives, in LSN order, each
        record another process or handle appended, when this handle catches up (in
        :meth:`writing` and :meth:`follow`, on the calling thread, with this log's internal
        lock held: it must not call back into the log); if it raises, the log is poisoned (this
        view has passed records its owner did not take). ``on_discard(anchor, first_lsn)`` is
        called, under the same rules, when catching up finds that another handle discarded the
        segment this handle's view ends in: the log now starts at ``first_lsn`` and ``anchor``
        stands in for every record before it; it is called before any record from
        ``first_lsn`` on goes to ``on_foreign``, and the records this handle skipped are never
        delivered (see :meth:`discard_before`). ``epoch`` is used only when a new log is
        created (tests pin it for golden bytes). Options are validated before anything is
        created; a bad one raises ``ValidationError`` naming it.
        """
        compression = check_options(
            durability=durability,
            sync_interval_ms=sync_interval_ms,
            segment_size=segment_size,
            max_record_size=max_record_size,
            mode=mode,
            epoch=epoch,
            compression=compression,
            lock_timeout=lock_timeout,
        )
        if lock_path is None:
            if not fs.is_dir(path):
                make_dirs(fs, path)  # recovery makes it durable; the lock file needs it now
            lock_path = os.path.join(path, LOCK_FILE)

        log = cls(_token=_OPEN_TOKEN)
        log._fs = fs
        log._dir = path
        log._durability = durability
        log._sync_interval = sync_interval_ms / 1000
        log._segment_size = segment_size
        log._compression = compression
        log._max_record = max_record_size
        log._mode = mode
        log._on_damage = on_damage
        log._on_foreign = on_foreign
        log._on_discard = on_discard
        log._lock_timeout = float(lock_timeout)
        log._lock = fs.open_lock(lock_path)
        try:
            log._lock_and_recover(epoch)
        except BaseException:
            fs.close_lock(log._lock)
            raise
        if durability == "interval":
            log._syncer = threading.Thread(
                target=log._sync_periodically, name="wfstate-log-sync", daemon=True
            )
            log._syncer.start()
        return log

    def _lock_and_recover(self, epoch: int | None) -> None:
        """Recover under the writers' lock, make the tail durable, rewrite the hint."""
        fs = self._fs
        with self._cond:
            self._acquire_file_lock()
        try:
            recovered = recover(
                fs,
                self._dir,
                mode=self._mode,
                on_damage=self._on_damage,
                epoch=epoch,
                hint=fs.read_lock_data(self._lock, HINT_SIZE),
            )
            self.recovery = recovered.damage
            self._start = recovered.start
            tail = recovered.tail
            self.epoch = tail.epoch
            fd = fs.open_append(tail.segment.path)
            try:
                fs.fsync(fd)
                fs.fsync_dir(self._dir)
                # Every record is durable now: a hint left from before a crash (or by a log
                # this recovery shortened) must not outlive this point (format §8.1).
                fs.write_lock_data(self._lock, pack_hint(tail.epoch, tail.next_lsn - 1))
            except BaseException:
                fs.close(fd)
                raise
        finally:
            fs.unlock(self._lock)
        self._fd = fd
        self._move_to(tail)
        self._written_lsn = self._durable_lsn = tail.next_lsn - 1

    def _lock_timed_out(self) -> LockTimeoutError:
        return LockTimeoutError(
            f"log {self._dir}: the writers' lock was not free within {self._lock_timeout} s "
            "(lock_timeout)"
        )

    # attributes set by open()
    _fs: FileSystem
    _dir: str
    _durability: Durability
    _sync_interval: float
    _segment_size: int
    _compression: Compression
    _max_record: int
    _mode: RecoveryMode
    _on_damage: DamageCallback | None
    _on_foreign: ForeignCallback | None
    _on_discard: DiscardCallback | None
    _lock_timeout: float
    _lock: object
    _segment: SegmentFile
    _segment_bytes: int
    _segment_records: int
    _seed: int
    _next_lsn: int
    _fd: int
    _written_lsn: int
    _durable_lsn: int
    epoch: int
    """The store epoch all segments of this log carry."""
    recovery: list[LogDamage]
    """What recovery found (and repaired) when this log was opened, then what catching up on
    other writers repaired (a torn tail left by a process that died holding the lock)."""

    # -- state --------------------------------------------------------------------------------
    @property
    def appended_bytes(self) -> tuple[int, int]:
        """``(payload, stored)``: the bytes of the records this handle appended since it was
        opened, before and after compression (record framing excluded)."""
        with self._cond:
            return self._payload_bytes, self._stored_bytes + self._stored_correction

    @property
    def path(self) -> str:
        """The log directory."""
        return self._dir

    @property
    def last_lsn(self) -> int:
        """LSN of the last record appended (acknowledged or not yet); 0 for an empty log."""
        with self._cond:
            return self._next_lsn - 1

    @property
    def first_lsn(self) -> int:
        """The first LSN of the log as this handle sees it: 1, or START's after a discard."""
        with self._cond:
            return self._start.first_lsn if self._start is not None else 1

    @property
    def anchor(self) -> bytes:
        """The anchor START carries (what stands in for the records before :attr:`first_lsn`);
        ``b""`` when nothing was discarded."""
        with self._cond:
            return self._start.anchor if self._start is not None else b""

    @property
    def durable_lsn(self) -> int:
        """Every record up to this LSN is covered by a completed sync."""
        with self._cond:
            return self._durable_lsn

    @property
    def poisoned(self) -> bool:
        """Whether a failed write or sync stopped this log (reopen to recover)."""
        return self._poison is not None

    # -- appending ----------------------------------------------------------------------------
    def append(self, payload: bytes, *, record_type: int = RECORD_DATA) -> int:
        """Append one record; return its LSN once acknowledged under the durability level.

        ``payload`` is opaque bytes (the store layers put msgspec MessagePack documents here),
        1 byte to ``max_record_size``; ``record_type`` is 1..255 (docs/format.md §5). Bad input
        raises ``ValidationError`` and nothing is written. A failed write or sync raises
        ``StorePoisonedError``: the record is not acknowledged, and may or may not be found
        after reopening. Equivalent to :meth:`enqueue` then :meth:`wait`.
        """
        lsn = self.enqueue(payload, record_type=record_type)
        self.wait(lsn)
        return lsn

    def enqueue(self, payload: bytes, *, record_type: int = RECORD_DATA) -> int:
        """Give the record its LSN and queue it, without waiting for durability.

        The same as one ``enqueue`` inside :meth:`writing`. Under ``interval`` and ``none`` the
        record is written before this returns. Validation as in :meth:`append`.
        """
        queued = self._prepare(payload, record_type)
        with self._cond:
            self._take_tenure()
            try:
                return self._queue(queued)
            finally:
                self._release_if_idle()

    @contextmanager
    def writing(self) -> Iterator[LogWriter]:
        """Hold the writers' lock for a block of :meth:`LogWriter.enqueue` calls.

        On entry this handle takes the lock if it does not hold it yet (waiting up to
        ``lock_timeout``) and catches up: records other writers appended go to ``on_foreign``
        *before* this returns, so a caller that decides what to write from state built from
        the log (a store validating a batch) decides on the latest state. Callers that must
        order something with the LSN (a store applying the record to its in-memory state under
        its own lock) enqueue here under their lock and :meth:`wait` outside it, so commits of
        many threads still share one sync. On exit the lock is given back if nothing is queued.
        """
        with self._cond:
            self._take_tenure()
            self._reserved += 1
        try:
            yield LogWriter(self)
        finally:
            with self._cond:
                self._reserved -= 1
                self._release_if_idle()

    def _enqueue_held(self, payload: bytes, record_type: int, *, new_segment: bool) -> int:
        queued = self._prepare(payload, record_type)
        with self._cond:
            return self._queue(queued, new_segment=new_segment)

    def _prepare(self, payload: bytes, record_type: int) -> _Prepared:
        """Validate and compress a record (no lock needed): (type, codec, raw length, body,
        payload, the dictionary it was compressed with: the current segment's, if any)."""
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise ValidationError("payload", f"must be bytes, not {type(payload).__name__}")
        size = len(payload)
        if not 1 <= size <= self._max_record:
            raise ValidationError(
                "payload", f"size {size} is outside 1..{self._max_record} (max_record_size)"
            )
        if not isinstance(record_type, int) or not 1 <= record_type <= 255:
            raise ValidationError("record_type", f"must be an int in 1..255, not {record_type!r}")
        raw = bytes(payload)
        dictionary = self._dictionary if self._compression.uses_dictionary else None
        codec, body = compress(raw, self._compression, dictionary)
        return record_type, codec, size, body, raw, dictionary if codec == CODEC_ZSTD_DICT else None

    def _queue(self, prepared: _Prepared, *, new_segment: bool = False) -> int:
        """Give a prepared record its LSN and queue it (lock held, writers' lock held);
        ``new_segment``: the record must begin a segment (:meth:`LogWriter.start_segment`)."""
        self._check_usable()
        lsn = self._next_lsn
        self._next_lsn = lsn + 1
        if new_segment:
            self._new_segment_at.add(lsn)
        self._payload_bytes += prepared[2]
        self._stored_bytes += len(prepared[3])
        self._pending.append((lsn, *prepared))
        if self._durability != "always":
            self._write_pending(sync=False)
        return lsn

    def wait(self, lsn: int) -> None:
        """Return once record ``lsn`` is acknowledged under the durability level.

        Under ``always``: once it is covered by a completed fdatasync, this thread leading the
        group commit if no flush is running. Under ``interval``/``none``: at once (the record
        was written by :meth:`enqueue`). ``StorePoisonedError`` if the log stopped before.
        A record another writer appended (seen by catching up) is waited for the same way:
        if no durability hint covers it, this handle syncs the file itself.
        """
        if self._durability != "always":
            return
        with self._cond:
            while self._durable_lsn < lsn:
                self._check_usable()
                if self._flushing:
                    self._cond.wait()
                else:
                    self._lead_flush()

    def _check_usable(self) -> None:
        if self._poison is not None:
            raise StorePoisonedError(
                f"log {self._dir} stopped after a failed write or sync ({self._poison}); "
                "reopen it to recover"
            ) from self._poison
        if self._closed:
            raise ClosedError(f"log {self._dir} is closed")

    # -- the writers' lock ----------------------------------------------------------------------
    def _take_tenure(self) -> None:
        """Hold the writers' lock, caught up (lock held; it is released while waiting)."""
        if not self._acquire_file_lock():
            return  # another thread of this handle holds the tenure
        try:
            self._refuse_poisoned_hint()
            self._catch_up(repair=True)
        except BaseException as exc:
            self._fs.unlock(self._lock)
            if not isinstance(exc, CorruptionError):
                self._poison = exc  # a repair's I/O failed: never retried
            raise
        self._tenure = True
        self._tenure_since = time.monotonic()

    def _refuse_poisoned_hint(self) -> None:
        """Stop (lock held) when the hint says another writer's sync failed: the records after
        its durable LSN may never reach the disk, and appending after them would make this
        handle's acknowledged records depend on them. Reopening cuts them (format §8.1)."""
        hint = read_hint(self._fs.read_lock_data(self._lock, HINT_SIZE), self.epoch)
        if hint is not None and hint.poisoned:
            raise StorePoisonedError(
                f"log {self._dir}: a sync of the records after LSN {hint.durable_lsn} failed "
                "in another handle (poisoned LOCK hint); reopen the log to recover"
            )

    def _acquire_file_lock(self) -> bool:
        """Lock the file for this handle (True), or find the tenure held by another of its
        threads (False). Lock held; released while waiting, up to ``lock_timeout`` in all,
        then ``LockTimeoutError``. Waits without polling while this handle is busy: its tenure
        is being given up (yielding), another thread polls, or a flush runs."""
        deadline = time.monotonic() + self._lock_timeout
        delay = _FIRST_POLL_S
        while True:
            self._check_usable()
            if self._tenure and not self._yielding:
                return False
            now = time.monotonic()
            busy = self._tenure or self._polling or self._flushing or now < self._resume_at
            if not busy and self._fs.try_lock(self._lock):
                return True
            if now >= deadline:
                raise self._lock_timed_out()
            if busy:  # woken by whatever ends it, or at the end of a yield pause
                until = min(deadline, self._resume_at) if now < self._resume_at else deadline
                self._cond.wait(until - now)
                continue
            self._polling = True
            try:
                self._cond.wait(min(delay, deadline - now))
            finally:
                self._polling = False
                self._cond.notify_all()
            delay = min(delay * 2, _LAST_POLL_S)

    def _release_if_idle(self) -> None:
        """Give the writers' lock back if nothing is queued, flushing or about to be queued
        (lock held). Under sustained load from this handle, ask for a turn to be given to
        other processes once the tenure is older than ``_MAX_TENURE_S``."""
        if not self._tenure:
            return
        if self._pending or self._flushing or self._reserved:
            if time.monotonic() - self._tenure_since > _MAX_TENURE_S:
                self._yielding = True
            return
        self._tenure = False
        self._fs.unlock(self._lock)
        if self._yielding:
            self._yielding = False
            self._resume_at = time.monotonic() + _YIELD_PAUSE_S
        self._cond.notify_all()

    def follow(self) -> None:
        """Catch up on what other writers appended, without taking the lock.

        Their records go to ``on_foreign``. Invalid bytes at the end are left alone (a writer
        may be writing them). Nothing to do while this handle holds the lock.
        """
        with self._cond:
            while self._flushing and not self._tenure:
                self._cond.wait()
            self._check_usable()
            if not self._tenure:
                self._catch_up(repair=False)

    def _catch_up(self, *, repair: bool) -> None:
        """Move this handle's view to the end of the log (lock held, nothing queued)."""
        fs = self._fs
        segment = self._segment
        next_name = segment_name(segment.seq + 1, self._written_lsn + 1)
        try:
            if fs.file_size(segment.path) == self._segment_bytes and not fs.exists(
                self._dir + os.sep + next_name
            ):
                return  # nobody wrote since (the common case, checked with two stat calls)
        except FileNotFoundError:
            pass  # the segment was discarded: follow() goes on from START
        position = TailPosition(
            self._segment,
            self._segment_bytes,
            self._seed,
            self._written_lsn + 1,
            self.epoch,
            self._dictionary,
        )
        found = follow(
            self._fs,
            self._dir,
            position,
            repair=repair,
            decode=self._on_foreign is not None,
            start=self._start,
        )
        for damage in found.damage:
            self.recovery.append(damage)
            if self._on_damage is not None:
                self._on_damage(damage)
        tail = found.tail
        if tail.segment != self._segment:
            fd = self._fs.open_append(tail.segment.path)
            self._fs.close(self._fd)
            self._fd = fd
            # whoever created the newer segment synced every one before it first (and a
            # discard made every record before START's segment durable)
            self._durable_lsn = max(self._durable_lsn, tail.segment.first_lsn - 1)
        self._move_to(tail)
        last = tail.next_lsn - 1
        if last > self._written_lsn:
            self._written_lsn = last
            hinted = unpack_hint(self._fs.read_lock_data(self._lock, HINT_SIZE), self.epoch)
            if hinted is not None:
                self._durable_lsn = max(self._durable_lsn, min(hinted, last))
        for passed in found.records:
            self._index.add(
                passed.segment, passed.record.lsn, passed.offset, passed.size, passed.seed
            )
        if found.start is not self._start and found.start is not None:
            self._start = found.start
            self._index.drop_before(found.start.first_lsn)
        self._deliver(found)

    def _deliver(self, found: Followed) -> None:
        """Hand what catching up found to ``on_discard`` and ``on_foreign``, in log order."""
        start = found.start if found.jumped else None
        try:
            for passed in found.records:
                if start is not None and passed.record.lsn >= start.first_lsn:
                    self._hand_anchor(start)
                    start = None
                if self._on_foreign is not None:
                    self._on_foreign(passed.record)
            if start is not None:
                self._hand_anchor(start)
        except BaseException as exc:
            # This view has moved past records its owner could not take: writing on would
            # build on a state that lacks them. Stop; reopening judges the log afresh.
            self._poison = exc
            raise

    def _hand_anchor(self, start: LogStart) -> None:
        if self._on_discard is not None:
            self._on_discard(start.anchor, start.first_lsn)

    def _move_to(self, tail: TailPosition) -> None:
        self._segment = tail.segment
        self._segment_bytes = tail.offset
        self._seed = tail.seed
        self._next_lsn = tail.next_lsn
        self._segment_records = tail.next_lsn - tail.segment.first_lsn
        self._dictionary = tail.dictionary

    # -- writing ------------------------------------------------------------------------------
    def _lead_flush(self) -> None:
        """Group-commit leader (called with the lock held, returns with it held).

        Takes every queued record, then releases the lock for the write and the fdatasync so
        that other threads queue the next group meanwhile. Only one leader runs at a time
        (``_flushing``), so the chain state and the descriptor are the leader's alone. With
        nothing queued (records another writer appended, not yet known durable) it only syncs.
        """
        batch = self._pending
        self._pending = []
        self._flushing = True
        target = self._next_lsn - 1
        tenure = self._tenure
        self._cond.release()
        error: BaseException | None = None
        try:
            if batch:
                self._write(batch, sync=True)
            else:
                self._fdatasync(self._fd)
            if tenure:
                self._fs.write_lock_data(self._lock, pack_hint(self.epoch, target))
        except BaseException as exc:
            error = exc
        finally:
            self._cond.acquire()
            self._flushing = False
        if error is not None:
            self._poison = error
            self._leave_poisoned_hint()
            self._give_up_tenure()
        else:
            self._written_lsn = max(self._written_lsn, target)
            self._durable_lsn = max(self._durable_lsn, target)
            self._release_if_idle()
        self._cond.notify_all()

    def _leave_poisoned_hint(self) -> None:
        """After a failed sync, mark the hint poisoned at the highest LSN known durable (lock
        held), so that the next holder does not build on the records the sync did not cover
        and recovery cuts them (docs/format.md §8.1). Best effort: the log is stopped already,
        and a failure here leaves the plain hint (the gap ``docs/guarantees.md`` states)."""
        if not (self._tenure and self._sync_failed):
            return
        try:
            durable = self._durable_lsn
            found = unpack_hint(self._fs.read_lock_data(self._lock, HINT_SIZE), self.epoch)
            if found is not None:
                durable = max(durable, found)
            self._fs.write_lock_data(self._lock, pack_hint(self.epoch, durable, poisoned=True))
        except OSError:
            _LOGGER.exception("log %s: could not mark the durability hint poisoned", self._dir)

    def _give_up_tenure(self) -> None:
        """Release the writers' lock after this handle stopped (its successor repairs)."""
        if self._tenure:
            self._tenure = False
            self._fs.unlock(self._lock)

    def _write_pending(self, *, sync: bool) -> None:
        """Write the queued records now, and sync if asked (lock held): the
        ``interval``/``none`` path, ``sync()`` and ``close()``. A failure poisons the log."""
        batch, self._pending = self._pending, []
        try:
            if batch:
                self._write(batch, sync=sync)
                self._written_lsn = batch[-1][0]
            elif sync and self._durable_lsn < self._written_lsn:
                self._fdatasync(self._fd)
            if sync and self._tenure:
                self._fs.write_lock_data(self._lock, pack_hint(self.epoch, self._written_lsn))
        except BaseException as exc:
            self._poison = exc
            self._leave_poisoned_hint()
            self._give_up_tenure()
            self._check_usable()  # raises StorePoisonedError, chained to exc
            raise
        if sync:
            self._durable_lsn = self._written_lsn

    def _write(self, batch: list[_Queued], *, sync: bool) -> None:
        """Write ``batch``, each record that must begin a segment (:meth:`LogWriter.start_segment`)
        in a new one, then sync if asked (the last segment written; the others were synced
        when they were left).

        Called by exactly one thread at a time (the leader, or a holder of the lock), holding
        the writers' lock.
        """
        starts = self._new_segment_at
        if starts:
            cuts = [i for i, q in enumerate(batch) if q[0] in starts]
            for i, j in itertools.pairwise([0, *[c for c in cuts if c], len(batch)]):
                starts.discard(batch[i][0])
                self._write_group(batch[i:j], new_segment=i in cuts)
        else:
            self._write_group(batch, new_segment=False)
        if sync:
            self._fdatasync(self._fd)

    def _write_group(self, batch: list[_Queued], *, new_segment: bool) -> None:
        """Frame ``batch`` and write it in one call into the current segment, rotating first
        if the segment is full, or if ``new_segment`` and the segment holds records."""
        first_lsn = batch[0][0]
        size = sum(RECORD_HEADER_SIZE + pad8(len(q[4])) for q in batch)
        trained = self._train_if_due(batch)
        if self._segment_records and (
            new_segment or trained is not None or self._segment_bytes + size > self._segment_size
        ):
            self._rotate(first_lsn, trained)
        batch = self._fit_dictionary(batch)
        # Every earlier byte is durable: under "always" the previous group was synced before
        # this leader started; otherwise only if nothing was written since the last sync.
        after_sync = self._durable_lsn == first_lsn - 1
        seed = self._seed
        offset = self._segment_bytes
        parts: list[bytes] = []
        for lsn, rtype, codec, raw_length, body, _payload, _dictionary in batch:
            previous = seed
            framed, seed = frame_record(
                seed=seed,
                lsn=lsn,
                record_type=rtype,
                codec=codec,
                flags=FLAG_AFTER_SYNC if after_sync else 0,
                raw_length=raw_length,
                body=body,
            )
            after_sync = False
            parts.append(framed)
            self._index.add(self._segment, lsn, offset, len(framed), previous)
            offset += len(framed)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._fs.write(self._fd, data)
        self._seed = seed
        self._segment_bytes += len(data)
        self._segment_records += len(batch)

    def _train_if_due(self, batch: list[_Queued]) -> Dictionary | None:
        """Sample ``batch``'s payloads while the segment has no dictionary; once the sample
        reaches :attr:`dictionary_trigger` (and the segment holds a record, so the rotation
        leaves no empty segment behind), train a dictionary, once per handle. The writer
        alone calls this. Returns the dictionary to rotate to, or None."""
        if self._dictionary is not None or self._trained or not self._compression.uses_dictionary:
            return None
        trigger = self.dictionary_trigger
        samples = self._samples
        threshold = max(self._compression.threshold, 1)
        for queued in batch:
            payload = queued[5]
            if not threshold <= len(payload) <= DICTIONARY_MAX_PAYLOAD:
                continue
            samples.append(payload)
            self._sample_bytes += len(payload)
            while len(samples) > trigger.max_samples or self._sample_bytes > trigger.max_bytes:
                self._sample_bytes -= len(samples.popleft())
        if (
            not self._segment_records
            or len(samples) < trigger.min_samples
            or self._sample_bytes < trigger.min_bytes
        ):
            return None
        self._trained = True
        trained = train_dictionary(list(samples), trigger.size)
        samples.clear()
        self._sample_bytes = 0
        if trained is None:
            _LOGGER.info("log %s: no dictionary could be trained; going on without", self._dir)
        return trained

    def _fit_dictionary(self, batch: list[_Queued]) -> list[_Queued]:
        """``batch`` with every codec-3 record compressed with the current segment's
        dictionary: one compressed with another (a thread expected the segment before a
        rotation) is compressed again (the writer alone calls this)."""
        current = self._dictionary
        if not any(q[2] == CODEC_ZSTD_DICT and q[6] != current for q in batch):
            return batch
        fitted: list[_Queued] = []
        for queued in batch:
            lsn, rtype, codec, raw_length, body, payload, used = queued
            if codec == CODEC_ZSTD_DICT and used != current:
                codec, new_body = compress(payload, self._compression, current)
                self._stored_correction += len(new_body) - len(body)
                fitted.append((lsn, rtype, codec, raw_length, new_body, payload, current))
            else:
                fitted.append(queued)
        return fitted

    def _rotate(self, first_lsn: int, trained: Dictionary | None = None) -> None:
        """Close the full segment (synced) and start the next one at ``first_lsn``, with the
        ``trained`` dictionary, else the current segment's (if this handle uses them)."""
        self._fdatasync(self._fd)
        self._durable_lsn = first_lsn - 1
        old_fd = self._fd
        dictionary = trained if trained is not None else self._dictionary
        if not self._compression.uses_dictionary:
            dictionary = None
        header = SegmentHeader(
            self.epoch,
            self._segment.seq + 1,
            first_lsn,
            self._seed,
            None if dictionary is None else dictionary.data,
        )
        try:
            self._segment, self._fd = create_segment(self._fs, self._dir, header)
        except BaseException:
            # the new segment may exist with a header no sync made durable: the poisoned
            # hint at first_lsn - 1 makes the next open set it aside (format §8.1)
            self._sync_failed = True
            raise
        self._fs.close(old_fd)
        self._segment_bytes = header.size
        self._segment_records = 0
        self._dictionary = dictionary

    # -- syncing and closing ------------------------------------------------------------------
    def set_sync_observer(self, observer: SyncObserver | None) -> None:
        """Call ``observer(seconds)`` after each successful fdatasync of a log segment, with
        how long it took (``None`` removes it). It runs on the syncing thread, possibly with
        the log's internal lock held: it must be quick and must not call into the log. If it
        raises, the exception is logged on ``wfstate.wal`` and the log carries on (the sync
        succeeded). A sync running while the observer is replaced may report to either.
        """
        if observer is not None and not callable(observer):
            raise ValidationError("observer", f"must be callable or None, not {observer!r}")
        self._on_sync = observer

    def _fdatasync(self, fd: int) -> None:
        """fdatasync ``fd``, timed for the sync observer (:meth:`set_sync_observer`)."""
        observer = self._on_sync
        started = time.perf_counter()
        try:
            self._fs.fdatasync(fd)
        except BaseException:
            self._sync_failed = True  # never retried: the log is poisoned by the caller
            raise
        if observer is None:
            return
        elapsed = time.perf_counter() - started
        try:
            observer(elapsed)
        except Exception:
            _LOGGER.exception("log %s: the sync observer raised", self._dir)

    def sync(self) -> None:
        """Make every record appended so far durable (under any durability level)."""
        with self._cond:
            while self._flushing:
                self._cond.wait()
            self._check_usable()
            self._write_pending(sync=True)
            self._release_if_idle()

    def _sync_held(self) -> None:
        """:meth:`LogWriter.sync`: as :meth:`sync`, inside a :meth:`writing` block (so the
        tenure is kept: the block's reservation stops it from being released)."""
        with self._cond:
            while self._flushing:
                self._cond.wait()
            self._check_usable()
            self._write_pending(sync=True)
            self._cond.notify_all()

    def _sync_periodically(self) -> None:
        """The ``interval`` level's background syncer.

        Syncs a duplicate of the current descriptor outside the lock, so appends are not held
        up by the sync and a rotation closing the original cannot pull the file away.
        """
        while not self._stop_syncer.wait(self._sync_interval):
            with self._cond:
                if self._poison is not None or self._closed:
                    return
                target = self._written_lsn
                if target <= self._durable_lsn:
                    continue
                fd = self._fs.dup(self._fd)
            try:
                self._fdatasync(fd)
            except BaseException as exc:
                with self._cond:
                    self._poison = exc
                return
            finally:
                self._fs.close(fd)
            with self._cond:
                self._durable_lsn = max(self._durable_lsn, target)

    def close(self) -> None:
        """Sync what was appended and release the files and the lock. Idempotent.

        A poisoned log is closed without syncing (its state is for recovery to judge).
        """
        with self._cond:
            while self._flushing:
                self._cond.wait()
            if self._closed:
                return
            try:
                if self._poison is None:
                    self._write_pending(sync=True)
            finally:
                self._closed = True
                self._stop_syncer.set()
                self._fs.close(self._fd)
                self._give_up_tenure()
                self._fs.close_lock(self._lock)
                self._cond.notify_all()
        if self._syncer is not None:
            self._syncer.join()

    def __enter__(self) -> Log:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def read(self, from_lsn: int = 1) -> Iterator[Record]:
        """Each record from ``from_lsn`` up to the last one this handle knows of at the call.

        The log starts at :attr:`first_lsn`: a ``from_lsn`` below it starts there (what came
        before is what :attr:`anchor` stands for), so ``read()`` is the whole log. Damage met
        on the way is handled by the recovery mode the log was opened with (the tail was
        repaired at open): ``CorruptionError`` for corruption, except that ``skip_corrupted``
        skips (and reports to ``on_damage``) what it skipped at open. Records other writers
        appended since this handle last caught up are not included (:meth:`follow` first).
        When another handle moved the start of the log, this handle takes the new start (and
        reads from it) if its own view was not discarded; if it was, ``NotFoundError``
        (:meth:`follow` first: this handle then gets the anchor in place of those records).
        """
        _positive_int("from_lsn", from_lsn, 1)
        with self._cond:
            while self._flushing:
                self._cond.wait()
            self._check_usable()
            to_lsn = self._written_lsn
            from_lsn = max(from_lsn, self._start.first_lsn if self._start is not None else 1)
        if from_lsn > to_lsn:
            return iter(())
        scan = LogScan(
            self._fs,
            self._dir,
            mode=self._mode,
            from_lsn=from_lsn,
            to_lsn=to_lsn,
            on_damage=self._on_damage,
            epoch=self.epoch,
        )
        if scan.start is not None and scan.first_lsn > from_lsn:
            self._adopt_start(scan.start)
        return scan.records(located=self._index.add)

    def _adopt_start(self, start: LogStart) -> None:
        """Take a START another handle wrote, found by :meth:`read`: when this handle's view
        is not discarded by it, the records before it are simply no longer part of the log
        (this handle's owner has already taken them); when it is, ``NotFoundError``: only
        catching up may move past them, handing over the anchor (``on_discard``)."""
        with self._cond:
            while self._flushing:
                self._cond.wait()
            if self._start is not None and start.seq <= self._start.seq:
                return
            if start.seq > self._segment.seq:
                raise NotFoundError(
                    f"lsn: the records of this handle's view up to {start.first_lsn - 1} were "
                    "discarded by another handle; follow() to continue from where the log now "
                    "starts"
                )
            self._start = start
            self._index.drop_before(start.first_lsn)

    # -- discarding the beginning of the log ---------------------------------------------------
    def discard_before(self, lsn: int, anchor: bytes) -> None:
        """Discard every segment before the one whose first record is ``lsn`` (format §2.2).

        ``lsn`` must be the first LSN of a segment of the log other than segment 1 (a
        :meth:`LogWriter.start_segment` makes one); else ``ValidationError`` naming ``lsn``.
        ``anchor`` (up to 2^30 bytes, opaque to the log) is what stands in for the records
        discarded: it is kept in ``wal/START`` and handed to whoever reads the log from now on
        (:attr:`anchor`; ``on_discard`` of handles whose view is discarded).

        Holding the writers' lock (taken and caught up as for a write): every record appended
        so far is made durable; START is written naming that segment (temp, fsync, rename,
        fsync of the directory: the commit point); the segments before it are deleted, lowest
        first, and the directory synced. A crash before the rename leaves the log as it was;
        after it, the discard has happened and the next open deletes what is left of the old
        segments. Calling it again with the same ``lsn`` rewrites START with the new anchor and
        changes nothing else. Afterwards records before ``lsn`` are not readable through this
        handle (:meth:`read` starts at ``lsn``, :meth:`read_at` raises ``NotFoundError``). A
        failed write, sync, rename or unlink poisons the log, as for an append.
        """
        _positive_int("lsn", lsn, 1)
        if not isinstance(anchor, bytes | bytearray | memoryview):
            raise ValidationError("anchor", f"must be bytes, not {type(anchor).__name__}")
        anchor = bytes(anchor)
        if len(anchor) > MAX_PAYLOAD:
            raise ValidationError("anchor", f"size {len(anchor)} is over {MAX_PAYLOAD}")
        with self._cond:
            self._take_tenure()
            self._reserved += 1
            try:
                while self._flushing:
                    self._cond.wait()
                self._check_usable()
                # Every record before lsn must be durable; sync everything (as sync() does).
                self._write_pending(sync=True)
                self._cond.notify_all()
                self._discard_held(lsn, anchor)
            finally:
                self._reserved -= 1
                self._release_if_idle()

    def _discard_held(self, lsn: int, anchor: bytes) -> None:
        """The discard itself (``_cond`` and the writers' lock held, no flush running, every
        record durable)."""
        fs = self._fs
        files = log_files(fs, self._dir)
        named = [s for s in files.segments if s.first_lsn == lsn and s.seq >= START_MIN_SEQ]
        if not named or lsn > self._next_lsn:
            raise ValidationError(
                "lsn", f"{lsn} is not the first LSN of a segment of the log after the first"
            )
        target = named[0]
        header = read_segment_header(read_head(fs, target), target, self.epoch)
        start = LogStart(self.epoch, target.seq, target.first_lsn, header.prev_checksum, anchor)
        before = [s for s in files.leftovers + files.segments if s.seq < target.seq]
        try:
            write_start(fs, self._dir, start)  # the commit point
            self._start = start
            self._index.drop_before(target.first_lsn)
            delete_segments(fs, self._dir, before)
        except BaseException as exc:
            self._poison = exc  # whether START or the deletions are durable is unknown
            self._give_up_tenure()
            self._check_usable()  # raises StorePoisonedError, chained to exc
            raise

    def read_at(self, lsn: int) -> Record:
        """Record ``lsn``, read by position and verified by its chain seed.

        The record must be one this handle read (:meth:`read`), wrote or caught up on, and not
        discarded since (:meth:`discard_before`); ``NotFoundError`` otherwise.
        ``CorruptionError`` if the bytes at its place changed.
        """
        where = self._index.locate(lsn)
        if where is None:
            raise NotFoundError(f"lsn: record {lsn} is not known to this handle")
        return read_record_at(self._fs, lsn, where, self._index.dictionaries)


def check_options(
    *,
    durability: Durability = "always",
    sync_interval_ms: int = 100,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
    max_record_size: int = DEFAULT_MAX_RECORD_SIZE,
    mode: RecoveryMode = "tolerate_torn_tail",
    epoch: int | None = None,
    compression: Compression | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> Compression:
    """Check the options of :meth:`Log.open` without touching anything (a store checks them
    before it creates its directories); ``ValidationError`` naming the first bad one.
    Returns the compression to use (the default when None)."""
    if durability not in DURABILITY_LEVELS:
        raise ValidationError(
            "durability", f"must be one of {list(DURABILITY_LEVELS)}, not {durability!r}"
        )
    _positive_int("sync_interval_ms", sync_interval_ms, 1)
    _positive_int("segment_size", segment_size, 4096)
    _positive_int("max_record_size", max_record_size, 1)
    if max_record_size > MAX_PAYLOAD:
        raise ValidationError("max_record_size", f"must be <= {MAX_PAYLOAD}")
    check_mode(mode)
    if epoch is not None and (not isinstance(epoch, int) or not 0 < epoch < 1 << 64):
        raise ValidationError("epoch", "must be an int in 1..2**64-1")
    if compression is None:
        compression = Compression()
    elif not isinstance(compression, Compression):
        raise ValidationError("compression", "must be a wfstate.wal.Compression")
    if isinstance(lock_timeout, bool) or not isinstance(lock_timeout, int | float):
        raise ValidationError("lock_timeout", f"must be a number, not {lock_timeout!r}")
    if not 0 <= lock_timeout < float("inf"):
        raise ValidationError("lock_timeout", f"must be >= 0 and finite, not {lock_timeout}")
    return compression


class LogWriter:
    """Enqueues records while its :meth:`Log.writing` block holds the writers' lock."""

    __slots__ = ("_log", "_new_segment")

    def __init__(self, log: Log) -> None:
        self._log = log
        self._new_segment = False

    def enqueue(self, payload: bytes, *, record_type: int = RECORD_DATA) -> int:
        """Give the record its LSN and queue it (see :meth:`Log.enqueue`)."""
        lsn = self._log._enqueue_held(payload, record_type, new_segment=self._new_segment)
        self._new_segment = False
        return lsn

    @property
    def next_lsn(self) -> int:
        """The LSN the next :meth:`enqueue` of this block will give (the writers' lock is
        held, so no other writer can take it first): for content that must name its own
        record's LSN before the record is queued (a transaction's files, docs/format.md §10)."""
        return self._log._next_lsn

    def sync(self) -> None:
        """Write every record queued so far and make it durable now, under any durability
        level, keeping the writers' lock (this block still holds it).

        For a step that must follow a durable record inside the same tenure: the renames that
        finish a two-phase commit (docs/format.md §10.1) happen after its ``TXN`` record is
        durable and before any other writer can take the lock. A failed write or sync poisons
        the log and raises ``StorePoisonedError``, as for an append: the records queued may or
        may not be found after reopening.
        """
        self._log._sync_held()

    def start_segment(self) -> None:
        """Make the next record enqueued in this block the first record of a segment.

        When that record is written, the segment before it is synced and left exactly as at a
        size-based rotation, and a new segment begins with it; if the current segment holds
        no record yet, the record simply begins it. Nothing happens until a record is
        enqueued: with none after this call, no segment is created. So a store can write a
        record (a ``DISCARD``) whose LSN is a segment's first LSN, and then
        :meth:`Log.discard_before` that LSN.
        """
        self._new_segment = True


_OPEN_TOKEN: Final = object()
