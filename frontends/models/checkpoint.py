"""Checkpoint I/O: ``config.json`` + safetensors weights (single file or sharded).

Loads ``nemotron_labs_diffusion`` checkpoints (docs/design.md's weight names) and plain
AR checkpoints of type ``llama``, ``mistral``, ``ministral3``, ``qwen2`` and
``qwen3`` (``model.*`` -> ``encoder.*``, ``lm_head.weight`` ->
``diffusion_head.weight``, tied embeddings when ``lm_head`` is absent, Qwen2's
q/k/v biases, Qwen3's q/k norms). Saves atomically: everything is written into a
temporary sibling directory which is then renamed into place, so a failed save
leaves nothing half-written.

Every error about a checkpoint is a ``ValueError`` that says what was expected,
what was found and which file.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import ADAPTER_MODULES, MODEL_TYPE, ModelConfig, default_test_config
from .transformer import Transformer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
AR_MODEL_TYPES = ("llama", "mistral", "ministral3", "qwen2", "qwen3")
DEFAULT_AR_BLOCK_SIZE = 32


# ----------------------------------------------------------------------------- config
def read_config(path: str | os.PathLike[str]) -> tuple[ModelConfig, str]:
    """Read ``config.json`` of checkpoint directory ``path``.

    Returns
    -------
    (config, source_model_type)
        The (possibly mapped) config and the file's own ``model_type``.

    Raises
    ------
    ValueError
        Missing directory, missing or corrupt ``config.json``, unsupported
        ``model_type``, or an invalid field.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"checkpoint: expected a directory holding {CONFIG_NAME} and safetensors weights, "
                         f"found {'a file' if root.exists() else 'nothing'} at {root}")
    cfg_path = root / CONFIG_NAME
    if not cfg_path.is_file():
        raise ValueError(f"checkpoint: expected {CONFIG_NAME} in {root}, found none ({cfg_path} is missing)")
    raw = _read_json(cfg_path)
    mt = raw.get("model_type")
    if mt == MODEL_TYPE:
        return ModelConfig.from_dict(raw, str(cfg_path)), mt
    if mt in AR_MODEL_TYPES:
        return _map_ar_config(raw, mt, str(cfg_path)), mt
    raise ValueError(f"{cfg_path}: field 'model_type': expected {MODEL_TYPE!r} or one of {AR_MODEL_TYPES}, "
                     f"found {mt!r}")


def _read_json(path: Path, want_object: bool = True) -> Any:
    """The JSON value in ``path``.

    Raises
    ------
    ValueError
        The file is not valid UTF-8 JSON, or (``want_object``) not a JSON object; the message names the file.
    """
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: expected valid JSON, found a corrupt file ({e})") from None
    if want_object and not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _map_ar_config(raw: dict[str, Any], model_type: str, source: str) -> ModelConfig:
    """Map a Llama/Mistral/Ministral3/Qwen2/Qwen3 ``config.json`` onto :class:`ModelConfig`."""
    d = dict(raw)
    if model_type == "ministral3" and isinstance(d.get("text_config"), dict):
        d = dict(d["text_config"])
    if d.get("mlp_bias"):
        raise ValueError(f"{source}: field 'mlp_bias': expected false (MLP biases are not supported), found true")
    if model_type in ("llama", "mistral", "ministral3") and d.get("attention_bias"):
        raise ValueError(f"{source}: field 'attention_bias': expected false for {model_type} "
                         f"(o_proj biases are not supported), found true")
    d["attention_bias"] = model_type == "qwen2"
    d["qk_norm"] = model_type == "qwen3"
    sw = d.get("sliding_window")
    use_sw = d.get("use_sliding_window", model_type in ("mistral", "ministral3"))
    if use_sw and sw is not None and sw < d.get("max_position_embeddings", 0):
        warnings.warn(f"{source}: sliding_window={sw} is ignored (full attention is used)", stacklevel=3)
    eos = d.get("eos_token_id")
    if d.get("mask_token_id") is None:  # a placeholder: the mask-drafted modes are refused by name (api.compile)
        vocab = d.get("vocab_size")
        d["mask_token_id"] = vocab - 1 if isinstance(vocab, int) else 0
    d.setdefault("block_size", DEFAULT_AR_BLOCK_SIZE)
    d.setdefault("dlm_paradigm", "autoregressive")
    d.setdefault("tie_word_embeddings", False)
    d["eos_token_id"] = eos
    d["model_type"] = MODEL_TYPE
    d.pop("draft_adapter", None)
    return ModelConfig.from_dict(d, source)


