import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from affinage.core.store import Store
from tuning.registry import BASE, Registry, RegistryError, UnknownVersion

REPO = Path(__file__).resolve().parents[2]
MOVES = ("promoted", "rolled_back")


@pytest.fixture
def registry(tmp_path, db_url):
    store = Store(db_url)
    yield Registry(tmp_path / "registry", store)
    store.close()


def add_version(registry: Registry, version_id: str, weights: bytes = b"weights") -> str:
    staged = registry.staging()
    (staged / "adapter_model.safetensors").write_bytes(weights)
    (staged / "adapter_config.json").write_text("{}")
    registry.add(staged, {"id": version_id, "method": "sft", "kind": "lora", "created_at": version_id,
                          "datasets": [{"id": "ds-1"}], "metrics": {}})
    return version_id


def passed(registry: Registry, version_id: str) -> str:
    registry.record_gate(version_id, True, {"report": "report.json"})
    return version_id


def assert_consistent(registry: Registry) -> None:
    """Every pointer move has exactly one event and the last one names the active version."""
    pointer, moves = registry.pointer_state(), [e for e in registry.events() if e["action"] in MOVES]
    assert len(moves) == pointer["generation"]
    assert (moves[-1]["version"] if moves else BASE) == (pointer["active"] or BASE)
    assert [v.id for v in registry.list() if v.state == "active"] == ([pointer["active"]] if pointer["active"] else [])
    if pointer["active"]:
        registry.verify(pointer["active"])


def test_lifecycle_promote_and_rollback(registry):
    a, b = add_version(registry, "a"), add_version(registry, "b")
    assert [v.state for v in registry.list()] == ["candidate", "candidate"] and registry.active_id() is None

    with pytest.raises(RegistryError, match="only a version that passed its gates"):
        registry.promote(a, actor="op")
    registry.record_gate(b, False, {})
    with pytest.raises(RegistryError, match="failed its gates: approving it needs an admin's written override"):
        registry.decide(b, True, actor="op", comment="looks fine")
    with pytest.raises(RegistryError, match="needs a comment"):
        registry.decide(b, False, actor="op", comment="  ")
    with pytest.raises(RegistryError, match="is gated-failed"):
        registry.promote(b, actor="op")

    registry.decide(passed(registry, a), True, actor="op", comment="better on billing")
    registry.promote(a, actor="op")
    assert registry.get(a).state == "active" and registry.active_id() == a
    assert registry.get(a).gate["report"] == "report.json"  # the verdict outlives the decision

    c = passed(registry, add_version(registry, "c"))
    registry.promote(c, actor="op")
    assert (registry.get(a).state, registry.get(c).state) == ("retired", "active")

    assert registry.rollback(actor="op") == a
    assert (registry.get(a).state, registry.get(c).state) == ("active", "retired")
    assert registry.rollback(actor="op") is None  # back to the bare base model
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback(actor="op")
    registry.promote(c, actor="op")  # a retired version that passed its gates can serve again
    registry.decide(b, True, actor="admin", comment="urgent fix", override_reason="safety probe flaked; checked by hand")
    assert registry.get(b).state == "approved"
    assert registry.events()[-1]["override_reason"] == "safety probe flaked; checked by hand"
    actions = [(e["action"], e["version"]) for e in registry.events()]
    assert ("promoted", c) in actions and ("rolled_back", "base") in actions
    assert all(e["actor"] and e["at"] for e in registry.events())
    assert_consistent(registry)


def test_tampered_weights_or_manifest_are_refused(registry):
    a = passed(registry, add_version(registry, "a"))
    weights = registry.versions / a / "adapter_model.safetensors"
    weights.write_bytes(b"poisoned")
    with pytest.raises(RegistryError, match="does not match its recorded sha256"):
        registry.promote(a, actor="op")
    weights.write_bytes(b"weights")
    manifest = registry.versions / a / "manifest.json"
    forged = {**json.loads(manifest.read_text()), "files": {"adapter_config.json": "0" * 64}}
    manifest.write_text(json.dumps(forged))  # rewriting the manifest on disk does not change the registered one
    with pytest.raises(RegistryError, match="manifest.json is missing or differs from the registered one"):
        registry.verify(a)
    assert registry.active_id() is None and registry.pointer_state()["generation"] == 0


def test_a_manifest_with_nan_is_stored_as_strict_json(registry):
    staged = registry.staging()
    (staged / "adapter_model.safetensors").write_bytes(b"w")
    registry.add(staged, {"id": "nan", "curves": {"train": [[1, float("nan")], [2, float("inf")]]}})
    assert registry.get("nan").manifest["curves"] == {"train": [[1, None], [2, None]]}
    registry.verify("nan")  # the manifest on disk is the registered one


