"""Numba CUDA kernels of the fused decode ops, their torch references, and cuda-python streams/graphs.

One module per op, each holding the kernel launcher and the batched torch
reference that defines it (built from :mod:`graphrt.sampling`):

* :mod:`.argmax_confidence` -- greedy candidates and their softmax confidence;
* :mod:`.sample` -- temperature / top-k / top-p sampling by Gumbel-max on counter-based noise;
* :mod:`.denoise_select` -- threshold / count commit of candidates into masked block slots;
* :mod:`.verify_accept` -- longest accepted prefix, bonus token, new cache length;
* :mod:`.commit` -- cache length bookkeeping;
* :mod:`.noise` -- the counter-based uniforms on the device (hash check).

:mod:`.dispatch` maps op names to kernel (CUDA) or reference (CPU);
:mod:`.streams` and :mod:`.graphs` wrap streams, events and CUDA graphs.
Importing this package imports neither numba nor cuda-python; the kernels
compile on first launch. Equivalences with the references are stated in each
module's docstring.
"""

from graphrt.cuda_kernels.dispatch import get_impl, op_names
from graphrt.cuda_kernels.streams import cuda_available, require_cuda

__all__ = ["cuda_available", "get_impl", "op_names", "require_cuda"]