# ----------------------------------------------------------------------------- names
def _map_ar_name(name: str) -> str:
    """``model.X`` -> ``encoder.X``; ``lm_head.weight`` -> ``diffusion_head.weight``."""
    if name.startswith("model.language_model."):
        name = "model." + name[len("model.language_model."):]
    if name.startswith("language_model."):
        name = name[len("language_model."):]
    if name == "lm_head.weight":
        return "diffusion_head.weight"
    if name.startswith("model."):
        return "encoder." + name[len("model."):]
    return name


def expected_shapes(model: Transformer) -> dict[str, tuple[int, ...]]:
    """Names and shapes a checkpoint of ``model`` stores (the tied head excluded)."""
    out = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        out.pop("diffusion_head.weight", None)
    return out


# ----------------------------------------------------------------------------- load
def _weight_files(root: Path) -> dict[str, Path]:
    """Map each stored tensor name to its file (handles the sharded index)."""
    single, index = root / WEIGHTS_NAME, root / INDEX_NAME
    if single.is_file():
        return {name: single for name in _safetensors_keys(single)}
    if index.is_file():
        idx = _read_json(index, want_object=False)
        wm = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
            raise ValueError(f"{index}: expected an object with a 'weight_map' of tensor name -> shard file, "
                             f"found {type(wm).__name__}")
        out: dict[str, Path] = {}
        for shard in sorted(set(wm.values())):
            sp = root / shard
            if not sp.is_file():
                raise ValueError(f"{index}: shard {shard!r} listed in weight_map, expected at {sp}, found nothing")
            keys = set(_safetensors_keys(sp))
            for name, f in wm.items():
                if f == shard and name not in keys:
                    raise ValueError(f"{index}: tensor {name!r} expected in shard {sp}, found it missing there")
            for name in keys:
                out[name] = sp
        return out
    raise ValueError(f"checkpoint: expected weights {WEIGHTS_NAME} or {INDEX_NAME} in {root}, found neither")


def _safetensors_keys(path: Path) -> list[str]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise ValueError(f"{path}: expected a valid safetensors file, found a corrupt one ({e})") from None


def load_checkpoint(path: str | os.PathLike[str], dtype: torch.dtype | None = None,
                    device: torch.device | str = "cpu",
                    adapter: str | os.PathLike[str] | None = None) -> tuple[ModelConfig, Transformer]:
    """Load a checkpoint directory into a :class:`Transformer`.

    Parameters
    ----------
    path:
        Directory with ``config.json`` and ``model.safetensors`` (or sharded weights
        with ``model.safetensors.index.json``).
    dtype:
        Parameter dtype; default: the stored dtype of the embedding.
    device:
        Where the parameters live.
    adapter:
        Optional PEFT LoRA adapter directory (``adapter_config.json`` +
        ``adapter_model.safetensors``, target ``o_proj``) loaded as the draft adapter;
        it replaces ``config.draft_adapter``. A checkpoint saved by
        :func:`save_checkpoint` already holds its adapter and needs none.

    Returns
    -------
    (config, model)
        ``model`` is in eval mode.

    Raises
    ------
    ValueError
        Missing directory, missing/corrupt ``config.json``, unsupported
        ``model_type``, missing weights file, missing or unexpected tensor, wrong
        tensor shape, corrupt safetensors; the message names the file and tensor.
    """
    root = Path(path)
    config, sources = checkpoint_sources(root, adapter)
    with torch.device("meta"):
        model = Transformer(config)
    want = expected_shapes(model)
    check_tensor_names(want, sources, config, root)

    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for n in want:
        fp, stored = sources[n]
        by_file.setdefault(fp, []).append((n, stored))
    for fp, ns in by_file.items():
        try:
            with safe_open(str(fp), framework="pt", device="cpu") as f:
                for n, stored in ns:
                    shape = tuple(f.get_slice(stored).get_shape())
                    if shape != want[n]:
                        raise ValueError(f"{fp}: tensor {stored!r}: expected shape {list(want[n])}, "
                                         f"found {list(shape)}")
                    state[n] = f.get_tensor(stored)
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(f"{fp}: expected a valid safetensors file, found a corrupt one ({e})") from None
    if dtype is None:
        dtype = state["encoder.embed_tokens.weight"].dtype
    state = {n: t.to(device=device, dtype=dtype) for n, t in state.items()}
    model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    model.reset_rope(device)
    model.eval()
    return config, model


