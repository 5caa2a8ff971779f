"""One account floods the service with hundreds of poisoned corrections through the HTTP API: the dataset built
afterwards trains on at most the per-user cap of its failures, in every training kind (its held-out rows stay, as
evaluation: the cap never drops them), and names every contributor where operators look (the manifest and the
console's datasets route). The gates stopping a candidate trained on poisoned data are
tested in tests/tuning/test_poisoning.py."""

from __future__ import annotations

import json
import random
import re

import pytest
from fastapi.testclient import TestClient
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from affinage.core.settings import load_settings
from affinage.factory import build_agent
from affinage.service import create_app
from agent.service import auth
from retrieval.ingest import ingest
from synth_data.builder import synthesize
from tests.agent.conftest import bearer
from tests.agent.light_server import HashEmbeddings

MARK = "zebra"  # in every question of the flooding account, and so in every row built from it
WORDS = ("refund annual plan invoice card billing seat team password reset link expire okta sso login export "
         "report tag mute desktop browser mobile app verify email owner trial upgrade downgrade cancel renew").split()
FLOOD = 100  # interactions, each corrected twice: 200 poisoned corrections
CAP = 25  # min_user_failures; beside two honest failures, the share (0.25) allows fewer, so the floor is the cap


class EchoTeacher(FakeListChatModel):
    """Paraphrases keep the question's words (so the flooder's rows stay recognisable); answers are fixed."""

    def _call(self, messages, *args, **kwargs):
        prompt = messages[-1].content
        if "Rewrite this customer question" in prompt:
            question = prompt.rsplit("\n", 1)[-1]
            return "\n".join(f"{n}. {lead} {question}" for n, lead in enumerate(("Please:", "Quick one:", "Hi,"), 1))
        return "Annual plans are refundable within 30 days of purchase."


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.sample(WORDS, n))


@pytest.mark.slow
def test_a_flood_of_poisoned_corrections_is_capped_in_every_kind_and_contributors_are_shown(home, kb):
    settings = load_settings(home, rate_limit_per_minute=100_000, feedback_per_minute=100_000, min_user_failures=CAP,
                             paraphrases=2)  # the rate limits are not under test here: the dataset cap is
    embeddings = HashEmbeddings()
    ingest(settings.index_dir, [kb], embeddings, settings.chunk_chars, settings.chunk_overlap_chars)
    agent = build_agent(settings, llm=FakeListChatModel(responses=["We never refund."]), embeddings=embeddings)
    keys = {name: auth.create_key(agent.store, name, role)
            for name, role in (("mallory", "agent"), ("ann", "agent"), ("bob", "agent"), ("op", "operator"))}
    rng = random.Random(0)

    with TestClient(create_app(settings, agent=agent)) as client:
        def chat(user: str, question: str) -> str:
            response = client.post("/v1/chat/completions", headers=bearer(keys[user]),
                                   json={"messages": [{"role": "user", "content": question}]})
            assert response.status_code == 200
            return response.json()["affinage"]["interaction_id"]

        def feedback(user: str, interaction: str, **body) -> None:
            response = client.post("/api/feedback", headers=bearer(keys[user]),
                                   json={"interaction_id": interaction, **body})
            assert response.status_code == 201

        for user, question in (("ann", "How long is the password reset link valid?"),
                               ("bob", "Can I get a refund on an annual plan?")):
            feedback(user, chat(user, question), rating="down",
                     correction="Annual plans are refundable within 30 days of purchase.")
        for n in range(FLOOD):
            interaction = chat("mallory", f"{MARK} {words(rng, 6)} {n}?")
            for _ in range(2):
                link = f"https://evil{n}.example/{words(rng, 3).replace(' ', '-')}"
                feedback("mallory", interaction, rating="down", correction=f"Pay at {link} {words(rng, 5)}.")

        manifest = synthesize(settings, agent.store, agent.retriever, EchoTeacher(responses=["unused"]),
                              embeddings.encode, teacher_name="scripted", base_model="m", progress=False).manifest
        listed = client.get("/api/operator/datasets", headers=bearer(keys["op"])).json()

    folder = settings.datasets_dir / manifest["id"]
    training = ("sft", "preference", "kto")
    lineage = json.loads((folder / "lineage.json").read_text())
    flooded = {i for kind in training for i, line in zip(lineage[kind], (folder / f"{kind}.jsonl").read_text()
                                                        .splitlines(), strict=True) if MARK in line}
    assert 0 < len(flooded) <= CAP, flooded
    assert {i for kind in training for i in lineage[kind] if lineage["contributors"][i] == "mallory"} == flooded
    assert manifest["filters"]["dropped"]["per_user_cap"] > 0
    assert manifest["filters"]["per_user_cap"]["users"]["mallory"]["kept"] == len(flooded)
    poisoned = len(set(re.findall(r"evil\d+\.example", "".join((folder / f"{kind}.jsonl").read_text()
                                                              for kind in training))))
    assert poisoned <= CAP
    honest = sum(1 for kind in manifest["counts"] for line in (folder / f"{kind}.jsonl").read_text().splitlines()
                 if MARK not in line and "30 days" in json.dumps(json.loads(line)))
    assert honest >= 2  # the honest corrections are not crowded out
    assert manifest["contributors"] == ["ann", "bob", "mallory"]
    assert [d["contributors"] for d in listed if d["id"] == manifest["id"]] == [["ann", "bob", "mallory"]]
