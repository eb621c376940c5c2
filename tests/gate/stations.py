"""A simulated station whose gates reach their readers the way a deployed gate does: by a fixed path."""

from __future__ import annotations

import asyncio
from pathlib import Path

from faregate.station import SimStation
from firmware_sim.sim import Sim


class WiredStation(SimStation):
    """A SimStation whose readers are reached through fixed paths (symlinks the simulator re-points),
    as a gate's config names its port: a power-cycled reader comes back on a new /dev/pts number, and
    a gate holding the old number could open someone else's pty on a shared machine."""

    async def __aenter__(self) -> SimStation:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        links: list[str | Path] = [self.data_dir / f"reader-{i}" for i in range(len(self.specs))]
        self.sim = Sim(self.device, self.population, gates=len(self.specs), links=links).start()
        try:
            for index in range(len(self.specs)):
                self.gates.append(await self.start_gate(index))
            await asyncio.sleep(0.05)  # as SimStation: let each gate learn the field
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self
