"""msloss: the multiphase Mumford–Shah segmentation loss of Kim & Ye (IEEE TIP 2020), computed by
the msloss Rust crates, with its exact analytic gradient.

NumPy API (this module):

- ``energy(image, *, logits=None, probs=None, mask=None, ...) -> Energy``: the energy, the
  centroids and the gradient of NumPy arrays;
- ``gradcheck(shape, ...) -> dict``: the gradient checked against central differences;
- ``segment(image, phases, ...) -> labels``: unsupervised multiphase segmentation.

PyTorch: ``msloss.torch`` (imported on its own, so that this module needs only NumPy) has
``MumfordShahLoss`` and ``mumford_shah_loss``.

Errors: ``TypeError`` for a wrong type or dtype, ``ValueError`` for bad shapes, values or
parameters, each with a message saying what was expected and what came.
"""

from ._msloss import MAX_THREADS, Energy, energy, gradcheck, segment

__all__ = ["MAX_THREADS", "Energy", "energy", "gradcheck", "segment"]
