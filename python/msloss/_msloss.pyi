"""Type stubs of the extension module ``msloss._msloss`` (re-exported by ``msloss``)."""

from typing import Any, Literal, Optional, Sequence, Union, final

import numpy as np
import numpy.typing as npt

__all__ = ["MAX_THREADS", "Energy", "energy", "gradcheck", "segment"]

MAX_THREADS: int
"""The most threads the CPU backend starts (more are refused with ValueError)."""

_Float = Union[np.float32, np.float64]
_Length = Literal["l1", "l2", "charbonnier"]
_Reduction = Literal["sum", "mean"]
_Fidelity = Literal["global", "local"]
_BackendName = Literal["cpu", "reference"]

@final
class Energy:
    """The result of :func:`energy`."""

    @property
    def fidelity(self) -> float:
        """``w·F`` (after the reduction)."""
    @property
    def length(self) -> float:
        """``λ·Len`` (after the reduction)."""
    @property
    def total(self) -> float:
        """``fidelity + length``."""
    @property
    def centroids(self) -> npt.NDArray[Any]:
        """The centroids ``c``, shape ``(B, N, C)``, in the scores' dtype."""
    @property
    def grad(self) -> Optional[npt.NDArray[Any]]:
        """``∂E/∂scores`` in the scores' shape and dtype; ``None`` when ``grad=False``."""
    @property
    def copies(self) -> list[str]:
        """The inputs that were copied (not C-contiguous, or not of the scores' dtype)."""
    @property
    def seconds(self) -> float:
        """Wall-clock seconds of the backend's evaluation alone; the call's overhead is the rest."""
    @property
    def dtype(self) -> Literal["float32", "float64"]:
        """The dtype the energy was computed in (the scores')."""

def energy(
    image: npt.NDArray[_Float],
    *,
    logits: Optional[npt.NDArray[_Float]] = None,
    probs: Optional[npt.NDArray[_Float]] = None,
    mask: Optional[npt.NDArray[Any]] = None,
    lam: float = 1e-3,
    length: _Length = "l1",
    delta: float = 1e-2,
    centroid_eps: float = 1e-8,
    fidelity_weight: float = 1.0,
    reduction: _Reduction = "sum",
    fidelity: _Fidelity = "global",
    sigma: Optional[float] = None,
    backend: _BackendName = "cpu",
    threads: Optional[int] = None,
    grad: bool = True,
) -> Energy:
    """The multiphase Mumford–Shah energy of NumPy arrays, its centroids and its gradient.

    Give exactly one of ``logits`` (softmax over the class axis is applied) or ``probs``
    (probabilities, finite, >= 0 and at most about 1.3e18 in float32, 9.7e152 in float64):

    - ``logits`` / ``probs``: ``(B, N, H, W)`` or ``(B, N, D, H, W)``, float32 or float64; the
      scores' dtype is the dtype the energy is computed in;
    - ``image``: ``(B, C, H, W)`` or ``(B, C, D, H, W)``, float32 or float64;
    - ``mask``: ``(B, H, W)`` or ``(B, D, H, W)`` (also ``(B, 1, ...)``) of 0/1 values, bool,
      integer or float; ``None`` means every pixel is valid.

    Arrays that are C-contiguous and of the scores' dtype are read in place, without a copy.
    Any other array (a transposed or sliced view, an image or mask of another dtype) is copied
    once with ``numpy.ascontiguousarray``; ``Energy.copies`` names the inputs that were. The
    GIL is released while the energy is computed; do not write to the arrays from another
    thread meanwhile.

    Keywords (those of ``msloss energy``): ``lam`` (λ, the length weight, >= 0), ``length``,
    ``delta`` (Charbonnier's δ, > 0), ``centroid_eps`` (ε_c, > 0), ``fidelity_weight`` (w, >= 0),
    ``reduction`` (``"sum"`` or ``"mean"`` over valid pixels), ``fidelity`` (``"global"``: one
    soft mean per class, as published; ``"local"``: Gaussian-weighted local means, for uneven
    illumination, with ``sigma`` the Gaussian's σ in pixels, > 0 and at most the largest spatial
    extent), ``backend`` (``"cpu"``, or
    ``"reference"``: the literal f64 definition, slow), ``threads`` (the CPU backend's threads,
    1 to ``MAX_THREADS``; ``None``: all cores; results are the same bits), ``grad`` (whether to
    compute the gradient).

    Raises ``TypeError`` for an argument that is not a numpy array or has another dtype,
    ``ValueError`` for bad shapes, values (NaN, infinity, negative probabilities, a mask value
    other than 0 and 1) or parameters, and for a result that comes out non-finite.
    """

