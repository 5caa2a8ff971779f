"""Which threads compute on every core: in a server process (one core per thread by default), the threads that
generate claim every core while the other threads stay on one, so PyTorch's OpenMP keeps a single pool of workers.
Each test runs in a process of its own: the thread counts are process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.multiprocess


def run(script: str) -> dict:
    """``script``'s last line of output, parsed, from a process where PyTorch's default is two threads an operator
    (the test suite sets OMP_NUM_THREADS=1 for its own processes)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_thread_that_claims_every_core_leaves_the_other_threads_on_one():
    seen = run("""
        import json, threading, torch
        from affinage.core.cores import claim_all_cores, one_core_per_thread
        seen = {"default": torch.get_num_threads()}
        def unchanged():  # a process that keeps PyTorch's default: claiming changes nothing
            claim_all_cores()
            seen["unchanged"] = torch.get_num_threads()
        thread = threading.Thread(target=unchanged)
        thread.start()
        thread.join()
        one_core_per_thread()
        def claimer():
            claim_all_cores()
            torch.ones(64, 64) @ torch.ones(64, 64)  # its first operator must not reset what it claimed
            seen["claimer"] = torch.get_num_threads()
        def other():
            seen["other"] = torch.get_num_threads()
        for target in (claimer, other):
            thread = threading.Thread(target=target)
            thread.start()
            thread.join()
        seen["main"] = torch.get_num_threads()
        print(json.dumps(seen))
    """)
    assert seen == {"default": seen["default"], "unchanged": seen["default"], "claimer": seen["default"], "other": 1,
                    "main": 1}
    assert seen["default"] == 2


def test_batched_and_alone_generation_compute_on_every_core_in_a_one_core_process(tiny_model_dir):
    seen = run(f"""
        import json, threading, torch
        from affinage.core.cores import one_core_per_thread
        default = torch.get_num_threads()
        one_core_per_thread()
        from langchain_core.messages import HumanMessage
        from affinage.core.chat_model import LocalChatModel
        seen = {{"default": default}}
        for mode, max_batch in (("batched", 2), ("alone", 0)):
            chat = LocalChatModel.from_pretrained({str(tiny_model_dir)!r}, dtype=torch.float32, max_new_tokens=3,
                                                  max_batch=max_batch)
            def record(*_, mode=mode):
                seen.setdefault(mode, torch.get_num_threads())
            chat._model.register_forward_pre_hook(record)
            chat.invoke([HumanMessage("Hello")])
            chat.release()
        seen["asker"] = torch.get_num_threads()
        print(json.dumps(seen))
    """)
    assert seen == {"default": seen["default"], "batched": seen["default"], "alone": seen["default"], "asker": 1}
    assert seen["default"] == 2
