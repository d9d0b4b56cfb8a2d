"""Attention kernels behind one signature; the model calls only `attention`."""

from .attention import AUTO_ORDER, BACKENDS, attention, resolve_impl, use_impl

__all__ = ["attention", "use_impl", "resolve_impl", "BACKENDS", "AUTO_ORDER"]
