"""The torch backend: Non-Local Sparse Attention streamed a round and a block of chunks at a time.

The same function as ``nlsa_triton.reference`` (docs/semantics.md §1–§6), computed
the way the Triton kernels compute it, in plain device-agnostic torch ops (index_select,
bmm, exp, index_add_), so it runs wherever torch runs: CPU, Apple GPUs (MPS), any device
without Triton, and float64. ``backend="auto"`` picks it wherever the kernels do not run.

How. Pixel i is its own key in every round and ``s_ij <= ||x_i||`` for every key
(docs/semantics.md §6.2), so ``m_i = ||x_i||`` is a row maximum known before any score is
computed. One
softmax over all rounds' candidates is then a plain sum: for each round and each block of
chunks, gather the block's query rows and its candidates' key and value rows through the
sort permutation (chunk j, j - 1, j + 1, wrapping, duplicates counted), form the scores
``s - m`` (every exponent <= 0, the self term ~1, so nothing under- or overflows), and add
``exp(s - m) @ y`` and ``rowsum(exp(s - m))`` into one accumulator in pixel order. At the
end, ``out = acc / den`` and ``lse = m + log(den)``.

Memory. Besides the inputs: the accumulator and the output (N·L·c in the compute dtype,
the output shares the accumulator), the normalised keys and norms (N·L·(d + 1)), the
per-round index vectors (N·L), and one block's working set (its scores (b, K, 3K) and its
gathered rows (b, 3K, d + c)), bounded by ``block_size``, once per torch thread on a CPU.
The hash projects a block of rows at a time. Nothing of size R·L·c, 3·L·c or R·L·3K is
ever held.

Parallelism. On a CPU the blocks of a round run concurrently on torch.get_num_threads()
worker threads, each op single-threaded (``_Runner``): the blocks are the parallel
work, as a kernel's programs are. Many small ops, each shared out by OpenMP, would wait
at a barrier per op for whichever thread the OS has paused, which on a busy machine
costs 10-100x. On other devices the blocks run in order (the device is the parallelism).

Gradients. ``chunked_attention`` is a ``torch.autograd.Function`` with its own backward
(FlashAttention-style): the forward saves x, y, perm, the output (float32 for half-precision
inputs) and one log-sum-exp per pixel; the backward computes ``delta = rowsum(dO * O)``
and, a round and a block at a time, recomputes ``P = exp(s - lse)``, then
``dy += P^T dO``, ``dS = P * (dO y^T - delta)``, ``dq = dS k``, ``dk = dS^T q``, with the
same working-set bound as the forward. The key normalisation's gradient is applied once at
the end. A backward with ``create_graph=True`` (double backward) is computed instead by
autograd through the reference, so higher-order gradients work, at the reference's memory.

Determinism. Every accumulation is an ``index_add_`` whose destination rows are distinct
within the call (a pixel is one query and one key per round; padded positions, which
repeat pixels, go to a discarded row), and blocks that run at once write disjoint rows:
queries of one round are disjoint by construction; in the backward, the keys a block
touches (its chunks and one neighbour each side) are kept apart by running the blocks of
an image in two alternating phases, and the padded key copies are added after the round,
in block order. So each row receives its additions in a fixed order: the same bits on
every run, with any number of threads, on every device (CPU, CUDA, MPS), with or without
``torch.use_deterministic_algorithms``.

Precision: float32 inputs compute in float32, float16 / bfloat16 in float32 (the result is
cast back), float64 in float64. Under autocast the inputs are cast to the autocast dtype
first, as for the other backends.

Validation. ``lsh_hash``, ``chunked_attention`` and ``nlsa`` are public (``nt.streaming.*``)
and validate their arguments; each is a thin wrapper over its ``*_unchecked`` twin, which
``functional`` calls (``backend="torch"``) with arguments it has already validated.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import _validation as v
from ._autocast import autocast_inputs, autocast_off
from .chunks import chunk_layout
from .hashing import resolve_rotations
from .sorting import bucket_sort
from .reference import KEY_NORM_EPS, compute_dtype, empty_result

__all__ = ["lsh_hash", "chunked_attention", "nlsa", "set_block_size", "get_block_size", "default_workspace_bytes"]

# The working set of one block when no block size is set. On a CPU, where each torch
# thread runs one block at a time: a few MiB keeps a block's scores and rows in cache,
# while its ops stay large enough to amortise their overhead. Elsewhere (GPUs), one
# block is one set of kernel launches: larger.
DEFAULT_WORKSPACE_BYTES = 4 * 2 ** 20
DEFAULT_DEVICE_WORKSPACE_BYTES = 256 * 2 ** 20
# The hash projects rows in blocks of a multiple of this many rows (a multiple keeps the
# matmul's row tiling aligned with the reference's one-shot projection).
_HASH_ROW_QUANTUM = 4096

_block_size: int | None = None


def set_block_size(block_size: int | None) -> int | None:
    """Set the number of query positions one block processes (rounded down to whole chunks,
    at least one chunk), for every later call that does not pass ``block_size``; None
    restores the default (a block of about ``default_workspace_bytes(device)`` of working
    set). Returns the previous setting."""
    global _block_size
    if block_size is not None:
        block_size = v.check_positive_int(block_size, "block_size")
    previous, _block_size = _block_size, block_size
    return previous


def get_block_size() -> int | None:
    """The block size set by ``set_block_size`` (None: the default working set)."""
    return _block_size


def default_workspace_bytes(device: torch.device | str = "cpu") -> int:
    """The working set of one block when no block size is set: DEFAULT_WORKSPACE_BYTES on a
    CPU (where each of the torch threads runs one block at a time),
    DEFAULT_DEVICE_WORKSPACE_BYTES on any other device."""
    if torch.device(device).type == "cpu":
        return DEFAULT_WORKSPACE_BYTES
    return DEFAULT_DEVICE_WORKSPACE_BYTES


def _rows_bytes(device) -> int:
    """The working set of the row-wise passes (hash, delta), which run in the calling thread."""
    if torch.device(device).type == "cpu":
        return DEFAULT_WORKSPACE_BYTES * max(1, torch.get_num_threads())
    return DEFAULT_DEVICE_WORKSPACE_BYTES


def _chunks_per_block(block_size, chunk: int, d: int, c: int, itemsize: int, backward: bool,
                      device: torch.device | str = "cpu") -> int:
    """Chunks per block: block_size // chunk when given (at least 1), else as many as fit
    default_workspace_bytes(device) of per-block tensors."""
    if block_size is None:
        block_size = _block_size
    if block_size is not None:
        return max(1, int(block_size) // chunk)
    k3 = 3 * chunk
    if backward:  # P, dP/dS; kc, vc, dkc, dvc; q, dO, dq; one slot's copies
        elems = 2 * chunk * k3 + 2 * k3 * (d + c) + chunk * (2 * d + c) + chunk * (c + d)
    else:  # scores; kc, vc; q, o
        elems = chunk * k3 + k3 * (d + c) + chunk * (d + c)
    return max(1, default_workspace_bytes(device) // (elems * itemsize))


def _even_blocks(total: int, per_block: int) -> int:
    """Block length giving ceil(total / per_block) blocks of nearly equal size."""
    n_blocks = -(-total // per_block)
    return -(-total // n_blocks)


# ---------------------------------------------------------------------------------------
# Hash


def _lsh_codes(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Spherical LSH codes (N, R, L) int64, a block of rows at a time: the reference's
    ``argmax(cat([p, -p]))`` (first maximum on ties) without the concatenation."""
    n, length, d = x.shape
    _, rounds, half = rotations.shape
    acc = compute_dtype(x.dtype)
    rot = rotations.to(acc).reshape(d, rounds * half)
    flat = x.reshape(n * length, d)
    # The reference projects all rows in one matmul; here a block of rows at a time, in
    # multiples of _HASH_ROW_QUANTUM rows.
    per_row = rounds * half * torch.empty((), dtype=acc).element_size() * 3
    rows = max(_HASH_ROW_QUANTUM, _rows_bytes(x.device) // per_row // _HASH_ROW_QUANTUM * _HASH_ROW_QUANTUM)
    codes = torch.empty((n * length, rounds), dtype=torch.int64, device=x.device)
    for start in range(0, n * length, rows):
        p = (flat[start:start + rows].to(acc) @ rot).view(-1, rounds, half)
        high, first_max = p.max(dim=-1)
        low, first_min = p.min(dim=-1)
        # [p, -p]'s maximum is in the second half only when -min(p) > max(p) strictly (a tie
        # goes to the first half; NaN compares False, so a NaN row gives its first NaN, as
        # argmax does).
        codes[start:start + rows] = torch.where(-low > high, first_min + half, first_max)
    return codes.view(n, length, rounds).transpose(1, 2)


def lsh_hash(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """Spherical LSH codes (N, n_hashes, L), int64 in [0, 2 * rotations.shape[2]); the same
    codes as ``reference.lsh_hash``, projecting a block of rows at a time."""
    v.check_match_embedding(x)
    v.check_rotations(rotations, x.shape[2], x.device)
    return lsh_hash_unchecked(x, rotations)


def lsh_hash_unchecked(x: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
    """``lsh_hash`` of validated arguments (docs/semantics.md §2)."""
    if x.shape[0] == 0 or x.shape[1] == 0:
        return torch.zeros((x.shape[0], rotations.shape[1], x.shape[1]), dtype=torch.int64, device=x.device)
    with autocast_off(x.device.type):
        return _lsh_codes(x.detach(), rotations.detach())


# ---------------------------------------------------------------------------------------
# Chunk bookkeeping


class _Layout:
    """Flat row indices of one call: N images of L pixels are rows [n L, (n + 1) L) of the
    flattened (N L, .) tensors; row N L is a discarded row that padded positions write to.
    Global chunk g = n * n_chunks + j; ``neighbours[g]`` = (g, its previous, its next chunk)
    within image n, wrapping (docs/semantics.md §4)."""

    SLOT_SHIFTS = (0, -1, 1)  # the candidate chunks of chunk j: j, j - 1, j + 1 (mod n_chunks)

    def __init__(self, n: int, length: int, chunk_size: int, device):
        self.n, self.length = n, length
        self.chunk, self.padding, self.n_chunks = chunk_layout(length, chunk_size)
        self.total = n * self.n_chunks
        self.dump = n * length
        g = torch.arange(self.total, device=device)
        base, j = g - g % self.n_chunks, g % self.n_chunks
        self.neighbours = torch.stack([base + (j + shift) % self.n_chunks for shift in self.SLOT_SHIFTS], dim=1)
        self.offsets = (torch.arange(n, device=device) * length).unsqueeze(1)

    def round_rows(self, perm_round: torch.Tensor):
        """For one round's perm (N, L): (rows, dest), both (N n_chunks, K). rows: the pixel
        row at each padded sorted position (padding copies the last P sorted pixels); dest:
        the same with padded positions sent to the discarded row (never queries, and a
        second copy of a key)."""
        real = perm_round.long() + self.offsets
        p = self.padding
        if not p:
            rows = real.reshape(self.total, self.chunk)
            return rows, rows
        tail = real[:, self.length - p:]
        rows = torch.cat([real, tail], dim=1).reshape(self.total, self.chunk)
        dest = torch.cat([real, torch.full_like(tail, self.dump)], dim=1).reshape(self.total, self.chunk)
        return rows, dest

    def blocks(self, step: int) -> list[tuple[int, int]]:
        """Contiguous ranges of global chunks, of at most ``step`` chunks, nearly equal."""
        step = _even_blocks(self.total, step)
        return [(g0, min(self.total, g0 + step)) for g0 in range(0, self.total, step)]

    def key_safe_blocks(self, step: int) -> tuple[list, list]:
        """Blocks in two phases such that no two blocks of one phase touch the same key chunk.

        A block touches its chunks and one neighbour on each side (wrapping within its
        image). Each block lies within one image; an image of fewer than 4 chunks is one
        block; otherwise it is cut into an even number m >= 2 of blocks of >= 2 chunks each,
        alternately in phase 0 and phase 1, so that two blocks of a phase are separated by
        a block of >= 2 chunks, the wrap-around included."""
        nc = self.n_chunks
        m = 1 if nc < 4 else -(-nc // step)
        if m > 1:
            m = min(m + m % 2, nc // 2 - (nc // 2) % 2)
        phases = ([], [])
        for image in range(self.n):
            base = image * nc
            bounds = [base + (i * nc) // m for i in range(m + 1)]
            for i in range(m):
                phases[i % 2].append((bounds[i], bounds[i + 1]))
        return phases

    def slot_last_chunks(self, g0: int, g1: int) -> list[tuple[list[int], list[int]]]:
        """For each slot: (block-local chunk indices whose candidate chunk in that slot is the
        last chunk of its image, those images) (host-side: the layout is static)."""
        nc = self.n_chunks
        out = []
        for shift in self.SLOT_SHIFTS:
            local = [g - g0 for g in range(g0, g1) if (g % nc + shift) % nc == nc - 1]
            out.append((local, [(g0 + i) // nc for i in local]))
        return out


class _Runner:
    """Runs a pass's block functions. On a CPU with more than one torch thread (and outside
    torch.compile), blocks run concurrently on that many worker threads, each running its
    ops single-threaded: the blocks are the parallelism, as a kernel's programs are, and no
    op waits at an OpenMP barrier for a thread another process has taken (fine-grained
    barriers on a busy machine cost 10-100x). Elsewhere, in the calling thread, in order.

    Callers make concurrent blocks write disjoint rows (the discarded row excepted), so the
    result does not depend on the number of workers or their timing."""

    def __init__(self, device: torch.device):
        parallel = device.type == "cpu" and not torch.compiler.is_compiling()
        self.threads = torch.get_num_threads() if parallel else 1
        self.inference = torch.is_inference_mode_enabled()
        self.pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True)
            torch.set_num_threads(self.threads)
        return False

    def _call(self, fn, item):
        with torch.inference_mode() if self.inference else torch.no_grad():
            return fn(*item)

    def map(self, fn, items) -> list:
        """[fn(*item) for item in items], all of them finished on return."""
        if self.threads == 1 or len(items) < 2:
            return [fn(*item) for item in items]
        if self.pool is None:  # started on the first pass with blocks to share out
            from concurrent.futures import ThreadPoolExecutor

            # A thread's intra-op thread count is its own (OpenMP's and MKL's are
            # thread-local); the global default it also sets is restored on exit.
            self.pool = ThreadPoolExecutor(self.threads, initializer=torch.set_num_threads, initargs=(1,))
        return [f.result() for f in [self.pool.submit(self._call, fn, item) for item in items]]


# ---------------------------------------------------------------------------------------
# Forward and backward passes


def _forward(x, y, perm, chunk_size, block_size, with_lse):
    """out (N, L, c) and, with_lse, lse (N L + 1,) (+inf in the discarded row), in the
    compute dtype. x, y: (N, L, .) in their dtype; perm (N, R, L)."""
    n, length, d = x.shape
    c = y.shape[2]
    acc = compute_dtype(x.dtype)
    lay = _Layout(n, length, chunk_size, x.device)
    k, k3 = lay.chunk, 3 * lay.chunk
    xa = x.reshape(n * length, d).to(acc)
    keys = F.normalize(xa, p=2, dim=-1, eps=KEY_NORM_EPS)
    neg_norm = torch.linalg.vector_norm(xa, dim=-1).neg_()
    yf = y.reshape(n * length, c)
    out = torch.zeros((n * length + 1, c), dtype=acc, device=x.device)
    den = torch.zeros((n * length + 1,), dtype=acc, device=x.device)
    blocks = lay.blocks(_chunks_per_block(block_size, k, d, c, out.element_size(), False, x.device))

    def block(rows, dest, g0, g1):
        b = g1 - g0
        q_rows = rows[g0:g1].reshape(-1)
        c_rows = rows[lay.neighbours[g0:g1]].reshape(-1)  # (b, 3, K): own, previous, next
        q = xa.index_select(0, q_rows).view(b, k, d)
        kc = keys.index_select(0, c_rows).view(b, k3, d)
        vc = yf.index_select(0, c_rows).view(b, k3, c).to(acc)
        bias = neg_norm.index_select(0, q_rows).view(b, k, 1).expand(b, k, k3)
        p = torch.baddbmm(bias, q, kc.transpose(1, 2)).exp_()  # exp(s - ||x_i||) <= 1
        # A pixel is one query per round: within a round, blocks write disjoint rows.
        q_dest = dest[g0:g1].reshape(-1)
        den.index_add_(0, q_dest, p.sum(dim=-1).view(-1))
        out.index_add_(0, q_dest, torch.bmm(p, vc).view(-1, c))

    with _Runner(x.device) as runner:
        for r in range(perm.shape[1]):
            rows, dest = lay.round_rows(perm[:, r])
            runner.map(block, [(rows, dest, g0, g1) for g0, g1 in blocks])
    lse = None
    if with_lse:
        lse = den.log()
        lse[:-1] -= neg_norm  # lse = ||x_i|| + log(den)
        lse[-1] = math.inf
    out.div_(den.unsqueeze(1))
    return out[:-1].view(n, length, c), lse


def _backward(x, y, perm, chunk_size, block_size, out, lse, grad_out, need_dx, need_dy):
    """(dx, dy) in the compute dtype (None where not needed)."""
    n, length, d = x.shape
    c = y.shape[2]
    acc = compute_dtype(x.dtype)
    lay = _Layout(n, length, chunk_size, x.device)
    k, k3, p_len = lay.chunk, 3 * lay.chunk, lay.padding
    xa = x.reshape(n * length, d).to(acc)
    keys = F.normalize(xa, p=2, dim=-1, eps=KEY_NORM_EPS)
    yf = y.reshape(n * length, c)
    go = grad_out.reshape(n * length, c)
    # delta_i = dO_i . O_i, a block of rows at a time; 0 in the discarded row.
    delta = torch.zeros((n * length + 1,), dtype=acc, device=x.device)
    o_flat = out.reshape(n * length, c)
    rows_per = max(1, _rows_bytes(x.device) // (2 * c * delta.element_size()))
    for s in range(0, n * length, rows_per):
        delta[s:min(s + rows_per, n * length)] = (go[s:s + rows_per].to(acc) * o_flat[s:s + rows_per]).sum(dim=-1)
    dq = torch.zeros((n * length + 1, d), dtype=acc, device=x.device) if need_dx else None
    dk = torch.zeros((n * length + 1, d), dtype=acc, device=x.device) if need_dx else None
    dy = torch.zeros((n * length + 1, c), dtype=acc, device=x.device) if need_dy else None
    phases = lay.key_safe_blocks(_chunks_per_block(block_size, k, d, c, delta.element_size(), True, x.device))

    def add_keys(target, grads, width, slot_chunks, dest, b, lasts, pad_rows, deferred):
        """target[pixel] += grads for the K key positions of each candidate chunk, one slot
        (own, previous, next) per call: distinct rows within a call. The padded copies of
        the last chunks' keys are returned in ``deferred``, added after the round."""
        per_slot = grads.view(b, 3, k, width)
        for slot in range(3):
            target.index_add_(0, dest[slot_chunks[:, slot]].reshape(-1), per_slot[:, slot].reshape(-1, width))
            if not p_len:
                continue
            local, images = lasts[slot]
            if local:
                deferred.append((target, pad_rows[images].reshape(-1),
                                 per_slot[local, slot, k - p_len:].reshape(-1, width)))

    def block(rows, dest, pad_rows, g0, g1):
        b = g1 - g0
        slot_chunks = lay.neighbours[g0:g1]
        q_rows = rows[g0:g1].reshape(-1)
        q_dest = dest[g0:g1].reshape(-1)
        c_rows = rows[slot_chunks].reshape(-1)
        q = xa.index_select(0, q_rows).view(b, k, d)
        kc = keys.index_select(0, c_rows).view(b, k3, d)
        vc = yf.index_select(0, c_rows).view(b, k3, c).to(acc)
        do = go.index_select(0, q_rows).view(b, k, c).to(acc)
        # Padded query positions gather lse = +inf (the discarded row): P = 0 there.
        bias = lse.index_select(0, q_dest).view(b, k, 1).neg_().expand(b, k, k3)
        p = torch.baddbmm(bias, q, kc.transpose(1, 2)).exp_()  # P = exp(s - lse)
        lasts = lay.slot_last_chunks(g0, g1) if p_len else None
        deferred = []
        if need_dy:
            add_keys(dy, torch.bmm(p.transpose(1, 2), do), c, slot_chunks, dest, b, lasts, pad_rows, deferred)
        if need_dx:
            ds = torch.bmm(do, vc.transpose(1, 2))
            ds.sub_(delta.index_select(0, q_dest).view(b, k, 1)).mul_(p)  # P * (dO y^T - delta)
            dq.index_add_(0, q_dest, torch.bmm(ds, kc).view(-1, d))
            add_keys(dk, torch.bmm(ds.transpose(1, 2), q), d, slot_chunks, dest, b, lasts, pad_rows, deferred)
        return deferred

    with _Runner(x.device) as runner:
        for r in range(perm.shape[1]):
            rows, dest = lay.round_rows(perm[:, r])
            pad_rows = perm[:, r, length - p_len:].long() + lay.offsets if p_len else None
            deferred = []
            for phase in phases:  # within a phase, blocks touch disjoint key rows
                for block_deferred in runner.map(block, [(rows, dest, pad_rows, g0, g1) for g0, g1 in phase]):
                    deferred += block_deferred
            for target, index, grads in deferred:  # padded key copies, in a fixed order
                target.index_add_(0, index, grads)
    dx = None
    if need_dx:
        with torch.enable_grad():  # the key normalisation's gradient, as F.normalize defines it
            leaf = xa.detach().requires_grad_(True)
            (dx_keys,) = torch.autograd.grad(F.normalize(leaf, p=2, dim=-1, eps=KEY_NORM_EPS), leaf, dk[:-1])
        dx = dq[:-1].add_(dx_keys).view(n, length, d)
    if need_dy:
        dy = dy[:-1].view(n, length, c)
    return dx, dy


def _differentiable_grads(x, y, perm, chunk_size, grad_out, need_dx, need_dy):
    from .reference import chunked_attention_with_lse

    with autocast_off(x.device.type):
        out, _ = chunked_attention_with_lse(x, y, perm, chunk_size)
        inputs = [t for t, need in ((x, need_dx), (y, need_dy)) if need]
        grads = iter(torch.autograd.grad(out.to(x.dtype), inputs, grad_out, create_graph=True))
    return (next(grads) if need_dx else None, next(grads) if need_dy else None, None, None, None)


class _ChunkedAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, perm, chunk_size, block_size):
        out, lse = _forward(x, y, perm, chunk_size, block_size, with_lse=True)
        result = out.to(x.dtype)
        ctx.chunk_size, ctx.block_size = chunk_size, block_size
        # For half-precision inputs the float32 output is kept: delta = rowsum(dO * O) of a
        # peaked softmax cancels, and the rounded output would dominate the gradient.
        ctx.save_for_backward(x, y, perm, out, lse)
        return result

    @staticmethod
    def backward(ctx, grad_out):
        x, y, perm, out, lse = ctx.saved_tensors
        need_dx, need_dy = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if torch.is_grad_enabled():
            # create_graph=True: a gradient that is itself differentiable, by autograd
            # through the reference (its memory, not this backend's).
            return _differentiable_grads(x, y, perm, ctx.chunk_size, grad_out, need_dx, need_dy)
        with autocast_off(x.device.type):
            dx, dy = _backward(x, y, perm, ctx.chunk_size, ctx.block_size, out, lse, grad_out, need_dx, need_dy)
        return (dx.to(x.dtype) if dx is not None else None,
                dy.to(y.dtype) if dy is not None else None, None, None, None)


def _attend(x, y, perm, chunk_size, block_size):
    """Validated, non-empty inputs: the differentiable attention in x's dtype."""
    with autocast_off(x.device.type):
        if torch.is_grad_enabled() and (x.requires_grad or y.requires_grad):
            return _ChunkedAttention.apply(x, y, perm, chunk_size, block_size)
        out, _ = _forward(x, y, perm, chunk_size, block_size, with_lse=False)
        return out.to(x.dtype)


def chunked_attention(
    x: torch.Tensor,
    y: torch.Tensor,
    perm: torch.Tensor,
    chunk_size: int,
    *,
    check_perm: bool = True,
    block_size: int | None = None,
) -> torch.Tensor:
    """Chunked softmax attention over all hash rounds (docs/semantics.md §4–§6), streamed.

    The same arguments and result as ``reference.chunked_attention``; differentiable in x
    and y through its own blockwise backward. ``block_size``: query positions per block
    (rounded down to whole chunks, at least one), which bounds the working set to about
    ``block_size * (3K + 3 (d + c)) * 4`` bytes in the forward and twice that in the
    backward (whose blocks hold at least 2 chunks, or a whole image of up to 3 chunks, so
    that blocks running at once touch disjoint keys); on a CPU, each of the torch threads
    runs one block at a time; default ``set_block_size``'s value, else a block of about
    ``default_workspace_bytes(x.device)`` (4 MiB on a CPU, 256 MiB on other devices).
    """
    x, y = autocast_inputs(x, y)
    chunk_size, perm_check = v.check_chunked_attention_args(x, y, perm, chunk_size, check_perm)
    if block_size is not None:
        block_size = v.check_positive_int(block_size, "block_size")
    if not torch.compiler.is_compiling():
        v.check_perm_values(perm, x.shape[1], perm_check)
    return chunked_attention_unchecked(x, y, perm, chunk_size, block_size)


def chunked_attention_unchecked(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, chunk_size: int,
                                block_size: int | None = None) -> torch.Tensor:
    """``chunked_attention`` of validated arguments (autocast applied, perm checked)."""
    if x.shape[0] == 0 or x.shape[1] == 0 or y.shape[2] == 0:
        return empty_result(x, y)
    return _attend(x, y, perm, chunk_size, block_size)


def nlsa(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_hashes: int = 4,
    chunk_size: int = 144,
    rotations: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    block_size: int | None = None,
) -> torch.Tensor:
    """Non-Local Sparse Attention (docs/semantics.md §1–§6), streamed: hash, sort, attend."""
    x, y = autocast_inputs(x, y)
    v.check_embeddings(x, y)
    rotations = resolve_rotations(x, n_hashes, chunk_size, rotations, generator)
    if block_size is not None:
        block_size = v.check_positive_int(block_size, "block_size")
    return nlsa_unchecked(x, y, chunk_size, rotations, block_size)


def nlsa_unchecked(x: torch.Tensor, y: torch.Tensor, chunk_size: int, rotations: torch.Tensor,
                   block_size: int | None = None) -> torch.Tensor:
    """``nlsa`` of validated arguments (autocast applied, rotations resolved)."""
    if x.shape[0] == 0 or y.shape[2] == 0:
        return empty_result(x, y)
    with autocast_off(x.device.type):
        perm = bucket_sort(_lsh_codes(x.detach(), rotations.detach()))
    # perm is an argsort: a permutation by construction, so no perm check ("none").
    return _attend(x, y, perm, chunk_size, block_size)
