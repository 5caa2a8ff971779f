"""Which threads of a CPU service compute on every core.

PyTorch's OpenMP runtime (libgomp) gives each thread that runs a parallel operator a pool of workers of its own. Once
the pools hold more threads than the machine has cores, libgomp's workers stop spinning between operators and sleep,
so each of a decode step's hundreds of small operators waits for a wake-up. On 2 cores the default model generated 7
tokens/s on a thread of its own once the main thread had computed too, against 17 with a single pool. A server
therefore computes on one core per thread (``one_core_per_thread``) and hands every core to the thread that generates
(``claim_all_cores``): the request threads' small work (embedding a query) loses little, generation gains the most.
"""

from __future__ import annotations

import os
import threading


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, as OpenMP counts them)."""
    return len(os.sched_getaffinity(0))


def one_core_per_thread() -> None:
    """Every thread that has not computed yet computes on one core: call it before the process's first operator."""
    import torch

    torch.set_num_threads(1)


def claim_all_cores() -> None:
    """The calling thread computes on every core; the process default for other threads stays as it was.

    ``torch.set_num_threads`` sets both the calling thread's count and the default that threads take at their first
    operator, so the default is set back from a thread that computes nothing."""
    import torch

    default = torch.get_num_threads()  # also this thread's first use, which would otherwise reset it later
    cores = available_cores()
    if default != cores:
        torch.set_num_threads(cores)
        restore = threading.Thread(target=torch.set_num_threads, args=(default,), name="cores-restore")
        restore.start()
        restore.join()