def checkpoint_sources(path: str | os.PathLike[str], adapter: str | os.PathLike[str] | None = None,
                       ) -> tuple[ModelConfig, dict[str, tuple[Path, str]]]:
    """The config of checkpoint directory ``path`` and where each of its tensors is stored.

    Parameters
    ----------
    path:
        Checkpoint directory (see :func:`load_checkpoint`).
    adapter:
        Optional PEFT LoRA adapter directory whose tensors join the sources.

    Returns
    -------
    (config, sources)
        ``sources`` maps each tensor's name in docs/design.md's naming (AR names mapped)
        to (file, name stored in that file). AR checkpoints without ``lm_head`` get
        ``tie_word_embeddings``; an adapter sets ``config.draft_adapter``.
    """
    root = Path(path)
    config, src_type = read_config(root)
    files = _weight_files(root)
    is_ar = src_type != MODEL_TYPE
    sources = {(_map_ar_name(n) if is_ar else n): (fp, n) for n, fp in files.items()}
    if is_ar and "diffusion_head.weight" not in sources and not config.tie_word_embeddings:
        config.tie_word_embeddings = True  # AR checkpoints without lm_head tie it to the embedding
    if adapter is not None:
        config.draft_adapter, adapter_sources = read_peft_adapter(adapter)
        if "mask_token_id" in config.draft_adapter:  # the adapter brings the mask token
            config.mask_token_id = config.draft_adapter.pop("mask_token_id")
        config.validate(str(adapter))
        sources.update(adapter_sources)
    return config, sources


def check_tensor_names(want: dict[str, tuple[int, ...]], sources: dict[str, tuple[Path, str]],
                       config: ModelConfig, root: Path) -> None:
    """Raise ``ValueError`` when a tensor ``want`` names is missing or ``sources`` has one too many.

    Parameters
    ----------
    want:
        :func:`expected_shapes` of the model being loaded.
    sources:
        From :func:`checkpoint_sources`.
    config, root:
        The model's config and the checkpoint directory (quoted in the message).
    """
    where = f"{root / (WEIGHTS_NAME if (root / WEIGHTS_NAME).is_file() else INDEX_NAME)}"
    missing = [n for n in want if n not in sources]
    if missing:
        raise ValueError(f"{where}: expected tensor {missing[0]!r}, found it missing"
                         + (f" (and {len(missing) - 1} more: {missing[1:4]})" if len(missing) > 1 else ""))
    extra = [n for n in sources if n not in want and not (n == "diffusion_head.weight" and config.tie_word_embeddings)
             and not n.endswith("rotary_emb.inv_freq")]
    if extra:
        fp, stored = sources[extra[0]]
        raise ValueError(f"{fp}: unexpected tensor {stored!r} (no such weight in a "
                         f"{config.num_hidden_layers}-layer model)"
                         + (f" (and {len(extra) - 1} more: {extra[1:4]})" if len(extra) > 1 else ""))


