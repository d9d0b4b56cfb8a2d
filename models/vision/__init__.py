"""Vision towers of vision-language models and their host-side input layout."""

from .grid import mrope_positions, patch_layout
from .qwen2_vl import Qwen2VLForConditionalGeneration, VisionInputs

__all__ = ["Qwen2VLForConditionalGeneration", "VisionInputs", "mrope_positions", "patch_layout"]
