"""Attention kernels behind one signature; the model calls only `attention`."""

from .attention import BACKENDS, attention

__all__ = ["attention", "BACKENDS"]
