"""Bad arguments: every public entry point raises ValueError / TypeError naming the argument,
before any kernel runs, on every backend and in ``nlsa_triton.reference`` and
``nlsa_triton.streaming`` called directly."""
import re

import pytest
import torch

import nlsa_triton as nt
import nlsa_triton._backend as backend_module
import nlsa_triton._ops as ops_module
import nlsa_triton.reference as reference_module
import nlsa_triton.streaming as streaming_module
from conftest import DEVICE

N, L, D, C, R, K = 2, 20, 4, 8, 2, 8
OTHER_DEVICE = "meta"  # a second device on every machine


# What computes, per backend: the Triton launchers the registered ops call, and the torch
# backend's and the reference's compute functions behind their checks.
LAUNCHERS = [(ops_module, name) for name in ("chunked_attention_fwd", "chunked_attention_bwd", "lsh_hash_triton")
             if backend_module.TRITON_MISSING is None] + [
    (streaming_module, "_forward"), (streaming_module, "_backward"), (streaming_module, "_lsh_codes"),
    (reference_module, "chunked_attention_with_lse"),
]
LAUNCHED = "a kernel was launched for an invalid input"


@pytest.fixture(autouse=True)
def no_kernel_launch(monkeypatch):
    """Every launcher raises: an invalid input must be refused before one runs
    (test_no_kernel_launch_stops_every_backend shows that the patches are live)."""
    def launched(*args, **kwargs):
        raise AssertionError(LAUNCHED)

    for module, name in LAUNCHERS:
        monkeypatch.setattr(module, name, launched)  # raising=True: a renamed launcher fails here


def _x(n=N, length=L, d=D, dtype=torch.float32, device=DEVICE):
    return torch.randn(n, length, d, dtype=dtype, device=device)


def _y(n=N, length=L, c=C, dtype=torch.float32, device=DEVICE):
    return torch.randn(n, length, c, dtype=dtype, device=device)


def _perm(n=N, rounds=R, length=L, dtype=torch.int64, device=DEVICE):
    return torch.rand(n, rounds, length).argsort(dim=-1).to(device, dtype)


def _perm_with_repeat():
    """A perm whose row (1, 0) holds 5 twice and lacks 7."""
    perm = _perm()
    row = perm[1, 0]
    row[row == 7] = 5
    return perm


def _rotations(d=D, rounds=R, half=1, dtype=torch.float32, device=DEVICE):
    return torch.randn(d, rounds, half, dtype=dtype, device=device)


def _call(api, fn, *args, **kwargs):
    if api in ("nt.reference", "nt.streaming"):  # the modules' functions, called directly
        return getattr(getattr(nt, api.split(".")[1]), fn)(*args, **kwargs)
    if fn in ("chunked_attention", "nlsa", "lsh_hash"):
        kwargs["backend"] = api
    return getattr(nt, fn)(*args, **kwargs)


def _raises(error, message, fn, *args, **kwargs):
    with pytest.raises(error, match=re.escape(message)):
        fn(*args, **kwargs)


APIS = ["torch", "triton", "reference", "nt.reference", "nt.streaming"]

