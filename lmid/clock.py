"""Training time that survives a resume: wall and CPU seconds of the training loop so far.

CPU seconds (``time.process_time``, all threads of the process) are what the compute-matched
comparison puts on its x axis: on a shared machine wall time depends on the neighbours, CPU time
much less. Both are kept in every checkpoint and every snapshot.
"""

from __future__ import annotations

import time


class TrainClock:
    def __init__(self, wall_before: float = 0.0, cpu_before: float = 0.0):
        self.wall_before, self.cpu_before = float(wall_before), float(cpu_before)
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()

    @classmethod
    def resumed(cls, state: dict | None) -> "TrainClock":
        """Continue the clock a checkpoint kept (``wall_s``, ``cpu_s``; 0 where absent)."""
        state = state or {}
        return cls(state.get("wall_s", 0.0), state.get("cpu_s", 0.0))

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self._wall0

    def cpu(self) -> float:
        return self.cpu_before + time.process_time() - self._cpu0

    def this_run(self) -> float:
        """Wall seconds since this process started the loop."""
        return time.perf_counter() - self._wall0

    def state(self) -> dict:
        return {"wall_s": round(self.wall(), 3), "cpu_s": round(self.cpu(), 3)}
