"""An MCU simulator: SMP with MCUboot's slot semantics on a pty or UDP, with fault switches.

It is the test fixture of the firmware bridge and lets a user try the bridge without
hardware (``lattice-edge firmware simulate``). :mod:`.mcu` is the device (no I/O),
:mod:`.server` puts it on a pty or a UDP port.
"""

from firmware_bridge.simulator.mcu import SimulatedMCU
from firmware_bridge.simulator.server import Faults, PtyServer, UdpServer

__all__ = ["Faults", "PtyServer", "SimulatedMCU", "UdpServer"]
