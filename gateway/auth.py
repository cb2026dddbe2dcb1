"""Caller authentication: bearer keys compared by sha256 digest, with per-key scopes.

Keys are stored hashed in the policy (or a Secret-mounted file), so neither the policy nor a
log line ever holds a usable key. With no keys configured the gateway is open and every caller
is `anonymous` (the server logs a warning at start).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from multidict import CIMultiDictProxy

from gateway.errors import Unauthorized
from gateway.policy.schema import Auth


@dataclass(frozen=True, slots=True)
class Caller:
    name: str
    models: frozenset[str] | None  # None = every alias
    cohorts: frozenset[str] | None  # None = every cohort

    def may_use_model(self, alias: str) -> bool:
        return self.models is None or alias in self.models

    def may_use_cohort(self, cohort: str) -> bool:
        return self.cohorts is None or cohort in self.cohorts


ANONYMOUS = Caller("anonymous", None, None)
ACCEPTED_MAX = 4096


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Authenticator:
    def __init__(self, auth: Auth) -> None:
        self._by_digest: dict[str, Caller] = {}
        for k in auth.keys:
            self._by_digest[k.sha256] = Caller(
                k.name,
                None if "*" in k.models else frozenset(k.models),
                None if "*" in k.cohorts else frozenset(k.cohorts),
            )
        self.open = not self._by_digest
        # Accepted tokens -> caller, so a returning key costs a dict lookup instead of a sha256
        # (about 1.5 us). Only keys that matched are kept, bounded; a reload builds a fresh cache.
        self._accepted: dict[str, Caller] = {}

    def authenticate(self, headers: CIMultiDictProxy[str]) -> Caller:
        if self.open:
            return ANONYMOUS
        value = headers.get("authorization")
        if not value:
            raise Unauthorized("Missing API key: send it as 'Authorization: Bearer <key>'.",
                               code="missing_api_key")
        caller = self._accepted.get(value)
        if caller is not None:
            return caller
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("Malformed Authorization header: expected 'Bearer <key>'.")
        caller = self._by_digest.get(hash_key(token.strip()))
        if caller is None:
            raise Unauthorized("Incorrect API key provided.")
        if len(self._accepted) >= ACCEPTED_MAX:
            self._accepted.clear()
        self._accepted[value] = caller
        return caller
