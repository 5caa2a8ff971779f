"""The registry's canary moves (tuning.canary): refusals naming the bad value, the steps up to a promotion, stop,
roll back, their interplay with promote and rollback, and a rollback racing a share change."""

import threading

import pytest

from affinage.core.store import Store
from tests.tuning.test_registry import add_version, passed
from tuning import canary
from tuning.registry import Registry, RegistryError, UnknownVersion

POINTER_MOVES = ("promoted", "rolled_back", "canary_started", "canary_advanced", "canary_stopped",
                 "canary_rolled_back")


@pytest.fixture
def registry(tmp_path, db_url):
    store = Store(db_url)
    yield Registry(tmp_path / "registry", store)
    store.close()


def approved(registry: Registry, version_id: str) -> str:
    passed(registry, add_version(registry, version_id, weights=version_id.encode()))
    registry.decide(version_id, True, actor="op", comment="better on billing")
    return version_id


def assert_consistent(registry: Registry) -> None:
    """Every pointer move has exactly one event; a running canary is of an approved version that is not active."""
    pointer = registry.pointer_state()
    assert len([e for e in registry.events() if e["action"] in POINTER_MOVES]) == pointer["generation"]
    if pointer["canary"]:
        version = registry.get(pointer["canary"]["version"])
        assert version.lifecycle == "approved" and version.state != "active"
        assert version.to_json()["canary"]["share"] == pointer["canary"]["share"]
    assert sum(v.to_json()["canary"] is not None for v in registry.list()) == (pointer["canary"] is not None)


@pytest.mark.parametrize("share", [0, 100, -5, 10.5, "10", True, None])
def test_a_start_share_outside_1_to_99_or_not_an_integer_is_refused(registry, share):
    approved(registry, "a")
    with pytest.raises(RegistryError, match=f"a share of 1 to 99 percent.*, not {share!r}"):
        canary.start(registry, "a", share, actor="op")
    assert canary.current(registry) is None and registry.pointer_state()["generation"] == 0


def test_only_an_approved_version_that_is_not_active_and_verifies_starts_one_canary(registry):
    add_version(registry, "cand")
    passed(registry, add_version(registry, "passed"))
    registry.record_gate(add_version(registry, "failed"), False, {})
    registry.decide(passed(registry, add_version(registry, "rejected")), False, actor="op", comment="worse")
    for version_id, message in (("cand", "version cand is candidate: only an approved version can start a canary"),
                                ("passed", "version passed is gated-passed: approve it first"),
                                ("failed", "version failed is gated-failed: only an approved"),
                                ("rejected", "version rejected is rejected: only an approved")):
        with pytest.raises(RegistryError, match=message):
            canary.start(registry, version_id, 10, actor="op")
    with pytest.raises(UnknownVersion, match="no version 'nope'"):
        canary.start(registry, "nope", 10, actor="op")

    registry.promote(approved(registry, "live"), actor="op")
    with pytest.raises(RegistryError, match="version live is already active"):
        canary.start(registry, "live", 10, actor="op")

    approved(registry, "tampered")
    (registry.versions / "tampered" / "adapter_model.safetensors").write_bytes(b"poisoned")
    with pytest.raises(RegistryError, match="does not match its recorded sha256"):
        canary.start(registry, "tampered", 10, actor="op")
    assert canary.current(registry) is None

    started = canary.start(registry, approved(registry, "a"), 10, actor="op")
    assert started == canary.current(registry)
    assert (started["version"], started["share"], started["actor"]) == ("a", 10, "op")
    assert started["started_at"] == started["step_started_at"]
    assert registry.events()[-1] == {**registry.events()[-1], "action": "canary_started", "version": "a", "share": 10}
    approved(registry, "b")
    with pytest.raises(RegistryError, match="a canary of version a is already running at 10%"):
        canary.start(registry, "b", 20, actor="op")
    assert registry.get("a").state == "approved"  # a canary version keeps its lifecycle; to_json says it runs
    assert registry.get("a").to_json()["canary"]["share"] == 10 and registry.get("b").to_json()["canary"] is None
    assert_consistent(registry)


def test_share_changes_are_refused_without_a_canary_or_below_it_or_above_100(registry):
    with pytest.raises(RegistryError, match="no canary is running to change its share"):
        canary.set_share(registry, 50, actor="op")
    canary.start(registry, approved(registry, "a"), 20, actor="op")
    for share in (20, 10, 101, 50.0, "50"):
        with pytest.raises(RegistryError, match=f"at 20%: a new share must be above it and at most 100.*not {share!r}"):
            canary.set_share(registry, share, actor="op")
    assert canary.current(registry)["share"] == 20 and registry.pointer_state()["generation"] == 1


