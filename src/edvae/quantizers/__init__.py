"""Quantizers by name. A new method is one new file, its import here and its class in QUANTIZERS."""

from __future__ import annotations

from .base import Quantizer, QuantizerOutput
from .evidential import EvidentialQuantizer
from .fsq import FSQQuantizer
from .gm_vq import GMVQQuantizer
from .gumbel import GumbelQuantizer
from .gumbel_vq import GumbelVQQuantizer
from .ibq import IBQQuantizer
from .lfq import LFQQuantizer
from .simvq import SimVQQuantizer
from .sq import SQQuantizer
from .vq_ema import EMAVQQuantizer
from .vq_ste import STEVQQuantizer

QUANTIZERS: dict[str, type[Quantizer]] = {cls.name: cls for cls in (
    EvidentialQuantizer, GumbelQuantizer, GumbelVQQuantizer, SQQuantizer, EMAVQQuantizer, STEVQQuantizer,
    GMVQQuantizer, FSQQuantizer, LFQQuantizer, SimVQQuantizer, IBQQuantizer,
)}

__all__ = ["QUANTIZERS", "Quantizer", "QuantizerOutput", "build_quantizer"]


def build_quantizer(name: str, codebook_size: int, codebook_dim: int, **options) -> Quantizer:
    try:
        cls = QUANTIZERS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(QUANTIZERS))}") from None
    return cls(codebook_size, codebook_dim, **options)
