"""``python -m wfstate``: the operator's command line.

Commands (``python -m wfstate COMMAND --help`` for each):

* ``recover PATH [--apply] [--mode MODE]``: plan crash recovery (read-only), or carry it out
  (:mod:`wfstate.recoveryplan`);
* ``verify PATH``: full offline integrity check (:mod:`wfstate.verification`);
* ``inspect PATH``: workflows, sessions, checkpoints, log (:mod:`wfstate.inspection`);
* ``checkpoint PATH [WORKFLOW ...|--all]``: take manual checkpoints;
* ``compact PATH [--dry-run] [--keep-last N] [--max-age SECONDS]``: retention, then compaction;
* ``export PATH SESSION -o FILE`` / ``import PATH FILE``: move a session between stores;
* ``demo``: the crash demo of :mod:`wfstate.demo`.

Output is text for people; ``--json`` prints the same report as JSON. A progress bar goes to
standard error on long operations, only when it is a terminal. Expected failures (a path that
is not a store, a store in use, damage) print one line ``wfstate: error: ...`` and exit with
the code below, never a traceback. The commands that only read (``recover`` without
``--apply``, ``verify``, ``inspect``, ``compact --dry-run``) change nothing on disk; none of
them creates a store.

Exit codes (:data:`EXIT_CODES`): 0 clean / done; 1 the command failed (I/O error, store in use);
2 bad usage (unknown option, a path that is not a store, an unknown session); 3 needs repair
(``recover`` plan, ``verify``); 4 repaired (``recover --apply`` changed something);
5 unrecoverable (the recovery mode refuses, or a workflow cannot be rebuilt).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Final, get_args

import msgspec

from wfstate.backends.local import LocalStore
from wfstate.checkpointreports import CompactionReport
from wfstate.demo import main as demo_main
from wfstate.errors import (
    CorruptionError,
    LockTimeoutError,
    NotFoundError,
    ValidationError,
    WfstateError,
)
from wfstate.fs import OS_FS, atomic_write
from wfstate.inspection import inspect_store
from wfstate.offline import DEFAULT_LOCK_TIMEOUT, open_read_only, require_store
from wfstate.progress import terminal_bar
from wfstate.recoveryplan import RecoveryPlan, apply_recovery, plan_recovery
from wfstate.reporttext import compaction_text, inspection_text, recovery_text, verify_text
from wfstate.retention import RetentionPlan, RetentionPolicy
from wfstate.verification import verify_store
from wfstate.wal.reader import RecoveryMode

__all__ = ["EXIT_CODES", "main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_NEEDS_REPAIR: Final = 3
EXIT_REPAIRED: Final = 4
EXIT_UNRECOVERABLE: Final = 5

EXIT_CODES: Final[dict[int, str]] = {
    EXIT_OK: "clean, or the command did what was asked",
    EXIT_FAILED: "the command failed (an I/O error, the store in use by another process)",
    EXIT_USAGE: "bad usage (an unknown option, a path that is not a store, an unknown id)",
    EXIT_NEEDS_REPAIR: "the store needs repair (recover without --apply, verify)",
    EXIT_REPAIRED: "recover --apply repaired the store",
    EXIT_UNRECOVERABLE: "unrecoverable: the recovery mode refuses, or a workflow cannot be rebuilt",
}

_PLAN_EXIT = {
    "clean": EXIT_OK,
    "needs_repair": EXIT_NEEDS_REPAIR,
    "repaired": EXIT_REPAIRED,
    "unrecoverable": EXIT_UNRECOVERABLE,
}


class _Usage(Exception):
    """Bad usage found after parsing (exit 2)."""


def _emit(args: argparse.Namespace, report: object, text: Callable[[], list[str]]) -> None:
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(report)).decode() + "\n")
    else:
        sys.stdout.write("\n".join(text()) + "\n")


def _recover(args: argparse.Namespace) -> int:
    run = apply_recovery if args.apply else plan_recovery
    plan: RecoveryPlan = run(
        args.path, mode=args.mode, progress=terminal_bar(), lock_timeout=args.lock_timeout
    )
    _emit(args, plan, lambda: recovery_text(plan))
    return _PLAN_EXIT[plan.status]


def _verify(args: argparse.Namespace) -> int:
    report = verify_store(args.path, progress=terminal_bar(), lock_timeout=args.lock_timeout)
    _emit(args, report, lambda: verify_text(report))
    return _PLAN_EXIT[report.status]


def _inspect(args: argparse.Namespace) -> int:
    found = inspect_store(args.path, progress=terminal_bar(), lock_timeout=args.lock_timeout)
    _emit(args, found, lambda: inspection_text(found))
    return EXIT_OK


def _open(args: argparse.Namespace) -> LocalStore:
    return LocalStore.open(require_store(args.path), lock_timeout=args.lock_timeout)


def _checkpoint(args: argparse.Namespace) -> int:
    if bool(args.workflows) == args.all:
        raise _Usage("name the workflows to checkpoint, or give --all (not both)")
    with _open(args) as store:
        known = store.list_workflows()
        ids = known if args.all else args.workflows
        unknown = [w for w in ids if w not in known]
        if unknown:
            raise _Usage(f"no such workflow: {', '.join(unknown)}")
        taken = [
            store.checkpoint(w, description=args.description, tags=tuple(args.tag))
            for w in terminal_bar()(ids, label="checkpoints", total=len(ids))
        ]
    _emit(
        args,
        taken,
        lambda: (
            [f"checkpoint {i.id} of {i.workflow_id} at LSN {i.lsn} ({i.size} bytes)" for i in taken]
            or ["no workflows"]
        ),
    )
    return EXIT_OK


def _compact(args: argparse.Namespace) -> int:
    try:
        policy = RetentionPolicy(keep_last=args.keep_last, max_age=args.max_age)
    except ValidationError as exc:
        raise _Usage(str(exc)) from exc
    if args.dry_run:
        offline_plan = _dry_compact(args, policy)
        _emit(args, offline_plan, lambda: compaction_text(*offline_plan))
        return EXIT_OK
    with _open(args) as store:
        retained = store.retain(policy)
        compacted = store.compact()
    _emit(args, (retained, compacted), lambda: compaction_text(retained, compacted))
    return EXIT_OK


def _dry_compact(
    args: argparse.Namespace, policy: RetentionPolicy
) -> tuple[RetentionPlan, CompactionReport]:
    offline = open_read_only(args.path, lock_timeout=args.lock_timeout)
    with offline.store as store:
        return (store.retain(policy, dry_run=True), store.compact(dry_run=True))


def _export(args: argparse.Namespace) -> int:
    with _open(args) as store:
        data = store.export_session(args.session)
    atomic_write(OS_FS, args.output, data)  # a crash leaves no half-written bundle
    _emit(
        args,
        {"session": args.session, "file": args.output, "bytes": len(data)},
        lambda: [f"session {args.session} exported to {args.output} ({len(data)} bytes)"],
    )
    return EXIT_OK


def _import(args: argparse.Namespace) -> int:
    try:
        data = OS_FS.read_file(args.file)
    except OSError as exc:
        raise _Usage(f"{args.file}: {exc.strerror}") from exc
    with _open(args) as store:
        info = store.import_session(data)
    _emit(
        args,
        info,
        lambda: [
            f"session {info.id} of {info.user!r} imported ({info.status}); "
            f"workflows: {', '.join(info.workflows) or '-'}"
        ],
    )
    return EXIT_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wfstate",
        description="Operate a wfstate store: plan and apply crash recovery, verify, inspect, "
        "checkpoint, compact, export and import sessions.",
        epilog="exit codes: " + "; ".join(f"{code} {what}" for code, what in EXIT_CODES.items()),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(
        name: str, help: str, run: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("path", metavar="PATH", help="the store directory")
        sub.add_argument("--json", action="store_true", help="print the report as JSON")
        sub.add_argument(
            "--lock-timeout", type=float, default=DEFAULT_LOCK_TIMEOUT, metavar="SECONDS",
            help="how long to wait for a running writer to let go of the store (default: "
            "%(default)s)",
        )  # fmt: skip
        sub.set_defaults(run=run)
        return sub

    recover = command(
        "recover", "plan crash recovery (read-only), or carry it out with --apply", _recover
    )
    recover.add_argument(
        "--apply", action="store_true",
        help="carry the plan out (under the store lock; nothing is deleted: what is removed "
        "goes to quarantine/)",
    )  # fmt: skip
    recover.add_argument(
        "--mode", choices=get_args(RecoveryMode), default="tolerate_torn_tail",
        help="recovery mode (default: %(default)s)",
    )  # fmt: skip
    command("verify", "full offline integrity check: log, checkpoints, files, sessions", _verify)
    command("inspect", "workflows, sessions, checkpoints and log of a store", _inspect)
    checkpoint = command("checkpoint", "take manual checkpoints of workflows", _checkpoint)
    checkpoint.add_argument("workflows", nargs="*", metavar="WORKFLOW", help="workflow ids")
    checkpoint.add_argument("--all", action="store_true", help="every workflow of the store")
    checkpoint.add_argument("--description", default="", help="a note kept with each checkpoint")
    checkpoint.add_argument("--tag", action="append", default=[], help="a tag (repeatable)")
    compact = command(
        "compact", "drop checkpoints retention does not keep, then discard covered log", _compact
    )
    compact.add_argument("--dry-run", action="store_true", help="report, change nothing")
    compact.add_argument(
        "--keep-last", type=int, default=10, metavar="N",
        help="checkpoints kept per workflow (default: %(default)s)",
    )  # fmt: skip
    compact.add_argument(
        "--max-age", type=float, default=None, metavar="SECONDS",
        help="drop checkpoints older than this (default: no limit)",
    )  # fmt: skip
    export = command("export", "write a session and its workflows to a bundle file", _export)
    export.add_argument("session", metavar="SESSION", help="the session id")
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="bundle to write")
    imported = command("import", "add the session of a bundle file to the store", _import)
    imported.add_argument("file", metavar="FILE", help="the bundle to read")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["demo"]:
        return demo_main(args_list[1:])
    parser = _parser()
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        code: int = args.run(args)
    except _Usage as exc:
        return _fail(str(exc), EXIT_USAGE)
    except (NotFoundError, ValidationError) as exc:
        return _fail(_message(exc), EXIT_USAGE)
    except LockTimeoutError as exc:
        return _fail(f"the store is in use by another process: {_message(exc)}", EXIT_FAILED)
    except CorruptionError as exc:
        return _fail(f"{_message(exc)} (see `python -m wfstate recover`)", EXIT_UNRECOVERABLE)
    except (WfstateError, OSError) as exc:
        return _fail(_message(exc), EXIT_FAILED)
    return code


def _message(exc: BaseException) -> str:
    if isinstance(exc, KeyError) and exc.args:  # NotFoundError: str() of a KeyError quotes
        return str(exc.args[0])
    return str(exc)


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"wfstate: error: {message}\n")
    return code
