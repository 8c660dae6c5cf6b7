"""Codecs turn a chunk of a tensor's raw bytes into stored bytes and back.

A manifest names each tensor's pipeline as a list of ``{"name": ..., "configuration": {...}}``
(zarr v3 style); encoding applies the list in order, decoding in reverse. Codecs are small frozen
dataclasses, deterministic (same input, same output) so identical tensors deduplicate.
"""

from tvreg.codecs.base import Codec, CodecPipeline, codec_from_spec, register_codec
from tvreg.codecs.bgzstd import BgZstd
from tvreg.codecs.bitdiff import BitDiff
from tvreg.codecs.bytegroup import ByteGroup
from tvreg.codecs.cast import Cast
from tvreg.codecs.choose import choose_pipeline, default_pipeline
from tvreg.codecs.int8 import Int8
from tvreg.codecs.lowrank import LowRank
from tvreg.codecs.sparse import Ternary, TopK
from tvreg.codecs.zstd import Zstd

__all__ = ["Codec", "CodecPipeline", "codec_from_spec", "register_codec", "default_pipeline",
           "choose_pipeline", "BgZstd", "BitDiff", "ByteGroup", "Cast", "Int8", "LowRank",
           "Ternary", "TopK", "Zstd"]
