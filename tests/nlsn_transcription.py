"""NLSN's NonLocalSparseAttention.forward, transcribed from the authors' attention.py.

Kept as close to their code as possible (flattened n_hashes * L sort with per-round code
offsets, padding by copying the tail, add_adjacent_buckets, einsum scores, logsumexp,
softmax over rounds), with only the spec's deviations: rotations are passed in instead of
drawn, and the sort is stable. Valid for L > chunk_size only, as NLSN itself.
"""
import torch
import torch.nn.functional as F


def _batched_index_select(values, indices):
    last_dim = values.shape[-1]
    return values.gather(1, indices[:, :, None].expand(-1, -1, last_dim))


def _add_adjacent_buckets(x):
    x_extra_back = torch.cat([x[:, :, -1:, ...], x[:, :, :-1, ...]], dim=2)
    x_extra_forward = torch.cat([x[:, :, 1:, ...], x[:, :, :1, ...]], dim=2)
    return torch.cat([x, x_extra_back, x_extra_forward], dim=3)


def nlsn_sparse_attention(x_embed, y_embed, rotations, chunk_size):
    """x_embed (N, L, d), y_embed (N, L, c), rotations (d, n_hashes, B // 2) -> (N, L, c)."""
    N, L, C = x_embed.shape
    n_hashes = rotations.shape[1]
    c_out = y_embed.shape[-1]
    hash_buckets = min(L // chunk_size + (L // chunk_size) % 2, 128)
    rotated_vecs = torch.einsum("btf,fhi->bhti", x_embed, rotations)
    rotated_vecs = torch.cat([rotated_vecs, -rotated_vecs], dim=-1)
    hash_codes = torch.argmax(rotated_vecs, dim=-1)
    offsets = torch.arange(n_hashes, device=x_embed.device).reshape(1, -1, 1) * hash_buckets
    hash_codes = torch.reshape(hash_codes + offsets, (N, -1))
    _, indices = hash_codes.sort(dim=-1, stable=True)
    _, undo_sort = indices.sort(dim=-1)
    mod_indices = indices % L
    x_embed_sorted = _batched_index_select(x_embed, mod_indices)
    y_embed_sorted = _batched_index_select(y_embed, mod_indices)
    padding = chunk_size - L % chunk_size if L % chunk_size != 0 else 0
    x_att_buckets = torch.reshape(x_embed_sorted, (N, n_hashes, -1, C))
    y_att_buckets = torch.reshape(y_embed_sorted, (N, n_hashes, -1, c_out))
    if padding:
        pad_x = x_att_buckets[:, :, -padding:, :].clone()
        pad_y = y_att_buckets[:, :, -padding:, :].clone()
        x_att_buckets = torch.cat([x_att_buckets, pad_x], dim=2)
        y_att_buckets = torch.cat([y_att_buckets, pad_y], dim=2)
    x_att_buckets = torch.reshape(x_att_buckets, (N, n_hashes, -1, chunk_size, C))
    y_att_buckets = torch.reshape(y_att_buckets, (N, n_hashes, -1, chunk_size, c_out))
    x_match = F.normalize(x_att_buckets, p=2, dim=-1, eps=5e-5)
    x_match = _add_adjacent_buckets(x_match)
    y_att_buckets = _add_adjacent_buckets(y_att_buckets)
    raw_score = torch.einsum("bhkie,bhkje->bhkij", x_att_buckets, x_match)
    bucket_score = torch.logsumexp(raw_score, dim=-1, keepdim=True)
    score = torch.exp(raw_score - bucket_score)
    bucket_score = torch.reshape(bucket_score, [N, n_hashes, -1])
    ret = torch.einsum("bukij,bukje->bukie", score, y_att_buckets)
    ret = torch.reshape(ret, (N, n_hashes, -1, c_out))
    if padding:
        ret = ret[:, :, :-padding, :].clone()
        bucket_score = bucket_score[:, :, :-padding].clone()
    ret = torch.reshape(ret, (N, -1, c_out))
    bucket_score = torch.reshape(bucket_score, (N, -1))
    ret = _batched_index_select(ret, undo_sort)
    bucket_score = bucket_score.gather(1, undo_sort)
    ret = torch.reshape(ret, (N, n_hashes, L, c_out))
    bucket_score = torch.reshape(bucket_score, (N, n_hashes, L, 1))
    probs = F.softmax(bucket_score, dim=1)
    return torch.sum(ret * probs, dim=1)