# (description, error, message fragment, arguments builder) for chunked_attention(x, y, perm, chunk_size).
CHUNKED_CASES = [
    ("x_rank", ValueError, "x must have shape (N, L, d) (rank 3), got shape (20, 4)",
     lambda: (_x()[0], _y(), _perm(), K)),
    ("y_rank", ValueError, "y must have shape (N, L, c) (rank 3), got shape (2, 20, 8, 1)",
     lambda: (_x(), _y()[..., None], _perm(), K)),
    ("x_not_tensor", TypeError, "x must be a torch.Tensor of shape (N, L, d), got list",
     lambda: ([[0.0]], _y(), _perm(), K)),
    ("x_integer", TypeError, "x must be a floating tensor (float16, bfloat16, float32 or float64), got torch.int64",
     lambda: (_x().long(), _y(), _perm(), K)),
    ("y_bool", TypeError, "y must be a floating tensor", lambda: (_x(), _y().bool(), _perm(), K)),
    ("y_complex", TypeError, "y must be a floating tensor", lambda: (_x(), _y().to(torch.complex64), _perm(), K)),
    ("d_zero", ValueError, "x must have at least one feature (d >= 1)",
     lambda: (_x(d=0), _y(), _perm(), K)),
    ("batch_mismatch", ValueError, "x (N, L, d) and y (N, L, c) must agree in batch and length, "
     "got x (2, 20, 4) and y (3, 20, 8)", lambda: (_x(), _y(n=3), _perm(), K)),
    ("length_mismatch", ValueError, "must agree in batch and length", lambda: (_x(), _y(length=21), _perm(), K)),
    ("dtype_mismatch", TypeError, "x and y must have one dtype, got x torch.float32 and y torch.float16",
     lambda: (_x(), _y(dtype=torch.float16), _perm(), K)),
    ("y_other_device", ValueError, f"tensors must be on one device, got x on {torch.device(DEVICE)}"
     if DEVICE == "cpu" else "tensors must be on one device", lambda: (_x(), _y(device=OTHER_DEVICE), _perm(), K)),
    ("chunk_zero", ValueError, "chunk_size must be >= 1, got 0", lambda: (_x(), _y(), _perm(), 0)),
    ("chunk_negative", ValueError, "chunk_size must be >= 1, got -3", lambda: (_x(), _y(), _perm(), -3)),
    ("chunk_float", TypeError, "chunk_size must be an int >= 1, got float 8.0", lambda: (_x(), _y(), _perm(), 8.0)),
    ("chunk_bool", TypeError, "chunk_size must be an int >= 1, got bool True", lambda: (_x(), _y(), _perm(), True)),
    ("perm_not_tensor", TypeError, "perm must be a torch.Tensor of shape (N, n_hashes, L), got list",
     lambda: (_x(), _y(), [[[0]]], K)),
    ("perm_rank", ValueError, "perm must have shape (N, n_hashes, L) = (2, R >= 1, 20) to match x, got (2, 20)",
     lambda: (_x(), _y(), _perm()[:, 0], K)),
    ("perm_batch", ValueError, "perm must have shape (N, n_hashes, L) = (2, R >= 1, 20) to match x, got (1, 2, 20)",
     lambda: (_x(), _y(), _perm(n=1), K)),
    ("perm_length", ValueError, "to match x, got (2, 2, 19)", lambda: (_x(), _y(), _perm(length=19), K)),
    ("perm_no_rounds", ValueError, "to match x, got (2, 0, 20)", lambda: (_x(), _y(), _perm(rounds=0), K)),
    ("perm_float", TypeError, "perm must be an int32 or int64 tensor, got torch.float32",
     lambda: (_x(), _y(), _perm().float(), K)),
    ("perm_int16", TypeError, "perm must be an int32 or int64 tensor, got torch.int16",
     lambda: (_x(), _y(), _perm().to(torch.int16), K)),
    ("perm_other_device", ValueError, "tensors must be on one device", lambda: (_x(), _y(), _perm().to(OTHER_DEVICE), K)),
    ("perm_negative", ValueError, "perm must hold indices in [0, L) = [0, 20), got values in [-1, 19]",
     lambda: (_x(), _y(), _perm().index_fill(2, torch.tensor([3], device=DEVICE), -1), K)),
    ("perm_too_large", ValueError, "perm must hold indices in [0, L) = [0, 20), got values in [0, 20]",
     lambda: (_x(), _y(), _perm().index_fill(2, torch.tensor([3], device=DEVICE), L), K)),
    ("perm_huge", ValueError, "perm must hold indices in [0, L) = [0, 20), got values in [0, 1099511627776]",
     lambda: (_x(), _y(), _perm().index_fill(2, torch.tensor([3], device=DEVICE), 2 ** 40), K)),
    ("perm_repeats", ValueError, "perm[1, 0] must be a permutation of range(L) = range(20) (each index exactly once), "
     "but it repeats 5 and lacks 7; pass check_perm=False to skip this check (indices are still checked to be in "
     "[0, L); the output is then undefined)", lambda: (_x(), _y(), _perm_with_repeat(), K)),
]


@pytest.mark.parametrize("api, fn", [
    pytest.param(api, fn, id=f"{api}-{fn}") for fn in ("chunked_attention", "nlsa", "lsh_hash") for api in APIS
    # The reference's hash is one einsum inside its lsh_hash: no separate launcher to patch.
    if not (fn == "lsh_hash" and api in ("reference", "nt.reference"))])
