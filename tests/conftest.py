"""Test set-up: real Triton kernels everywhere, unwritten outputs poisoned.

Without a GPU, TRITON_INTERPRET=1 must be set before triton is imported (triton.jit
reads it when a kernel is defined), so the kernels run in Triton's interpreter on CPU.
With a GPU the same tests run compiled.
"""
import os

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

DEVICE = "cuda" if HAS_GPU else "cpu"

_ALLOCATORS = {"empty": torch.empty, "empty_like": torch.empty_like, "empty_strided": torch.empty_strided}
_new_empty = torch.Tensor.new_empty


def _poison(t: torch.Tensor) -> torch.Tensor:
    if t.is_floating_point():
        return t.fill_(float("nan"))
    if t.dtype in (torch.int8, torch.int32, torch.int64):
        return t.fill_(-1)
    return t


def _poisoned(allocate):
    return lambda *a, **k: _poison(allocate(*a, **k))


@pytest.fixture(autouse=True)
def poison_empty(monkeypatch):
    """Every uninitialised allocation (torch.empty, empty_like, empty_strided,
    Tensor.new_empty: the outputs and the kernels' staging buffers) starts as NaN (floats)
    or -1 (integers), so a kernel that leaves an element unwritten, or reads one it never
    wrote, fails the comparison."""
    for name, allocate in _ALLOCATORS.items():
        monkeypatch.setattr(torch, name, _poisoned(allocate))
    monkeypatch.setattr(torch.Tensor, "new_empty", lambda self, *a, **k: _poison(_new_empty(self, *a, **k)))


@pytest.fixture
def device() -> str:
    return DEVICE


# ---------------------------------------------------------------------------------------
# Shared problems: the shape grid, inputs and sort orders the test files build on

# The equivalence grid (N, L, d, c, n_hashes, chunk_size) that the fast paths (Triton and
# the torch backend) are held to the reference on: L = 1, L < K, L = K (one chunk, every key
# three times), two chunks (the other chunk twice), padding, padding longer than the tail
# (it reaches into the chunk before), many chunks; R 1 to 8, N 1 to 3, channel counts that
# are not powers of two; chunk 144 with 64-row tiles that straddle chunks (several chunks,
# N = 2, padding 20 and 143, one chunk with L < K and L = K, no padding, NLSN's d 64 / c 256).
SHAPES = [  # N, L, d, c, n_hashes, chunk_size
    pytest.param(1, 1, 16, 64, 1, 16, id="L=1"),
    pytest.param(2, 1, 8, 24, 4, 16, id="L=1_N2"),
    pytest.param(1, 11, 16, 64, 2, 16, id="L<K"),
    pytest.param(2, 7, 12, 40, 8, 16, id="L<K_odd_dc"),
    pytest.param(1, 16, 8, 24, 4, 16, id="L=K"),
    pytest.param(2, 32, 16, 64, 2, 16, id="two_chunks"),
    pytest.param(1, 27, 12, 40, 4, 16, id="two_chunks_padded"),
    pytest.param(2, 21, 8, 24, 8, 16, id="padding_longer_than_tail"),
    pytest.param(1, 100, 16, 64, 4, 16, id="many_chunks"),
    pytest.param(2, 70, 12, 40, 1, 16, id="many_chunks_R1"),
    pytest.param(1, 97, 8, 24, 8, 8, id="many_chunks_R8"),
    pytest.param(3, 41, 5, 9, 3, 8, id="N3_odd"),
    pytest.param(1, 300, 16, 64, 4, 144, id="chunk144_padding_longer_than_tail"),
    pytest.param(1, 200, 12, 180, 2, 144, id="chunk144_c180"),
    pytest.param(2, 700, 16, 64, 2, 144, id="N2-L700-P20"),
    pytest.param(2, 577, 16, 64, 2, 144, id="N2-L577-P143"),
    pytest.param(1, 100, 16, 64, 2, 144, id="L100-one_chunk"),
    pytest.param(1, 144, 16, 64, 2, 144, id="L144-one_chunk"),
    pytest.param(1, 432, 16, 64, 3, 144, id="L432-no_padding"),
    pytest.param(1, 300, 64, 256, 1, 144, id="L300-d64-c256-R1"),
]
SHAPE_ARGS = "n, length, d, c, n_hashes, chunk_size"


def shapes(*ids: str) -> list:
    """The entries of SHAPES with these ids, in the order given."""
    by_id = {param.id: param for param in SHAPES}
    return [by_id[i] for i in ids]


def make_inputs(n: int, length: int, d: int, c: int, *, seed: int, dtype: torch.dtype = torch.float32,
                scale: float = 1.0, device: str = DEVICE):
    """x (N, L, d) (times ``scale``) and y (N, L, c), standard normal, drawn in float32 from a
    generator seeded with ``seed``, then cast to ``dtype`` on ``device``; and the generator,
    for whatever the test draws next (perm, grad_out, rotations)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, d, generator=gen) * scale
    y = torch.randn(n, length, c, generator=gen)
    return x.to(device, dtype), y.to(device, dtype), gen


def bucket_perm(n: int, rounds: int, length: int, gen: torch.Generator, n_codes: int = 6,
                device: str = DEVICE) -> torch.Tensor:
    """perm (N, R, L) as NLSA makes it: the stable sort (``bucket_sort``) of random codes in
    [0, n_codes), so runs of one bucket keep the pixels' order."""
    import nlsa_triton as nt  # after TRITON_INTERPRET is set above

    return nt.bucket_sort(torch.randint(0, n_codes, (n, rounds, length), generator=gen)).to(device)


def random_perm(n: int, rounds: int, length: int, gen: torch.Generator, device: str = DEVICE) -> torch.Tensor:
    """perm (N, R, L): an independent, uniformly random permutation of range(L) for each image
    and round (no bucket structure at all)."""
    perm = torch.stack([torch.stack([torch.randperm(length, generator=gen) for _ in range(rounds)])
                        for _ in range(n)])
    return perm.to(device)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64; NaN anywhere gives NaN (which fails every assert)."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, tol: float, block_rows: int = 16,
                 block_factor: float | None = None) -> None:
    """``actual`` within ``tol`` of ``expected`` in relative norm (``rel_err``) overall, and,
    when ``block_factor`` is given, within ``block_factor * tol`` on every block of
    ``block_rows`` rows (the second-to-last dimension), so that an error confined to a few
    rows cannot hide in the average. A failure names the tensor, the error and the bound."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = rel_err(actual, expected)
    assert err < tol, f"{name}: relative error {err:.3g} >= {tol:.3g}"
    if block_factor is None:
        return
    rows_a = actual.detach().cpu().double().reshape(-1, actual.shape[-1])
    rows_e = expected.detach().cpu().double().reshape(-1, expected.shape[-1])
    for start in range(0, rows_a.shape[0], block_rows):
        block = slice(start, start + block_rows)
        err = rel_err(rows_a[block], rows_e[block])
        assert err < block_factor * tol, (
            f"{name}: rows {start}..{start + block_rows - 1}: relative error {err:.3g} >= {block_factor * tol:.3g}")
