"""Draw NLSA's attention maps for one query pixel of an image (Figure 1 of the NLSN paper).

NLSN's supplementary material (section 3) visualises, for one chosen point of an image,
the attention of each hash round and of the combined attention. This script draws the
same panels with ``nlsa_triton.attention_maps``: the image with the query marked, one
panel per hash round (the softmax weights over that round's candidates, i.e. the query's
chunk and its two neighbouring chunks in the round's bucket order), and the combined map
(the weights with which ``nlsa`` forms the query's output). It writes a PNG (matplotlib,
Agg backend) and runs on CPU in a few seconds at the default 128 x 128.

The match embedding. NLSN computes it with a learned 3x3 conv (``conv_match``) inside a
trained super-resolution network; no trained weights are available offline, and an
untrained conv is just a random linear map of the same 3x3 neighbourhood. So the embedding
here is the most transparent fixed choice: each pixel's 3x3 RGB neighbourhood
(27 values, zero padding at the border) minus the image's mean colour, so that similar
local patches, wherever they are in the image, have similar embeddings. NLSA has no
1/sqrt(d) scale, so the size of the embedding is the softmax's inverse temperature; the
embedding is scaled so that the median pixel norm is ``--sharpness`` (default 6), standing
in for the gain a trained conv would have learned. Hash rotations come from a seeded
``torch.Generator`` (``--seed``), so the figure is reproducible.

Usage:
    python examples/attention_maps_figure.py                   # the README's figure
    python examples/attention_maps_figure.py --synthetic       # synthetic test image
    python examples/attention_maps_figure.py photo.jpg --query 40 52 -o out.png

With no image path, the photograph is matplotlib's sample ``grace_hopper.jpg`` (it ships
with matplotlib, so the figure needs no download), centre-cropped to a square, and the
query sits on a white star of the flag behind her: the maps should find the other stars
and other white patches, not the pixels near the query. That is the content-based,
non-local sparsity the paper argues for (criss-cross attention, by contrast, would see
only the query's row and column). The figure goes to ``docs/images/attention_maps.png``,
the README's image.

``--synthetic`` generates an image instead: a sky gradient, several identical red discs,
a patch of diagonal stripes and a checkerboard, the query at the centre of one disc.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from matplotlib.cbook import get_sample_data  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import nlsa_triton as nt  # noqa: E402

README_FIGURE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "images" / "attention_maps.png"
SAMPLE_PHOTO = "grace_hopper.jpg"
# The centre of a flag star in the square crop of the sample photo, as fractions of its side.
SAMPLE_QUERY = (0.086, 0.133)
DISC_CENTRES = [(18, 14), (22, 50), (50, 30), (70, 78), (44, 64), (84, 40)]
DISC_RADIUS = 6


def synthetic_image(size: int = 96) -> np.ndarray:
    """(size, size, 3) float image in [0, 1] with repeated structures (no randomness)."""
    s = size / 96
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    img = np.empty((size, size, 3))
    t = yy / max(size - 1, 1)
    img[..., 0] = 0.55 + 0.35 * t  # sky gradient: light blue at the top to pale at the bottom
    img[..., 1] = 0.70 + 0.20 * t
    img[..., 2] = 0.95 - 0.10 * t
    stripes = (yy > 60 * s) & (xx < 26 * s)  # diagonal dark-blue stripes, bottom left
    img[stripes & (((xx + yy) // (4 * s)) % 2 == 0)] = (0.10, 0.15, 0.45)
    checker = (yy < 30 * s) & (xx > 68 * s)  # checkerboard, top right
    dark = ((xx // (5 * s)) + (yy // (5 * s))) % 2 == 0
    img[checker & dark] = (0.15, 0.45, 0.15)
    img[checker & ~dark] = (0.95, 0.85, 0.30)
    for cy, cx in DISC_CENTRES:  # identical red discs
        disc = (yy - cy * s) ** 2 + (xx - cx * s) ** 2 <= (DISC_RADIUS * s) ** 2
        img[disc] = (0.85, 0.12, 0.10)
    return img


def load_image(path, size: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        side = min(im.size)  # centre crop to a square, then resize
        left, top = (im.width - side) // 2, (im.height - side) // 2
        im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
        return np.asarray(im, dtype=np.float64) / 255.0


def patch_embedding(img: np.ndarray, sharpness: float) -> torch.Tensor:
    """(1, H*W, 27): each pixel's 3x3 RGB neighbourhood minus the mean colour, scaled so
    that the median pixel norm is ``sharpness`` (NLSA's softmax has no other temperature)."""
    t = torch.from_numpy(img).permute(2, 0, 1).unsqueeze(0).float()  # (1, 3, H, W)
    t = t - t.mean(dim=(2, 3), keepdim=True)
    x = F.unfold(t, kernel_size=3, padding=1).transpose(1, 2)  # (1, L, 27)
    median = x.norm(dim=-1).median().clamp_min(1e-6)
    return x * (sharpness / median)


def draw(img, maps, query, n_hashes, output, title):
    h, w = img.shape[:2]
    qh, qw = query
    panels = n_hashes + 2
    rows = 1 if panels <= 4 else 2  # two rows keep the panels legible at README width
    cols = -(-panels // rows)
    fig, grid = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.0 * rows + 0.6), constrained_layout=True,
                             squeeze=False)
    axes = grid.ravel()
    for ax in axes[panels:]:
        ax.set_visible(False)
    axes = axes[:panels]
    axes[0].imshow(img, interpolation="nearest")
    axes[0].set_title("image and query")
    for r in range(n_hashes + 1):
        m = maps[r].reshape(h, w)
        ax = axes[r + 1]
        ax.imshow(img.mean(axis=2), cmap="gray", vmin=0, vmax=1.6, interpolation="nearest")
        shown = np.ma.masked_where(m <= 0, m)
        im = ax.imshow(shown, cmap="inferno", norm=PowerNorm(0.5, vmin=0, vmax=float(m.max())),
                       interpolation="nearest")
        support = int((m > 0).sum())
        name = f"round {r + 1}" if r < n_hashes else "combined"
        ax.set_title(f"{name}: {support} px\nmax weight {m.max():.3f}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    for ax in axes:
        ax.plot([qw], [qh], marker="+", color="cyan", markersize=12, markeredgewidth=2)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    plt.close(fig)


def main(argv=None) -> pathlib.Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("image", nargs="?", help=f"PNG/JPEG image (default: matplotlib's sample {SAMPLE_PHOTO})")
    parser.add_argument("--synthetic", action="store_true", help="draw on a generated test image instead")
    parser.add_argument("-o", "--output", type=pathlib.Path,
                        help="PNG to write (default: docs/images/attention_maps.png for the sample "
                             "photo, ./attention_maps_<image name>.png otherwise)")
    parser.add_argument("--size", type=int, default=128, help="side of the (square) image in pixels")
    parser.add_argument("--query", type=int, nargs=2, metavar=("ROW", "COL"),
                        help="query pixel (default: a flag star of the sample photo, a red disc's "
                             "centre of the synthetic image, the centre of any other image)")
    parser.add_argument("--n-hashes", type=int, default=4)
    parser.add_argument("--chunk-size", type=int, default=144)
    parser.add_argument("--sharpness", type=float, default=6.0,
                        help="median norm of the match embedding (softmax inverse temperature)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the hash rotations")
    args = parser.parse_args(argv)
    if args.size < 3:
        parser.error("--size must be >= 3")
    if args.synthetic and args.image:
        parser.error("give an image or --synthetic, not both")

    start = time.perf_counter()
    if args.synthetic:
        img = synthetic_image(args.size)
        cy, cx = DISC_CENTRES[2]
        default_query = (round(cy * args.size / 96), round(cx * args.size / 96))
        source, output = "synthetic image", pathlib.Path("attention_maps_synthetic.png")
    elif args.image:
        img = load_image(args.image, args.size)
        default_query = (args.size // 2, args.size // 2)
        name = pathlib.Path(args.image)
        source, output = f"image {name.name}", pathlib.Path(f"attention_maps_{name.stem}.png")
    else:
        img = load_image(get_sample_data(SAMPLE_PHOTO, asfileobj=False), args.size)
        default_query = (round(SAMPLE_QUERY[0] * args.size), round(SAMPLE_QUERY[1] * args.size))
        source, output = f"photograph {SAMPLE_PHOTO} (matplotlib's sample data)", README_FIGURE
    query = tuple(args.query) if args.query else default_query
    output = args.output or output
    h, w = img.shape[:2]
    if not (0 <= query[0] < h and 0 <= query[1] < w):
        parser.error(f"--query must lie in the {h} x {w} image, got {query}")

    x = patch_embedding(img, args.sharpness)
    maps = nt.attention_maps(
        x, query[0] * w + query[1], n_hashes=args.n_hashes, chunk_size=args.chunk_size,
        generator=torch.Generator().manual_seed(args.seed),
    )[0].numpy()
    title = (f"NLSA attention for query (row {query[0]}, col {query[1]}, cyan +) of the {source},\n"
             f"{h}x{w}: {args.n_hashes} hash rounds, chunk {args.chunk_size}, "
             f"{nt.num_buckets(h * w, args.chunk_size)} buckets, 3x3 RGB patch embedding "
             f"(seed {args.seed}).\nColoured: candidates of the query, by weight "
             f"(square-root scale; px = distinct candidate pixels); grey: not a candidate.")
    draw(img, maps, query, args.n_hashes, output, title)
    print(f"wrote {output} in {time.perf_counter() - start:.2f} s")
    return output


if __name__ == "__main__":
    main()