def test_no_kernel_launch_stops_every_backend(api, fn):
    """Valid inputs reach a patched launcher on every backend: the fixture guards what runs."""
    if api == "triton" and backend_module.TRITON_MISSING is not None:
        pytest.skip("triton is not importable")
    args = {"chunked_attention": (_x(), _y(), _perm(), K), "nlsa": (_x(), _y()),
            "lsh_hash": (_x(), _rotations())}[fn]
    kwargs = {"n_hashes": R, "chunk_size": K} if fn == "nlsa" else {}
    _raises(AssertionError, LAUNCHED, _call, api, fn, *args, **kwargs)


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("case", CHUNKED_CASES, ids=[c[0] for c in CHUNKED_CASES])
def test_chunked_attention_rejects(api, case):
    _, error, message, build = case
    _raises(error, message, _call, api, "chunked_attention", *build())


def test_check_perm_must_be_a_bool():
    for api in APIS:
        _raises(TypeError, "check_perm must be True or False, got str 'no'", _call, api, "chunked_attention",
                _x(), _y(), _perm(), K, check_perm="no")


@pytest.mark.parametrize("fn", ["chunked_attention", "nlsa", "lsh_hash"])
def test_unknown_backend(fn):
    args = {"chunked_attention": (_x(), _y(), _perm(), K), "nlsa": (_x(), _y()),
            "lsh_hash": (_x(), _rotations())}[fn]
    _raises(ValueError, "backend must be one of ('auto', 'triton', 'torch', 'reference'), got 'cuda'",
            getattr(nt, fn), *args, backend="cuda")
    _raises(ValueError, "backend must be one of ('auto', 'triton', 'torch', 'reference'), got None",
            getattr(nt, fn), *args, backend=None)


@pytest.mark.parametrize("fn", ["chunked_attention", "nlsa"])
def test_triton_refuses_float64_and_auto_takes_torch(fn):
    x, y = _x(dtype=torch.float64), _y(dtype=torch.float64)
    args = (x, y, _perm(), K) if fn == "chunked_attention" else (x, y)
    kwargs = {} if fn == "chunked_attention" else {"n_hashes": R, "chunk_size": K}
    _raises(TypeError, "backend='triton' takes float16, bfloat16 or float32 x and y, got torch.float64; "
            "use backend='torch' (or 'auto') for float64", getattr(nt, fn), *args, backend="triton", **kwargs)
    assert backend_module.resolve_backend("auto", x) == "torch"


@pytest.mark.skipif(DEVICE != "cpu", reason="the interpreter's bfloat16 limitation")
def test_interpreter_refuses_bfloat16_attention():
    x, y = _x(dtype=torch.bfloat16), _y(dtype=torch.bfloat16)
    _raises(TypeError, "backend='triton' cannot take bfloat16 x and y in Triton's CPU interpreter",
            nt.chunked_attention, x, y, _perm(), K, backend="triton")
    assert backend_module.resolve_backend("auto", x) == "torch"
    assert backend_module.resolve_backend("auto", x, uses_dot=False) == "triton"


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.setattr(backend_module, "_INTERPRETED", False)
    x = _x(device="cpu")
    _raises(ValueError, "backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 to run the kernels on the CPU), "
            "got x on cpu; use backend='torch' or 'auto'", nt.chunked_attention, x, _y(device="cpu"),
            _perm(device="cpu"), K, backend="triton")
    assert backend_module.resolve_backend("auto", x) == "torch"


LSH_CASES = [
    ("x_rank", ValueError, "x must have shape (N, L, d) (rank 3)", lambda: (_x()[0], _rotations())),
    ("x_integer", TypeError, "x must be a floating tensor", lambda: (_x().int(), _rotations())),
    ("d_zero", ValueError, "x must have at least one feature (d >= 1)", lambda: (_x(d=0), _rotations(d=0))),
    ("rotations_not_tensor", TypeError, "rotations must be a torch.Tensor of shape (d, n_hashes, n_buckets // 2), "
     "got NoneType", lambda: (_x(), None)),
    ("rotations_rank", ValueError, "rotations must have shape (d, n_hashes, n_buckets // 2) (rank 3), got shape (4, 2)",
     lambda: (_x(), _rotations()[:, :, 0])),
    ("rotations_d", ValueError, "rotations must have shape (d, n_hashes, n_buckets // 2) with d = 4 and both other "
     "sizes >= 1, got (5, 2, 1)", lambda: (_x(), _rotations(d=5))),
    ("rotations_no_rounds", ValueError, "got (4, 0, 1)", lambda: (_x(), _rotations(rounds=0))),
    ("rotations_integer", TypeError, "rotations must be a floating tensor", lambda: (_x(), _rotations().long())),
    ("rotations_other_device", ValueError, "tensors must be on one device",
     lambda: (_x(), _rotations(device=OTHER_DEVICE))),
]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("case", LSH_CASES, ids=[c[0] for c in LSH_CASES])
def test_lsh_hash_rejects(api, case):
    _, error, message, build = case
    _raises(error, message, _call, api, "lsh_hash", *build())


