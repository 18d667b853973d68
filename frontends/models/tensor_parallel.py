"""Tensor parallelism for the backbone on ``torch.distributed`` (DTensor + ``parallelize_module``).

Launch one process per device with ``torchrun --nproc-per-node N -m graphrt generate --tp N ...`` (or
``... -m graphrt serve --tp N``: :mod:`graphrt.frontends.serving.lockstep`).
Every rank holds ``1/N`` of each sharded weight and runs the same decode graph on
the same (replicated) logits, so its sampling decisions are the same as every other
rank's by construction (same seed, same logits); :class:`TensorParallelBackbone`'s
``check`` mode compares them across ranks.

The plan (:func:`tensor_parallel_plan`) is Megatron's, written with torch's own parallel styles::

    encoder.embed_tokens         RowwiseParallel(input_layouts=Replicate())  vocab rows split, all-reduce
    self_attn.{q,k,v}_proj       ColwiseParallel()    heads split (KV cache sharded by KV head)
    self_attn.o_proj             RowwiseParallel()    all-reduce (LoRA drafter: LoRARowwiseParallel)
    mlp.{gate,up}_proj           ColwiseParallel()    intermediate split
    mlp.down_proj                RowwiseParallel()    all-reduce
    diffusion_head               ColwiseParallel(output_layouts=Replicate())  vocab split, all-gather
    norms, RoPE                  replicated (plain tensors)

Each rank's :class:`~graphrt.frontends.models.transformer.Transformer` is built from the
checkpoint's config with per-rank head counts and MLP width (:func:`local_config`),
so attention, MLP and the KV cache come out per-rank-sized; the parameters are
DTensors made from the slices this rank reads from the safetensors files
(``safe_open(...).get_slice``), and ``parallelize_module`` installs the styles'
input/output redistributions (the all-reduces and the all-gather) around them. No
rank materialises the whole model.

Backends: gloo for ``device="cpu"``, NCCL for ``device="cuda"`` (one GPU per rank,
``cuda:LOCAL_RANK``). The NCCL path is written but has not yet been run on a GPU.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import fnmatch
import hashlib
import os
import sys
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from safetensors import safe_open
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from graphrt.api import Model
from graphrt.backbone import ForwardBatch
from graphrt.params import GenerationResult

from .checkpoint import check_tensor_names, checkpoint_sources, expected_shapes
from .config import ModelConfig
from .transformer import Transformer, TransformerBackbone

SHARDED_FIELDS = ("num_attention_heads", "num_key_value_heads", "intermediate_size")  # split evenly


# ----------------------------------------------------------------------------- plan
class LoRARowwiseParallel(RowwiseParallel):
    """``RowwiseParallel`` for a :class:`~graphrt.frontends.models.transformer.LoRALinear` (the drafter's ``o_proj``).

    The base weight and ``lora_A`` are split along their input features
    (``Shard(1)``, as the base layer's input is split by head); ``lora_B`` is
    replicated, so ``B(A(x))`` is a partial sum like the base output. The per-token
    adapter selection (second argument) is passed through as a replicated DTensor;
    DTensor sums both partial outputs before ``LoRALinear``'s per-token ``where``
    (two all-reduces per layer where the base layer alone needs one).
    """

    def _partition_linear_fn(self, name: str, module: nn.Module, device_mesh: DeviceMesh) -> None:
        if name != "lora_B":  # "" (the base layer) and "lora_A": Shard(1); lora_B is replicated
            super()._partition_linear_fn(name, module, device_mesh)

    def _prepare_lora_input_fn(self, module: nn.Module, inputs: tuple[Any, ...], device_mesh: DeviceMesh,
                               ) -> tuple[Any, ...]:
        x = RowwiseParallel._prepare_input_fn(self.input_layouts, (Shard(-1),), module, inputs[:1], device_mesh)
        select = inputs[1] if len(inputs) > 1 else None
        if select is not None and not isinstance(select, DTensor):
            select = DTensor.from_local(select, device_mesh, [Replicate()], run_check=False)
        return (x, select)

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        return distribute_module(module, device_mesh, self._partition_linear_fn, self._prepare_lora_input_fn,
                                 partial(self._prepare_output_fn, self.output_layouts, self.use_local_output))


def tensor_parallel_plan(config: ModelConfig) -> dict[str, ParallelStyle]:
    """The ``parallelize_module`` plan of a :class:`Transformer` (module path pattern -> style)."""
    layer = "encoder.layers.*"
    return {
        "encoder.embed_tokens": RowwiseParallel(input_layouts=Replicate()),
        f"{layer}.self_attn.q_proj": ColwiseParallel(),
        f"{layer}.self_attn.k_proj": ColwiseParallel(),
        f"{layer}.self_attn.v_proj": ColwiseParallel(),
        f"{layer}.self_attn.o_proj": LoRARowwiseParallel() if config.draft_adapter else RowwiseParallel(),
        f"{layer}.mlp.gate_proj": ColwiseParallel(),
        f"{layer}.mlp.up_proj": ColwiseParallel(),
        f"{layer}.mlp.down_proj": RowwiseParallel(),
        "diffusion_head": ColwiseParallel(output_layouts=Replicate()),
    }


def parameter_placement(style: ParallelStyle | None, module: nn.Module, name: str) -> Placement:
    """The placement ``style`` gives parameter ``name`` (relative to ``module``, the styled module).

    The same rule the styles' partition functions apply (``parallelize_module``
    checks the two agree: it refuses a DTensor parameter placed otherwise).
    """
    if style is None:
        return Replicate()
    if isinstance(style, LoRARowwiseParallel):
        return Replicate() if name.startswith("lora_B.") else Shard(1)
    if isinstance(style, RowwiseParallel):
        if isinstance(module, nn.Embedding):
            return Shard(0)
        return Shard(1) if name == "weight" else Replicate()
    if isinstance(style, ColwiseParallel):
        return Shard(1) if isinstance(module, nn.Embedding) else Shard(0)
    raise ValueError(f"parameter_placement: expected a Colwise/Rowwise/LoRARowwise style, "
                     f"found {type(style).__name__} for parameter {name!r}")


def _style_of(plan: dict[str, ParallelStyle], module_path: str) -> ParallelStyle | None:
    """The plan entry matching ``module_path`` atom by atom (``parallelize_module``'s wildcard rule)."""
    atoms = module_path.split(".")
    for pattern, style in plan.items():
        pat = pattern.split(".")
        if len(pat) == len(atoms) and all(fnmatch.fnmatch(a, p) for a, p in zip(atoms, pat)):
            return style
    return None


def _styled_ancestor(plan: dict[str, ParallelStyle], module_path: str) -> tuple[str, ParallelStyle | None]:
    """The innermost module at or above ``module_path`` that the plan styles, with its style (else ``("", None)``)."""
    atoms = module_path.split(".")
    for i in range(len(atoms), 0, -1):
        path = ".".join(atoms[:i])
        style = _style_of(plan, path)
        if style is not None:
            return path, style
    return "", None


# ----------------------------------------------------------------------------- config
def check_shardable(config: ModelConfig, tp: int, source: str = "<config>") -> None:
    """Raise ``ValueError`` unless ``tp`` divides the head counts and the MLP width.

    The vocabulary need not divide: embedding and head rows are split as
    ``torch.chunk`` splits them (DTensor's uneven sharding).

    Parameters
    ----------
    config:
        The full model's config.
    tp:
        Tensor-parallel degree.
    source:
        Where ``config`` came from (quoted in the message).
    """
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ValueError(f"tensor parallel: expected --tp a positive int, found {tp!r}")
    for name in SHARDED_FIELDS:
        value = getattr(config, name)
        if value % tp:
            raise ValueError(f"tensor parallel: --tp {tp} must divide {name} (split across ranks), "
                             f"found {name}={value} in {source}; divisors: "
                             f"{[d for d in range(1, value + 1) if value % d == 0][:12]}")


def local_config(config: ModelConfig, tp: int) -> ModelConfig:
    """The config one rank's modules are built from: ``1/tp`` of the heads and of the MLP width.

    The vocabulary stays whole (embedding and head are DTensors over the full
    vocabulary, split by rows), so the logits each rank sees are the whole model's.
    """
    check_shardable(config, tp)
    return dataclasses.replace(config, num_attention_heads=config.num_attention_heads // tp,
                               num_key_value_heads=config.num_key_value_heads // tp,
                               intermediate_size=config.intermediate_size // tp)


# ----------------------------------------------------------------------------- process group
def init_tensor_parallel(tp: int, device: str = "cpu") -> tuple[DeviceMesh, torch.device]:
    """Join the process group ``torchrun`` describes and build the 1-D ``tp`` mesh.

    Parameters
    ----------
    tp:
        Expected world size (one rank per shard).
    device:
        ``cpu`` (gloo) or ``cuda`` (NCCL, rank ``r`` on ``cuda:LOCAL_RANK``; not yet run on a GPU).

    Returns
    -------
    (mesh, device)
        The mesh and this rank's device.

    Raises
    ------
    ValueError
        Not launched by ``torchrun`` / a world size other than ``tp`` / CUDA asked
        for with fewer GPUs than local ranks.
    """
    launch = f"torchrun --nproc-per-node {tp} -m graphrt generate|serve --tp {tp} ..."
    if dist.is_initialized():
        world = dist.get_world_size()
    elif "WORLD_SIZE" not in os.environ:
        raise ValueError(f"tensor parallel: --tp {tp} expected {tp} processes launched by torchrun "
                         f"({launch}), found a single process (no WORLD_SIZE in the environment)")
    else:
        world = int(os.environ["WORLD_SIZE"])
    if world != tp:
        raise ValueError(f"tensor parallel: --tp {tp} expected a world size of {tp}, found WORLD_SIZE={world} "
                         f"(launch with {launch})")
    kind = torch.device(device).type
    if kind == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if torch.cuda.device_count() <= local:
            raise ValueError(f"tensor parallel: rank with LOCAL_RANK={local} expected a GPU cuda:{local}, "
                             f"found {torch.cuda.device_count()} CUDA devices")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    elif kind == "cpu":
        dev = torch.device("cpu")
    else:
        raise ValueError(f"tensor parallel: expected device 'cpu' (gloo) or 'cuda' (NCCL), found {device!r}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if kind == "cuda" else "gloo")
        # The group's threads must be joined before the interpreter tears down: a gloo group left alive at exit
        # aborts the process now and then ("terminate called without an active exception").
        atexit.register(_destroy_process_group)
    return init_device_mesh(kind, (tp,), mesh_dim_names=("tp",)), dev


def _destroy_process_group() -> None:
    """Destroy the default process group if it is still alive (registered at exit by :func:`init_tensor_parallel`)."""
    if dist.is_initialized():
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- loading
def load_sharded_transformer(path: str | os.PathLike[str], mesh: DeviceMesh, dtype: torch.dtype | None = None,
                             device: torch.device | str = "cpu", adapter: str | os.PathLike[str] | None = None,
                             ) -> tuple[ModelConfig, Transformer]:
    """Load this rank's shard of a checkpoint as a tensor-parallel :class:`Transformer`.

    Parameters
    ----------
    path:
        Checkpoint directory (:func:`~graphrt.frontends.models.checkpoint.load_checkpoint`'s format).
    mesh:
        The 1-D tensor-parallel mesh (:func:`init_tensor_parallel`).
    dtype, device:
        Parameter dtype (default: as stored) and this rank's device.
    adapter:
        Optional PEFT LoRA adapter directory (the drafter), sharded with ``o_proj``.

    Returns
    -------
    (config, model)
        The full model's config and this rank's model (built from
        :func:`local_config`, parallelized with :func:`tensor_parallel_plan`, eval mode).

    Raises
    ------
    ValueError
        As :func:`~graphrt.frontends.models.checkpoint.load_checkpoint`, and when the
        mesh size does not divide the split dimensions.
    """
    root = Path(path)
    tp, rank = mesh.size(), mesh.get_local_rank()
    config, sources = checkpoint_sources(root, adapter)
    check_shardable(config, tp, str(root / "config.json"))
    if config.adapter_targets not in ((), ("o_proj",)) or (config.draft_adapter or {}).get("mask_embedding"):
        raise ValueError(f"{adapter}: tensor parallel shards a draft adapter on o_proj only; expected "
                         f"target_modules ['o_proj'] without a mask embedding, found "
                         f"{list(config.adapter_targets)}, mask_embedding="
                         f"{bool((config.draft_adapter or {}).get('mask_embedding'))}")
    with torch.device("meta"):
        want = expected_shapes(Transformer(config))  # the full model's names and shapes
        model = Transformer(local_config(config, tp))
    check_tensor_names(want, sources, config, root)
    plan = tensor_parallel_plan(config)
    by_file: dict[Path, list[str]] = {}
    for name in want:
        by_file.setdefault(sources[name][0], []).append(name)
    for fp, names in by_file.items():
        with safe_open(str(fp), framework="pt", device="cpu") as f:
            for name in names:
                mod_path, _, leaf = name.rpartition(".")
                styled, style = _styled_ancestor(plan, mod_path)
                rel = name[len(styled) + 1:] if styled else name
                placement = parameter_placement(style, model.get_submodule(styled), rel)
                local = _read_shard(f, fp, sources[name][1], want[name], placement, tp, rank)
                dtype = dtype or local.dtype
                local = local.to(device=device, dtype=dtype)
                # Parameters of styled modules are DTensors (replicated ones too); the rest stay plain.
                value = local if style is None else DTensor.from_local(
                    local, mesh, [placement], run_check=False, shape=torch.Size(want[name]),
                    stride=torch.empty(want[name], device="meta").stride())
                model.get_submodule(mod_path).register_parameter(leaf, nn.Parameter(value, requires_grad=False))
    model.tie_weights()
    model.reset_rope(device)
    parallelize_module(model, mesh, plan)
    model.eval()
    return config, model


def _read_shard(f: Any, fp: Path, stored: str, shape: tuple[int, ...], placement: Placement, tp: int,
                rank: int) -> torch.Tensor:
    """Read this rank's slice of tensor ``stored`` (the whole tensor when replicated)."""
    sl = f.get_slice(stored)
    found = tuple(sl.get_shape())
    if found != shape:
        raise ValueError(f"{fp}: tensor {stored!r}: expected shape {list(shape)}, found {list(found)}")
    if not isinstance(placement, Shard):
        return sl[:]
    dim = placement.dim % len(shape)
    size = -(-shape[dim] // tp)  # torch.chunk's split (DTensor's): the last ranks may hold fewer rows
    start = min(rank * size, shape[dim])
    index = tuple(slice(start, min(start + size, shape[dim])) if d == dim else slice(None) for d in range(len(shape)))
    return sl[index]


# ----------------------------------------------------------------------------- backbone
def weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes this rank holds, bytes of the whole model) over ``model``'s parameters (tied ones once)."""
    seen: set[int] = set()
    local_total = full_total = 0
    for p in model.parameters():
        local = p.to_local() if isinstance(p, DTensor) else p
        if local.data_ptr() in seen:
            continue
        seen.add(local.data_ptr())
        local_total += local.numel() * local.element_size()
        full_total += p.numel() * p.element_size()
    return local_total, full_total


class TensorParallelBackbone(TransformerBackbone):
    """One rank's :class:`TransformerBackbone` over a tensor-parallel model.

    Every rank must issue the same forwards in the same order (the collectives
    pair up across ranks); running the same policy on the same replicated logits
    guarantees that.

    Parameters
    ----------
    model:
        From :func:`load_sharded_transformer` (its config has this rank's head counts).
    mesh:
        The tensor-parallel mesh.
    check:
        Debug mode: before every forward, compare its inputs (the tokens and
        positions the policy's sampling decisions produced) across ranks, and
        raise ``RuntimeError`` naming the forward at the first difference.
    **kwargs:
        :class:`TransformerBackbone`'s ``max_rows``, ``row_capacity``, ``compile``.
    """

    def __init__(self, model: Transformer, mesh: DeviceMesh, check: bool = False, **kwargs: Any) -> None:
        if kwargs.get("compile") == "background":  # its warm-up calls would issue collectives off the step
            raise ValueError("tensor parallel: expected compile False, True or 'freeze', found 'background' "
                             "(a bucket compiled on a worker thread runs its collectives at a different moment "
                             "on each rank)")
        super().__init__(model, **kwargs)
        self.mesh, self.check = mesh, check
        self.tp, self.rank = mesh.size(), mesh.get_local_rank()
        self.weight_bytes, self.full_weight_bytes = weight_bytes(model)
        self.forwards = 0

    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """:meth:`TransformerBackbone.forward`, after the cross-rank check in ``check`` mode."""
        self.forwards += 1
        if self.check:
            fields = (batch.tokens, batch.positions, batch.attention, batch.kv_write, batch.adapter, batch.valid)
            assert_same_across_ranks(self.mesh, (batch.rows, batch.kind, *fields), f"forward {self.forwards} inputs")
        return super().forward(batch)

    __call__ = forward

    def describe(self) -> str:
        """One line: ranks, backend and every rank's weight memory (a collective: call it on every rank)."""
        per_rank = [0] * self.tp
        dist.all_gather_object(per_rank, self.weight_bytes, group=self.mesh.get_group())
        mb = ", ".join(f"{b / 1e6:.2f}" for b in per_rank)
        return (f"tensor parallel: {self.tp} ranks ({dist.get_backend(self.mesh.get_group())}), weights per rank "
                f"[{mb}] MB of {self.full_weight_bytes / 1e6:.2f} MB")


def assert_same_across_ranks(mesh: DeviceMesh, value: Any, what: str) -> None:
    """Raise ``RuntimeError`` unless ``value`` (tensors, lists, strings) is identical on every rank.

    Gathers a SHA-256 digest of ``value`` from all ranks (one small all-gather: a collective).
    """
    h = hashlib.sha256()
    _digest(h, value)
    mine = torch.frombuffer(bytearray(h.digest()), dtype=torch.uint8).to(mesh.device_type)  # [32]
    digests = [torch.empty_like(mine) for _ in range(mesh.size())]
    dist.all_gather(digests, mine, group=mesh.get_group())
    versions = [bytes(d.cpu().tolist()) for d in digests]
    if len(set(versions)) > 1:
        groups = [[r for r, x in enumerate(versions) if x == v] for v in dict.fromkeys(versions)]
        raise RuntimeError(f"tensor parallel check: expected {what} identical on all {mesh.size()} ranks, "
                           f"found {len(groups)} different versions (ranks {groups})")


def _digest(h: Any, value: Any) -> None:
    """Feed ``value`` into hash ``h`` (tensors by dtype, shape and bytes; containers element by element)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    elif isinstance(value, (list, tuple)):
        h.update(f"[{len(value)}".encode())
        for v in value:
            _digest(h, v)
    elif isinstance(value, dict):
        _digest(h, list(value.items()))
    else:
        h.update(repr(value).encode())


def decode_on_every_rank(model: Model, args: argparse.Namespace,
                         decode: Callable[[argparse.Namespace], GenerationResult]) -> GenerationResult:
    """Run a CLI decode on every rank of a tensor-parallel ``model``; only rank 0 prints and writes files.

    Ranks other than 0 run ``decode`` with standard output and error silenced and
    without ``--json``/``--trace`` files. Afterwards (collectives) the emitted tokens
    are compared across ranks in ``--tp-check`` mode, and rank 0 prints every rank's
    weight memory to standard error.
    """
    bb = model.backbone
    if not isinstance(bb, TensorParallelBackbone):
        raise ValueError(f"decode_on_every_rank: expected a tensor-parallel model, found {type(bb).__name__}")
    if bb.rank == 0:
        result = decode(args)
    else:
        quiet = argparse.Namespace(**{**vars(args), "json": None, "trace": None})
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
            result = decode(quiet)
    if bb.check:
        assert_same_across_ranks(bb.mesh, result.tokens, "emitted tokens")
    line = bb.describe()
    if bb.rank == 0:
        print(line, file=sys.stderr)
    return result


__all__ = ["tensor_parallel_plan", "LoRARowwiseParallel", "parameter_placement", "check_shardable", "local_config",
           "init_tensor_parallel", "load_sharded_transformer", "weight_bytes", "TensorParallelBackbone",
           "assert_same_across_ranks", "decode_on_every_rank"]
