"""API keys and roles. Keys are random 256-bit secrets, so a plain SHA-256 is a safe way to store them."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from affinage.core.tables import ApiKey
from affinage.core.store import Store

ROLES = ("agent", "operator", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}
KEY_PREFIX = "afk_"


class InvalidKey(ValueError):
    """A key request that can never succeed: an unknown role or an empty name (the service answers 400);
    ``param`` names the bad field."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


class KeyNameTaken(ValueError):
    """A key by that name exists (the service answers 409)."""


class UnknownKey(ValueError):
    """No key by that name (the service answers 404)."""


@dataclass(frozen=True)
class Caller:
    """Who is calling: the key's name and role (never the key itself)."""

    name: str
    role: str

    def can(self, role: str) -> bool:
        """Roles nest: an admin may do what an operator may, an operator what an agent may."""
        return _RANK[self.role] >= _RANK[role]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def issue_key(store: Store, name: str, role: str) -> tuple[str, ApiKey]:
    """Create a key named ``name`` with surrounding whitespace stripped; returns its plaintext, which is not stored
    anywhere, and its row.

    The name's unique constraint decides between creators racing on one name: no check before the insert, whose
    IntegrityError becomes KeyNameTaken for every loser."""
    if role not in ROLES:
        raise InvalidKey(f"unknown role {role!r}: choose one of {', '.join(ROLES)}", "role")
    name = name.strip()
    if not name:
        raise InvalidKey("a key needs a non-empty name", "name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, role=role, key_hash=hash_key(key), prefix=key[: len(KEY_PREFIX) + 6])
    try:
        with store.session() as session:
            session.add(row)
            session.flush()
    except IntegrityError:
        raise KeyNameTaken(f"a key named {name!r} already exists: revoke it first or pick another name") from None
    return key, row


def create_key(store: Store, name: str, role: str) -> str:
    """Create a key and return its plaintext (see ``issue_key``)."""
    return issue_key(store, name, role)[0]


def key_info(row: ApiKey) -> dict:
    """What may be shown about a key: never the key, nor its hash."""
    return {"name": row.name, "role": row.role, "prefix": row.prefix, "created_at": row.created_at.isoformat()}


def list_keys(store: Store) -> list[ApiKey]:
    with store.session() as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(store: Store, name: str) -> None:
    """Revoked keys are deleted, which frees their name for a new key. One conditional DELETE, so of two revocations
    racing on one key exactly one succeeds and the other is told there is no such key. The name is taken exactly as
    given (not stripped), so a key named with surrounding spaces before names were stripped can still be revoked."""
    with store.session() as session:
        if session.execute(delete(ApiKey).where(ApiKey.name == name)).rowcount != 1:
            raise UnknownKey(f"no key named {name!r}")


def authenticate(store: Store, key: str) -> Caller | None:
    with store.session() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
        return Caller(row.name, row.role) if row is not None else None
