"""Installs without triton (macOS, Windows: triton has wheels for Linux only) import the
package, run the torch backend and refuse backend="triton" with the reason.

Triton is installed here, so its absence is simulated in a fresh interpreter: a finder at
the front of ``sys.meta_path`` answers every ``triton`` import with the same
ModuleNotFoundError a missing package gives. The subprocess sets TRITON_INTERPRET=1 (as
tests/conftest.py does on a machine without a GPU), the setting under which 'auto' would
otherwise pick the Triton kernels on CPU tensors.
"""
import os
import pathlib
import subprocess
import sys
import textwrap
import tomllib

from packaging.requirements import Requirement

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

WITHOUT_TRITON = textwrap.dedent(
    """
    import importlib.abc
    import sys


    class NoTriton(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None


    sys.meta_path.insert(0, NoTriton())

    import torch

    import nlsa_triton as nt

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 50, 8, generator=gen)
    y = torch.randn(2, 50, 16, generator=gen, requires_grad=True)
    rotations = nt.random_rotations(8, 2, nt.num_buckets(50, 16), generator=gen)
    out = nt.nlsa(x, y, n_hashes=2, chunk_size=16, rotations=rotations)
    expected = nt.reference.nlsa(x, y, n_hashes=2, chunk_size=16, rotations=rotations)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert y.grad is not None

    attention = nt.NonLocalSparseAttention(channels=8, n_hashes=2, chunk_size=16, reduction=4)
    assert attention(torch.randn(1, 8, 6, 7), generator=gen).shape == (1, 8, 6, 7)

    try:
        nt.nlsa(x, y, n_hashes=2, chunk_size=16, rotations=rotations, backend="triton")
    except RuntimeError as error:
        print("backend='triton' raised:", error)
    else:
        raise AssertionError("backend='triton' ran without triton")
    assert not any(name == "triton" or name.startswith("triton.") for name in sys.modules)
    """
)


def test_package_runs_without_triton():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", WITHOUT_TRITON], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert "needs the triton package" in message and "No module named 'triton'" in message
    assert "wheels for Linux only" in message and "backend='auto' or 'torch'" in message


def test_triton_is_a_linux_only_dependency():
    dependencies = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    triton = next(Requirement(d) for d in dependencies if Requirement(d).name == "triton")
    assert triton.marker.evaluate({"platform_system": "Linux"})
    assert not triton.marker.evaluate({"platform_system": "Darwin"})
    assert not triton.marker.evaluate({"platform_system": "Windows"})
