import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tuning.registry import Registry, RegistryError

REPO = Path(__file__).resolve().parents[2]


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


def test_lifecycle_promote_and_rollback(tmp_path):
    registry = Registry(tmp_path)
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

    c = passed(registry, add_version(registry, "c"))
    registry.promote(c, actor="op")
    assert (registry.get(a).state, registry.get(c).state) == ("retired", "active")

    assert registry.rollback(actor="op") == a
    assert (registry.get(a).state, registry.get(c).state) == ("active", "retired")
    assert registry.rollback(actor="op") is None  # back to the bare base model
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        registry.rollback(actor="op")
    registry.decide(b, True, actor="admin", comment="urgent fix", override_reason="safety probe flaked; checked by hand")
    assert registry.get(b).state == "approved"
    assert registry.events()[-1]["override_reason"] == "safety probe flaked; checked by hand"
    actions = [(e["action"], e["version"]) for e in registry.events()]
    assert ("promoted", c) in actions and ("rolled_back", "base") in actions
    assert all(e["actor"] for e in registry.events())


def test_tampered_weights_are_refused(tmp_path):
    registry = Registry(tmp_path)
    a = passed(registry, add_version(registry, "a"))
    (registry.versions / a / "adapter_model.safetensors").write_bytes(b"poisoned")
    with pytest.raises(RegistryError, match="does not match its recorded sha256"):
        registry.promote(a, actor="op")
    assert registry.active_id() is None


def test_extra_and_pickle_files_are_refused(tmp_path):
    registry = Registry(tmp_path)
    staged = registry.staging()
    (staged / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(RegistryError, match="non-safetensors files: adapter_model.bin"):
        registry.add(staged, {"id": "x"})
    assert not staged.exists() and registry.list() == []

    a = passed(registry, add_version(registry, "a"))
    (registry.versions / a / "extra.safetensors").write_bytes(b"smuggled")
    with pytest.raises(RegistryError, match="unrecorded files extra.safetensors"):
        registry.verify(a)


def test_unknown_version_is_named(tmp_path):
    with pytest.raises(RegistryError, match="no version 'nope'"):
        Registry(tmp_path).promote("nope", actor="op")


PROMOTE = """
import os, signal, sys
from pathlib import Path
from tuning.registry import Registry
step = sys.argv[2]
def crash(name):
    if name == step:
        os.kill(os.getpid(), signal.SIGKILL)
registry = Registry(Path(sys.argv[1]), crash_hook=crash)
registry.promote("b", actor="op") if sys.argv[3] == "promote" else registry.rollback(actor="op")
"""


@pytest.mark.parametrize("action", ["promote", "rollback"])
@pytest.mark.parametrize("step", ["pointer-written", "pointer-fsynced", "pointer-renamed", "directory-fsynced"])
def test_a_kill_at_each_step_leaves_one_active_loadable_version(tmp_path, step, action):
    registry = Registry(tmp_path)
    for version_id in ("a", "b"):
        passed(registry, add_version(registry, version_id, weights=version_id.encode()))
    registry.promote("a", actor="op")
    if action == "rollback":
        registry.promote("b", actor="op")
    before = registry.active_id()

    result = subprocess.run([sys.executable, "-c", PROMOTE, str(tmp_path), step, action],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == -9  # killed where we asked

    after = Registry(tmp_path)
    active = after.active_id()
    assert active in (before, "a" if action == "rollback" else "b")
    after.verify(active)
    assert [v.id for v in after.list() if v.state == "active"] == [active]
    json.loads(after.pointer.read_text())  # never a half-written pointer
    if action == "promote" and active == before:  # the interrupted promotion can simply be run again
        after.promote("b", actor="op")
        assert after.active_id() == "b" and not list(tmp_path.glob(".ACTIVE.*.tmp"))
