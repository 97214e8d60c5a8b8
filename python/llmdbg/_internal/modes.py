"""One eval-mode policy: every module's ``training`` flag (and, for gradient methods, every
parameter's ``requires_grad``) is restored on exit, also after exceptions and Ctrl-C."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["device_of", "eval_mode", "gradient_mode"]


def device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model.eval()`` for the block; every module's ``training`` flag restored afterwards."""
    saved = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in saved:
            m.training = flag


@contextlib.contextmanager
def gradient_mode(model: nn.Module, *, warn_train: bool = True) -> Iterator[None]:
    """Eval mode and untracked parameters for a gradient method, all restored on exit.

    A model in train mode is warned about (dropout would make gradients random) and evaluated in
    eval mode. Parameters stop requiring gradients meanwhile: gradients are taken with respect to
    the inputs only, and autograd then neither stores what weight gradients need nor computes
    them. Every module's ``training`` flag and every parameter's ``requires_grad`` come back as
    they were, also after exceptions and Ctrl-C.
    """
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if warn_train and training:
        warnings.warn(
            f"the model is in train mode (dropout; {len(training)} modules, e.g. {training[0]!r}); "
            "gradients are computed in eval mode and every module's mode is restored afterwards",
            UserWarning,
            stacklevel=4,
        )
    flags = [(p, p.requires_grad) for p in model.parameters()]
    with eval_mode(model):
        try:
            for p, _ in flags:
                p.requires_grad_(False)
            with torch.enable_grad():
                yield
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)
