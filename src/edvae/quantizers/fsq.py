"""FSQ: finite scalar quantization.

Mentzer, Minnen, Agustsson, Tschannen, "Finite Scalar Quantization: VQ-VAE Made Simple"
(ICLR 2024, arXiv 2309.15505): the method and its table of recommended levels per codebook size;
the bounding function as in the authors' public reference code.

The encoder emits d = codebook_dim channels, one per entry of `levels` (L_1, ..., L_d). Each channel
is bounded to L_i levels and rounded, with a straight-through gradient through the rounding:
    half_l = (L - 1) (1 + eps) / 2,  offset = 0.5 if L is even else 0,  shift = atanh(offset / half_l)
    bound(z) = tanh(z + shift) * half_l - offset
    z_q = round(bound(z)) / floor(L / 2)
For odd L the rounded values are -(L-1)/2 ... (L-1)/2; for even L the half-step shift makes them
-L/2 ... L/2 - 1 (e.g. L = 4: -2, -1, 0, 1), and z_q lies in [-1, 1]. eps = 1e-3 is the
reference code's. The implicit codebook is the grid of prod(L_i) points: no codebook parameters, no
auxiliary loss (`loss` is 0), no EMA, nothing reduced across data-parallel ranks.

Index of a code: digit_i = round(bound(z_i)) + floor(L_i / 2) in 0 ... L_i - 1, index =
sum_i digit_i * prod_{j < i} L_j (the first channel varies fastest, as in the reference code).

Defaults: `levels` empty takes the levels of the paper's table for the codebook size. The table's
rows are for the target sizes 2^8 ... 2^16, which its levels form only approximately
(8,6,5 = 240; 8,5,5,5 = 1000; 7,5,5,5,5 = 4375; 8,8,8,6,5 = 15360; 8,8,8,5,5,5 = 64000); here
the codebook size must be formed exactly, so those are the sizes the defaults serve, plus
8,8,8 = 512 (the EdVAE paper's codebook size; not a row of the table, levels of 8 as in its
larger rows). Any other size needs `levels` (e.g. "8,8,4" for 256), and codebook_dim must equal
the number of levels.
"""

from __future__ import annotations

import math

import torch

from .base import Quantizer, QuantizerOutput, check_option, unflatten

BOUND_EPS = 1e-3  # the reference code's eps in bound()

# codebook size -> default levels (Mentzer et al. 2024's table, plus 512 = 8,8,8: see above)
DEFAULT_LEVELS: dict[int, tuple[int, ...]] = {
    240: (8, 6, 5), 512: (8, 8, 8), 1000: (8, 5, 5, 5), 4375: (7, 5, 5, 5, 5),
    15360: (8, 8, 8, 6, 5), 64000: (8, 8, 8, 5, 5, 5),
}


def _text(levels: tuple[int, ...]) -> str:
    return ",".join(map(str, levels))


def resolve_levels(levels: str, codebook_size: int, codebook_dim: int) -> tuple[int, ...]:
    """The levels for this codebook: parsed from `levels`, or the default for the size. ValueError
    (one line) when the size cannot be formed or codebook_dim is not the number of levels."""
    text = str(levels).strip()
    if not text:
        if codebook_size not in DEFAULT_LEVELS:
            near = sorted(DEFAULT_LEVELS, key=lambda s: (abs(s - codebook_size), s))[:2]
            named = " and ".join(f"{s} (levels {_text(DEFAULT_LEVELS[s])})" for s in sorted(near))
            raise ValueError(f"fsq's default levels cannot form codebook_size {codebook_size} exactly: "
                             f"the nearest sizes they form are {named}; use one of those or set "
                             f"levels to comma-separated integers >= 2 whose product is {codebook_size}")
        parsed = DEFAULT_LEVELS[codebook_size]
    else:
        try:
            parsed = tuple(int(p) for p in text.split(","))
        except ValueError:
            parsed = ()
        check_option("levels", levels, bool(parsed) and min(parsed) >= 2,
                     "must be comma-separated integers >= 2 (e.g. '8,8,8')")
        size = math.prod(parsed)
        if size != codebook_size:
            raise ValueError(f"fsq levels {_text(parsed)} form {size} codes, not codebook_size "
                             f"{codebook_size}: set codebook_size={size} or levels whose product is "
                             f"{codebook_size}")
    if codebook_dim != len(parsed):
        raise ValueError(f"fsq needs codebook_dim equal to the number of levels: {len(parsed)} for "
                         f"levels {_text(parsed)}, got codebook_dim {codebook_dim}")
    return parsed


