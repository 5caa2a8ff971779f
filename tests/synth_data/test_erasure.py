"""Erasure in datasets: every row derived from an erased interaction goes, in a new version; the old one becomes a
tombstone that holds nothing personal and is refused for training."""

import hashlib
import json

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

import synth_data.erasure as erasure
from affinage.cli import main
from affinage.factory import build_agent
from agent.feedback import record_feedback
from retrieval.ingest import ingest
from synth_data.builder import synthesize
from affinage.core.datasets import KINDS, LINEAGE, list_datasets, used_interactions, verify_dataset
from synth_data.erasure import leftover_rows, supersede_datasets
from tests.synth_data.test_builder import BAD, GOOD, Teacher
from tuning.data import find_dataset, load_training_data

pytestmark = pytest.mark.slow

ANN_QUESTION = "Can I get a refund on my annual plan?"
BOB_CORRECTION = "No, monthly plans are never refunded. Ask the billing desk."


@pytest.fixture
def built(tiny_settings, kb, embeddings):
    """One dataset from three users: ann (thumbs down, teacher answer), bob (a correction), cid (thumbs up)."""
    ingest(tiny_settings.index_dir, [kb], embeddings, tiny_settings.chunk_chars, tiny_settings.chunk_overlap_chars)
    agent = build_agent(tiny_settings, embeddings=embeddings, llm=FakeListChatModel(responses=[BAD]))
    ids = {}
    for user, question in [("ann", ANN_QUESTION), ("bob", "Are monthly plans refunded?"),
                           ("cid", "How long does the password reset link stay valid?")]:
        ids[user] = agent.ask(question, user=user).interaction_id
    record_feedback(agent.store, ids["ann"], "down")
    record_feedback(agent.store, ids["bob"], "down", correction=BOB_CORRECTION)
    record_feedback(agent.store, ids["cid"], "up")
    settings = agent.settings.model_copy(update={"paraphrases": 2, "injection_hardening": 1})
    manifest = synthesize(settings, agent.store, agent.retriever, Teacher(responses=["unused"]),
                          agent.retriever.embeddings.encode, teacher_name="scripted", base_model=agent.model_version,
                          progress=False).manifest
    return settings, manifest, ids


def rows(folder, kind):
    return [json.loads(line) for line in (folder / f"{kind}.jsonl").read_text().splitlines()]


def lineage(folder):
    return json.loads((folder / LINEAGE).read_text())


def drop_lineage(folder):
    """Make a dataset look like one built before lineage existed."""
    (folder / LINEAGE).unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"][LINEAGE]
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_lineage_names_each_rows_interaction_and_is_hashed(built):
    settings, manifest, ids = built
    folder = settings.datasets_dir / manifest["id"]
    assert manifest["counts"] == {"sft": 8, "preference": 4, "kto": 3, "heldout": 2}
    assert manifest["files"][LINEAGE] == hashlib.sha256((folder / LINEAGE).read_bytes()).hexdigest()
    names = lineage(folder)
    assert {kind: len(names[kind]) for kind in KINDS} == manifest["counts"]
    assert names["heldout"] == [r["interaction_id"] for r in rows(folder, "heldout")]
    assert names["contributors"] == {ids["ann"]: "ann", ids["bob"]: "bob", ids["cid"]: "cid"}
    bob_sft = [r for r, i in zip(rows(folder, "sft"), names["sft"]) if i == ids["bob"]]
    answers = [r["messages"][-1]["content"] for r in bob_sft]  # a hardened copy may ask for a planted person's details
    assert len(answers) == 4 and answers.count(BOB_CORRECTION) >= 3
    assert all(a == BOB_CORRECTION or "personal" in a for a in answers)
    assert verify_dataset(folder)["id"] == manifest["id"]
    (folder / LINEAGE).write_text(json.dumps({**names, "sft": list(reversed(names["sft"]))}))
    with pytest.raises(ValueError, match="lineage.json does not match its recorded hash"):
        verify_dataset(folder)