def read_peft_adapter(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, tuple[Path, str]]]:
    """Read a PEFT LoRA draft adapter (the released drafter's format, or what ``graphrt train`` writes).

    A plain LoRA on any of :data:`~graphrt.frontends.models.config.ADAPTER_MODULES` (the released
    drafter adapts ``o_proj`` only), optionally with PEFT's trainable tokens on ``embed_tokens``
    for exactly one id: the mask token's input embedding of a base model that never saw one.

    Returns
    -------
    (draft_adapter, sources)
        ``{"rank": r, "alpha": lora_alpha, "target_modules": [...]}`` (plus ``"mask_embedding":
        True`` and ``"mask_token_id": id`` with trainable tokens) and mapped tensor name ->
        (file, stored name), e.g. ``base_model.model.model.layers.0.self_attn.o_proj.lora_A.weight``
        -> ``encoder.layers.0.self_attn.o_proj.lora_A.weight``.

    Raises
    ------
    ValueError
        Missing/corrupt files, or an adapter graphrt cannot apply (naming the field or module).
    """
    root = Path(path)
    cfg_path, weights = root / "adapter_config.json", root / "adapter_model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise ValueError(f"adapter: expected {p.name} in {root}, found none")
    acfg = _read_json(cfg_path)
    targets = acfg.get("target_modules")
    targets = [targets] if isinstance(targets, str) else targets
    unknown = [t for t in (targets or []) if t not in ADAPTER_MODULES]
    if unknown:
        raise ValueError(f"{cfg_path}: field 'target_modules': cannot apply a LoRA to module {unknown[0]!r}; "
                         f"expected modules among {list(ADAPTER_MODULES)}")
    tokens = acfg.get("trainable_token_indices") or {}
    checks = [("peft_type", acfg.get("peft_type", "LORA") == "LORA", "LORA"),
              ("target_modules", bool(targets), "a non-empty list"),
              ("r", isinstance(acfg.get("r"), int) and acfg["r"] > 0, "a positive int"),
              ("lora_alpha", isinstance(acfg.get("lora_alpha"), (int, float)), "a number"),
              ("use_rslora", not acfg.get("use_rslora"), "false"),
              ("use_dora", not acfg.get("use_dora"), "false"),
              ("trainable_token_indices", not tokens or (list(tokens) == ["embed_tokens"]
                                                         and len(tokens["embed_tokens"]) == 1),
               "absent, or {'embed_tokens': [mask_token_id]}")]
    for key, ok, expected in checks:
        if not ok:
            raise ValueError(f"{cfg_path}: field {key!r}: expected {expected}, found {acfg.get(key)!r}")
    sources: dict[str, tuple[Path, str]] = {}
    for stored in _safetensors_keys(weights):
        name = stored.removeprefix("base_model.model.")
        name = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
        name = _map_ar_name(name)
        if name.startswith("encoder.embed_tokens.token_adapter.trainable_tokens_delta"):
            name = "encoder.mask_embedding"
        sources[name] = (weights, stored)
    adapter: dict[str, Any] = {"rank": int(acfg["r"]), "alpha": float(acfg["lora_alpha"]),
                               "target_modules": list(targets)}
    if tokens:
        adapter.update(mask_embedding=True, mask_token_id=int(tokens["embed_tokens"][0]))
    return adapter, sources