class FSQQuantizer(Quantizer):
    name = "fsq"
    learned_codebook = False  # fixed codes: nothing for K-means to set

    def __init__(self, codebook_size: int, codebook_dim: int, eval_mode: str = "argmax",
                 levels: str = ""):  # empty: the paper's table for this size (see the docstring)
        super().__init__(codebook_size, codebook_dim, eval_mode)
        self.levels = resolve_levels(levels, codebook_size, codebook_dim)
        lv = torch.tensor(self.levels, dtype=torch.float64)
        half_l = (lv - 1) * (1 + BOUND_EPS) / 2
        offset = (lv.remainder(2) == 0).double() * 0.5
        basis = torch.cumprod(torch.tensor((1, *self.levels[:-1]), dtype=torch.int64), 0)
        # constants derived from the options: not saved (persistent=False), moved with the module
        self.register_buffer("_half_l", half_l.float(), persistent=False)
        self.register_buffer("_offset", offset.float(), persistent=False)
        self.register_buffer("_shift", torch.atanh(offset / half_l).float(), persistent=False)
        self.register_buffer("_half_width", (lv // 2).float(), persistent=False)
        self.register_buffer("_levels", lv.long(), persistent=False)
        self.register_buffer("_basis", basis, persistent=False)

    def bound(self, flat: torch.Tensor) -> torch.Tensor:
        """(N, d) -> (N, d) in (-half_l - offset, half_l - offset), float32."""
        return torch.tanh(flat + self._shift) * self._half_l - self._offset

    def _index(self, rounded: torch.Tensor) -> torch.Tensor:
        """Rounded bounded values (N, d) -> code indices (N,) int64."""
        digits = (rounded + self._half_width).long()
        return (digits * self._basis).sum(1)

    def forward(self, z_e: torch.Tensor, temperature: float = 1.0,
                beta: float = 0.0) -> QuantizerOutput:
        """temperature and beta are not used (no KL term, nothing sampled)."""
        flat, shape = self._rows(z_e)
        with torch.autocast(device_type=flat.device.type, enabled=False):
            bounded = self.bound(flat)
            rounded = bounded.detach().round()
            # value round(bound(z)) / floor(L/2) exactly; gradient through bound (straight-through)
            z_q = (rounded + (bounded - bounded.detach())) / self._half_width
            indices = self._index(rounded).view(shape) if self.reports else None
        return QuantizerOutput(z_q=unflatten(z_q, shape), loss=flat.new_zeros(()), indices=indices, stats={})

    @torch.no_grad()
    def codes(self, z_e: torch.Tensor) -> torch.Tensor:
        flat, shape = self._rows(z_e)
        with torch.autocast(device_type=flat.device.type, enabled=False):
            return self._index(self.bound(flat).round()).view(shape)

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> the grid points (B, d, h, w) in [-1, 1]."""
        digits = (indices.long().unsqueeze(-1) // self._basis) % self._levels  # (B, h, w, d)
        return ((digits.float() - self._half_width) / self._half_width).permute(0, 3, 1, 2)

    def grid(self) -> torch.Tensor:
        """Every code's point (K, d), in index order."""
        k = torch.arange(self.codebook_size, device=self._basis.device)
        return self.embed(k.view(1, 1, -1))[0, :, 0].t()