def gradcheck(
    shape: Sequence[int],
    *,
    backend: _BackendName = "cpu",
    threads: Optional[int] = None,
    dtype: Literal["float32", "float64"] = "float64",
    input: Literal["logits", "probs"] = "logits",
    mask: bool = False,
    seed: int = 1,
    tol: Optional[float] = None,
    full_limit: int = 2048,
    lam: float = 1e-3,
    length: _Length = "l1",
    delta: float = 1e-2,
    centroid_eps: float = 1e-8,
    fidelity_weight: float = 1.0,
    reduction: _Reduction = "sum",
    fidelity: _Fidelity = "global",
    sigma: Optional[float] = None,
) -> dict[str, Any]:
    """Checks a backend's analytic gradient against central differences of the f64 reference
    energy on seeded inputs, as ``msloss gradcheck`` does.

    ``shape`` is ``(B, N, C, H, W)`` or ``(B, N, C, H, W, D)`` (the CLI's order). ``dtype`` is
    the type the backend computes in, ``input`` the scores differentiated, ``mask`` adds a
    random mask (about 80% valid pixels), ``seed`` fixes the inputs and directions, ``tol`` is
    the relative tolerance (default 1e-6 for float64, 1e-4 for float32); tensors up to
    ``full_limit`` elements get every coordinate checked, larger ones random directions.

    Returns a dict with the CLI's keys: ``pass``, ``max_rel_error``, ``max_abs_error``,
    ``energy_rel_error``, ``checks``, ``skipped_kinks``, ``mode``, ...
    """

def segment(
    image: npt.NDArray[Any],
    phases: int,
    *,
    lam: float = 2.0,
    length: _Length = "charbonnier",
    iters: int = 300,
    tol: float = 1e-4,
    lr: float = 0.5,
    fidelity: _Fidelity = "global",
    sigma: Optional[float] = None,
    backend: _BackendName = "cpu",
    threads: Optional[int] = None,
    seed: int = 0,
    info: bool = False,
) -> Union[npt.NDArray[np.uint8], tuple[npt.NDArray[np.uint8], dict[str, Any]]]:
    """Unsupervised multiphase segmentation into ``phases`` phases, as ``msloss segment`` does.

    ``image`` is ``(H, W)``, ``(C, H, W)`` or ``(C, D, H, W)``: uint8 is divided by 255, uint16
    by 65535, other integer, bool and float dtypes are taken as they are (copied to float32).
    ``lam`` is the length weight in units of the image's within-phase variance, raised where phases
    are close to each other relative to the noise (see ``msloss segment --help``); ``fidelity="local"``
    with ``sigma`` (pixels) fits Gaussian-weighted local means, for uneven illumination.

    Returns uint8 labels, ``(H, W)`` for an image and ``(D, H, W)`` for a volume; label k is the
    k-th darkest phase. With ``info=True``, ``(labels, summary)``: the summary dict holds what
    ``msloss segment --json`` and ``--plot`` report (``iterations``, ``converged``, ``energy``,
    ``history``, ``centroids``, ``pixels_per_phase``, ``lambda_effective``, ``contrast_to_noise``, ...).
    """