def test_steps_10_50_100_end_in_a_promotion_with_the_figures(registry):
    registry.promote(approved(registry, "old"), actor="op")
    canary.start(registry, approved(registry, "new"), 10, actor="op")
    figures = {"conversations": 240, "bad_rate": {"canary": 0.05, "active": 0.07}, "p": float("nan")}
    advanced = canary.set_share(registry, 50, actor="auto", figures=figures)
    assert (advanced["version"], advanced["share"], advanced["actor"]) == ("new", 50, "op")
    assert advanced["step_started_at"] >= advanced["started_at"] and canary.current(registry) == advanced
    assert registry.active_id() == "old"

    assert canary.set_share(registry, 100, actor="auto", figures={"conversations": 900}) is None
    pointer = registry.pointer_state()
    assert (pointer["active"], pointer["history"], pointer["ever_active"], pointer["canary"]) == (
        "new", [None, "old"], ["new", "old"], None)
    assert (registry.get("new").state, registry.get("old").state) == ("active", "retired")
    assert registry.get("new").to_json()["canary"] is None
    events = [{k: v for k, v in e.items() if k != "at"} for e in registry.events()[-3:]]
    assert events == [
        {"action": "canary_started", "version": "new", "actor": "op", "share": 10},
        {"action": "canary_advanced", "version": "new", "actor": "auto", "from": 10, "to": 50,
         "figures": {"conversations": 240, "bad_rate": {"canary": 0.05, "active": 0.07}, "p": None}},
        {"action": "promoted", "version": "new", "actor": "auto", "previous": "old", "via": "canary",
         "figures": {"conversations": 900}}]
    assert registry.rollback(actor="op") == "old"  # a canary's promotion rolls back like any other
    assert_consistent(registry)


def test_stop_pauses_and_keeps_the_version_approved(registry):
    with pytest.raises(RegistryError, match="no canary is running to stop"):
        canary.stop(registry, actor="op", comment="pause")
    canary.start(registry, approved(registry, "a"), 10, actor="op")
    with pytest.raises(RegistryError, match="stopping a canary needs a comment"):
        canary.stop(registry, actor="op", comment="  ")
    canary.stop(registry, actor="op", comment=" holiday freeze ")
    assert canary.current(registry) is None and registry.get("a").state == "approved"
    assert registry.events()[-1]["action"] == "canary_stopped"
    assert (registry.events()[-1]["comment"], registry.events()[-1]["share"]) == ("holiday freeze", 10)
    assert canary.start(registry, "a", 50, actor="op")["share"] == 50  # it may start again
    assert_consistent(registry)


def test_roll_back_rejects_the_version_and_flags_why(registry):
    with pytest.raises(RegistryError, match="no canary is running to roll back"):
        canary.roll_back(registry, actor="auto", reason="worse")
    registry.promote(approved(registry, "old"), actor="op")
    canary.start(registry, approved(registry, "a"), 10, actor="op")
    with pytest.raises(RegistryError, match="rolling back a canary needs a reason"):
        canary.roll_back(registry, actor="auto", reason="")
    figures = {"bad": {"canary": 30, "active": 12}, "p": float("inf")}
    assert canary.roll_back(registry, actor="auto", reason="more thumbs down", figures=figures) == "a"
    version = registry.get("a")
    assert (version.state, canary.current(registry), registry.active_id()) == ("rejected", None, "old")
    flag = version.flags["canary"]
    assert (flag["outcome"], flag["reason"], flag["actor"], flag["figures"]) == (
        "rolled_back", "more thumbs down", "auto", {"bad": {"canary": 30, "active": 12}, "p": None})
    assert flag["at"] and version.to_json()["flags"]["canary"] == flag
    event = registry.events()[-1]
    assert (event["action"], event["version"], event["reason"], event["figures"]) == (
        "canary_rolled_back", "a", "more thumbs down", flag["figures"])
    with pytest.raises(RegistryError, match="version a is rejected: only an approved version"):
        canary.start(registry, "a", 10, actor="op")
    with pytest.raises(RegistryError, match="version a is rejected"):
        registry.promote("a", actor="op")
    assert_consistent(registry)


