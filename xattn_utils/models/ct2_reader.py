"""A small reader for CTranslate2's ``model.bin`` (binary versions 1-6), written from the format description.

Layout (little-endian; ``str`` = uint16 length incl. the trailing NUL, then the UTF-8 bytes and the NUL)::

    uint32 binary_version
    [v>=2] str spec_name, uint32 spec_revision
    uint32 n_variables
    n_variables x { str name, uint8 rank, uint32 dims[rank],
                    [v>=4] uint8 type_id, uint32 n_bytes | [v<4] uint8 item_size, uint32 n_elements,
                    bytes data }
    [v>=3] uint32 n_aliases, n_aliases x { str alias, str target }

Type ids: 0 float32, 1 int8, 2 int16, 3 int32, 4 float16, 5 bfloat16 (decoded to float32: numpy has no bfloat16).
Before v4 only the item size was stored, read as CTranslate2 itself reads it: 4 float32, 2 int16, 1 int8.
Variables named ``.../weight_scale`` accompany int8/int16-quantized weights; this reader returns them as stored and
leaves de-quantization (``weight / scale`` per row) to the caller.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError

SUPPORTED_VERSIONS = range(1, 7)
TYPE_IDS: dict[int, str] = {0: "float32", 1: "int8", 2: "int16", 3: "int32", 4: "float16", 5: "bfloat16"}
_LEGACY_ITEM_SIZES: dict[int, str] = {4: "float32", 2: "int16", 1: "int8"}


@dataclass
class CT2Model:
    """Contents of a ``model.bin``: ``variables`` keeps file order; ``aliases`` maps alias → target variable name."""

    binary_version: int
    spec: str
    revision: int
    variables: dict[str, np.ndarray]
    aliases: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> np.ndarray:
        """A variable by name or alias; :class:`ModelError` naming near matches when absent."""
        target = self.aliases.get(name, name)
        if target not in self.variables:
            prefix = name.rsplit("/", 1)[0]
            near = [n for n in self.variables if n.startswith(prefix)][:5]
            raise ModelError(f"CTranslate2 model ({self.spec}) has no variable {name!r}; similar: {near}. "
                             f"Is this the model kind the converter expects?")
        return self.variables[target]


class _Cursor:
    """Bounds-checked reads from a bytes buffer; every overrun becomes a ModelError naming the file."""

    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = memoryview(data), 0, path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise ModelError(f"{self.path}: truncated or corrupt CTranslate2 file (wanted {n} bytes for {what} at "
                             f"offset {self.pos}, file has {len(self.data)}); re-install or re-convert the model")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def string(self, what: str) -> str:
        raw = bytes(self.take(self.u16(what), what))
        if not raw or raw[-1] != 0:
            raise ModelError(f"{self.path}: corrupt string for {what} at offset {self.pos} (no NUL terminator)")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ModelError(f"{self.path}: {what} at offset {self.pos} is not UTF-8; the file is corrupt") from None


def _decode(buf: memoryview, dtype: str, shape: tuple[int, ...], name: str, path: Path) -> np.ndarray:
    """Bytes → array of ``shape`` (copied, writable). bfloat16 is widened to float32."""
    count = int(np.prod(shape, dtype=np.int64))
    storage = "uint16" if dtype == "bfloat16" else dtype
    itemsize = np.dtype(storage).itemsize
    if len(buf) != count * itemsize:
        raise ModelError(f"{path}: variable {name!r} has {len(buf)} bytes but shape {shape} of {dtype} needs "
                         f"{count * itemsize}; the file is corrupt")
    arr = np.frombuffer(buf, dtype=np.dtype(storage).newbyteorder("<"), count=count).reshape(shape)
    if dtype == "bfloat16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(arr.dtype.newbyteorder("="), copy=True)


def read_ct2_model(path: str | Path) -> CT2Model:
    """Read a CTranslate2 ``model.bin`` (or the folder holding it) into numpy arrays.

    Raises:
        ModelError: missing file, unsupported binary version, unknown dtype, or truncated/corrupt contents.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "model.bin"
    if not path.is_file():
        raise ModelError(f"no CTranslate2 model file at {path}; pass a folder holding model.bin")
    cur = _Cursor(path.read_bytes(), path)
    version = cur.u32("binary version")
    if version not in SUPPORTED_VERSIONS:
        raise ModelError(f"{path}: unsupported CTranslate2 binary version {version} (this reader knows "
                         f"{SUPPORTED_VERSIONS.start}-{SUPPORTED_VERSIONS.stop - 1}); is this a CTranslate2 model.bin?")
    spec, revision = ("", 1)
    if version >= 2:
        spec, revision = cur.string("spec name"), cur.u32("spec revision")
    variables: dict[str, np.ndarray] = {}
    for i in range(cur.u32("variable count")):
        name = cur.string(f"name of variable #{i}")
        shape = tuple(cur.u32(f"dim of {name!r}") for _ in range(cur.u8(f"rank of {name!r}")))
        code = cur.u8(f"dtype of {name!r}")
        table = TYPE_IDS if version >= 4 else _LEGACY_ITEM_SIZES
        if code not in table:
            raise ModelError(f"{path}: variable {name!r} has unknown {'type id' if version >= 4 else 'item size'} "
                             f"{code}; the file is corrupt or newer than this reader")
        size = cur.u32(f"size of {name!r}")
        if version < 4:  # element count, not bytes
            size *= code
        buf = cur.take(size, f"data of {name!r}")
        variables[name] = _decode(buf, table[code], shape, name, path)
    aliases: dict[str, str] = {}
    if version >= 3:
        for _ in range(cur.u32("alias count")):
            alias, target = cur.string("alias"), cur.string("alias target")
            if target not in variables:
                raise ModelError(f"{path}: alias {alias!r} points at missing variable {target!r}; the file is corrupt")
            aliases[alias] = target
    if cur.pos != len(cur.data):
        raise ModelError(f"{path}: {len(cur.data) - cur.pos} unexpected trailing bytes; the file is corrupt")
    return CT2Model(binary_version=version, spec=spec, revision=revision, variables=variables, aliases=aliases)
