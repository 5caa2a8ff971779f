"""A stand-in for a vLLM server started with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``.

Its adapter routes follow ``contracts/vllm_lora.json``, the API read from vLLM's source: every call is checked
against the recorded method, content type and request fields (a breach is kept in ``violations`` and refused), and
the answers use the recorded statuses, error bodies and messages. Like vLLM it refuses a second load under one name
and an unload of a name it does not hold, lists loaded adapters in ``/v1/models`` as cards whose parent is the base
model, refuses an adapter whose rank is above ``max_lora_rank``, and forgets every adapter on ``restart()``.

Chat requests must name the base model or a loaded adapter (404 otherwise, as vLLM answers); the generation itself
is relayed to a real affinage service, and the answer names the requested model, as vLLM's does. The stand-in reads
adapter folders through ``mounts`` (server path prefix -> local folder), as a server that mounts the registry
elsewhere would.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

CONTRACT = json.loads((Path(__file__).parent / "contracts" / "vllm_lora.json").read_text())
JSON_TYPES = {"string": str, "boolean": bool, "integer": int}


def contract_problems(endpoint: str, request: Request, body: object) -> list[str]:
    """How a call breaks the contract: method, content type, and fields unknown, missing, mistyped or too new."""
    spec = CONTRACT["endpoints"][endpoint]
    problems = [] if request.method == spec["method"] else [f"method {request.method}, not {spec['method']}"]
    if request.headers.get("content-type", "").split(";")[0].strip() != spec["content_type"]:
        problems.append(f"content type {request.headers.get('content-type')!r}, not {spec['content_type']}")
    if not isinstance(body, dict):
        return [*problems, "the body is not a JSON object"]
    fields = spec["request"]["fields"]
    for name, value in body.items():
        if name not in fields:
            problems.append(f"field {name!r} is not in the contract")
        elif not fields[name]["in_every_version"]:
            problems.append(f"field {name!r} is not accepted by every vLLM version in the contract")
        elif value is not None and type(value) is not JSON_TYPES[fields[name]["type"]]:  # bool is no integer here
            problems.append(f"field {name!r} is not a {fields[name]['type']}")
    problems += [f"required field {name!r} is missing" for name, field in fields.items()
                 if field["required"] and name not in body]
    return problems


def error_response(status: int, kind: str, message: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def contract_error(endpoint: str, error_id: str, message: str | None = None, **names) -> JSONResponse:
    """The error the contract records under ``error_id``, its message filled in with ``names``."""
    entry = next(e for e in CONTRACT["endpoints"][endpoint]["errors"] if e["id"] == error_id)
    return error_response(entry["status"], entry["type"], message or entry["message"].format(**names))


class VLLMStandIn:
    def __init__(self, base_name: str, api_key: str, mounts: dict[str, Path], upstream_url: str, upstream_key: str,
                 max_lora_rank: int = 16):
        self.base_name, self.api_key, self.mounts, self.max_lora_rank = base_name, api_key, mounts, max_lora_rank
        self.upstream_url, self.upstream_key = upstream_url, upstream_key
        self.adapters: dict[str, str] = {}  # name -> lora_path as sent
        self.calls: list[tuple[str, dict]] = []  # (endpoint, body) of every adapter call, in order
        self.violations: list[str] = []
        self.chat_models: list[str] = []  # the model each accepted chat request named
        self.created = int(time.time())
        self.app = self._build()

    def restart(self) -> None:
        """What a restarted vLLM holds: no adapter loaded at run time."""
        self.adapters.clear()

    def _local(self, server_path: str) -> Path | None:
        for prefix, folder in self.mounts.items():
            if server_path == prefix or server_path.startswith(prefix.rstrip("/") + "/"):
                return folder / server_path[len(prefix):].lstrip("/")
        return None

    def _card(self, name: str, root: str, parent: str | None) -> dict:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "vllm", "root": root,
                "parent": parent, "max_model_len": None if parent else 2048, "permission": []}

    async def _adapter_call(self, endpoint: str, request: Request) -> tuple[dict | None, JSONResponse | None]:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        problems = contract_problems(endpoint, request, body)
        self.calls.append((endpoint, body))
        if problems:
            self.violations += [f"{endpoint}: {p}" for p in problems]
            return None, error_response(400, "BadRequestError", "; ".join(problems))
        return body, None

    def _build(self) -> FastAPI:
        app = FastAPI()
        load_path = CONTRACT["endpoints"]["load"]["path"]
        unload_path = CONTRACT["endpoints"]["unload"]["path"]

        @app.middleware("http")
        async def authenticate(request: Request, call_next):
            guarded = request.url.path.startswith(tuple(CONTRACT["server"]["auth"]["guarded_path_prefixes"]))
            if guarded and request.headers.get("authorization") != f"Bearer {self.api_key}":
                refused = CONTRACT["server"]["auth"]["refused"]
                return JSONResponse(refused["body"], status_code=refused["status"])
            return await call_next(request)

        @app.post(load_path)
        async def load(request: Request):
            body, refused = await self._adapter_call("load", request)
            if refused:
                return refused
            name, path = body["lora_name"], body["lora_path"]
            if not name or not path:
                return contract_error("load", "missing_fields")
            if name in self.adapters:
                return contract_error("load", "duplicate", lora_name=name)
            folder = self._local(path)
            if not (folder and (folder / "adapter_config.json").is_file() and any(folder.glob("adapter_model.*"))):
                return contract_error("load", "not_found", lora_name=name, lora_path=path)
            rank = json.loads((folder / "adapter_config.json").read_text())["r"]
            if rank > self.max_lora_rank:
                failed = next(e for e in CONTRACT["endpoints"]["load"]["errors"] if e["id"] == "engine_failed")
                return contract_error("load", "engine_failed",
                                      failed["example_message"].format(rank=rank, max_lora_rank=self.max_lora_rank))
            self.adapters[name] = path
            return Response(CONTRACT["endpoints"]["load"]["success"]["body_text"].format(lora_name=name),
                            status_code=200)

        @app.post(unload_path)
        async def unload(request: Request):
            body, refused = await self._adapter_call("unload", request)
            if refused:
                return refused
            name = body["lora_name"]
            if not name:
                return contract_error("unload", "missing_name")
            if self.adapters.pop(name, None) is None:
                return contract_error("unload", "not_loaded", lora_name=name)
            return Response(CONTRACT["endpoints"]["unload"]["success"]["body_text"].format(lora_name=name),
                            status_code=200)

        @app.get(CONTRACT["endpoints"]["models"]["path"])
        def models():
            cards = [self._card(self.base_name, f"/models/{self.base_name}", None)]
            cards += [self._card(name, path, self.base_name) for name, path in self.adapters.items()]
            return {"object": "list", "data": cards}

        @app.post(CONTRACT["endpoints"]["chat"]["path"])
        async def chat(request: Request):
            body = await request.json()
            model = body.get("model")
            if model != self.base_name and model not in self.adapters:
                unknown = CONTRACT["endpoints"]["chat"]["unknown_model"]
                return error_response(unknown["status"], unknown["type"], unknown["message"].format(model=model),
                                      unknown["param"])
            self.chat_models.append(model)
            return await self._relay({**body, "model": "default"}, model)

        return app

    async def _relay(self, body: dict, answered_by: str):
        """Generate on the affinage service; the answer names ``answered_by``, as vLLM names the adapter."""
        headers = {"Authorization": f"Bearer {self.upstream_key}"}
        url = f"{self.upstream_url}/v1/chat/completions"
        if not body.get("stream"):
            async with httpx.AsyncClient(timeout=120) as client:
                response = await client.post(url, json=body, headers=headers)
            answer = response.json()
            if response.status_code == 200:
                answer["model"] = answered_by
            return JSONResponse(answer, status_code=response.status_code)

        async def events():
            async with httpx.AsyncClient(timeout=120) as client, client.stream("POST", url, json=body,
                                                                                headers=headers) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data: {"):
                        chunk = json.loads(line[len("data: "):])
                        if "model" in chunk:
                            chunk["model"] = answered_by
                        line = f"data: {json.dumps(chunk)}"
                    yield line + "\n"

        return StreamingResponse(events(), media_type="text/event-stream")