NLSA_CASES = [
    ("n_hashes_zero", ValueError, "n_hashes must be >= 1, got 0", {"n_hashes": 0}),
    ("n_hashes_float", TypeError, "n_hashes must be an int >= 1, got float 2.0", {"n_hashes": 2.0}),
    ("chunk_zero", ValueError, "chunk_size must be >= 1, got 0", {"chunk_size": 0}),
    ("rotations_buckets", ValueError, "rotations must have shape (d, n_hashes, n_buckets // 2) = (4, 2, 1) for "
     "L = 20 and chunk_size = 8, got (4, 2, 3)", {"rotations": _rotations(half=3)}),
    ("rotations_rounds", ValueError, "= (4, 2, 1) for L = 20 and chunk_size = 8, got (4, 3, 1)",
     {"rotations": _rotations(rounds=3)}),
    ("rotations_d", ValueError, "with d = 4", {"rotations": _rotations(d=3)}),
    ("rotations_integer", TypeError, "rotations must be a floating tensor", {"rotations": _rotations().int()}),
    ("generator_type", TypeError, "generator must be a torch.Generator or None, got int", {"generator": 0}),
]


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("case", NLSA_CASES, ids=[c[0] for c in NLSA_CASES])
def test_nlsa_rejects(api, case):
    _, error, message, kwargs = case
    kwargs = {"n_hashes": R, "chunk_size": K, **kwargs}
    if isinstance(kwargs.get("rotations"), torch.Tensor):
        kwargs["rotations"] = kwargs["rotations"].to(DEVICE)
    _raises(error, message, _call, api, "nlsa", _x(), _y(), **kwargs)


@pytest.mark.parametrize("api", APIS)
def test_nlsa_rejects_bad_embeddings(api):
    _raises(ValueError, "x (N, L, d) and y (N, L, c) must agree in batch and length", _call, api, "nlsa",
            _x(), _y(length=3))
    _raises(TypeError, "x must be a floating tensor", _call, api, "nlsa", _x().long(), _y())
    _raises(ValueError, "x must have at least one position (L >= 1) to be hashed, got shape (2, 0, 4)", _call, api,
            "nlsa", _x(length=0), _y(length=0))
    _raises(ValueError, "tensors must be on one device", _call, api, "nlsa", _x(),
            _y(), rotations=_rotations(device=OTHER_DEVICE), n_hashes=R, chunk_size=K)


@pytest.mark.skipif(DEVICE == "cpu", reason="needs a second real device")
@pytest.mark.parametrize("api", APIS)
def test_nlsa_generator_on_another_device(api):
    _raises(ValueError, f"generator is on cpu but x is on {_x().device}", _call, api, "nlsa", _x(), _y(),
            generator=torch.Generator())


def test_num_buckets_rejects():
    _raises(ValueError, "L must be >= 1, got 0", nt.num_buckets, 0, 144)
    _raises(ValueError, "chunk_size must be >= 1, got -1", nt.num_buckets, 10, -1)
    _raises(TypeError, "L must be an int >= 1, got float 10.5", nt.num_buckets, 10.5, 144)
    _raises(TypeError, "chunk_size must be an int >= 1, got str '144'", nt.num_buckets, 10, "144")


def test_random_rotations_rejects():
    _raises(ValueError, "n_buckets must be even (codes are argmax over [p, -p]), got 3", nt.random_rotations, 4, 2, 3)
    _raises(ValueError, "d must be >= 1, got 0", nt.random_rotations, 0, 2, 2)
    _raises(ValueError, "n_hashes must be >= 1, got 0", nt.random_rotations, 4, 0, 2)
    _raises(TypeError, "n_buckets must be an int >= 1, got NoneType None", nt.random_rotations, 4, 2, None)
    _raises(TypeError, "dtype must be float16, bfloat16, float32 or float64, got torch.int64", nt.random_rotations,
            4, 2, 2, dtype=torch.int64)
    _raises(TypeError, "generator must be a torch.Generator or None, got int", nt.random_rotations, 4, 2, 2,
            generator=7)
    _raises(ValueError, "generator is on cpu but device is on meta", nt.random_rotations, 4, 2, 2,
            generator=torch.Generator(), device="meta")


