"""Races of "check, then set" on SQLite and on a real PostgreSQL (``db_url``): reviewers racing on one correction,
admins racing on one key name, imports racing on one file. Threads are released together by a barrier, each with its
own engine (separate connections, as replicas have), and the database alone must decide who wins."""

from __future__ import annotations

import json
import threading
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select

from agent.corrections import AlreadyReviewed, review_correction
from agent.example_bank import ExampleBank
from agent.service import auth
from agent.service.errors import error_body
from affinage.core.tables import ApiKey, Example, Feedback, Interaction
from affinage.core.store import Store
from tests.agent.conftest import bearer
from tests.agent.service_harness import LiveServer

RACERS = 8


def race(stores: list[Store], act) -> list:
    """Run ``act(store, n)`` in one thread per store, released together; returns each one's result or exception."""
    barrier, outcomes = threading.Barrier(len(stores)), [None] * len(stores)

    def run(n: int) -> None:
        barrier.wait()
        try:
            outcomes[n] = act(stores[n], n)
        except Exception as error:  # noqa: BLE001 - every outcome is asserted on
            outcomes[n] = error

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return outcomes


@pytest.fixture
def stores(db_url):
    stores = [Store(db_url) for _ in range(RACERS)]
    yield stores
    for store in stores:
        store.close()


def a_correction(store: Store) -> str:
    interaction = store.add(Interaction(question="Can I get a refund?", answer="No.", prompt_version="p",
                                        model_version="m", latency_s=0.1, citations=[{"source": "billing.md#refunds"}]))
    return store.add(Feedback(interaction_id=interaction.id, rating="down", correction="Yes, within 30 days.",
                              user="ann")).id


def review_state(store: Store, feedback_id: str) -> tuple[str | None, int]:
    with store.session() as session:
        review = session.scalar(select(Feedback.review).where(Feedback.id == feedback_id))
        return review, session.scalar(select(func.count()).select_from(Example))


def test_parallel_approvals_of_one_correction_add_one_example(stores):
    feedback_id = a_correction(stores[0])
    outcomes = race(stores, lambda store, n: review_correction(store, feedback_id, True, f"op{n}"))
    winners = [o for o in outcomes if isinstance(o, Example)]
    assert len(winners) == 1, outcomes
    assert [type(o) for o in outcomes if o is not winners[0]] == [AlreadyReviewed] * (RACERS - 1), outcomes
    assert all("already approved by " + winners[0].added_by in str(o) for o in outcomes if o is not winners[0])
    assert review_state(stores[0], feedback_id) == ("approved", 1)


def test_approvals_racing_rejections_leave_the_review_and_the_bank_agreeing(stores):
    feedback_id = a_correction(stores[0])
    outcomes = race(stores, lambda store, n: review_correction(store, feedback_id, n % 2 == 0, f"op{n}"))
    lost = [o for o in outcomes if isinstance(o, AlreadyReviewed)]
    assert len(lost) == RACERS - 1 and all(o is None or isinstance(o, (Example, AlreadyReviewed)) for o in outcomes)
    review, examples = review_state(stores[0], feedback_id)
    assert (review, examples) in (("approved", 1), ("rejected", 0))
    assert any(isinstance(o, Example) for o in outcomes) == (review == "approved")


def test_parallel_creations_of_one_key_name_make_one_key(stores):
    outcomes = race(stores, lambda store, n: auth.create_key(store, "shared", "agent"))
    keys = [o for o in outcomes if isinstance(o, str)]
    assert len(keys) == 1 and Counter(type(o) for o in outcomes if o not in keys) == {auth.KeyNameTaken: RACERS - 1}
    assert [row.name for row in auth.list_keys(stores[0])] == ["shared"]
    assert auth.authenticate(stores[0], keys[0]).name == "shared"


def test_parallel_revocations_of_one_key_succeed_once(stores):
    auth.create_key(stores[0], "doomed", "agent")
    outcomes = race(stores, lambda store, n: auth.revoke_key(store, "doomed"))
    assert Counter(type(o) for o in outcomes) == {type(None): 1, auth.UnknownKey: RACERS - 1}, outcomes
    assert auth.list_keys(stores[0]) == []


