"""A process pool for independent jobs whose results do not depend on where they ran.

:class:`Workers` runs ``fn(*args)`` for a list of argument tuples in ``n`` spawned processes (in
this one when ``n`` is 1), each on one thread, and returns the results in order; ``lmid prepare``
reads its subjects with it.
"""

from __future__ import annotations

import logging


def _init_worker(log_level: int, log_format: str | None) -> None:
    """Worker processes share the cores among themselves: one thread each (ITK's registration
    runs on one thread anyway, for bit-identical sums). Their log lines go where the parent's go."""
    import os

    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = "1"
    logging.basicConfig(level=log_level, format=log_format)


class Workers:
    """Runs jobs in ``n`` processes (in this one when ``n`` is 1). A job's result must not depend on
    which process computed it (``prepare``'s subjects do not), so outputs are the same for any ``n``."""

    def __init__(self, n: int):
        self.n = max(1, int(n))
        self.pool = None

    def __enter__(self):
        if self.n > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # spawn: a clean interpreter per worker (forking a process that holds ITK's or
            # OpenBLAS's threads can deadlock).
            root = logging.getLogger()
            fmt = root.handlers[0].formatter._fmt if root.handlers and root.handlers[0].formatter else None
            self.pool = ProcessPoolExecutor(
                self.n,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(root.level, fmt),
            )
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)

    def map(self, fn, arg_lists, on_done=None) -> list:
        """``[fn(*args) for args in arg_lists]``, in order; ``on_done()`` after each one finishes."""
        if self.pool is None:
            out = []
            for args in arg_lists:
                out.append(fn(*args))
                if on_done:
                    on_done()
            return out
        from concurrent.futures import as_completed

        futures = {self.pool.submit(fn, *args): i for i, args in enumerate(arg_lists)}
        out = [None] * len(futures)
        for fut in as_completed(futures):
            out[futures[fut]] = fut.result()  # re-raises a worker's error (with its message) here
            if on_done:
                on_done()
        return out
