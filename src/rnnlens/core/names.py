"""The names a layer takes in a store and in xarray trees: Zarr node names that any filesystem
and object store accept, and the group path of each direction of each layer. (The core owns
them: :mod:`rnnlens.io.layout` writes stores with them, :mod:`rnnlens.core.xarray_views` builds
the same tree in memory.)
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import quote, unquote

__all__ = ["LAYERS_GROUP", "decode_name", "direction_path", "encode_name"]

LAYERS_GROUP = "layers"
_UNSAFE = re.compile(r"^(\.+|__.*)$")


def encode_name(name: str) -> str:
    """A layer name as a Zarr node name (``/`` and ``%`` percent-encoded).

    Example:
        >>> encode_name("encoder.rnn.l0"), encode_name("enc/lstm"), encode_name("a%b")
        ('encoder.rnn.l0', 'enc%2Flstm', 'a%25b')
        >>> decode_name(encode_name("enc/lstm#1")), encode_name("zarr.json")
        ('enc/lstm#1', '%7Aarr.json')
        >>> len(encode_name("n" * 300))  # long names are shortened, with a hash to stay unique
        117
    """
    if not name:
        raise ValueError("A layer name cannot be empty.")
    encoded = quote(name, safe="#.-_~+=,@()[]{}!$&'")
    if _UNSAFE.match(encoded) or encoded.lower() in _RESERVED:  # ".", "..", "__…", "zarr.json"
        encoded = "%" + format(ord(encoded[0]), "02X") + encoded[1:]
    if len(encoded.encode()) > _MAX_NAME:  # filesystems refuse names over 255 bytes
        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        encoded = f"{encoded[: _MAX_NAME - 20].rstrip('%')}~{digest}"
    return encoded


def decode_name(encoded: str) -> str:
    """The name :func:`encode_name` encoded, except for shortened long names (whose real name
    is kept in the layer group's attributes)."""
    return unquote(encoded)


# names a layer's group may not take: Zarr's own metadata files
_RESERVED = frozenset({"zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata"})
_MAX_NAME = 120


def direction_path(layer: str, direction: str) -> str:
    """Group path of one direction of one layer, relative to the store root."""
    return f"{LAYERS_GROUP}/{encode_name(layer)}/{direction}"
