"""Serving: the HTTP service, API keys, the database schema."""

from __future__ import annotations

import argparse
import json
import sys

from affinage.core.cores import one_core_per_thread
from affinage.core.settings import Settings

DEMO_KEYS = (("demo-agent", "agent"), ("demo-operator", "operator"), ("demo-admin", "admin"))

# uvicorn's own limits: an idle keep-alive connection closes after KEEP_ALIVE_SECONDS (nginx's upstream
# keepalive_timeout stays below it) and headers still incomplete past MAX_HEADER_BYTES get 400. uvicorn has no timeout
# for headers or a body that arrive slower than promised (its keep-alive timer stops at the first byte of a
# request): a reverse proxy bounds those (docs/deployment.md, "Slow clients").
KEEP_ALIVE_SECONDS = 5

MAX_HEADER_BYTES = 16 * 1024  # h11's own default, stated: a request line and headers buffered while incomplete



def _limit_native_caches(arenas: int = 2, onednn_primitives: int = 32, trim_every_s: float = 5.0) -> None:
    """Keep the server's memory flat: glibc gives each request thread its own malloc arena, and oneDNN (bfloat16
    matmuls) keeps up to 1024 kernels, one per shape, and every batch of answers has a shape of its own: 16 clients
    for 50 s grew the process by 237 MiB, 87 MiB with 16 kernels kept. PyTorch's ideep layer over oneDNN keeps a
    cache of its own (LRU_CACHE_CAPACITY, also 1024), which the engine's batched attention fills with a shape per
    batch size and key length: 16 clients for 60 s grew the engine by 200 MiB, nothing with 32 kept. What answers
    free stays resident in glibc's heaps until trimmed, so they are trimmed every ``trim_every_s``
    (bench/load_soak.py, 60 s of 16 clients: +6.5% instead of +10.2%). An administrator's own
    ONEDNN_PRIMITIVE_CACHE_CAPACITY and LRU_CACHE_CAPACITY are kept."""
    import ctypes
    import os
    import threading
    import time

    from affinage.core.memory import trim_heap

    for cache in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):  # each read at its first matmul
        os.environ.setdefault(cache, str(onednn_primitives))
    try:
        ctypes.CDLL("libc.so.6").mallopt(-8, arenas)  # -8 is M_ARENA_MAX
    except OSError:  # not glibc: nothing to tune
        return

    def trim() -> None:
        while True:
            time.sleep(trim_every_s)
            trim_heap()

    threading.Thread(target=trim, name="heap-trim", daemon=True).start()


def server_config(app, settings: Settings, host: str, port: int):
    """The uvicorn Config `affinage serve` runs; h11 is pinned because uvicorn applies the header limit to h11 only."""
    import uvicorn

    return uvicorn.Config(
        app, host=host, port=port, http="h11", log_level="warning", access_log=False,
        timeout_keep_alive=KEEP_ALIVE_SECONDS, h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        limit_concurrency=settings.max_connections, timeout_graceful_shutdown=settings.shutdown_grace_seconds)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from affinage.service import create_app
    from agent.service import auth
    from agent.service.observability import configure_logging

    configure_logging()
    _limit_native_caches()
    one_core_per_thread()  # before the first operator: generation claims every core (affinage.core.cores)
    app = create_app(settings)
    url = f"http://{args.host}:{args.port}/"
    print(f"affinage is serving {app.state.agent.model_version} at {url}")
    print(f"  web chat: {url}   OpenAI-compatible API: {url}v1")
    if args.demo_keys:
        store = app.state.agent.store
        existing = {row.name for row in auth.list_keys(store)}
        for name, role in DEMO_KEYS:
            if name in existing:
                auth.revoke_key(store, name)
            print(f"  {role:8} key ({name}): {auth.create_key(store, name, role)}")
    sys.stdout.flush()
    server = uvicorn.Server(server_config(app, settings, args.host, args.port))
    server.run()
    return 0 if server.started else 1  # a lifespan that failed to start: uvicorn has logged why


def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    from affinage.core.store import Store
    from agent.service import auth

    store = Store(settings.db_url)
    if args.action == "create":
        key, row = auth.issue_key(store, args.name, args.role)  # the name stripped of surrounding whitespace
        print(f"Created {row.role} key {row.name!r}. It is shown only this once; store it now:")
        print(key)
    elif args.action == "revoke":
        auth.revoke_key(store, args.name)
        print(f"Revoked key {args.name!r}")
    else:
        rows = auth.list_keys(store)
        if args.json:
            print(json.dumps([auth.key_info(r) for r in rows]))
        for row in [] if args.json else rows:
            print(f"{row.name:24} {row.role:9} {row.prefix}…  created {row.created_at:%Y-%m-%d %H:%M}")
    return 0


def cmd_db(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from affinage.core import migrations
    from affinage.core.database import make_engine

    try:
        engine = make_engine(settings.db_url)
        if args.action == "upgrade":
            before, after = migrations.upgrade(engine)
        else:
            with engine.connect() as connection:
                before = after = migrations.current(connection)
        engine.dispose()
    except SQLAlchemyError as error:  # an unreachable server or a bad URL: one line, without the password
        raise ValueError(f"database: {getattr(error, 'orig', None) or error}") from error
    head = migrations.head()
    if not migrations.known(after):
        raise ValueError(f"the database is at schema revision {after}, newer than this affinage knows (its newest is "
                         f"{head}): use the release that migrated it")
    if before != after:
        print(f"upgraded {before or 'empty'} -> {after}")
    elif after == head:
        print(f"{after} (head)")
    else:
        print(f"{after or 'none'} (head is {head}: run `affinage db upgrade`, or any command that opens the database)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the HTTP service: web chat and OpenAI-compatible API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--demo-keys", action="store_true", help="(re)create demo-agent/-operator/-admin keys and print them")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("keys", help="manage API keys")
    keys = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    k = keys.add_parser("create", help="create a key and print it once, alone on the last line")
    k.add_argument("--role", required=True, choices=["agent", "operator", "admin"])
    k.add_argument("--name", required=True)
    k = keys.add_parser("list", help="list keys (names, roles, prefixes; never the keys)")
    k.add_argument("--json", action="store_true")
    k = keys.add_parser("revoke", help="revoke a key by name")
    k.add_argument("name")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("db", help="the database schema: its revision, or bring it to the newest (Alembic)")
    p.add_argument("action", choices=["current", "upgrade"])
    p.set_defaults(func=cmd_db)