def test_extra_and_pickle_files_are_refused(registry):
    staged = registry.staging()
    (staged / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(RegistryError, match="non-safetensors files: adapter_model.bin"):
        registry.add(staged, {"id": "x"})
    assert not staged.exists() and registry.list() == []

    a = passed(registry, add_version(registry, "a"))
    (registry.versions / a / "extra.safetensors").write_bytes(b"smuggled")
    with pytest.raises(RegistryError, match="unrecorded files extra.safetensors"):
        registry.verify(a)
    with pytest.raises(RegistryError, match="version a already exists"):
        add_version(registry, "a")


def test_a_superseded_version_is_never_approved_or_promoted(registry):
    best, other, untried = passed(registry, add_version(registry, "a")), add_version(registry, "b"), add_version(
        registry, "c")
    registry.record_gate(other, True, {"report": "report.json"})
    assert registry.supersede(other, by=best, actor="search").state == "superseded"
    assert registry.supersede(untried, by=best, actor="search").state == "superseded"  # never gated (SFT before DPO)
    assert registry.supersede(other, by=best, actor="search").state == "superseded"  # a rerun changes nothing
    assert [(e["action"], e["version"], e["by"]) for e in registry.events() if e["action"] == "superseded"] == [
        ("superseded", other, best), ("superseded", untried, best)]
    with pytest.raises(RegistryError, match="is superseded; only gated versions"):
        registry.decide(other, True, actor="op", comment="fine")
    with pytest.raises(RegistryError, match="is superseded: only a version that passed its gates"):
        registry.promote(other, actor="op")
    with pytest.raises(RegistryError, match="only candidates are gated"):
        registry.record_gate(other, True, {})
    registry.promote(best, actor="op")
    with pytest.raises(RegistryError, match="is active; only undecided candidates are superseded"):
        registry.supersede(best, by=other, actor="search")


def test_unknown_version_is_named(registry):
    with pytest.raises(UnknownVersion, match="no version 'nope'"):
        registry.promote("nope", actor="op")


def test_a_promotion_racing_another_loses_with_a_clear_error(tmp_path, db_url):
    """Replica 1 reads the pointer, replica 2 promotes meanwhile: replica 1's compare-and-set fails, nothing lost."""
    first, second = (Registry(tmp_path / "registry", Store(db_url)) for _ in range(2))
    for version_id in ("a", "b"):
        passed(first, add_version(first, version_id))

    def verify_while_the_other_promotes(version_id: str) -> Path:
        second.promote("b", actor="replica-2")
        return Registry.verify(first, version_id)

    first.verify = verify_while_the_other_promotes
    with pytest.raises(RegistryError, match="the active version changed while this was being done"):
        first.promote("a", actor="replica-1")
    del first.verify
    assert first.active_id() == "b" and [e["actor"] for e in first.events() if e["action"] in MOVES] == ["replica-2"]
    assert_consistent(first)


def test_a_reject_racing_a_promotion_loses_and_the_serving_version_keeps_its_approval(tmp_path, db_url):
    """Operator 1 reads a version to reject it, operator 2 promotes it meanwhile: the reject fails, nothing written."""
    first, second = (Registry(tmp_path / "registry", Store(db_url)) for _ in range(2))
    passed(first, add_version(first, "a"))

    def get_while_the_other_promotes(version_id: str, pointer=None):
        version = Registry.get(first, version_id, pointer)
        second.promote("a", actor="operator-2")
        return version

    first.get = get_while_the_other_promotes
    with pytest.raises(RegistryError, match="was promoted while this was being decided"):
        first.decide("a", approve=False, actor="operator-1", comment="looks wrong")
    del first.get
    version = first.get("a")
    assert version.state == "active" and version.lifecycle == "gated-passed"
    assert [e["action"] for e in first.events()] == ["registered", "gated", "promoted"]
    assert_consistent(first)


def test_an_approval_racing_a_new_gate_verdict_loses_and_the_new_verdict_stays(tmp_path, db_url):
    """Operator 1 reads a passed verdict to approve it, the gates run again meanwhile and pass with another report:
    the state alone has not moved, yet the approval was of the old verdict, so it fails and the new verdict stays."""
    first, second = (Registry(tmp_path / "registry", Store(db_url)) for _ in range(2))
    passed(first, add_version(first, "a"))

    def get_while_the_gates_run_again(version_id: str, pointer=None):
        version = Registry.get(first, version_id, pointer)
        del first.get  # once
        second.record_gate(version_id, True, {"report": "report-2.json"})
        return version

    first.get = get_while_the_gates_run_again
    with pytest.raises(RegistryError, match="changed while this was being decided"):
        first.decide("a", approve=True, actor="operator-1", comment="better on billing")
    version = first.get("a")
    assert (version.state, version.gate["report"]) == ("gated-passed", "report-2.json")
    assert [e["action"] for e in first.events()] == ["registered", "gated", "gated"]
    first.decide("a", approve=True, actor="operator-1", comment="better on billing")  # of the verdict now stored
    assert (first.get("a").state, first.get("a").gate["report"]) == ("approved", "report-2.json")


def test_parallel_decisions_on_one_version_leave_one_decision(tmp_path, db_url):
    """Approvals and rejections at once, one engine each: one wins, the rest are told, one decision is logged."""
    import threading

    registries = [Registry(tmp_path / "registry", Store(db_url)) for _ in range(6)]
    passed(registries[0], add_version(registries[0], "a"))
    barrier, outcomes = threading.Barrier(len(registries)), [None] * len(registries)

    def decide(n: int) -> None:
        barrier.wait()
        try:
            outcomes[n] = registries[n].decide("a", n % 2 == 0, actor=f"op{n}", comment="looked at it").state
        except RegistryError as error:
            outcomes[n] = error

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(len(registries))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    won = [o for o in outcomes if isinstance(o, str)]
    assert len(won) == 1 and sum(isinstance(o, RegistryError) for o in outcomes) == len(registries) - 1, outcomes
    assert registries[0].get("a").state == won[0]
    decisions = [e for e in registries[0].events() if e["action"] in ("approved", "rejected")]
    assert [e["action"] for e in decisions] == [won[0]]
    for registry in registries:
        registry.store.close()


RACE = """
import sys, time
from pathlib import Path
from affinage.core.store import Store
from tuning.registry import Registry, RegistryError
registry = Registry(Path(sys.argv[1]), Store(sys.argv[2]))
registry.active_id()  # connected
print("ready", flush=True)
while not Path(sys.argv[4]).exists():
    time.sleep(0.005)
try:
    registry.promote(sys.argv[3], actor=sys.argv[3])
    print("won")
except RegistryError as error:
    print("lost:", error)
"""


@pytest.mark.multiprocess
def test_processes_promoting_at_once_each_win_or_are_told(tmp_path, db_url, registry):
    ids = [passed(registry, add_version(registry, f"v{i}")) for i in range(3)]
    go = tmp_path / "go"
    racers = [subprocess.Popen([sys.executable, "-c", RACE, str(registry.root), db_url, i, str(go)], cwd=REPO,
                               text=True, stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
              for i in ids]
    assert [r.stdout.readline().strip() for r in racers] == ["ready"] * len(racers)
    go.touch()  # all at once
    outcomes = [r.communicate(timeout=120)[0].strip() for r in racers]
    assert all(o == "won" or o.startswith("lost: the active version changed") for o in outcomes), outcomes
    winners = [i for i, o in zip(ids, outcomes) if o == "won"]
    assert winners and len(winners) == registry.pointer_state()["generation"]
    assert sorted(e["version"] for e in registry.events() if e["action"] == "promoted") == sorted(winners)
    assert registry.active_id() in winners
    assert_consistent(registry)


CRASH = """
import os, signal, sys
from pathlib import Path
from affinage.core.store import Store
from tuning.registry import Registry
step = sys.argv[3]
def crash(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)
registry = Registry(Path(sys.argv[1]), Store(sys.argv[2]), crash_hook=crash)
if sys.argv[4] == "promote":
    registry.promote("b", actor="op")
elif sys.argv[4] == "rollback":
    registry.rollback(actor="op")
else:
    staged = registry.staging()
    (staged / "adapter_model.safetensors").write_bytes(b"c")
    registry.add(staged, {"id": "c", "created_at": "c"})
"""


def killed_at(registry: Registry, db_url: str, step: str, action: str) -> Registry:
    result = subprocess.run([sys.executable, "-c", CRASH, str(registry.root), db_url, step, action],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == -9  # killed where we asked
    return Registry(registry.root, Store(db_url))


@pytest.mark.multiprocess
@pytest.mark.parametrize("action", ["promote", "rollback"])
@pytest.mark.parametrize("step", ["pointer-updated", "event-written", "committed"])
def test_a_kill_at_each_step_moves_the_pointer_with_its_event_or_not_at_all(registry, db_url, step, action):
    for version_id in ("a", "b"):
        passed(registry, add_version(registry, version_id, weights=version_id.encode()))
    registry.promote("a", actor="op")
    if action == "rollback":
        registry.promote("b", actor="op")
    before = registry.pointer_state()

    after = killed_at(registry, db_url, step, action)
    moved = after.pointer_state()
    assert moved["active"] == (before["active"] if step != "committed" else ("b" if action == "promote" else "a"))
    assert moved["generation"] == before["generation"] + (step == "committed")
    assert_consistent(after)
    if step != "committed":  # the interrupted operation can simply be run again
        after.promote("b", actor="op") if action == "promote" else after.rollback(actor="op")
        assert after.active_id() == ("b" if action == "promote" else "a")
        assert_consistent(after)


@pytest.mark.multiprocess
def test_a_kill_between_the_folder_and_its_row_leaves_no_version(registry, db_url):
    after = killed_at(registry, db_url, "folder-renamed", "add")
    assert (after.versions / "c" / "manifest.json").is_file()  # on disk, but not registered
    assert after.list() == [] and after.events() == []
    with pytest.raises(UnknownVersion):
        after.verify("c")


def file_registry(root: Path) -> None:
    """A registry as the file-based version wrote it: state.json per version, ACTIVE, events.jsonl."""
    for version_id, state in (("a", "approved"), ("b", "gated-passed"), ("c", "gated-failed")):
        folder = root / "versions" / version_id
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(version_id.encode())
        digest = hashlib.sha256(version_id.encode()).hexdigest()
        (folder / "manifest.json").write_text(json.dumps({"id": version_id, "created_at": version_id,
                                                          "files": {"adapter_model.safetensors": digest}}))
        (folder / "state.json").write_text(json.dumps({"state": state, "gate": {"passed": state != "gated-failed"}}))
    (root / "versions" / ".tmp-half").mkdir()  # an interrupted registration: not a version
    (root / "ACTIVE").write_text(json.dumps({"active": "b", "history": [None, "a"], "ever_active": ["a", "b"]}))
    events = [{"at": "2026-01-0%dT10:00:00+00:00" % i, "action": action, "version": v, "actor": "op", "previous": p}
              for i, (action, v, p) in enumerate((("promoted", "a", None), ("promoted", "b", "a")), 1)]
    (root / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events) + '{"at": "2026-01-03T1')


def test_a_file_based_registry_is_imported_once_on_first_open(tmp_path, db_url):
    root = tmp_path / "registry"
    file_registry(root)
    registry = Registry(root, Store(db_url))
    assert [(v.id, v.state) for v in registry.list()] == [("a", "retired"), ("b", "active"), ("c", "gated-failed")]
    assert registry.get("c").gate == {"passed": False}
    assert registry.pointer_state() == {"active": "b", "history": [None, "a"], "ever_active": ["a", "b"],
                                        "generation": 0, "canary": None}
    assert [(e["at"], e["action"], e["version"], e["previous"]) for e in registry.events()] == [
        ("2026-01-01T10:00:00+00:00", "promoted", "a", None), ("2026-01-02T10:00:00+00:00", "promoted", "b", "a")]
    assert not (root / "ACTIVE").exists() and (root / "ACTIVE.imported").is_file()
    assert (root / "events.jsonl.imported").is_file()
    registry.verify("b")  # the left-over state.json is no unrecorded weight

    assert registry.rollback(actor="op") == "a"
    (root / "ACTIVE").write_text(json.dumps({"active": "c", "history": [], "ever_active": ["c"]}))
    reopened = Registry(root, Store(db_url))  # imported already: files are never read again
    assert reopened.active_id() == "a" and len(reopened.events()) == 3


def test_version_folders_alone_are_not_imported_into_a_new_database(tmp_path, db_url):
    root = tmp_path / "registry"
    file_registry(root)
    Registry(root, Store(db_url))  # imported: ACTIVE and events.jsonl are retired, the folders stay
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"  # e.g. a database being restored: nothing may adopt the folders
    registry = Registry(root, Store(fresh))
    assert registry.list() == [] and registry.active_id() is None and registry.events() == []


def test_an_import_that_cannot_be_done_changes_nothing(tmp_path, db_url):
    root = tmp_path / "registry"
    file_registry(root)
    (root / "ACTIVE").write_text(json.dumps({"active": "gone", "history": [], "ever_active": ["gone"]}))
    with pytest.raises(RegistryError, match="ACTIVE names version 'gone', which has no folder"):
        Registry(root, Store(db_url))
    assert (root / "ACTIVE").is_file() and (root / "events.jsonl").is_file()
    (root / "ACTIVE").write_text(json.dumps({"active": "a", "history": [None], "ever_active": ["a"]}))
    assert Registry(root, Store(db_url)).active_id() == "a"  # the failed attempt left no half-import behind