def test_promote_and_rollback_while_a_canary_runs(registry):
    registry.promote(approved(registry, "old"), actor="op")
    canary.start(registry, approved(registry, "a"), 10, actor="op")
    approved(registry, "b")
    with pytest.raises(RegistryError, match="a canary of version a is running at 10%: finish it .* or stop it first, "
                                            "before promoting b"):
        registry.promote("b", actor="op")
    assert registry.active_id() == "old"

    registry.promote("a", actor="op")  # promoting the canary's own version ends the canary in the same move
    assert (registry.active_id(), canary.current(registry)) == ("a", None)
    assert registry.events()[-1]["canary_cleared"]["version"] == "a"

    canary.start(registry, "b", 10, actor="op")
    assert registry.rollback(actor="op") == "old"  # the rollback ends the canary too, and says so
    assert (registry.active_id(), canary.current(registry), registry.get("b").state) == ("old", None, "approved")
    event = registry.events()[-1]
    assert (event["action"], event["previous"], event["canary_cleared"]["version"]) == ("rolled_back", "a", "b")
    assert "canary_cleared" not in registry.events()[-4]  # a promotion without a canary: as before
    assert_consistent(registry)


@pytest.mark.parametrize("loser", ["advance", "roll_back"])
def test_a_rollback_racing_a_share_change_from_the_same_read_one_wins(tmp_path, db_url, loser):
    """Handle 1 reads the pointer to move the canary, handle 2 moves it meanwhile: handle 1's compare-and-set fails
    and writes nothing (a losing rollback leaves its version approved)."""
    first, second = (Registry(tmp_path / "registry", Store(db_url)) for _ in range(2))
    canary.start(first, approved(first, "a"), 10, actor="op")
    moves = {"advance": lambda r: canary.set_share(r, 50, actor="auto"),
             "roll_back": lambda r: canary.roll_back(r, actor="auto", reason="worse")}
    winner = "roll_back" if loser == "advance" else "advance"

    def move_after_the_other(*args, **kwargs):
        moves[winner](second)
        return Registry._move_pointer(first, *args, **kwargs)

    first._move_pointer = move_after_the_other
    with pytest.raises(RegistryError, match="the canary changed while this was being done"):
        moves[loser](first)
    del first._move_pointer
    if winner == "advance":
        assert (canary.current(first)["share"], first.get("a").state, first.get("a").flags) == (50, "approved", None)
    else:
        assert (canary.current(first), first.get("a").state) == (None, "rejected")
    won = {"advance": "canary_advanced", "roll_back": "canary_rolled_back"}[winner]
    assert [e["action"] for e in first.events()][-2:] == ["canary_started", won]
    assert_consistent(first)
    for handle in (first, second):
        handle.store.close()


def test_a_rollback_and_an_advance_at_once_from_the_same_read_one_wins(tmp_path, db_url):
    """Two handles read the pointer, wait for each other, then move the canary together: exactly one wins."""
    first, second = (Registry(tmp_path / "registry", Store(db_url)) for _ in range(2))
    canary.start(first, approved(first, "a"), 10, actor="op")
    barrier, outcomes = threading.Barrier(2), {}

    def read_then_wait(handle):
        def pointer_state():
            state = Registry.pointer_state(handle)
            barrier.wait(timeout=30)
            return state
        return pointer_state

    first.pointer_state, second.pointer_state = read_then_wait(first), read_then_wait(second)

    def run(name, move):
        try:
            outcomes[name] = move()
        except RegistryError as error:
            outcomes[name] = error

    threads = [threading.Thread(target=run, args=("advance", lambda: canary.set_share(first, 50, actor="auto"))),
               threading.Thread(target=run, args=("roll_back", lambda: canary.roll_back(second, "auto", "worse")))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    del first.pointer_state, second.pointer_state
    lost = [name for name, outcome in outcomes.items() if isinstance(outcome, RegistryError)]
    assert len(outcomes) == 2 and len(lost) == 1, outcomes
    assert "the canary changed while this was being done" in str(outcomes[lost[0]])
    state = first.get("a").state
    assert (state, canary.current(first) is None) == (("rejected", True) if lost == ["advance"] else ("approved", False))
    assert first.pointer_state()["generation"] == 2
    assert_consistent(first)
    for handle in (first, second):
        handle.store.close()


def test_a_roll_back_interrupted_before_its_commit_leaves_the_canary_running_and_the_version_approved(tmp_path, db_url):
    class Killed(Exception):
        pass

    def crash(step):
        if step == "event-written":
            raise Killed(step)

    store = Store(db_url)
    handle = Registry(tmp_path / "registry", store)
    canary.start(handle, approved(handle, "a"), 10, actor="op")
    crashing = Registry(handle.root, store, crash_hook=crash)
    with pytest.raises(Killed):
        canary.roll_back(crashing, actor="auto", reason="worse")
    version = handle.get("a")
    assert (canary.current(handle)["share"], version.state, version.flags) == (10, "approved", None)
    assert_consistent(handle)
    store.close()
