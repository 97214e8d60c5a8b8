"""The scikit-learn estimator protocol, without importing scikit-learn (private).

``TSNE`` follows the protocol scikit-learn's tooling relies on (``clone``, ``Pipeline``,
``get_params``/``set_params`` with nested ``a__b`` names, ``__sklearn_tags__`` as of 1.6,
``__sklearn_is_fitted__``, ``get_feature_names_out``, ``set_output``) rather than inheriting
``sklearn.base.BaseEstimator``: importing scikit-learn takes seconds and it is not a
dependency. The tags are built from scikit-learn's own ``Tags`` classes when it is installed.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np


class SklearnProtocol:
    """Mixin: parameters are the ``__init__`` arguments, stored unchanged as attributes."""

    _estimator_prefix = "tsne"
    _n_outputs = 2

    @classmethod
    def _get_param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        names = [p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD]
        return sorted(names)

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The estimator's parameters (``deep``: nested estimators' too, as ``name__param``)."""
        out: dict[str, Any] = {}
        for name in self._get_param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params().items())
            out[name] = value
        return out

    def set_params(self, **params: Any):
        """Set parameters (``name`` or ``name__nested``); ValueError for unknown names. Returns self."""
        valid = self._get_param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; valid: {valid}")
            if sep:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, sub_params in nested.items():
            getattr(self, name).set_params(**sub_params)
        return self

    def __repr__(self) -> str:
        defaults = {
            p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values() if p.name != "self"
        }
        changed = []
        for name in self._get_param_names():
            value = getattr(self, name)
            default = defaults.get(name, inspect.Parameter.empty)
            same = value is default or (
                not isinstance(value, np.ndarray) and type(value) is type(default) and value == default
            )
            if not same:
                changed.append(f"{name}={'array(...)' if isinstance(value, np.ndarray) else repr(value)}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "embedding_")

    def __sklearn_tags__(self):
        """scikit-learn >= 1.6 estimator tags: a transformer of dense 2-D float input, no NaN,
        no target (as scikit-learn's own ``TSNE``). Needs scikit-learn."""
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        return Tags(
            estimator_type=None,
            target_tags=TargetTags(required=False),
            transformer_tags=TransformerTags(preserves_dtype=[]),
            input_tags=InputTags(two_d_array=True, sparse=False, allow_nan=False),
            non_deterministic=False,
        )

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """Output column names: ``tsne0``, ``tsne1`` (object array, as scikit-learn's)."""
        return np.asarray([f"{self._estimator_prefix}{i}" for i in range(self._n_outputs)], dtype=object)

    def set_output(self, *, transform: str | None = None):
        """``transform="pandas"``: ``fit_transform``/``transform`` return a DataFrame; "default" or
        None: numpy. Returns self."""
        if transform not in (None, "default", "pandas"):
            raise ValueError(f"transform must be None, 'default' or 'pandas', got {transform!r}")
        if transform is not None:
            self._sklearn_output_config = {"transform": transform}
        return self

    def _wrap_output(self, Y: np.ndarray):
        if getattr(self, "_sklearn_output_config", {}).get("transform") == "pandas":
            import pandas as pd

            return pd.DataFrame(Y, columns=list(self.get_feature_names_out()))
        return Y
