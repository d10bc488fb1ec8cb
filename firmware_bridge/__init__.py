"""The firmware bridge: microcontrollers on the lattice over mcumgr's SMP, with signed OTA.

Microcontrollers running Zephyr or another MCUboot-based firmware already speak mcumgr's
Simple Management Protocol (SMP) over a serial console or UDP, so nothing of ours runs on
them. The layers, from the wire up:

* :mod:`firmware_bridge.framing` and :mod:`firmware_bridge.codec` — pure: the serial line
  framing (base64, CRC16-XMODEM, ``06 09`` / ``04 14``), the SMP header, CBOR bodies and
  the response schemas the bridge reads. No I/O.
* :mod:`firmware_bridge.link` — async serial (pyserial-asyncio-fast) and UDP links.
* :mod:`firmware_bridge.session` — one request at a time per device, matched by sequence
  number, retransmitted on timeout.
* :mod:`firmware_bridge.device` — one supervised task per MCU: reconnects, telemetry.
* :mod:`firmware_bridge.image` and :mod:`firmware_bridge.ota` — MCUboot image checks
  (imgtool) and the fail-safe update procedure.
* :mod:`firmware_bridge.service` and :mod:`firmware_bridge.bridge` — the ``nats.micro``
  endpoints on the lattice and the composition the agent starts.
* :mod:`firmware_bridge.simulator` — an SMP server with MCUboot's slot semantics, for tests
  and for trying the bridge without hardware.

Nothing here is imported by the agent unless ``[[firmware.devices]]`` is configured.
"""
