"""Numeric precision, chosen in one place.

With bf16 units (avx512_bf16 or AMX on CPU, any recent GPU) bf16 autocast measured 1.3-3.4x
faster than fp32 here; on an AVX2-only CPU bf16 is emulated and measured 7x *slower*, and
its rounding moves results (a TSTR ratio by 0.09). So "auto" means bf16 only where the
hardware runs it natively, and every autocast in medsynth goes through `autocast` below,
which asks `resolve_precision`: nothing turns bf16 on by itself.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

HALF = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16, "16-mixed": torch.float16}


def native_bf16() -> bool:
    """Whether this CPU runs bf16 in hardware (avx512_bf16 or AMX tiles). MEDSYNTH_NATIVE_BF16=0
    (or 1) overrides the detection, e.g. to run the test suite as an AVX2-only CPU would."""
    forced = os.environ.get("MEDSYNTH_NATIVE_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    return bool(torch.cpu._is_avx512_bf16_supported() or amx())


def resolve_precision(precision: str = "auto", accelerator: str = "auto") -> str:
    """A Lightning precision string for `precision` on `accelerator` ("auto", "cpu", "gpu", "cuda").

    "auto": bf16-mixed where the hardware runs bf16 natively (16-mixed on a GPU without it), else "32".
    Any other value is returned as given."""
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if native_bf16() else "32"


def weights_dtype(precision: str) -> torch.dtype:
    """The dtype a run trained with trainer.precision=`precision` stores its weights in: bf16 under
    "bf16-true" (Lightning casts the whole module), float32 otherwise (mixed precision, and "auto",
    which resolves to mixed or 32, keep float32 weights)."""
    return torch.bfloat16 if precision == "bf16-true" else torch.float32


def precision_for(device: torch.device | str, precision: str = "auto") -> str:
    """resolve_precision for a torch device ("cpu", "cuda:0", ...)."""
    return resolve_precision(precision, "cpu" if torch.device(device).type == "cpu" else "gpu")


def autocast(device: torch.device | str, precision: str = "auto"):
    """The autocast context for `precision` (resolved for `device`); a no-op context for fp32."""
    device = torch.device(device)
    half = HALF.get(precision_for(device, precision))
    if half is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=half)
