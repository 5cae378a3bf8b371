"""The policy in force (`PolicyStore`): the last good policy, swapped only for a valid file.

The clock is the caller's: `PolicyStore` is given one, so this package reads no time itself.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from agent.errors import AgentError
from agent.policy.loader import FileIdentity, read_policy_file
from agent.policy.schema import FALLBACK_POLICY, Policy

log = structlog.get_logger("agent.policy")


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    changed: bool
    error: str | None = None
    #: The refusal's stable code: `invalid_policy`, or `bad_signature` from the signature check.
    code: str | None = None


def _identity(path: Path) -> FileIdentity | None:
    try:
        return FileIdentity.of(os.stat(path))
    except OSError:
        return None


class PolicyStore:
    """Holds the last good policy. A reload validates the whole file and swaps only on
    success; a broken edit is logged, counted and reported, and the old policy stays in force.

    The constructor loads `path` once (when given); if that fails, `default` is in force and
    `last_error` says why, so the daemon decides whether to start anyway. With
    `known_variants` (the zoo's), a file naming another variant is invalid like any other error:
    a misspelt name must not quietly allow nothing. With `check` (the daemon's signature check,
    `agent.trust`), the bytes read must pass it before they are parsed; its refusal is handled as
    any invalid edit (the last good policy stays in force).
    """

    def __init__(
        self,
        path: Path | None,
        default: Policy = FALLBACK_POLICY,
        on_failure: Iterable[Callable[[str, str], None]] = (),
        *,
        clock: Callable[[], float],
        known_variants: Collection[str] | None = None,
        check: Callable[[Path, bytes], None] | None = None,
        watch_also: Sequence[Path] = (),
    ) -> None:
        self.path = path
        self.known_variants = frozenset(known_variants) if known_variants is not None else None
        self._clock = clock  # wall clock, for `loaded_at` only
        self._check = check
        self._watch_also = tuple(watch_also)  # e.g. the signature file: a new one is a change too
        self.policy = default
        self.loaded_at: float | None = None
        self.digest: str | None = None
        self.last_error: str | None = None
        self.last_error_code: str | None = None
        self.failures = 0
        self.on_failure: list[Callable[[str, str], None]] = list(on_failure)  # (message, code)
        self._seen: tuple[FileIdentity | None, ...] | None = None
        self._lock = threading.Lock()
        if path is not None:
            self.reload()

    @property
    def source(self) -> str:
        """Where the policy in force came from (for status)."""
        return str(self.path) if self.loaded_at is not None else "built-in default"

    def changed_on_disk(self) -> bool:
        """Cheap check for the 1 Hz file-watch job: has the file changed since the last reload
        attempt? A deleted or unreadable file is a change (once), so the reload reports it; so is a
        change to a `watch_also` file (a policy's signature written after the policy)."""
        if self.path is None:
            return False
        return self._identities(self.path) != self._seen

    def _identities(self, path: Path) -> tuple[FileIdentity | None, ...]:
        return (_identity(path), *(_identity(p) for p in self._watch_also))

    def reload(self) -> ReloadResult:
        """Re-read and validate the file; swap the policy only if the whole file is valid."""
        if self.path is None:
            return ReloadResult(ok=True, changed=False)
        with self._lock:
            # Stat before reading: if the file changes in between, the next check sees a change
            # and reloads again, rather than never reloading the newer content.
            before = self._identities(self.path)
            try:
                policy, identity = read_policy_file(self.path, self.known_variants, self._check)
            except AgentError as exc:  # PolicyError, or the signature check's refusal
                self._seen = before
                return self._failed(exc.message, exc.code)
            self._seen = (identity, *before[1:])
            changed = policy != self.policy
            self.policy = policy
            self.loaded_at = self._clock()
            self.digest = hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:12]
            self.last_error = None
            self.last_error_code = None
            log.info(
                "policy_loaded",
                path=str(self.path),
                changed=changed,
                rules=[r.name for r in policy.rules],
                digest=self.digest,
            )
            return ReloadResult(ok=True, changed=changed)

    def _failed(self, message: str, code: str) -> ReloadResult:
        self.failures += 1
        self.last_error = message
        self.last_error_code = code
        log.error("policy_reload_failed", path=str(self.path), error=message, failures=self.failures, kept=self.source)
        for callback in self.on_failure:
            try:
                callback(message, code)
            except Exception:  # a metrics hook must not break the reload path
                log.exception("policy_failure_callback_failed")
        return ReloadResult(ok=False, changed=False, error=message, code=code)

    def status(self) -> dict[str, Any]:
        """For `GET /v1/status`: the policy in force, where from, and the last refused edit."""
        return {
            "path": str(self.path) if self.path else None,
            "source": self.source,
            "version": self.policy.version,
            "digest": self.digest,
            "loaded_at": self.loaded_at,
            "rules": [rule.name for rule in self.policy.rules],
            "last_error": self.last_error,
            "failures": self.failures,
        }
