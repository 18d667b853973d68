"""An F32 copy of a GGUF file, for llama.cpp on exactly the weights graphrt runs.

graphrt loads a quantized GGUF by dequantizing every tensor to float32 with the
``gguf`` package; the copy written here holds those very float32 values (the same
dequantization), with the source file's metadata (architecture, hyperparameters,
tokenizer, chat template) copied as is and ``general.file_type`` set to all-F32. The
copy is cached under the user cache directory, keyed by the source file's SHA-256::

    $GRAPHRT_CACHE_DIR or $XDG_CACHE_HOME/graphrt or ~/.cache/graphrt / gguf-f32 / <sha256>.f32.gguf

and written to a temporary name that is renamed into place, so an interrupted write
leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from graphrt.frontends.models.gguf import file_sha256

FILE_TYPE_ALL_F32 = 0  # llama.cpp's LLAMA_FTYPE_ALL_F32


def cache_dir() -> Path:
    """graphrt's cache directory: ``$GRAPHRT_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphrt``, else ``~/.cache/graphrt``."""
    if os.environ.get("GRAPHRT_CACHE_DIR"):
        return Path(os.environ["GRAPHRT_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "graphrt"


def write_f32_gguf(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """Write ``dst``: ``src`` with every tensor dequantized to F32 and its metadata copied.

    Parameters
    ----------
    src:
        A GGUF file (any tensor types the ``gguf`` package dequantizes).
    dst:
        The file to write.

    Returns
    -------
    Path
        ``dst``.

    Raises
    ------
    ValueError
        ``src`` has no ``general.architecture``, or a tensor the ``gguf`` package
        cannot dequantize (the message names the file and the tensor).
    """
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(src), "r")
    arch_field = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch_field is None:
        raise ValueError(f"write_f32_gguf: expected metadata key {gguf.Keys.General.ARCHITECTURE} in {src}, "
                         f"found none")
    writer = gguf.GGUFWriter(str(dst), arch=arch_field.contents(), endianess=reader.endianess)
    alignment = reader.get_field(gguf.Keys.General.ALIGNMENT)
    if alignment is not None:
        writer.data_alignment = alignment.contents()
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        if field.name == gguf.Keys.General.FILE_TYPE:
            writer.add_key_value(field.name, FILE_TYPE_ALL_F32, gguf.GGUFValueType.UINT32)
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub)
    tensors = []
    for t in reader.tensors:
        try:
            values = np.ascontiguousarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        except (NotImplementedError, ValueError) as e:
            raise ValueError(f"write_f32_gguf: expected a tensor type the gguf package dequantizes in {src}, found "
                             f"{t.tensor_type.name} for tensor {t.name} ({e})") from None
        tensors.append((t.name, values))
        writer.add_tensor_info(t.name, values.shape, values.dtype, values.nbytes, gguf.GGMLQuantizationType.F32)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, values in tensors:
        writer.write_tensor_data(values)
    writer.close()
    return Path(dst)


def cached_f32_gguf(src: str | os.PathLike[str]) -> Path:
    """The cached F32 copy of GGUF file ``src``, written on a cache miss (see the module docstring)."""
    out = cache_dir() / "gguf-f32" / f"{file_sha256(src)}.f32.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, suffix=".partial")
    os.close(fd)
    try:
        write_f32_gguf(src, tmp)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


__all__ = ["cache_dir", "write_f32_gguf", "cached_f32_gguf", "FILE_TYPE_ALL_F32"]