def test_an_erasure_removes_every_row_of_one_interaction_and_keeps_the_others(built, capsys):
    settings, manifest, ids = built
    root, old = settings.datasets_dir, settings.datasets_dir / manifest["id"]
    bob = {kind: sum(i == ids["bob"] for i in lineage(old)[kind]) for kind in KINDS}
    assert bob == {"sft": 4, "preference": 2, "kto": 1, "heldout": 1}  # paraphrases, a hardened copy, pairs
    assert leftover_rows(root, {ids["bob"]}, None) == {manifest["id"]: 8}

    [done] = supersede_datasets(root, {ids["bob"]}, None)
    assert done["old"] == manifest["id"] and done["removed"] == bob
    new = root / done["new"]
    fresh = verify_dataset(new)
    assert fresh["supersedes"] == manifest["id"] and fresh["created_at"] == manifest["created_at"]
    assert fresh["counts"] == {kind: manifest["counts"][kind] - bob[kind] for kind in KINDS}
    assert fresh["source_interaction_ids"] == [i for i in manifest["source_interaction_ids"] if i != ids["bob"]]
    assert fresh["contributors"] == ["ann", "cid"] and fresh["teacher"] == "scripted"
    assert ids["bob"] not in json.dumps(lineage(new)) and "bob" not in json.dumps(lineage(new))
    text = "".join((new / f"{kind}.jsonl").read_text() for kind in KINDS)
    assert BOB_CORRECTION not in text and "are monthly plans refunded" not in text.lower()
    kept = [r["messages"][-1]["content"] for r in rows(new, "sft")]  # ann's rows all stay
    assert GOOD in kept and all(a == GOOD or "personal" in a for a in kept)  # a hardened copy may refuse PII
    assert leftover_rows(root, {ids["bob"]}, None) == {}

    # the tombstone: its manifest alone, with nothing that names or quotes the erased (or anyone)
    assert [p.name for p in old.iterdir()] == ["manifest.json"]
    stone = (old / "manifest.json").read_text()
    for personal in (*ids.values(), "bob", "ann", "monthly", "never refunded", "contributors", "source_interaction"):
        assert personal not in stone
    stone = json.loads(stone)
    assert stone["superseded_by"] == done["new"] and stone["removed"] == bob and stone["erased_at"]

    # hidden from training, refused by name, still listed for people
    assert [m["id"] for m in list_datasets(root)] == [done["new"]]
    assert [m["id"] for m in list_datasets(root, include_superseded=True)] == [manifest["id"], done["new"]]
    assert used_interactions(root) == {ids["ann"], ids["cid"]}
    assert find_dataset(root, None) == new
    for refuse in (lambda: find_dataset(root, manifest["id"]), lambda: verify_dataset(old),
                   lambda: load_training_data(root, manifest["id"], "sft", "m", 0.0, 0)):
        with pytest.raises(ValueError, match=f"dataset {manifest['id']} was superseded by {done['new']} after an erasure"):
            refuse()
    assert main(["--home", str(settings.home), "datasets"]) == 0
    listing = capsys.readouterr().out
    assert f"{manifest['id']}  " in listing and f"superseded by {done['new']} after an erasure" in listing
    assert supersede_datasets(root, {ids["bob"]}, None) == []  # done: nothing more to do


