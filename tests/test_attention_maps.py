"""attention_maps: per-round and combined NLSA weights for one query (Figure 1 of the NLSN supplementary material)."""

import numpy as np
import pytest
import torch

import nlsa_triton as nt
from conftest import DEVICE, assert_close

# N, L, d, n_hashes, chunk_size
SHAPES = [
    pytest.param(2, 10, 6, 3, 16, id="L<K"),
    pytest.param(1, 16, 6, 2, 16, id="L=K"),
    pytest.param(2, 32, 8, 4, 16, id="two_chunks"),
    pytest.param(2, 21, 5, 2, 16, id="padding_longer_than_tail"),
    pytest.param(1, 100, 8, 4, 8, id="many_chunks"),
    pytest.param(2, 61, 4, 1, 6, id="many_chunks_padded_R1"),
]


def _inputs(n, length, d, n_hashes, chunk_size, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, d, generator=gen, dtype=dtype)
    y = torch.randn(n, length, 7, generator=gen, dtype=dtype)
    rotations = nt.random_rotations(d, n_hashes, nt.num_buckets(length, chunk_size), generator=gen, dtype=dtype)
    return x, y, rotations


def _dense_maps(x, perm, query, chunk_size):
    """Independent statement: count each pixel's candidate multiplicity per round with
    explicit loops over the padded sorted sequence, then softmax weights directly."""
    n_, rounds, length = perm.shape
    chunk = min(chunk_size, length)
    padding = (chunk - length % chunk) % chunk
    n_chunks = (length + padding) // chunk
    out = np.zeros((n_, rounds + 1, length))
    for n in range(n_):
        xs = x[n].double().numpy()
        keys = xs / np.maximum(np.linalg.norm(xs, axis=1, keepdims=True), 5e-5)
        scores = keys @ xs[query]
        expo = np.exp(scores - scores.max())
        total_counts = np.zeros(length)
        for r in range(rounds):
            order = perm[n, r].tolist()
            position = order.index(query)
            own = position // chunk
            counts = np.zeros(length)
            for c in (own, (own - 1) % n_chunks, (own + 1) % n_chunks):
                for p in range(c * chunk, (c + 1) * chunk):
                    counts[order[p if p < length else p - padding]] += 1
            assert counts.sum() == 3 * chunk
            out[n, r] = counts * expo / (counts * expo).sum()
            total_counts += counts
        out[n, rounds] = total_counts * expo / (total_counts * expo).sum()
    return torch.from_numpy(out)


