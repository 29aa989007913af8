"""NLSN as a spandrel architecture (needs the ``spandrel`` extra).

    import spandrel
    from nlsa_triton.integrations.spandrel import register

    register()                                   # once, before loading
    model = spandrel.ModelLoader().load_from_file("NLSN_x2.pt")   # an ImageModelDescriptor
    sr = model(image)                            # (1, 3, H, W) in [0, 1] -> (1, 3, 2H, 2W)

Detection keys on NLSN's own layout (an NLSA block's ``conv_match`` and ``conv_assembly``
opening the body, see ``models.checkpoint.is_nlsn_state_dict``), never on the EDSR keys
NLSN shares with EDSR and its descendants. Loading is ``NLSN.from_state_dict``: the
checkpoint's scale and rgb_range, the paper's n_hashes / chunk_size / res_scale, and
backend "auto", so a model moved to CUDA runs the Triton kernels.

What the descriptor declares:

- purpose "SR", scale from the checkpoint, 3 channels in and out, no size requirements
  (NLSA takes any H x W).
- tiling DISCOURAGED: the attention is non-local, each pixel attends to pixels anywhere in
  the image, so tiles change the result (and NLSA's memory is linear in the pixels).
- supports_half and supports_bfloat16 True. Measured on the CPU, the only device this was
  written on, with random weights and rgb_range 1 and 255: float16 (the Triton kernels in
  Triton's interpreter, and the torch path) stays within 0.2 of an 8-bit level of float32,
  bfloat16 (the torch path) within 1.2 levels, about what its 8-bit mantissa alone costs
  near full scale. Outputs stay finite; the kernels accumulate in float32 for both.
  ``tests/test_spandrel.py`` re-measures it on every run. Trained weights and a GPU were
  not measured.

spandrel calls the model without a generator, so every call draws fresh LSH rotations from
torch's global generator, as NLSN does: seed it (``torch.manual_seed``) for repeatable output.
"""
from __future__ import annotations

import torch

try:
    from spandrel import (
        MAIN_REGISTRY,
        Architecture,
        ArchRegistry,
        ArchSupport,
        ImageModelDescriptor,
        ModelTiling,
        StateDict,
        UnsupportedModelError,
    )
except (ImportError, RuntimeError) as e:  # RuntimeError: a torchvision built for another torch
    raise ImportError(
        f"nlsa_triton.integrations.spandrel needs spandrel, which could not be imported ({e}). spandrel "
        f"imports torchvision, which must be the build made for your torch ({torch.__version__}); "
        "docs/spandrel.md gives the install commands for CPU machines (PyTorch's CPU index, "
        "--index-url https://download.pytorch.org/whl/cpu) and CUDA machines"
    ) from e

from ..models import NLSN
from ..models.checkpoint import is_edsr_layout, is_nlsn_state_dict

__all__ = ["ARCH_ID", "NLSNArch", "EDSRWithoutNLSA", "register"]

ARCH_ID = "NLSN"
#: The id of the entry that explains an EDSR checkpoint instead of spandrel's bare error.
EDSR_ID = "NLSN:EDSR-without-NLSA"


class NLSNArch(Architecture[NLSN]):
    """spandrel's description of NLSN: how to recognise its state dicts and load them."""

    def __init__(self) -> None:
        super().__init__(id=ARCH_ID, name="NLSN", detect=is_nlsn_state_dict)

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[NLSN]:
        model = NLSN.from_state_dict(state_dict)
        return ImageModelDescriptor(
            model,
            model.state_dict(),  # the descriptor loads this into the model: a no-op copy
            architecture=self,
            purpose="SR",
            tags=[f"{model.n_feats}nf", f"{model.n_resblocks}nb"],
            supports_half=True,
            supports_bfloat16=True,
            scale=model.scale,
            input_channels=model.n_colors,
            output_channels=model.n_colors,
            tiling=ModelTiling.DISCOURAGED,
            call_fn=_call,
        )


class EDSRWithoutNLSA(Architecture[NLSN]):
    """Not a model: an entry, after every other, that recognises EDSR's layout (NLSN's head,
    residual blocks, tail and mean shifts) without an NLSA block, and refuses it with a
    message. Without it spandrel, which has no EDSR, raises UnsupportedModelError with an
    empty message; an architecture that does load such a file (a later spandrel's EDSR)
    comes earlier in the registry and takes it first."""

    def __init__(self) -> None:
        super().__init__(id=EDSR_ID, name="EDSR (not NLSN)",
                         detect=lambda sd: is_edsr_layout(sd) and not is_nlsn_state_dict(sd))

    def load(self, state_dict: StateDict) -> ImageModelDescriptor[NLSN]:
        raise UnsupportedModelError(
            "this is an EDSR checkpoint (head, residual blocks, upsampler tail, mean shifts) without an "
            "NLSA block, so not NLSN (whose body opens with one: body.0.conv_match.0.weight); "
            "spandrel has no EDSR architecture to load it"
        )


def _call(model: NLSN, image: torch.Tensor) -> torch.Tensor:
    """spandrel's images are in [0, 1]; NLSN's in [0, rgb_range] (1 for the authors' models)."""
    if model.rgb_range == 1:
        return model(image)
    return model(image * model.rgb_range) / model.rgb_range


def register(registry: ArchRegistry = MAIN_REGISTRY) -> ArchSupport:
    """Add NLSN to ``registry`` (by default spandrel's main registry, which every
    ``ModelLoader()`` without a registry of its own uses) and return its entry.

    Also added, last: ``EDSRWithoutNLSA``, which turns spandrel's empty
    UnsupportedModelError for an EDSR checkpoint into one that says what the file is.

    Calling it again changes nothing; if the registry already knows an architecture with
    the id "NLSN" (a later spandrel may ship one), that one is kept and returned.
    """
    if registry.get(EDSR_ID) is None:
        registry.add(ArchSupport.from_architecture(EDSRWithoutNLSA()))
    known = registry.get(ARCH_ID)
    if known is not None:
        return known
    support = ArchSupport.from_architecture(NLSNArch())
    registry.add(support)
    return support
