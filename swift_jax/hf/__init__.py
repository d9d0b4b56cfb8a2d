"""Hugging Face formats: hub resolution, streamed safetensors IO."""

from .hub import resolve_model_dir
from .safetensors_io import SafetensorsReader, write_sharded_safetensors

__all__ = ["resolve_model_dir", "SafetensorsReader", "write_sharded_safetensors"]
