"""Peak memory per stage and per part of a stage (``affinage.core.memory``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from affinage.core import memory

ROOT = Path(__file__).resolve().parent.parent

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux's")


def touch(n: int) -> bytearray:
    block = bytearray(n)
    for i in range(0, n, 4096):
        block[i] = 1  # resident, page by page
    return block


@linux
def test_a_part_measures_its_own_peak_and_the_stage_still_counts_it():
    memory.reset_peak()
    outer_before = memory.peak_bytes()
    block = touch(200 * 2**20)
    del block
    memory.release()
    with memory.measured() as part:
        small = touch(20 * 2**20)
        del small
    # the part's reset erased the kernel's mark of the 200 MiB block; the stage still reads it
    assert memory.peak_bytes() >= outer_before + 190 * 2**20
    assert part["peak_bytes"] < memory.peak_bytes()
    assert part["peak_bytes"] > 0


@linux
def test_a_part_that_peaks_higher_raises_the_stage_peak():
    memory.reset_peak()
    with memory.measured() as part:
        block = touch(150 * 2**20)
        del block
    memory.release()
    assert memory.peak_bytes() >= part["peak_bytes"] >= 140 * 2**20


def test_gib_rounds_to_hundredths():
    assert memory.gib(3 * 2**30 + 2**29) == 3.5
    assert memory.gib(0) == 0.0


@linux
def test_release_hands_freed_heap_back():
    memory.release()
    blocks = [bytearray(64 * 1024) for _ in range(3000)]  # ~190 MiB in heap-sized chunks, under the mmap threshold
    for block in blocks:
        block[0] = 1
    resident = memory.resident_bytes()
    del blocks
    memory.release()
    assert memory.resident_bytes() < resident - 100 * 2**20


@linux
def test_a_bounded_heap_hands_big_freed_blocks_back_at_once():
    """In a fresh process: in this one, earlier tests' freed blocks would serve the big allocations from the heap."""
    code = """
from affinage.core import memory
from tests.test_memory import touch
assert memory.bound_heap()
big, pins = [], []
for _ in range(24):  # 8 MiB blocks between small ones that stay: on a heap, the small ones pin the holes
    big.append(touch(8 * 2**20))
    pins.append(bytearray(1024))
resident = memory.resident_bytes()
del big
assert memory.resident_bytes() < resident - 150 * 2**20, (memory.resident_bytes(), resident)  # no trim needed
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("cache", ["ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"])
def test_the_server_bounds_onednn_kernels_unless_the_administrator_set_it(monkeypatch, cache):
    from affinage.cli.service import _limit_native_caches

    monkeypatch.delenv(cache, raising=False)
    _limit_native_caches()
    assert os.environ[cache] == "32"
    monkeypatch.setenv(cache, "256")
    _limit_native_caches()
    assert os.environ[cache] == "256"


@linux
def test_the_server_hands_what_answers_freed_back_within_seconds():
    """In a fresh process: small pinned blocks between the freed ones keep the heap from shrinking by itself."""
    code = """
import time
from affinage.cli.service import _limit_native_caches
from affinage.core import memory
from tests.test_memory import touch
_limit_native_caches(trim_every_s=0.2)
blocks, pins = [], []
for _ in range(3000):  # ~190 MiB in heap-sized chunks, a small block kept after each
    blocks.append(touch(64 * 1024))
    pins.append(bytearray(1024))
resident = memory.resident_bytes()
del blocks
deadline = time.monotonic() + 10
while memory.resident_bytes() > resident - 100 * 2**20 and time.monotonic() < deadline:
    time.sleep(0.1)
assert memory.resident_bytes() < resident - 100 * 2**20, (memory.resident_bytes(), resident)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
