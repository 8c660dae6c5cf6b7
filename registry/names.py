"""Vector names, tag names and refs (``NAME``, ``NAME@N``, ``NAME@TAG``, id prefix); the layer
number in a tensor's name."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tvreg.errors import InvalidName, InvalidRef

MAX_NAME_LEN = 128
MAX_TAG_LEN = 64
MIN_ID_PREFIX = 6
#: the largest version number (the catalog keeps them in a 32-bit INTEGER column)
MAX_VERSION = 2**31 - 1
#: the numbered block of a tensor name: ``model.layers.3.`` (Llama, Mistral, Qwen; mergekit's
#: own test models), ``encoder.layer.3.`` (BERT, RoBERTa), ``transformer.h.3.`` (GPT-2),
#: ``block.3.`` (T5), ``blocks.3.`` / ``resblocks.3.`` (ViT, CLIP); the first one in the name
#: (here, not in tvreg.compose.settings which uses it, so that reading it imports no torch)
LAYER = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block|resblocks)\.(\d+)\.")

_COMPONENT = re.compile(r"[a-z0-9][a-z0-9._-]*")
_TAG = re.compile(r"[a-z][a-z0-9._-]*")
_HEX = re.compile(r"[0-9a-f]+")


def validate_name(name: str) -> str:
    """Names: ``[a-z0-9][a-z0-9._/-]*``, at most 128 chars; ``/`` separates non-empty components,
    each starting with ``[a-z0-9]`` (so no ``.``/``..`` component) and not ending in ``.json``
    (which would clash with the record files ``refs/NAME/N.json``)."""
    if not isinstance(name, str) or not name:
        raise InvalidName("invalid name: empty")
    if len(name) > MAX_NAME_LEN:
        raise InvalidName(f"invalid name {name[:40]!r}…: longer than {MAX_NAME_LEN} characters")
    for part in name.split("/"):
        if not _COMPONENT.fullmatch(part) or part.endswith(".json"):
            raise InvalidName(
                f"invalid name {name!r}: use lowercase letters, digits and . _ - /, each "
                "/-separated part starting with a letter or digit (and not ending in .json)")
    return name


def validate_tag(tag: str) -> str:
    """Tags: ``[a-z][a-z0-9._-]*``, at most 64 chars; they start with a letter so that
    ``NAME@3`` is always a version number and ``NAME@prod`` always a tag."""
    if not isinstance(tag, str) or len(tag) > MAX_TAG_LEN or not _TAG.fullmatch(tag):
        raise InvalidName(f"invalid tag {str(tag)[:70]!r}: use [a-z][a-z0-9._-]*, at most "
                          f"{MAX_TAG_LEN} characters")
    return tag


@dataclass(frozen=True)
class Ref:
    """A parsed ref. Exactly one of ``version`` / ``tag`` is set for ``NAME@…`` forms; both are
    ``None`` for ``NAME`` (latest). ``id_prefix`` is set when the text could be a vector id prefix
    (it may also be a name: names win, see :meth:`Registry.resolve_ref`)."""

    text: str
    name: str | None
    version: int | None = None
    tag: str | None = None
    id_prefix: str | None = None


def parse_ref(text: str) -> Ref:
    if not isinstance(text, str) or not text:
        raise InvalidRef("invalid ref: empty")
    if len(text) > MAX_NAME_LEN + MAX_TAG_LEN + 1:
        raise InvalidRef(f"invalid ref {text[:40]!r}…: too long")
    if "@" in text:
        name, _, suffix = text.partition("@")
        try:
            validate_name(name)
        except InvalidName as e:
            raise InvalidRef(f"invalid ref {text!r}: {e}") from None
        if suffix.isdigit() and suffix.isascii():
            version = int(suffix)
            if version < 1:
                raise InvalidRef(f"invalid ref {text!r}: versions start at 1")
            if version > MAX_VERSION:
                raise InvalidRef(f"invalid ref {text!r}: versions go up to {MAX_VERSION}")
            return Ref(text, name, version=version)
        try:
            validate_tag(suffix)
        except InvalidName:
            raise InvalidRef(f"invalid ref {text!r}: after @ comes a version number or a tag "
                             "([a-z][a-z0-9._-]*)") from None
        return Ref(text, name, tag=suffix)
    prefix = text if (MIN_ID_PREFIX <= len(text) <= 64 and _HEX.fullmatch(text)) else None
    try:
        validate_name(text)
    except InvalidName as e:
        if prefix is None:
            raise InvalidRef(f"invalid ref {text!r}: {e}") from None
        return Ref(text, None, id_prefix=prefix)
    return Ref(text, text, id_prefix=prefix)
