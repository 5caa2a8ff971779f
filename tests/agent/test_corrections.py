"""The instant remedy: an operator-approved correction answers the next asking of that question."""

import json

from affinage.cli import main
from affinage.core.tables import Example
from tests.agent.conftest import bearer

QUESTION = "Can I get a refund on an annual plan?"
CORRECTION = "Yes: within 30 days, from Settings > Billing > Request refund. Questions: billing@example.com"


def ask(client, key, question=QUESTION):
    response = client.post("/v1/chat/completions", headers=bearer(key),
                           json={"messages": [{"role": "user", "content": question}]})
    assert response.status_code == 200
    return response.json()


def correct(client, keys):
    """Ask, then submit a correction; returns the correction's id and the source the first answer cited."""
    first = ask(client, keys["agent"])["affinage"]
    response = client.post("/api/feedback", headers=bearer(keys["agent"]),
                           json={"interaction_id": first["interaction_id"], "rating": "down", "correction": CORRECTION})
    return response.json()["id"], first["citations"][0]["source"]


def test_approved_correction_answers_the_same_question_at_once(client_and_keys):
    client, keys = client_and_keys
    feedback_id, source = correct(client, keys)
    assert ask(client, keys["agent"])["choices"][0]["message"]["content"] != CORRECTION  # not before approval

    pending = client.get("/api/operator/corrections", headers=bearer(keys["operator"])).json()
    assert [(c["id"], c["question"], c["correction"]) for c in pending] == [(feedback_id, QUESTION, CORRECTION)]
    assert client.get("/api/operator/corrections", headers=bearer(keys["agent"])).status_code == 403
    review = client.post(f"/api/operator/corrections/{feedback_id}/approve", headers=bearer(keys["operator"]))
    assert review.status_code == 200 and review.json()["review"] == "approved"

    scrubbed = CORRECTION.replace("billing@example.com", "[EMAIL]")  # PII never reaches other users
    for question in (QUESTION, "can I get a refund on an annual plan"):
        reply = ask(client, keys["agent"], question)
        assert reply["choices"][0]["message"]["content"] == scrubbed
        assert reply["affinage"]["citations"][0]["source"] == source
    assert client.get("/api/operator/corrections", headers=bearer(keys["operator"])).json() == []
    again = client.post(f"/api/operator/corrections/{feedback_id}/reject", headers=bearer(keys["operator"]))
    assert again.status_code == 409 and "already approved" in again.json()["error"]["message"]


def test_rejected_correction_changes_nothing(client_and_keys):
    client, keys = client_and_keys
    feedback_id, _ = correct(client, keys)
    assert client.post(f"/api/operator/corrections/{feedback_id}/reject", headers=bearer(keys["operator"])).json()["review"] == "rejected"
    assert ask(client, keys["agent"])["choices"][0]["message"]["content"] != CORRECTION
    with client.app.state.agent.store.session() as session:
        assert session.query(Example).count() == 0
    assert client.post("/api/operator/corrections/nope/approve", headers=bearer(keys["operator"])).status_code == 404


def test_corrections_cli(client_and_keys, tiny_settings, capsys):
    client, keys = client_and_keys
    feedback_id, _ = correct(client, keys)
    home = ["--home", str(tiny_settings.home)]
    assert main([*home, "corrections", "--json"]) == 0
    assert [c["id"] for c in json.loads(capsys.readouterr().out)] == [feedback_id]
    assert main([*home, "corrections", "approve", feedback_id]) == 0
    assert "is in the example bank" in capsys.readouterr().out
    assert main([*home, "corrections", "approve", feedback_id]) == 1
    assert "already approved" in capsys.readouterr().err


def test_failures_cli_groups_logged_failures(client_and_keys, tiny_settings, capsys):
    client, keys = client_and_keys
    correct(client, keys)
    home = ["--home", str(tiny_settings.home)]
    assert main([*home, "failures", "--json"]) == 0
    topics = json.loads(capsys.readouterr().out)
    assert topics and topics[0]["count"] >= 1
    assert topics[0]["remedy"] in ("knowledge_gap", "prompt_retrieval", "behaviour")
    assert "thumbs_down" in topics[0]["signal_counts"]
    assert main([*home, "failures"]) == 0
    assert QUESTION in capsys.readouterr().out
    assert main([*home, "failures", "--days", "0"]) == 1
