"""msloss for PyTorch: the multiphase Mumford–Shah loss as a differentiable function.

::

    from msloss.torch import MumfordShahLoss
    loss = MumfordShahLoss(lam=1e-3)(logits, image)   # logits (B, N, H, W), image (B, C, H, W)
    loss.backward()

The backward pass returns msloss's analytic gradient, computed in Rust together with the energy
in the forward pass (no autograd of a Python re-implementation).

Devices and copies:

- contiguous CPU tensors of float32 or float64 are handed to Rust without a copy;
- non-contiguous tensors are made contiguous first (a copy);
- tensors on other devices (CUDA, MPS, ...) are copied to the host for the computation, and the
  loss and the gradient are copied back to the scores' device. msloss has no GPU path for
  PyTorch tensors: on a GPU this costs a device-to-host copy of the scores and the image and a
  host-to-device copy of the gradient at every step, and a synchronisation. No warning is
  printed about it; this paragraph is the notice.

Dtypes (AMP): float16 and bfloat16 scores are computed in float32; the gradient is returned in
the scores' dtype, the loss in float32 (a sum over an image can exceed float16's range).
float32 and float64 scores are computed in their own dtype, and the image is cast to it.

The mask may be bool, integer or float (values 0 and 1). The image gets no gradient: passing an
image that requires grad raises ``ValueError`` (pass ``image.detach()``).

The gradient is computed in the forward pass (fused with the energy) and handed to autograd in the
backward without a copy; a second backward through the same loss (``retain_graph=True``) computes
it again. The inputs' host tensors are kept until the backward (on the CPU they are the inputs
themselves), and autograd reports an in-place change of the scores made before the backward.

This module imports ``torch``; ``import msloss`` alone needs only NumPy.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from . import _msloss

__all__ = ["MumfordShahLoss", "mumford_shah_loss"]

_COMPUTE_DTYPE = {
    torch.float32: torch.float32,
    torch.float64: torch.float64,
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
}

def _host(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as a contiguous CPU tensor of ``dtype``: ``t`` itself (no copy) when it already is one."""
    t = t.detach()
    if t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous():
        return t
    return t.to(device="cpu", dtype=dtype).contiguous()


def _host_mask(m: torch.Tensor, compute: torch.dtype) -> torch.Tensor:
    m = m.detach()
    if m.is_floating_point() and m.dtype not in (torch.float32, torch.float64):
        m = m.to(compute)  # float16/bfloat16 have no NumPy view
    return m.to(device="cpu").contiguous()


def _energy(s: torch.Tensor, x: torch.Tensor, m: Optional[torch.Tensor], is_logits: bool, params: dict,
            grad: bool) -> Any:
    """msloss.energy of host tensors (their NumPy views: no copy)."""
    key = "logits" if is_logits else "probs"
    mask = None if m is None else m.numpy()
    return _msloss.energy(x.numpy(), mask=mask, grad=grad, **{key: s.numpy()}, **params)


