"""Every kernel configuration a launcher can choose, for the ahead-of-time compile test."""
from .chunked_attention_bwd import compile_targets as backward_targets
from .chunked_attention_fwd import compile_targets as forward_targets
from .lsh_hash import compile_targets as hash_targets

TARGET_LISTS = (forward_targets, backward_targets, hash_targets)


def compile_targets():
    for targets in TARGET_LISTS:
        yield from targets()
