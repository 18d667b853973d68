"""Numba CUDA kernels of the fused decode ops, their batched torch references, and cuda-python streams/graphs.

One module per op, each holding the kernel launcher, the batched torch
reference it is tested against (a loop over rows of the op's registry
reference: one definition per op) and the kernel's registration on the op's
registry entry (:func:`graphrt.cuda_kernels._launch.register_kernel`):

* :mod:`.argmax_confidence` -- greedy candidates and their softmax confidence (op ``confidence``);
* :mod:`.sample` -- temperature / top-k / top-p sampling by Gumbel-max on counter-based noise (op ``sample``);
* :mod:`.denoise_select` -- threshold / count commit of candidates into masked block slots (op ``denoise_select``);
* :mod:`.verify_accept` -- longest accepted prefix, bonus token, new cache length (op ``verify_accept``);
* :mod:`.commit` -- cache length bookkeeping (batched, for engines);
* :mod:`.noise` -- the counter-based uniforms on the device (hash check).

Importing this package registers the kernels on their ops' entries; the
executor imports it the first time it lowers a graph for a CUDA device or for
Numba's simulator, and then finds an op's kernel in one lookup
(:meth:`graphrt.registry.OpDef.implementation`). :mod:`.streams` and
:mod:`.graphs` wrap streams, events and CUDA graphs. Importing this package
imports neither numba nor cuda-python; the kernels compile on first launch.
Equivalences with the references are stated in each module's docstring.

May import: torch, the core (``graphrt``: registry, sampling, noise); numba and
cuda-python lazily.
"""

from graphrt.cuda_kernels import argmax_confidence, denoise_select, sample, verify_accept  # noqa: F401  (register)
from graphrt.cuda_kernels.streams import cuda_available, require_cuda

__all__ = ["cuda_available", "require_cuda"]