class _Loss(torch.autograd.Function):
    """The energy in the forward pass; its gradient, computed there too, in the backward."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, image: torch.Tensor, mask: Optional[torch.Tensor],
                is_logits: bool, params: dict) -> torch.Tensor:
        dtype = scores.dtype
        compute = _COMPUTE_DTYPE[dtype]
        s = _host(scores, compute)
        x = _host(image, compute)
        m = None if mask is None else _host_mask(mask, compute)
        # The inputs are kept (no copy on the CPU) for a second backward through the same loss, and
        # so that autograd notices in-place changes. All but the result is set before msloss runs,
        # which leaves the caches cold.
        ctx.save_for_backward(s, x, m)
        ctx.is_logits = is_logits
        ctx.params = params
        # Where the gradient must go: nowhere (None) when msloss's array already is the scores'.
        ctx.target = None if compute is dtype and scores.device.type == "cpu" else (scores.device, dtype)
        out = torch.empty((), dtype=compute, device=scores.device)
        r = _energy(s, x, m, is_logits, params, grad=bool(ctx.needs_input_grad[0]))
        ctx.grad = r.grad  # a NumPy array of our own, handed to autograd in the backward
        return out.fill_(r.total)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        # A backward that records a graph (create_graph=True) goes through once_differentiable, so that
        # differentiating the gradient again is an error; the usual one runs without recording anyway.
        if torch.is_grad_enabled():
            return _backward_once(ctx, grad_out)
        return _backward(ctx, grad_out)


def _backward(ctx: Any, grad_out: torch.Tensor):
    s, x, m = ctx.saved_tensors
    g, ctx.grad = ctx.grad, None
    if g is None:
        # A later backward through the same loss (retain_graph=True, torch.autograd.gradcheck):
        # the first one handed its buffer over, so the gradient is computed again (the same bits).
        g = _energy(s, x, m, ctx.is_logits, ctx.params, grad=True).grad
    # The buffer is handed to autograd as it is, so that it becomes the .grad without a copy; a
    # scaling is done here in NumPy, in place (a torch operation on these sizes would start
    # torch's OpenMP threads, which then compete with msloss's own threads in the next call).
    scale = float(grad_out)
    if scale != 1.0:
        np.multiply(g, scale, out=g)
    t = torch.from_numpy(g)
    if ctx.target is not None:
        t = t.to(device=ctx.target[0], dtype=ctx.target[1])
    return t, None, None, None, None


_backward_once = torch.autograd.function.once_differentiable(_backward)


def mumford_shah_loss(
    logits: torch.Tensor,
    image: torch.Tensor,
    mask: Optional[torch.Tensor] = None,
    *,
    lam: float = 1e-3,
    length: str = "l1",
    delta: float = 1e-2,
    centroid_eps: float = 1e-8,
    fidelity_weight: float = 1.0,
    reduction: str = "sum",
    fidelity: str = "global",
    sigma: Optional[float] = None,
    backend: str = "cpu",
    threads: Optional[int] = None,
    input: str = "logits",
) -> torch.Tensor:
    """The multiphase Mumford–Shah loss of ``logits`` (softmax over dim 1) and ``image``.

    Shapes: ``logits`` ``(B, N, H, W)`` or ``(B, N, D, H, W)``; ``image`` ``(B, C, H, W)`` or
    ``(B, C, D, H, W)``; ``mask`` ``(B, H, W)`` or ``(B, D, H, W)`` (also ``(B, 1, ...)``) of 0/1.
    With ``input="probs"`` the first argument is taken as probabilities instead of logits.
    The keywords are those of ``msloss.energy``. Returns a scalar tensor on the scores' device;
    its backward gives msloss's analytic gradient. See the module docs for devices and dtypes.

    Raises ``TypeError`` for a scores dtype other than float16/bfloat16/float32/float64 or an
    argument that is not a tensor, ``ValueError`` for bad shapes, values or parameters.
    """
    if not isinstance(logits, torch.Tensor) or not isinstance(image, torch.Tensor):
        raise TypeError(
            f"logits and image must be torch.Tensor, got {type(logits).__name__} and {type(image).__name__}"
        )
    if mask is not None and not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or None, got {type(mask).__name__}")
    if logits.dtype not in _COMPUTE_DTYPE:
        raise TypeError(f"logits must be float16, bfloat16, float32 or float64, got {logits.dtype}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a floating-point tensor, got {image.dtype}")
    if image.requires_grad:
        raise ValueError("msloss gives no gradient with respect to the image; pass image.detach()")
    if input not in ("logits", "probs"):
        raise ValueError(f'input must be "logits" or "probs", got {input!r}')
    params = dict(lam=lam, length=length, delta=delta, centroid_eps=centroid_eps,
                  fidelity_weight=fidelity_weight, reduction=reduction, fidelity=fidelity, sigma=sigma, backend=backend,
                  threads=threads)
    return _Loss.apply(logits, image, mask, input == "logits", params)


class MumfordShahLoss(torch.nn.Module):
    """The multiphase Mumford–Shah loss as a module: ``MumfordShahLoss(**params)(logits, image, mask=None)``.

    The keywords are those of :func:`mumford_shah_loss`, checked when the loss is first called.
    """

    def __init__(self, *, lam: float = 1e-3, length: str = "l1", delta: float = 1e-2, centroid_eps: float = 1e-8,
                 fidelity_weight: float = 1.0, reduction: str = "sum", fidelity: str = "global",
                 sigma: Optional[float] = None, backend: str = "cpu",
                 threads: Optional[int] = None, input: str = "logits") -> None:
        super().__init__()
        self.params = dict(lam=lam, length=length, delta=delta, centroid_eps=centroid_eps,
                           fidelity_weight=fidelity_weight, reduction=reduction, fidelity=fidelity, sigma=sigma,
                           backend=backend, threads=threads,
                           input=input)

    def forward(self, logits: torch.Tensor, image: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        return mumford_shah_loss(logits, image, mask, **self.params)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.params.items())
