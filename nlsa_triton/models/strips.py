"""Running EDSR's tail (convolutions and pixel shuffles) a strip of rows at a time, exactly.

At inference the tail's maps are the network's largest: for x2, the upsampler's
convolution to 4 n_feats channels and its pixel shuffle each hold 4 feature maps (for
the paper's NLSN on a 600x512 photo, 1.26 GB each, both alive at the shuffle). The tail
is local (3x3 convolutions, pixel shuffles), so it can be computed a strip of rows at a
time: each strip takes the rows of the tail's input its output rows depend on (a halo of
one row per 3x3 convolution, at that convolution's resolution), runs the layers on them
and writes its rows of the output. The image's top and bottom borders get the zero rows
the convolution's padding would add; interior strips are cut so that the convolutions
see only real rows. Only one strip's maps are alive at a time.

Every output element is the same dot product over the same inputs as in the whole-image
tail; with torch's CPU convolutions (oneDNN) the strips give the same bits as the whole
image (``tests/test_nlsn.py`` checks it), which is why strips are used on the CPU only:
other devices' convolution libraries may pick a different algorithm per shape.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["STRIP_BYTES", "MIN_STRIP_ROWS", "MIN_CONV_ELEMENTS", "tail_layers", "run_in_strips"]

#: A strip's largest map (one layer's output) stays near this many bytes. The strips'
#: convolution inputs then stay large, so torch runs them with the same (oneDNN)
#: convolution as the whole image, and the halo rows they recompute cost a few percent.
STRIP_BYTES = 128 * 2 ** 20
#: Strips are cut at least this many rows of the tail's input high (before evening out;
#: a very wide image's strips are then larger than STRIP_BYTES rather than mostly halo).
MIN_STRIP_ROWS = 8
#: Strips are cut so that their convolution inputs would hold at least this many elements
#: (they hold at least half as many, the strips being evened out). torch 2.x runs a
#: float32 3x3 convolution of batch 1 with its native kernel below 20480 input elements
#: and with oneDNN above; the two round differently, so a strip must stay on the whole
#: image's side of that line (the default STRIP_BYTES keeps strips far above it).
MIN_CONV_ELEMENTS = 2 ** 16


def _conv_ok(m: nn.Conv2d) -> bool:
    """A stride-1, undilated, ungrouped, zero-padded convolution with odd kernels and 'same'
    padding (k // 2): each output row depends on k // 2 input rows each side."""
    kh, kw = m.kernel_size
    return (
        m.stride == (1, 1) and m.dilation == (1, 1) and m.groups == 1 and m.padding_mode == "zeros"
        and isinstance(m.padding, tuple) and kh % 2 == 1 and kw % 2 == 1
        and m.padding == (kh // 2, kw // 2)
    )


def _has_hooks(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks)


def tail_layers(tail: nn.Module) -> list[nn.Module] | None:
    """tail's layers in order, out of nested ``nn.Sequential``s, when each is a 'same'-padded
    stride-1 ``Conv2d`` or a ``PixelShuffle`` and none has forward hooks (which a strip run
    would call once per strip); otherwise None."""
    if _has_hooks(tail):
        return None
    if isinstance(tail, nn.Sequential):
        layers: list[nn.Module] = []
        for child in tail:
            inner = tail_layers(child)
            if inner is None:
                return None
            layers += inner
        return layers
    if type(tail) is nn.Conv2d and _conv_ok(tail):
        return [tail]
    if type(tail) is nn.PixelShuffle:
        return [tail]
    return None


def _strip(layers, heights, x: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows [lo, hi) of the last layer's output, from x (all rows of the first layer's input).

    heights[i] is the height of layer i's input."""
    # Backwards: the rows of each layer's output that the strip needs.
    needed = [None] * len(layers)
    for i in reversed(range(len(layers))):
        needed[i] = (lo, hi)
        layer = layers[i]
        if isinstance(layer, nn.PixelShuffle):
            r = layer.upscale_factor
            lo, hi = lo // r, -(-hi // r)
        else:
            p = layer.padding[0]
            lo, hi = max(0, lo - p), min(heights[i], hi + p)
    # Forwards: cur holds rows [cur_lo, ...) of the current layer's input.
    cur, cur_lo = x[:, :, lo:hi], lo
    for i, layer in enumerate(layers):
        out_lo, out_hi = needed[i]
        if isinstance(layer, nn.PixelShuffle):
            r = layer.upscale_factor
            cur = F.pixel_shuffle(cur, r)[:, :, out_lo - cur_lo * r:out_hi - cur_lo * r]
        else:
            p = layer.padding[0]
            want_lo, want_hi = out_lo - p, out_hi + p  # the input rows, padding included
            have_lo, have_hi = max(0, want_lo), min(heights[i], want_hi)
            rows = cur[:, :, have_lo - cur_lo:have_hi - cur_lo]
            if have_lo != want_lo or have_hi != want_hi:  # the image's border: its zero rows
                rows = F.pad(rows, (0, 0, have_lo - want_lo, want_hi - have_hi))
            cur = F.conv2d(rows, layer.weight, layer.bias, padding=(0, layer.padding[1]))
        cur_lo = out_lo
    return cur


def run_in_strips(tail: nn.Module, x: torch.Tensor, strip_bytes: int | None = None) -> torch.Tensor | None:
    """``tail(x)`` computed a strip of rows at a time, or None when that does not apply: the
    tail is not made of convolutions and pixel shuffles (``tail_layers``), x is not a
    (N, C, H, W) CPU tensor, or one strip would hold the whole image (then ``tail(x)`` is
    as lean). ``strip_bytes``: a strip's largest map, default ``STRIP_BYTES``."""
    layers = tail_layers(tail)
    if layers is None or x.dim() != 4 or x.device.type != "cpu" or x.shape[0] == 0 or 0 in x.shape[2:]:
        return None
    n, _, h, w = x.shape
    heights, scale, widest, narrowest = [], 1, 0, None
    for layer in layers:
        heights.append(h * scale)
        if isinstance(layer, nn.PixelShuffle):
            scale *= layer.upscale_factor
        else:  # elements per pixel of the tail's input: the output's, and the input's
            widest = max(widest, layer.out_channels * scale * scale)
            narrowest = min(narrowest or layer.in_channels * scale * scale, layer.in_channels * scale * scale)
    if narrowest is None:  # pixel shuffles only
        return None
    budget = STRIP_BYTES if strip_bytes is None else strip_bytes
    rows = max(MIN_STRIP_ROWS, budget // max(1, n * widest * w * x.element_size()),
               -(-MIN_CONV_ELEMENTS // (n * narrowest * w)))
    if rows >= h:
        return None
    n_strips = -(-h // rows)
    bounds = [h * i // n_strips for i in range(n_strips + 1)]  # heights differ by 1 at most,
    out = None  # and each is more than rows / 2
    for r0, r1 in zip(bounds, bounds[1:]):
        part = _strip(layers, heights, x, r0 * scale, r1 * scale)
        if out is None:
            out = part.new_empty((n, part.shape[1], h * scale, w * scale))
        out[:, :, r0 * scale:r1 * scale] = part
        del part
    return out
