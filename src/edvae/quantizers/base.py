"""The one contract every quantizer keeps, so trainer, evaluator and tokenizer never ask which
method they hold: z_e (B, C_q, h, w) -> QuantizerOutput."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor  # (B, D, h, w), what the decoder reads
    loss: torch.Tensor  # scalar: the weighted regulariser, added to the reconstruction loss
    # (B, h, w) int64: the codes chosen (sampled in training); may be None in a training step
    # with reporting off
    indices: torch.Tensor | None
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # scalar tensors to log


def check_option(name: str, value: Any, ok: bool, requirement: str) -> None:
    """The one check of a quantizer option's value: `ok`, or
    ValueError("option NAME REQUIREMENT, got VALUE")."""
    if not ok:
        raise ValueError(f"option {name} {requirement}, got {value!r}")


def check_weights(**weights: Any) -> None:
    """Each option (a loss weight) a finite number >= 0, or check_option's ValueError."""
    for name, value in weights.items():
        check_option(name, value, isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                     "must be a number >= 0")


def check_codebook_shape(vectors: torch.Tensor, codebook: torch.Tensor) -> None:
    """init_codebook's check: one vector per codeword, of the codewords' dimension."""
    if tuple(vectors.shape) != tuple(codebook.shape):
        raise ValueError(f"init_codebook expects {tuple(codebook.shape)} vectors, got {tuple(vectors.shape)}")