def test_a_rerun_after_a_kill_between_the_steps_writes_no_second_copy(built, monkeypatch):
    settings, manifest, ids = built
    root = settings.datasets_dir

    def killed(*args):
        raise KeyboardInterrupt("killed after the new dataset was written")

    monkeypatch.setattr(erasure, "tombstone", killed)
    with pytest.raises(KeyboardInterrupt):
        supersede_datasets(root, {ids["ann"]}, None)
    [written] = [m for m in list_datasets(root) if m.get("supersedes") == manifest["id"]]
    monkeypatch.undo()

    calls = []
    real_delete = erasure.delete_data

    def killed_while_deleting(folder):
        calls.append(folder)
        raise KeyboardInterrupt("killed after the tombstone was written")

    monkeypatch.setattr(erasure, "delete_data", killed_while_deleting)
    with pytest.raises(KeyboardInterrupt):
        supersede_datasets(root, {ids["ann"]}, None)
    assert (root / manifest["id"] / "sft.jsonl").exists()  # the manifest is a tombstone, its files still there
    with pytest.raises(ValueError, match="superseded by"):
        find_dataset(root, manifest["id"])
    monkeypatch.setattr(erasure, "delete_data", real_delete)

    assert supersede_datasets(root, {ids["ann"]}, None) == []  # the tombstone is finished, nothing written again
    assert [p.name for p in (root / manifest["id"]).iterdir()] == ["manifest.json"]
    assert [m["id"] for m in list_datasets(root, include_superseded=True)] == [manifest["id"], written["id"]]
    assert json.loads((root / manifest["id"] / "manifest.json").read_text())["superseded_by"] == written["id"]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_matching_text_takes_its_rows_and_their_interactions_other_rows(built):
    settings, manifest, ids = built
    root, old = settings.datasets_dir, settings.datasets_dir / manifest["id"]
    ann = {kind: sum(i == ids["ann"] for i in lineage(old)[kind]) for kind in KINDS}
    quoting = sum(ANN_QUESTION.lower() in json.dumps(r).lower() for kind in KINDS for r in rows(old, kind))
    assert 0 < quoting < sum(ann.values())  # paraphrases and the held-out row do not quote it
    [done] = supersede_datasets(root, set(), "REFUND ON MY ANNUAL PLAN")
    assert done["removed"] == ann
    new = root / done["new"]
    assert ids["ann"] not in lineage(new)["sft"] and verify_dataset(new)["contributors"] == ["bob", "cid"]
    assert ids["ann"] in used_interactions(root)  # not erased, only its rows: rebuilt, they could bring the text back
    assert "refund on my annual plan" not in "".join((new / f"{k}.jsonl").read_text().lower() for k in KINDS)


def test_a_dataset_without_lineage_loses_every_row_it_cannot_prove_clean(built):
    settings, manifest, ids = built
    root, old = settings.datasets_dir, settings.datasets_dir / manifest["id"]
    drop_lineage(old)
    # nothing erased drew on it: only the rows with the text go (paraphrases cannot be traced without lineage)
    quoting = {kind: sum(erasure.contains(r, ANN_QUESTION.lower()) for r in rows(old, kind)) for kind in KINDS}
    [first] = supersede_datasets(root, set(), ANN_QUESTION)
    assert first["removed"] == quoting and quoting["sft"] >= 1 and quoting["heldout"] == 0
    middle = verify_dataset(root / first["new"])
    assert not (root / first["new"] / LINEAGE).exists() and middle["contributors"] == ["ann", "bob", "cid"]
    assert len(middle["source_interaction_ids"]) == 3

    # an erased source: only held-out rows name theirs, so nothing trainable survives and no dataset replaces it
    assert leftover_rows(root, {ids["bob"]}, None) == {first["new"]: sum(middle["counts"].values()) - 1}
    [second] = supersede_datasets(root, {ids["bob"]}, None)
    assert second["new"] is None and second["released"] == 2
    assert second["unattributable"] == sum(middle["counts"][kind] for kind in ("sft", "preference", "kto"))
    assert second["removed"] == middle["counts"]
    assert list_datasets(root) == [] and used_interactions(root) == set()  # ann and cid wait for the next synth
    assert leftover_rows(root, {ids["bob"]}, None) == {}


def test_erasing_everything_leaves_tombstones_only(built):
    settings, manifest, ids = built
    root = settings.datasets_dir
    [done] = supersede_datasets(root, set(ids.values()), None)
    assert done["new"] is None and done["removed"] == manifest["counts"]
    with pytest.raises(ValueError, match=f"dataset {manifest['id']} was erased"):
        find_dataset(root, manifest["id"])
    with pytest.raises(ValueError, match="there is no dataset"):
        find_dataset(root, None)
    assert [p.name for p in (root / manifest["id"]).iterdir()] == ["manifest.json"]
