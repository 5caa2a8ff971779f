"""API keys and roles. Keys are random 256-bit secrets, so a plain SHA-256 is a safe way to store them."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from agent.store import ApiKey, Store

ROLES = ("agent", "operator", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}
KEY_PREFIX = "afk_"


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


def create_key(store: Store, name: str, role: str) -> str:
    """Create a key and return its plaintext, which is not stored anywhere."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    if not name.strip():
        raise ValueError("a key needs a non-empty name")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with store.session() as session:
        if session.scalar(select(ApiKey).where(ApiKey.name == name)) is not None:
            raise ValueError(f"a key named {name!r} already exists: revoke it first or pick another name")
        session.add(ApiKey(name=name, role=role, key_hash=hash_key(key), prefix=key[: len(KEY_PREFIX) + 6]))
    return key


def key_info(row: ApiKey) -> dict:
    """What may be shown about a key: never the key, nor its hash."""
    return {"name": row.name, "role": row.role, "prefix": row.prefix, "created_at": row.created_at.isoformat()}


def list_keys(store: Store) -> list[ApiKey]:
    with store.session() as session:
        return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(store: Store, name: str) -> None:
    """Revoked keys are deleted, which frees their name for a new key."""
    with store.session() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.name == name))
        if row is None:
            raise ValueError(f"no key named {name!r}")
        session.delete(row)


def authenticate(store: Store, key: str) -> Caller | None:
    with store.session() as session:
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
        return Caller(row.name, row.role) if row is not None else None
