"""Codecs turn a chunk of a tensor's raw bytes into stored bytes and back.

A manifest names each tensor's pipeline as a list of ``{"name": ..., "configuration": {...}}``
(zarr v3 style); encoding applies the list in order, decoding in reverse. Codecs are small frozen
dataclasses, deterministic (same input, same output) so identical tensors deduplicate.
"""

from .base import Codec, CodecPipeline, codec_from_spec, register_codec, default_pipeline
from .bgzstd import BgZstd
from .bitdiff import BitDiff
from .bytegroup import ByteGroup
from .cast import Cast
from .choose import choose_pipeline
from .int8 import Int8
from .lowrank import LowRank
from .sparse import Ternary, TopK
from .zstd import Zstd

__all__ = ["Codec", "CodecPipeline", "codec_from_spec", "register_codec", "default_pipeline",
           "choose_pipeline", "BgZstd", "BitDiff", "ByteGroup", "Cast", "Int8", "LowRank", "Ternary",
           "TopK", "Zstd"]