@pytest.mark.parametrize("n, length, d, n_hashes, chunk_size", SHAPES)
def test_maps_match_dense_and_sum_to_one(n, length, d, n_hashes, chunk_size):
    x, _, rotations = _inputs(n, length, d, n_hashes, chunk_size, seed=length)
    perm = nt.bucket_sort(nt.reference.lsh_hash(x, rotations))
    for query in sorted({0, length // 2, length - 1}):
        maps = nt.attention_maps(x, query, n_hashes=n_hashes, chunk_size=chunk_size, rotations=rotations)
        assert maps.shape == (n, n_hashes + 1, length) and maps.dtype == torch.float64
        assert torch.allclose(maps.sum(-1), torch.ones(n, n_hashes + 1, dtype=torch.float64), atol=1e-12)
        assert (maps >= 0).all()
        assert (maps[:, :, query] > 0).all()  # the query is its own candidate in every round
        assert_close(f"maps of query {query}", maps, _dense_maps(x, perm, query, chunk_size), 1e-12)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("n, length, d, n_hashes, chunk_size", SHAPES)
def test_combined_map_forms_nlsa_output(n, length, d, n_hashes, chunk_size, backend):
    x, y, rotations = _inputs(n, length, d, n_hashes, chunk_size, seed=3 * length, dtype=torch.float32)
    x, y, rotations = x.to(DEVICE), y.to(DEVICE), rotations.to(DEVICE)
    out = nt.nlsa(x, y, n_hashes=n_hashes, chunk_size=chunk_size, rotations=rotations, backend=backend)
    for query in sorted({0, 1, length // 3, length - 1}):
        maps = nt.attention_maps(x, query, n_hashes=n_hashes, chunk_size=chunk_size, rotations=rotations)
        assert maps.device == x.device and maps.dtype == torch.float32
        formed = torch.einsum("nl,nlc->nc", maps[:, -1], y)
        assert_close(f"output of query {query} formed from its map", formed.cpu(), out[:, query].cpu(), 1e-5)


def test_generator_matches_nlsa_with_same_seed():
    x, y, _ = _inputs(2, 50, 6, 4, 8, seed=1)
    maps = nt.attention_maps(x, 17, n_hashes=4, chunk_size=8, generator=torch.Generator().manual_seed(9))
    again = nt.attention_maps(x, 17, n_hashes=4, chunk_size=8, generator=torch.Generator().manual_seed(9))
    assert torch.equal(maps, again)
    out = nt.nlsa(x, y, n_hashes=4, chunk_size=8, generator=torch.Generator().manual_seed(9), backend="torch")
    assert_close("output of query 17 formed from its map", torch.einsum("nl,nlc->nc", maps[:, -1], y), out[:, 17],
                 1e-12)


def test_half_precision_input_gives_float32_maps():
    x, _, rotations = _inputs(1, 40, 8, 2, 8, seed=2, dtype=torch.float32)
    maps = nt.attention_maps(x.half(), 5, n_hashes=2, chunk_size=8, rotations=rotations)
    assert maps.dtype == torch.float32
    assert torch.allclose(maps.sum(-1), torch.ones(1, 3), atol=1e-5)


def test_empty_batch():
    x = torch.randn(0, 12, 4)
    maps = nt.attention_maps(x, 3, n_hashes=2, chunk_size=8, generator=torch.Generator().manual_seed(0))
    assert maps.shape == (0, 3, 12)


@pytest.mark.parametrize(
    "query, error, match",
    [
        (-1, ValueError, r"\[0, 20\)"),
        (20, ValueError, r"\[0, 20\)"),
        (2.0, TypeError, "int"),
        (True, TypeError, "int"),
        (torch.tensor(3), TypeError, "int"),
    ],
)
def test_query_index_validation(query, error, match):
    x = torch.randn(1, 20, 4)
    with pytest.raises(error, match=match):
        nt.attention_maps(x, query, chunk_size=8)


def test_numpy_integer_query_and_other_validation():
    x = torch.randn(1, 20, 4)
    gen = torch.Generator().manual_seed(0)
    maps = nt.attention_maps(x, np.int64(4), n_hashes=1, chunk_size=8, generator=gen)
    assert maps.shape == (1, 2, 20)
    with pytest.raises(ValueError, match="rotations"):
        nt.attention_maps(x, 4, n_hashes=2, chunk_size=8, rotations=torch.randn(4, 3, 1))
    with pytest.raises(ValueError, match=r"\(N, L, d\)"):
        nt.attention_maps(torch.randn(20, 4), 4)
    with pytest.raises(ValueError, match="n_hashes"):
        nt.attention_maps(x, 4, n_hashes=0)


@pytest.mark.parametrize("source", [[], ["--synthetic"]], ids=["sample_photo", "synthetic"])
def test_figure_script_writes_png(tmp_path, source):
    """examples/attention_maps_figure.py runs end to end (small size) on matplotlib's sample
    photograph, the README's figure, and on its synthetic image."""
    pytest.importorskip("matplotlib")
    import importlib.util
    import pathlib

    script = pathlib.Path(__file__).resolve().parents[1] / "examples" / "attention_maps_figure.py"
    spec = importlib.util.spec_from_file_location("attention_maps_figure", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    output = tmp_path / "maps.png"
    module.main([*source, "--size", "32", "--n-hashes", "2", "--chunk-size", "16", "-o", str(output)])
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