def save_adapter(model: Transformer, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s draft adapter as a PEFT LoRA directory (what :func:`read_peft_adapter` reads).

    Parameters
    ----------
    model:
        A model whose config has a ``draft_adapter``.
    path:
        The adapter directory (``adapter_config.json``, ``adapter_model.safetensors``), replaced whole.
    metadata:
        Extra JSON fields for ``adapter_config.json`` (e.g. ``base_model_name_or_path``).

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ValueError
        If the model has no draft adapter.
    """
    ad = model.config.draft_adapter
    if ad is None:
        raise ValueError("save_adapter: expected a model with a draft adapter, found draft_adapter=None")
    tensors: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if ".lora_" in name:
            stored = "base_model.model." + name.replace("encoder.", "model.", 1)
        elif name == "encoder.mask_embedding":
            stored = "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"
        else:
            continue
        tensors[stored] = t.detach().to(torch.float32).contiguous().cpu()
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(ad["rank"]), "lora_alpha": ad["alpha"],
           "target_modules": list(model.config.adapter_targets), "lora_dropout": 0.0, "bias": "none",
           "use_rslora": False, "use_dora": False, **(metadata or {})}
    if ad.get("mask_embedding"):
        cfg["trainable_token_indices"] = {"embed_tokens": [model.config.mask_token_id]}
    root = Path(path)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    (tmp / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    _swap_into_place(tmp, root)
    return root


def find_adapter(root: str | os.PathLike[str]) -> Path | None:
    """The adapter a checkpoint ships: its one subdirectory holding ``adapter_config.json``, or ``None``.

    Raises
    ------
    ValueError
        When several subdirectories hold one (name the one to use with ``adapter=``).
    """
    found = sorted(p.parent for p in Path(root).glob("*/adapter_config.json"))
    if len(found) > 1:
        raise ValueError(f"adapter: expected at most one adapter directory in {root}, found {len(found)} "
                         f"({', '.join(p.name for p in found)}); choose one with --adapter DIR")
    return found[0] if found else None


# ----------------------------------------------------------------------------- save
def save_checkpoint(model: Transformer, config: ModelConfig, path: str | os.PathLike[str],
                    dtype: torch.dtype | None = None, max_shard_bytes: int | None = None) -> Path:
    """Write ``config.json`` + safetensors weights atomically.

    Everything is written to a temporary sibling directory which then replaces
    ``path``; files of an existing ``path`` that this function does not write
    (a tokenizer, say) are carried over. On any error nothing is left behind and
    an existing ``path`` is untouched.

    Parameters
    ----------
    model, config:
        What to save (the tied head is not stored twice).
    path:
        Target directory.
    dtype:
        Cast the weights to this dtype (default: as they are).
    max_shard_bytes:
        Split the weights into shards of at most this size with an index file
        (default: one ``model.safetensors``).

    Returns
    -------
    Path
        ``path``.
    """
    root = Path(path)
    root.parent.mkdir(parents=True, exist_ok=True)
    keep = expected_shapes(model)
    sd = model.state_dict()
    tensors = {n: sd[n].detach().to("cpu", dtype or sd[n].dtype).contiguous() for n in keep}
    meta = {"format": "pt"}
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        cfg = config.to_dict()
        cfg["torch_dtype"] = str(next(iter(tensors.values())).dtype).removeprefix("torch.")
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        if max_shard_bytes is None:
            save_file(tensors, str(tmp / WEIGHTS_NAME), metadata=meta)
        else:
            _save_sharded(tensors, tmp, max_shard_bytes, meta)
        ours = {CONFIG_NAME, WEIGHTS_NAME, INDEX_NAME}
        if root.is_dir():
            for p in root.iterdir():
                if p.name in ours or (p.name.startswith("model-") and p.name.endswith(".safetensors")):
                    continue
                if p.is_dir():
                    shutil.copytree(p, tmp / p.name)
                else:
                    shutil.copy2(p, tmp / p.name)
        elif root.exists():
            raise ValueError(f"save_checkpoint: expected a directory path, found a file at {root}")
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _save_sharded(tensors: dict[str, torch.Tensor], out: Path, max_bytes: int, meta: dict[str, str]) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for n, t in tensors.items():
        nb = t.numel() * t.element_size()
        if shards[-1] and size + nb > max_bytes:
            shards.append({})
            size = 0
        shards[-1][n] = t
        size += nb
    total = len(shards)
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{total:05d}.safetensors"
        save_file(shard, str(out / fname), metadata=meta)
        weight_map.update({n: fname for n in shard})
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": nbytes}, "weight_map": weight_map}
    (out / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def _swap_into_place(tmp: Path, root: Path) -> None:
    """Rename ``tmp`` to ``root``; an existing ``root`` is moved aside first and removed after."""
    if not root.exists():
        os.replace(tmp, root)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    old.rmdir()
    os.replace(root, old)
    try:
        os.replace(tmp, root)
    except BaseException:
        os.replace(old, root)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- random
@torch.no_grad()
def init_random_(model: Transformer, seed: int) -> Transformer:
    """Fill ``model`` with deterministic random weights (in place) and return it.

    Linear weights ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norms ~ 1 + N(0, 0.1^2),
    biases ~ N(0, 0.1^2), LoRA ``A`` ~ N(0, 1/fan_in) and ``B`` ~ N(0, 0.1^2 / rank).
    Values are drawn in float64 on the CPU, so they do not depend on the dtype or
    device of ``model``.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        shape = p.shape
        z = torch.randn(shape, generator=g, dtype=torch.float64)
        if name.endswith("norm.weight"):
            val = 1 + 0.1 * z
        elif name.endswith("embed_tokens.weight"):
            val = z
        elif name.endswith(".bias"):
            val = 0.1 * z
        elif name.endswith("lora_B.weight"):
            val = 0.1 * z / math.sqrt(shape[1])
        else:
            val = z / math.sqrt(shape[-1])
        p.copy_(val.to(p.dtype))
    return model


def random_checkpoint(path: str | os.PathLike[str], config: ModelConfig | None = None, seed: int = 0,
                      dtype: torch.dtype = torch.float32) -> Path:
    """Write a small random model (tests and the README demo until a trained model exists).

    Parameters
    ----------
    path:
        Target directory (written atomically by :func:`save_checkpoint`).
    config:
        Architecture; default :func:`default_test_config`.
    seed:
        Weight seed (see :func:`init_random_`).
    dtype:
        Stored dtype.
    """
    config = config or default_test_config()
    model = init_random_(Transformer(config).to(torch.float64), seed)
    return save_checkpoint(model, config, path, dtype=dtype)


__all__ = ["load_checkpoint", "checkpoint_sources", "check_tensor_names", "save_checkpoint", "random_checkpoint",
           "init_random_", "read_config", "default_test_config", "expected_shapes", "read_peft_adapter",
           "find_adapter", "AR_MODEL_TYPES"]
