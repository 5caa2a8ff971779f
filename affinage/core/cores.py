"""Which threads of a CPU service compute on every core.

PyTorch's OpenMP runtime (libgomp) gives each thread that runs a parallel operator a pool of workers of its own. Once
the pools hold more threads than the machine has cores, libgomp's workers stop spinning between operators and sleep,
so each of a decode step's hundreds of small operators waits for a wake-up. On 2 cores the default model generated 7
tokens/s on a thread of its own once the main thread had computed too, against 17 with a single pool. A server
therefore computes on one core per thread (``one_core_per_thread``) and hands every core to the thread that generates
(``claim_all_cores``): the request threads' small work (embedding a query) loses little, generation gains the most.
"""

from __future__ import annotations

import threading

_cores: int | None = None  # the process's threads per operator before one_core_per_thread; None: not called


def one_core_per_thread() -> None:
    """Every thread that has not computed yet computes on one core: call it before the process's first operator."""
    import torch

    global _cores
    _cores = _cores or torch.get_num_threads()  # PyTorch's own default: its count of the cores
    torch.set_num_threads(1)


def claim_all_cores() -> None:
    """The calling thread computes on the cores PyTorch would give every thread, where ``one_core_per_thread`` took
    them away; the default for other threads stays one. Elsewhere (the CLI, the tests) every thread has them already.

    ``torch.set_num_threads`` sets both the calling thread's count and the default that threads take at their first
    operator, so the default is set back from a thread that computes nothing."""
    import torch

    default = torch.get_num_threads()  # also this thread's first use, which would otherwise reset it later
    if _cores is not None and default != _cores:
        torch.set_num_threads(_cores)
        restore = threading.Thread(target=torch.set_num_threads, args=(default,), name="cores-restore")
        restore.start()
        restore.join()
