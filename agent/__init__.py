"""Lattice Edge: a wasmCloud lattice host for Raspberry-Pi-class Linux boards."""

__version__ = "0.1.0"