def flatten(z: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B*h*w, D), positions in (b, y, x) order."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def unflatten(flat: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """(B*h*w, D) -> (B, D, h, w), with shape = (B, h, w)."""
    return flat.view(*shape, flat.shape[1]).permute(0, 3, 1, 2)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """A finite int or float (not a bool, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


OPTION_TYPES = {"float": float, "int": int, "bool": bool, "str": str}


class Quantizer(nn.Module):
    """Base class. Subclasses set `name` and implement forward, codes and embed (unless the rows of
    `self.codebook` are the decoder's input).

    `logit_input` quantizers (EdVAE, dVAE) read K channels of logits; the others read D channels.
    Every method reads z_e through `_features` (or `_rows`): one shape check, then float32.
    Schedules (temperature, beta) are passed in by the caller as functions of the global step:
    a quantizer keeps no hidden step counter, so a resumed run continues exactly.

    Options are the keyword parameters of a subclass's `__init__` after `eval_mode`, each with a
    default and a plain annotation (float, int, bool, str): `option_types` reads them, so that the
    config layer coerces and refuses values before anything is built; `__init__` checks their
    ranges with `check_option`.
    """

    name: ClassVar[str] = ""
    logit_input: ClassVar[bool] = False
    # whether init_codebook can set learned codewords (the pretrain recipe); FSQ's and LFQ's are fixed
    learned_codebook: ClassVar[bool] = True
    # the paper's upper bound of the beta ramp; 0: no KL term, the trainer's beta is ignored
    default_beta_max: ClassVar[float] = 0.0
    eval_modes: ClassVar[tuple[str, ...]] = ("argmax",)  # "sample": codes drawn from the posterior
    # The trainer turns this off on steps whose metrics it does not log. A quantizer may then skip
    # work that only feeds reports: a training step's indices and stats, and the value (never the
    # gradient) of its regulariser, so `loss` keeps its exact gradient but its value may be 0.
    reporting: bool = True

    def __init__(self, codebook_size: int, codebook_dim: int, eval_mode: str = "argmax"):
        super().__init__()
        if codebook_size < 2 or codebook_dim < 1:
            raise ValueError(f"codebook must be at least 2 x 1, got {codebook_size} x {codebook_dim}")
        check_option("eval_mode", eval_mode, eval_mode in self.eval_modes,
                     f"must be one of {self.eval_modes} for {self.name}")
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.eval_mode = eval_mode
        self._flags_seen: set[str] = set()

    @classmethod
    def option_types(cls) -> dict[str, type]:
        """{option: its type}, from the annotations of `__init__` (the annotations are strings)."""
        out = {}
        for p in inspect.signature(cls.__init__).parameters.values():
            if p.name in ("self", "codebook_size", "codebook_dim", "eval_mode"):
                continue
            kind = OPTION_TYPES.get(str(p.annotation))
            if kind is None:
                raise TypeError(f"{cls.__name__}.{p.name}: options are float, int, bool or str")
            out[p.name] = kind
        return out

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        """{option: its default value}, from the signature of `__init__`."""
        params = inspect.signature(cls.__init__).parameters
        return {name: params[name].default for name in cls.option_types()}

    def is_flag_set(self, name: str) -> bool:
        """Whether the 0/1 buffer `name` (e.g. `kmeans_done`) is set. A set flag is read from the
        device once and then remembered, so the steps after it cost no host synchronisation;
        loading a state dict forgets what was read."""
        if name not in self._flags_seen and bool(getattr(self, name)):
            self._flags_seen.add(name)
        return name in self._flags_seen

    def set_flag(self, name: str) -> None:
        """Set the 0/1 buffer `name`, and remember it set."""
        getattr(self, name).fill_(1)
        self._flags_seen.add(name)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        self._flags_seen.clear()
        super()._load_from_state_dict(*args, **kwargs)

    @property
    def input_channels(self) -> int:
        return self.codebook_size if self.logit_input else self.codebook_dim

    @property
    def reports(self) -> bool:
        """Whether this pass returns its indices and stats: always in evaluation, in training
        when `reporting` is on."""
        return self.reporting or not self.training

    def _features(self, z_e: torch.Tensor) -> torch.Tensor:
        """z_e, checked to be (B, input_channels, h, w), in float32: the numerics run in float32
        even under autocast."""
        c = self.input_channels
        if z_e.dim() != 4 or z_e.shape[1] != c:
            kind = "logits" if self.logit_input else "features"
            raise ValueError(f"expected {kind} (B, {c}, h, w), got {tuple(z_e.shape)}")
        return z_e.float()

    def _rows(self, z_e: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """`_features(z_e)` as rows (B*h*w, C), and (B, h, w) to `unflatten` them."""
        z = self._features(z_e)
        return flatten(z), (z.shape[0], z.shape[2], z.shape[3])

    def forward(self, z_e: torch.Tensor, temperature: float = 1.0,
                beta: float = 0.0) -> QuantizerOutput:
        raise NotImplementedError

    def codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """Deterministic codes (B, h, w) for tokenizing."""
        raise NotImplementedError

    def embed(self, indices: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> decoder input (B, D, h, w); by default the rows of `self.codebook`."""
        return self.codebook[indices].permute(0, 3, 1, 2)

    def eval_codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """The codes of an evaluation forward pass: `codes`, or drawn from the posterior with
        eval_mode 'sample' (EdVAE's Algorithm 2)."""
        return self.sample_codes(z_e) if self.eval_mode == "sample" else self.codes(z_e)

    def probabilities(self, z_e: torch.Tensor) -> torch.Tensor | None:
        """(B, K, h, w) float32 probabilities over codes, or None for a method without them."""
        return None

    def sample_codes(self, z_e: torch.Tensor, generator: torch.Generator | None = None):
        """Codes (B, h, w) drawn from Cat(probabilities), or None without probabilities."""
        p = self.probabilities(z_e)
        if p is None:
            return None
        drawn = torch.multinomial(flatten(p), 1, generator=generator)
        return drawn.view(p.shape[0], p.shape[2], p.shape[3])

    def uncertainty(self, z_e: torch.Tensor) -> torch.Tensor | None:
        """(B, h, w) uncertainty per position (EdVAE's K / S), or None."""
        return None

    def set_image_shape(self, channels: int, height: int, width: int) -> None:
        """Told by DiscreteVAE what images the model reads (SQ-VAE divides its terms by the
        number of pixel values); nothing by default."""

    @torch.no_grad()
    def init_codebook(self, vectors: torch.Tensor) -> None:
        """Set the K codewords to `vectors` (K, D), e.g. K-means centres of encoder outputs
        (train.pretrain_steps, kmeans.py). This default copies them into `self.codebook` (GS-VQ,
        SQ-VAE); a quantizer with more codebook state overrides it, one without a codebook of
        D-dimensional codewords that the encoder's outputs live beside (logit_input) refuses."""
        codebook = getattr(self, "codebook", None)
        if self.logit_input or not self.learned_codebook or not isinstance(codebook, torch.Tensor):
            raise ValueError(f"{self.name} has no codebook that encoder outputs can initialise")
        check_codebook_shape(vectors, codebook)
        codebook.copy_(vectors.to(codebook.dtype))

    def reconstruction_loss(self, x_hat: torch.Tensor, x: torch.Tensor,
                            mse: torch.Tensor | None = None) -> torch.Tensor:
        """The reconstruction term of the training loss (the trainer adds `out.loss` to it): the
        per-pixel MSE in float32 (`mse` when the caller has it already: the trainer computes it
        once per step). A method whose objective has another likelihood term (SQ-VAE's 'arelbo')
        overrides this."""
        return nn.functional.mse_loss(x_hat.float(), x.float()) if mse is None else mse


def one_hot_channels(indices: torch.Tensor, k: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, h, w) int64 -> (B, K, h, w) one-hot."""
    return nn.functional.one_hot(indices, k).permute(0, 3, 1, 2).to(dtype)


# exp(-87) is just above float32's smallest normal number (exp(-87.3))
LOG_PROB_FLOOR = -87.0


def probs_from_log(log_p: torch.Tensor) -> torch.Tensor:
    """exp(log_p) with log_p floored at -87. On CPUs, exp takes a scalar slow path (about 100x
    slower) for results below the smallest normal float, which peaked softmaxes produce by the
    million; probabilities that small (< 2e-38) change no sum they enter."""
    return log_p.clamp_min(LOG_PROB_FLOOR).exp()


def gumbel_noise_like(x: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise, -log(-log U), with U kept away from 0 and 1."""
    u = torch.rand_like(x).clamp_(1e-10, 1.0 - 1e-7)
    return u.log_().neg_().log_().neg_()