def test_bucket_sort_rejects():
    _raises(TypeError, "codes must be a torch.Tensor of shape (N, n_hashes, L), got list", nt.bucket_sort, [[[0]]])
    _raises(ValueError, "codes must have shape (N, n_hashes, L) (rank 3), got shape (2, 3)", nt.bucket_sort,
            torch.zeros(2, 3, dtype=torch.int64))
    _raises(TypeError, "codes must be an integer tensor, got torch.float32", nt.bucket_sort, torch.zeros(1, 1, 3))
    _raises(TypeError, "codes must be an integer tensor, got torch.bool", nt.bucket_sort,
            torch.zeros(1, 1, 3, dtype=torch.bool))


MODULES = {
    "sparse": lambda **kw: nt.NonLocalSparseAttention(**{"channels": 8, "n_hashes": R, "chunk_size": K, **kw}),
    "full": lambda **kw: nt.NonLocalAttention(**{"channel": 8, **kw}),
}


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"channels": 0}, ValueError, "channels must be >= 1, got 0"),
        ({"channels": 10, "reduction": 4}, ValueError, "channels (10) must be divisible by reduction (4)"),
        ({"reduction": 0}, ValueError, "reduction must be >= 1, got 0"),
        ({"n_hashes": 0}, ValueError, "n_hashes must be >= 1, got 0"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be >= 1, got 0"),
        ({"k_size": 0}, ValueError, "k_size must be >= 1, got 0"),
        ({"k_size": 2}, ValueError, "k_size must be odd (conv_match pads by k_size // 2 to keep H x W), got 2"),
        ({"res_scale": "1"}, TypeError, "res_scale must be a real number, got str '1'"),
        ({"backend": "gpu"}, ValueError, "backend must be one of ('auto', 'triton', 'torch', 'reference'), got 'gpu'"),
        ({"channels": 8.0}, TypeError, "channels must be an int >= 1, got float 8.0"),
    ],
)
def test_sparse_module_constructor_rejects(kwargs, error, message):
    _raises(error, message, MODULES["sparse"], **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"channel": 0}, ValueError, "channel must be >= 1, got 0"),
        ({"channel": 9, "reduction": 2}, ValueError, "channel (9) must be divisible by reduction (2)"),
        ({"res_scale": None}, TypeError, "res_scale must be a real number, got NoneType None"),
    ],
)
def test_full_module_constructor_rejects(kwargs, error, message):
    _raises(error, message, MODULES["full"], **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channels": 0}, "channels must be >= 1, got 0"),
        ({"channels": 9, "reduction": 2}, "channels (9) must be divisible by reduction (2)"),
        ({"channel": 8, "channels": 16}, "channel (8) and channels (16) name the same count; give one"),
    ],
)
def test_full_module_names_the_channel_argument_given(kwargs, message):
    _raises(ValueError, message, nt.NonLocalAttention, **kwargs)


@pytest.mark.parametrize("kind", ["sparse", "full"])
@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
def test_module_forward_rejects(kind, backend):
    module = MODULES[kind](**({"backend": backend} if kind == "sparse" else {})).to(DEVICE)
    image = torch.randn(1, 8, 4, 5, device=DEVICE)
    _raises(ValueError, "input must have shape (N, C, H, W) (rank 4), got shape (8, 4, 5)", module, image[0])
    _raises(ValueError, "input must have 8 channels (N, C, H, W), got shape (1, 6, 4, 5)", module, image[:, :6])
    _raises(TypeError, "input must be a floating tensor (float16, bfloat16, float32 or float64), got torch.int64",
            module, image.long())
    _raises(TypeError, "input must be a torch.Tensor of shape (N, C, H, W), got ndarray", module, image.cpu().numpy())
    _raises(ValueError, f"tensors must be on one device, got input on meta, parameters on {image.device}", module,
            image.to("meta"))
    _raises(TypeError, "input must have the parameters' dtype torch.float32 (or run under torch.autocast), got "
            "torch.float64; convert one with .to()", module, image.double())


@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
def test_sparse_module_forward_rejects_bad_rotations(backend):
    module = MODULES["sparse"](backend=backend).to(DEVICE)
    image = torch.randn(1, 8, 4, 5, device=DEVICE)
    _raises(ValueError, "rotations must have shape (d, n_hashes, n_buckets // 2) = (2, 2, 1) for L = 20 and "
            "chunk_size = 8, got (2, 2, 4)", module, image, _rotations(d=2, half=4))
    _raises(TypeError, "generator must be a torch.Generator or None, got str", module, image, generator="seed")
