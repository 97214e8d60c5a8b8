"""Attributions for Hugging Face models: which input tokens drive an output.

Integrated gradients with exact and adaptive quadrature (``integrated.py``), saliency,
input × gradient and SmoothGrad (``gradients.py``), occlusion (``perturbation.py``), all returning an
:class:`Attribution` (``result.py``). Inputs, baselines and the embedding layer are found in
``_inputs.py``, targets in ``_targets.py``; the chunked path evaluation in ``_engine.py``.
:func:`attribute_generation` (``generation.py``) explains every token of a generated continuation.
"""

from ._similarity import similarity_target
from .generation import GenerationAttribution, attribute_generation
from .gradients import input_x_gradient, saliency, smoothgrad
from .integrated import ConvergenceWarning, integrated_gradients
from .perturbation import occlusion
from .result import Attribution

__all__ = [
    "Attribution",
    "ConvergenceWarning",
    "GenerationAttribution",
    "attribute_generation",
    "input_x_gradient",
    "integrated_gradients",
    "occlusion",
    "saliency",
    "similarity_target",
    "smoothgrad",
]
