"""Bridges microcontroller firmware attached over a serial link into the lattice.

The link codec, transports, bridge and OTA land with the firmware-bridge issue; the
package exists now so the distribution's import layout is fixed from the start.
"""
