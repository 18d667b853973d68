"""Kernels on their ops' registry entries, no-GPU detection and errors, import isolation, the PTX compile check, the GPU-check
script's no-GPU behaviour, and (marked ``gpu``) streams, events and CUDA-graph capture on a device."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from graphrt.cuda_kernels import streams
from graphrt.registry import all_ops, get_op

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"} | env
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, cwd=ROOT,
                          timeout=300)


KERNEL_OPS = ["confidence", "denoise_select", "sample", "verify_accept"]
HOST_KERNEL_OPS = ["acceptance_update", "draft_choice", "ngram_lookup"]
CPU = torch.device("cpu")


def test_every_kernel_is_on_its_ops_entry_beside_the_reference():
    import graphrt.cuda_kernels  # noqa: F401  (the kernels register themselves)

    assert sorted(name for name, op in all_ops().items() if "cuda" in op.kernels) == KERNEL_OPS
    assert sorted(name for name, op in all_ops().items() if "cpu" in op.kernels) == HOST_KERNEL_OPS
    for op in HOST_KERNEL_OPS:  # a host kernel runs on the CPU unless kernels are off; the simulator runs references
        entry = get_op(op)
        assert entry.implementation(CPU) is not entry.reference
        assert entry.implementation(CPU, "off") is entry.implementation(CPU, "simulator") is entry.reference
    for op in KERNEL_OPS:
        entry = get_op(op)
        reference = entry.implementation(CPU, "off")
        kernel = entry.implementation(CPU, "simulator")
        assert reference is entry.reference and entry.implementation(CPU) is reference
        assert kernel is not reference and kernel.__module__ == f"graphrt.cuda_kernels.{op if op != 'confidence' else 'argmax_confidence'}"


def test_an_op_without_a_kernel_runs_its_reference_and_unknown_ops_name_close_matches():
    assert get_op("softmax").implementation(CPU, "simulator") is get_op("softmax").reference
    with pytest.raises(KeyError, match="did you mean"):
        get_op("sampel")


@pytest.mark.skipif(streams.cuda_available(), reason="checks the no-GPU path")
def test_no_gpu_is_detected_without_raising_and_cuda_requests_fail_clearly():
    assert streams.cuda_available() is False
    assert streams.cuda_unavailable_reason()
    with pytest.raises(RuntimeError, match="CUDA requested but no CUDA device is available"):
        import graphrt.cuda_kernels  # noqa: F401

        get_op("sample").implementation(torch.device("cuda"))
    with pytest.raises(RuntimeError, match="CUDA requested but no CUDA device is available"):
        streams.Stream.create()
    with pytest.raises(RuntimeError, match="CUDA requested but no CUDA device is available"):
        streams.Event()


def test_import_graphrt_and_cpu_dispatch_never_import_numba():
    result = _run("import sys, graphrt, graphrt.testing, graphrt.cuda_kernels as ck\n"
                  "import torch; graphrt.get_op('sample').implementation(torch.device('cpu'), 'simulator')\n"
                  "ck.cuda_available()\n"
                  "from graphrt.cuda_kernels import sample, denoise_select, verify_accept, commit, graphs\n"
                  "print('numba' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_kernel_on_cpu_tensors_without_simulator_says_what_to_do():
    result = _run("import torch\nfrom graphrt.cuda_kernels.sample import sample\n"
                  "sample(torch.zeros(1, 3), torch.zeros(1, dtype=torch.long), seed=0, temperature=0.0)",
                  NUMBA_ENABLE_CUDASIM="0")
    assert result.returncode != 0
    assert "CUDA" in result.stderr and ("NUMBA_ENABLE_CUDASIM=1" in result.stderr or "CUDA tensors" in result.stderr)


@pytest.mark.skipif(streams.cuda_available(), reason="checks the no-GPU path")
def test_gpu_check_script_fails_clearly_without_gpu():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True,
                            cwd=ROOT, timeout=120,
                            env={k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"})
    assert result.returncode == 2
    assert "no CUDA device is available" in result.stderr


def _nvvm_available() -> bool:
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib

        load_nvidia_dynamic_lib("nvvm")
        load_nvidia_dynamic_lib("nvrtc")
        return True
    except Exception:  # noqa: BLE001 - any failure means "no compiler here"
        return False


def test_every_kernel_compiles_to_ptx_without_a_gpu():
    """The simulator runs kernels as Python; this compiles the real-device path (float32 logits and the
    integer kernels) with Numba's CUDA compiler for sm_90, so typing errors cannot hide. NVVM comes with
    the ``test`` extra; under ``CI`` a missing compiler fails instead of skipping."""
    if not _nvvm_available():
        message = "NVVM/NVRTC not found (pip install -e '.[test]' installs nvidia-nvvm and nvidia-cuda-nvrtc)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}: CI must run the PTX compile check")
        pytest.skip(message)
    result = _run("from graphrt.cuda_kernels.ptx_check import compile_all\n"
                  "print(sorted(compile_all(only=['sample[f32]', 'argmax_confidence[f32]', 'confidence[f32]',"
                  " 'denoise_select', 'verify_accept', 'commit', 'uniform'])))")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sample[f32]" in result.stdout and "denoise_select" in result.stdout


# --------------------------------------------------------------------------------------------
# GPU tier: NUMBA_ENABLE_CUDASIM=0 pytest -m gpu
# --------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_streams_events_order_work_across_streams():
    a, b = streams.Stream.create(), streams.Stream.create()
    x = torch.zeros(1 << 20, device="cuda")
    with torch.cuda.stream(a.torch()):
        x.add_(1)
    b.wait(a.record())
    with torch.cuda.stream(b.torch()):
        y = x * 2
    b.synchronize()
    assert float(y[0]) == 2.0


@pytest.mark.gpu
def test_kernels_match_references_on_gpu_at_realistic_sizes():
    from graphrt import sampling
    from graphrt.cuda_kernels.argmax_confidence import argmax_confidence
    from graphrt.cuda_kernels.sample import sample

    torch.manual_seed(0)
    x = torch.randn(8, 32_000, device="cuda")
    pos = torch.arange(8, device="cuda")
    tokens, conf = argmax_confidence(x)
    assert torch.equal(tokens, sampling.argmax_lowest(x))
    torch.testing.assert_close(conf, sampling.confidence(x, tokens), rtol=1e-12, atol=1e-15)
    for kw in ({"temperature": 0.7}, {"temperature": 0.7, "top_k": 40, "top_p": 0.9}):
        ref = sampling.sample(x, pos, seed=3, stream=0, purpose=0, top_k=kw.get("top_k", 0),
                              top_p=kw.get("top_p", 1.0), temperature=kw["temperature"])
        assert torch.equal(sample(x, pos, seed=3, **kw), ref)


@pytest.mark.gpu
def test_captured_step_replays_like_eager():
    from graphrt.cuda_kernels.graphs import capture
    from graphrt.cuda_kernels.sample import sample
    from graphrt.cuda_kernels.verify_accept import verify_accept

    B, L, V = 4, 6, 1000
    x = torch.randn(B, L, V, device="cuda")
    pos = torch.arange(L, device="cuda").repeat(B, 1)
    block = torch.randint(0, 3, (B, L), device="cuda")
    ar = torch.empty(B, L, dtype=torch.int64, device="cuda")
    outs = [torch.empty(B, dtype=torch.int64, device="cuda") for _ in range(3)]
    s = streams.Stream.create()

    def step():
        sample(x, pos, seed=5, temperature=0.9, top_k=20, out=ar, stream=s)
        verify_accept(block, ar, start=7, out_accepted=outs[0], out_bonus=outs[1], out_length=outs[2], stream=s)

    graph = capture(step, stream=s)
    eager = [t.clone() for t in (ar, *outs)]
    for t in (ar, *outs):
        t.fill_(-1)
    graph.replay()
    s.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(eager, (ar, *outs)))
