"""GGUF model files (llama.cpp's format) read as graphrt checkpoints.

A Llama-family GGUF file is converted once into a checkpoint directory in the
user's cache (:func:`cache_root`): ``config.json`` from the file's ``llama.*``
metadata, ``model.safetensors`` with the tensors dequantized by the ``gguf``
package (GGML's own reader) to the requested dtype under graphrt's names, and
the tokenizer with its chat template as transformers' GGUF support reads it.
llama.cpp's converter permutes the rows of ``attn_q`` and ``attn_k`` for its
RoPE layout; :func:`undo_rope_permutation` puts them back exactly as
transformers' GGUF loader does. An entry is keyed by the file's SHA-256, the
dtype and :data:`CONVERSION_VERSION`, and written into a temporary sibling
directory that is renamed into place, so an interrupted conversion leaves
nothing behind; later loads read the entry and never parse the file again.

Names, llama.cpp -> graphrt::

    token_embd.weight        encoder.embed_tokens.weight
    output_norm.weight       encoder.norm.weight
    output.weight            diffusion_head.weight   (absent: tied embeddings)
    blk.{i}.attn_q.weight    encoder.layers.{i}.self_attn.q_proj.weight   (rows un-permuted)
    blk.{i}.attn_k.weight    encoder.layers.{i}.self_attn.k_proj.weight   (rows un-permuted)
    ...                      (see LAYER_TENSORS)

Every error about a file is a ``ValueError`` that names the file, the tensor or
metadata key, what was expected and what was found.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

GGUF_MAGIC = b"GGUF"
ARCHITECTURE = "llama"
CONVERSION_VERSION = 1  # bump when the conversion changes, so that stale cache entries are not read
DEFAULT_DTYPE = torch.float32
SUPPORTED_TYPES = ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
                   "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
GLOBAL_TENSORS = {"token_embd.weight": "encoder.embed_tokens.weight",
                  "output_norm.weight": "encoder.norm.weight",
                  "output.weight": "diffusion_head.weight"}
LAYER_TENSORS = {"attn_norm.weight": "input_layernorm.weight",
                 "attn_q.weight": "self_attn.q_proj.weight",
                 "attn_k.weight": "self_attn.k_proj.weight",
                 "attn_v.weight": "self_attn.v_proj.weight",
                 "attn_output.weight": "self_attn.o_proj.weight",
                 "ffn_norm.weight": "post_attention_layernorm.weight",
                 "ffn_gate.weight": "mlp.gate_proj.weight",
                 "ffn_up.weight": "mlp.up_proj.weight",
                 "ffn_down.weight": "mlp.down_proj.weight"}
ROPE_PERMUTED = {"attn_q.weight": "num_attention_heads", "attn_k.weight": "num_key_value_heads"}
_REQUIRED = object()


# ----------------------------------------------------------------------------- where
def is_gguf_path(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a GGUF file: it ends in ``.gguf``, or it is a file starting with ``GGUF``."""
    p = Path(path)
    if p.suffix.lower() == ".gguf":
        return True
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def cache_root() -> Path:
    """graphrt's cache directory: ``$GRAPHRT_CACHE_DIR``, else ``$XDG_CACHE_HOME/graphrt``, else
    ``~/.cache/graphrt``."""
    override = os.environ.get("GRAPHRT_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "graphrt"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (read in 4 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- reading
def open_gguf(path: str | os.PathLike[str]) -> Any:
    """A ``gguf.GGUFReader`` over ``path`` (memory-mapped; nothing is dequantized yet).

    Raises
    ------
    ValueError
        No such file, not a GGUF file (wrong magic), or a truncated or corrupt one.
    """
    import gguf

    p = Path(path)
    check_gguf_magic(p)
    try:
        reader = _reader_class()(p)
    except Exception as e:  # the reader raises ValueError, KeyError, IndexError ... on damaged headers
        raise ValueError(f"{p}: expected a complete GGUF file, found a truncated or corrupt one "
                         f"({type(e).__name__}: {e})") from None
    size = p.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ValueError(f"{p}: tensor {t.name!r}: expected {t.n_bytes} bytes at offset {t.data_offset}, "
                             f"found the file ending at {size} bytes (truncated)")
    return reader


def _reader_class() -> type:
    """``gguf.GGUFReader`` slicing a plain ``ndarray`` view of its memory map.

    The reader parses every metadata field (a vocabulary's tokens and merges: about
    10^5 strings) by slicing its ``np.memmap``, and each slice of a memmap pays for
    the subclass's bookkeeping; a plain view of the same mapping parses about 3x
    faster and maps the same bytes (tensor data stays memory-mapped).
    """
    import gguf

    class PlainArrayReader(gguf.GGUFReader):
        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> Any:
            if type(self.data) is not np.ndarray:
                self.data = self.data.view(np.ndarray)
            return super()._get(offset, dtype, count, override_order)

    return PlainArrayReader if hasattr(gguf.GGUFReader, "_get") else gguf.GGUFReader


def check_gguf_magic(path: str | os.PathLike[str]) -> None:
    """Raise ``ValueError`` unless ``path`` is a file that starts with the GGUF magic bytes."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{p}: expected a GGUF file, found {'a directory' if p.is_dir() else 'nothing'} there")
    with open(p, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ValueError(f"{p}: expected a GGUF file (starting with {GGUF_MAGIC!r}), found {head!r} at its start")


def _meta(reader: Any, key: str, path: Path, kind: str, default: Any = _REQUIRED) -> Any:
    """Metadata value ``key`` of ``kind`` (``int``: a positive int, ``float``, ``str``), or ``default`` if absent."""
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise ValueError(f"{path}: metadata key {key!r}: expected {_KINDS[kind][1]}, found it missing")
        return default
    try:
        value = field.contents()
    except Exception:  # a field of an unexpected layout
        value = None
    ok, expected = _KINDS[kind]
    if not ok(value):
        raise ValueError(f"{path}: metadata key {key!r}: expected {expected}, found {value!r}")
    return value


_KINDS = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0, "a positive int"),
    "id": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a token id (an int >= 0)"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def read_gguf_config(reader: Any, path: str | os.PathLike[str]) -> Any:
    """The :class:`~graphrt.frontends.models.config.ModelConfig` a Llama GGUF file's metadata describes.

    Parameters
    ----------
    reader:
        From :func:`open_gguf`.
    path:
        The file (quoted in errors).

    Returns
    -------
    ModelConfig
        An autoregressive checkpoint's config: ``dlm_paradigm="autoregressive"``,
        ``mask_token_id`` the placeholder ``vocab_size - 1`` (as for other AR
        checkpoints), tied embeddings when the file has no ``output.weight``.

    Raises
    ------
    ValueError
        ``general.architecture`` is not ``llama``; a required ``llama.*`` key is
        missing or of the wrong type; RoPE scaling or a head layout graphrt does
        not implement.
    """
    from graphrt.frontends.models.checkpoint import DEFAULT_AR_BLOCK_SIZE
    from graphrt.frontends.models.config import MODEL_TYPE, ModelConfig

    p = Path(path)
    arch = _meta(reader, "general.architecture", p, "str")
    if arch != ARCHITECTURE:
        raise ValueError(f"{p}: metadata key 'general.architecture': expected {ARCHITECTURE!r} (graphrt reads "
                         f"Llama-family GGUF files), found {arch!r}")
    k = ARCHITECTURE + "."
    layers = _meta(reader, k + "block_count", p, "int")
    hidden = _meta(reader, k + "embedding_length", p, "int")
    ffn = _meta(reader, k + "feed_forward_length", p, "int")
    heads = _meta(reader, k + "attention.head_count", p, "int")
    kv_heads = _meta(reader, k + "attention.head_count_kv", p, "int", heads)
    if heads % kv_heads:
        raise ValueError(f"{p}: metadata key '{k}attention.head_count_kv': expected a divisor of "
                         f"{k}attention.head_count={heads}, found {kv_heads}")
    head_dim = _meta(reader, k + "attention.key_length", p, "int", hidden // heads)
    for key in ("attention.value_length", "rope.dimension_count"):
        found = _meta(reader, k + key, p, "int", head_dim)
        if found != head_dim:
            raise ValueError(f"{p}: metadata key '{k}{key}': expected the head width {head_dim} (graphrt applies "
                             f"RoPE to whole heads of equal K/V width), found {found}")
    scaling = _meta(reader, k + "rope.scaling.type", p, "str", "none")
    if scaling != "none":
        raise ValueError(f"{p}: metadata key '{k}rope.scaling.type': expected 'none' (plain RoPE), found {scaling!r}")
    vocab = _meta(reader, k + "vocab_size", p, "int", None)
    if vocab is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
        if tokens is not None:
            vocab = len(tokens.data)
        elif embd is not None:
            vocab = int(embd.shape[-1])
        else:
            raise ValueError(f"{p}: metadata key '{k}vocab_size': expected a positive int (or the token list "
                             f"'tokenizer.ggml.tokens'), found neither")
    d: dict[str, Any] = {
        "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": ffn, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "rms_norm_eps": _meta(reader, k + "attention.layer_norm_rms_epsilon", p, "float"),
        "rope_theta": _meta(reader, k + "rope.freq_base", p, "float", 10000.0),
        "max_position_embeddings": _meta(reader, k + "context_length", p, "int"),
        "tie_word_embeddings": all(t.name != "output.weight" for t in reader.tensors),
        "bos_token_id": _meta(reader, "tokenizer.ggml.bos_token_id", p, "id", None),
        "eos_token_id": _meta(reader, "tokenizer.ggml.eos_token_id", p, "id", None),
        "pad_token_id": _meta(reader, "tokenizer.ggml.padding_token_id", p, "id", None),
        "mask_token_id": vocab - 1, "block_size": DEFAULT_AR_BLOCK_SIZE, "dlm_paradigm": "autoregressive",
        "model_type": MODEL_TYPE,
    }
    return ModelConfig.from_dict(d, str(p))


def graphrt_tensor_name(gguf_name: str, num_layers: int) -> str | None:
    """graphrt's name of llama.cpp tensor ``gguf_name`` (``blk.3.attn_q.weight`` ->
    ``encoder.layers.3.self_attn.q_proj.weight``), or ``None`` for a tensor a Llama does not have."""
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    parts = gguf_name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and int(parts[1]) < num_layers:
        leaf = LAYER_TENSORS.get(parts[2])
        return None if leaf is None else f"encoder.layers.{int(parts[1])}.{leaf}"
    return None


def undo_rope_permutation(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Invert llama.cpp's row permutation of a Q or K projection (``[heads * head_dim, in]``).

    llama.cpp interleaves each head's two RoPE halves (rows ``(h, 2, d/2)`` stored as
    ``(h, d/2, 2)``); this restores transformers' half-split layout, as transformers'
    ``LlamaTensorProcessor._reverse_permute_weights`` does. Before/after for one head
    of width 4: rows ``[a0, b0, a1, b1]`` -> ``[a0, a1, b0, b1]``.
    """
    half = weight.shape[0] // num_heads // 2
    return weight.reshape(num_heads, half, 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def read_gguf_tensors(reader: Any, config: Any, path: str | os.PathLike[str],
                      dtype: torch.dtype = DEFAULT_DTYPE) -> dict[str, torch.Tensor]:
    """Every tensor of a Llama GGUF file, dequantized to ``dtype`` under graphrt's names.

    Parameters
    ----------
    reader, config:
        From :func:`open_gguf` and :func:`read_gguf_config`.
    path:
        The file (quoted in errors).
    dtype:
        Dtype of the returned tensors (values are dequantized in float32 first, as
        transformers does, then cast).

    Returns
    -------
    dict[str, torch.Tensor]
        graphrt name -> tensor (no ``diffusion_head.weight`` when the embeddings are tied).

    Raises
    ------
    ValueError
        A tensor missing, unexpected, of a shape the metadata contradicts, or of a
        type graphrt cannot dequantize; the message names the file and the tensor.
    """
    from gguf.quants import dequantize

    from graphrt.frontends.models.checkpoint import expected_shapes
    from graphrt.frontends.models.transformer import Transformer

    p = Path(path)
    with torch.device("meta"):
        want = expected_shapes(Transformer(config))
    found: dict[str, Any] = {}
    for t in reader.tensors:
        name = graphrt_tensor_name(t.name, config.num_hidden_layers)
        if name is None or name not in want:
            raise ValueError(f"{p}: unexpected tensor {t.name!r} (expected only token_embd, output_norm, output and "
                             f"blk.N.{{{','.join(k.removesuffix('.weight') for k in LAYER_TENSORS)}}}.weight "
                             f"for N < llama.block_count={config.num_hidden_layers})")
        shape = tuple(int(x) for x in reversed(t.shape.tolist()))
        if shape != want[name]:
            raise ValueError(f"{p}: tensor {t.name!r}: expected shape {list(want[name])} (from the llama.* "
                             f"metadata, torch order), found {list(shape)}")
        if t.tensor_type.name not in SUPPORTED_TYPES:
            raise ValueError(f"{p}: tensor {t.name!r}: expected one of the types {', '.join(SUPPORTED_TYPES)}, "
                             f"found {t.tensor_type.name} (graphrt does not dequantize it)")
        found[name] = t
    to_gguf = {v: k for k, v in GLOBAL_TENSORS.items()}
    missing = [n for n in want if n not in found]
    if missing:
        def gguf_name(n: str) -> str:
            if n in to_gguf:
                return to_gguf[n]
            _, _, i, rest = n.split(".", 3)
            return f"blk.{i}." + next(k for k, v in LAYER_TENSORS.items() if v == rest)
        raise ValueError(f"{p}: expected tensor {gguf_name(missing[0])!r}, found it missing"
                         + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    out: dict[str, torch.Tensor] = {}
    for name, t in found.items():
        try:
            values = dequantize(t.data, t.tensor_type)  # float32, torch order [out, in]
        except Exception as e:
            raise ValueError(f"{p}: tensor {t.name!r}: expected valid {t.tensor_type.name} data, found data that "
                             f"does not dequantize ({type(e).__name__}: {e})") from None
        tensor = torch.from_numpy(np.array(values, dtype=np.float32, copy=True)).reshape(want[name])
        leaf = t.name.split(".", 2)[-1]
        if leaf in ROPE_PERMUTED:
            tensor = undo_rope_permutation(tensor, getattr(config, ROPE_PERMUTED[leaf]))
        out[name] = tensor.to(dtype).contiguous()
    return out


def read_gguf_tokenizer(path: str | os.PathLike[str], reader: Any) -> Any | None:
    """The file's tokenizer (with its chat template) as transformers reads it, or ``None`` if it has none.

    Raises
    ------
    ValueError
        The file describes a tokenizer that transformers cannot build.
    """
    if "tokenizer.ggml.model" not in reader.fields:
        return None
    import transformers

    p = Path(path).resolve()
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return transformers.AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    except Exception as e:  # transformers raises many types for tokenizers it cannot convert
        raise ValueError(f"{p}: metadata key 'tokenizer.ggml.model': expected a tokenizer transformers can read, "
                         f"found one it cannot ({type(e).__name__}: {e})") from None
    finally:
        transformers.logging.set_verbosity(verbosity)


# ----------------------------------------------------------------------------- converting and caching
def convert_gguf(path: str | os.PathLike[str], out: str | os.PathLike[str],
                 dtype: torch.dtype = DEFAULT_DTYPE) -> Path:
    """Write a GGUF file as a graphrt checkpoint directory (config, safetensors, tokenizer), atomically.

    Parameters
    ----------
    path:
        The GGUF file.
    out:
        Target directory; written as a temporary sibling renamed into place. When
        ``out`` appears meanwhile (another process converting the same file), that
        one is kept and this one discarded.
    dtype:
        Dtype of the stored weights.

    Returns
    -------
    Path
        ``out``.
    """
    from safetensors.torch import save_file

    src, dst = Path(path), Path(out)
    reader = open_gguf(src)
    config = read_gguf_config(reader, src)
    tensors = read_gguf_tensors(reader, config, src, dtype)
    tokenizer = read_gguf_tokenizer(src, reader)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        cfg = config.to_dict()
        cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt", "source": src.name})
        del tensors
        if tokenizer is not None:
            tokenizer.save_pretrained(str(tmp))
        try:
            os.replace(tmp, dst)
        except OSError:
            if not (dst / "model.safetensors").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process wrote the same entry first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def cached_checkpoint(path: str | os.PathLike[str], dtype: torch.dtype = DEFAULT_DTYPE) -> Path:
    """The checkpoint directory converted from GGUF file ``path`` at ``dtype``, converting it on a cache miss.

    The entry is ``cache_root()/gguf/<sha256>-<dtype>-v<CONVERSION_VERSION>``.

    Raises
    ------
    ValueError
        See :func:`open_gguf`, :func:`read_gguf_config`, :func:`read_gguf_tensors`.
    """
    src = Path(path)
    check_gguf_magic(src)  # a clear error for a missing or foreign file before hashing it; a hit parses nothing
    key = f"{file_sha256(src)}-{str(dtype).removeprefix('torch.')}-v{CONVERSION_VERSION}"
    entry = cache_root() / "gguf" / key
    if (entry / "config.json").is_file() and (entry / "model.safetensors").is_file():
        return entry
    return convert_gguf(src, entry, dtype)


__all__ = ["is_gguf_path", "cache_root", "file_sha256", "check_gguf_magic", "open_gguf", "read_gguf_config",
           "graphrt_tensor_name", "undo_rope_permutation", "read_gguf_tensors", "read_gguf_tokenizer", "convert_gguf",
           "cached_checkpoint", "SUPPORTED_TYPES", "LAYER_TENSORS", "GLOBAL_TENSORS"]
