"""API keys (admins only): list, create and revoke."""

from __future__ import annotations

import logging

from fastapi import APIRouter
from fastapi.responses import Response

from agent.service import auth
from agent.service.deps import AdminCaller, StoreDep
from agent.service.errors import APIError
from agent.service.schemas import CreatedKey, KeyInfo, KeyRequest

log = logging.getLogger("affinage.service")
router = APIRouter(prefix="/api/admin", tags=["admin"])


@router.get("/keys", response_model=list[KeyInfo])
def keys(_: AdminCaller, store: StoreDep) -> list[dict]:
    return [auth.key_info(row) for row in auth.list_keys(store)]


@router.post("/keys", status_code=201, response_model=CreatedKey)
def new_key(body: KeyRequest, who: AdminCaller, store: StoreDep) -> dict:
    try:
        key, row = auth.issue_key(store, body.name, body.role)
    except auth.InvalidKey as error:
        raise APIError(400, str(error), f"invalid_key_{error.param}", error.param) from None
    except auth.KeyNameTaken as error:
        raise APIError(409, str(error), "key_exists", "name") from None
    log.info("key created", extra={"key_name": row.name, "role": row.role, "by": who.name})
    return {**auth.key_info(row), "key": key}


@router.delete("/keys/{name}", status_code=204)
def delete_key(name: str, who: AdminCaller, store: StoreDep) -> Response:
    try:
        auth.revoke_key(store, name)
    except ValueError as error:
        raise APIError(404, str(error), "key_not_found", "name") from None
    log.info("key revoked", extra={"key_name": name, "by": who.name})
    return Response(status_code=204)