def test_key_names_are_stripped_and_blank_ones_refused(stores):
    store = stores[0]
    auth.create_key(store, "  olga\t", "operator")
    assert [row.name for row in auth.list_keys(store)] == ["olga"]
    with pytest.raises(auth.KeyNameTaken, match="'olga' already exists"):
        auth.create_key(store, "olga ", "agent")
    with pytest.raises(auth.InvalidKey, match="non-empty name") as blank:
        auth.create_key(store, " \t ", "agent")
    with pytest.raises(auth.InvalidKey, match="unknown role 'root'") as role:
        auth.create_key(store, "root", "root")
    assert (blank.value.param, role.value.param) == ("name", "role")
    auth.revoke_key(store, "olga")
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 0


def test_parallel_imports_of_one_file_add_each_pair_once(stores, tmp_path):
    path = tmp_path / "examples.jsonl"
    pairs = [{"question": f"question {i}?", "answer": f"answer {i}."} for i in range(20)]
    path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
    outcomes = race(stores, lambda store, n: ExampleBank(store, embeddings=None).import_jsonl(path, added_by=f"op{n}"))
    assert sorted(outcomes) == [0] * (RACERS - 1) + [len(pairs)], outcomes
    with stores[0].session() as session:
        assert session.scalar(select(func.count()).select_from(Example)) == len(pairs)


def test_admins_racing_on_one_key_name_over_http_get_one_201_and_409s(service, db_url):
    """A real server, so that the requests really run at once on its thread pool."""
    app, keys = service(database_url=db_url)
    assert app.state.agent.store.engine.dialect.name in db_url  # the app really is on that database
    with LiveServer(app) as server:
        barrier = threading.Barrier(RACERS)

        def create(_store, _n) -> httpx.Response:
            with httpx.Client(base_url=server.url, headers=bearer(keys["admin"]), timeout=60) as client:
                barrier.wait()
                return client.post("/api/admin/keys", json={"name": "shared", "role": "agent"})

        responses = race([None] * RACERS, create)
        assert all(isinstance(r, httpx.Response) for r in responses), responses
        assert sorted(r.status_code for r in responses) == [201] + [409] * (RACERS - 1)
        for response in responses:
            if response.status_code == 409:
                assert response.json() == error_body(409, "a key named 'shared' already exists: revoke it first or "
                                                     "pick another name", "key_exists", "name")
        created = next(r.json() for r in responses if r.status_code == 201)
        assert created["name"] == "shared" and created["key"].startswith(auth.KEY_PREFIX)
        with httpx.Client(base_url=server.url, headers=bearer(keys["admin"])) as client:
            blank = client.post("/api/admin/keys", json={"name": "   ", "role": "agent"})
            assert blank.status_code == 400 and blank.json()["error"]["code"] == "invalid_key_name"
            assert blank.json()["error"]["param"] == "name"
            role = client.post("/api/admin/keys", json={"name": "x", "role": "root"})
            assert role.status_code == 400 and role.json()["error"]["param"] == "role"
            padded = client.post("/api/admin/keys", json={"name": " padded ", "role": "agent"})
            assert padded.status_code == 201 and padded.json()["name"] == "padded"
            listed = [k["name"] for k in client.get("/api/admin/keys").json()]
            assert listed.count("shared") == 1 and "padded" in listed


def test_reviewers_racing_on_one_correction_over_http_get_one_200_and_409s(service, db_url):
    app, keys = service(database_url=db_url)
    assert app.state.agent.store.engine.dialect.name in db_url  # the app really is on that database
    feedback_id = a_correction(app.state.agent.store)
    with LiveServer(app) as server:
        def review(_store, n: int) -> httpx.Response:
            with httpx.Client(base_url=server.url, headers=bearer(keys["operator"]), timeout=60) as client:
                return client.post(f"/api/operator/corrections/{feedback_id}/{'approve' if n % 2 else 'reject'}")

        responses = race([None] * RACERS, review)
    assert all(isinstance(r, httpx.Response) for r in responses), responses
    assert sorted(r.status_code for r in responses) == [200] + [409] * (RACERS - 1)
    assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {"already_reviewed"}
    won = next(r.json() for r in responses if r.status_code == 200)
    assert review_state(app.state.agent.store, feedback_id) == (won["review"], int(won["review"] == "approved"))
