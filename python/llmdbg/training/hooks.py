"""Module hooks of :func:`llmdbg.watch`: where the first NaN/Inf appears, and activation probes.

Every hook only *queues* device work (a reduction whose 0-d result is appended to a Python
list); nothing here reads a value on the host. :class:`~llmdbg.training.Watch` stacks the lists
once per step into the single tensor it copies to the host, so the hooks add no device sync.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

_INF = float("inf")
_MAX_WALK = 8  # tensors looked at per module input/output (tuples of caches can be long)


def float_tensors(obj: Any, depth: int = 2) -> Iterator[torch.Tensor]:
    """Floating-point tensors in ``obj`` (a tensor, tuple/list, dict or ModelOutput)."""
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel() > 0:
            yield obj
        return
    if depth == 0:
        return
    if isinstance(obj, dict):  # ModelOutput is an OrderedDict
        items: Any = obj.values()
    elif isinstance(obj, (tuple, list)):
        items = obj
    else:
        return
    for i, item in enumerate(items):
        if i >= _MAX_WALK:
            return
        yield from float_tensors(item, depth - 1)


def min_max(tensors: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(min, max) over ``tensors`` as 0-d tensors on their device (NaN if any value is NaN).

    ``torch.aminmax`` is one vectorised pass; ``abs().amax()`` or ``vector_norm(x, inf)`` cost
    8x and 90x more on CPU. The abs-max ``max(-min, max)`` is formed on the host.
    """
    out = None
    for t in tensors:
        mn, mx = torch.aminmax(t.detach())
        out = (mn, mx) if out is None else (torch.minimum(out[0], mn), torch.maximum(out[1], mx))
    return out


def host_absmax(mn: float, mx: float) -> float:
    """abs-max from a (min, max) pair read on the host; NaN stays NaN."""
    if math.isnan(mn) or math.isnan(mx):
        return math.nan
    return max(-mn, mx)


class NonFiniteLocator:
    """Per-module abs-max records in forward and backward, in execution order.

    Forward: a hook on every module records ``max |input|`` and ``max |output|`` (floating
    tensors; keyword inputs whose name contains ``mask`` are ignored, since additive masks may
    hold ``-inf`` by design). The first module *in completion order* whose output is non-finite
    while its inputs are finite is where the forward produced the first NaN/Inf. Completion order
    puts a child before its parent, so a NaN made inside a child is blamed on the child, and one
    made by the parent's own code (e.g. a softmax between two child linears) on the parent.

    Backward: a full backward *pre*-hook records ``max |grad_output|`` when the gradient reaches a
    module's output (the module "opens"), and a full backward hook records ``max |grad_input|``
    when it leaves through the module's inputs (it "closes"). Reading these events in order, the
    first non-finite one says where the first NaN/Inf gradient was made: a non-finite
    grad_input of module ``c`` means ``c``'s own backward made it; a non-finite grad_output of
    ``c`` means it was made by the nearest *open* ancestor of ``c`` (code of the parent between
    two children), or, with no open ancestor, by the loss. When no event is non-finite but
    parameter gradients are (e.g. an embedding, whose input is integer ids), the module owning
    the first such parameter is reported. Unlike ``torch.autograd.detect_anomaly`` this sees Inf
    as well as NaN.
    """

    def __init__(self, modules: list[tuple[str, nn.Module]], *, forward: bool = True, backward: bool = True) -> None:
        self.names = [n for n, _ in modules]
        self._modules = modules
        self.handles: list[Any] = []
        # (module index, (min, max) of the inputs or None, (min, max) of the output)
        self.fwd: list[tuple[int, tuple[torch.Tensor, torch.Tensor] | None, tuple[torch.Tensor, torch.Tensor]]] = []
        # (module index, "pre" or "post", (min, max) of the gradient or None)
        self.bwd: list[tuple[int, str, tuple[torch.Tensor, torch.Tensor] | None]] = []
        self.enabled = True
        self._cap = 64 * max(len(modules), 1)  # records kept per step (many micro-batches)
        self.forward = forward
        self.backward = False
        self.want_backward = backward
        # Full backward hooks need Tensor or tuple outputs (not a ModelOutput dict): the module
        # kinds are learnt from a forward before backward hooks are attached.
        self._dict_out: set[int] = set()
        self._no_grad_in: set[int] = set()
        self.seen_forward = False
        self._attach()

    # -- hooks --------------------------------------------------------------------------------
    def _attach(self) -> None:
        for i, (_, mod) in enumerate(self._modules):
            self.handles.append(mod.register_forward_hook(self._fwd_hook(i), with_kwargs=True))

    def attach_backward(self) -> None:
        """Record the backward too, from the next forward on (once a forward has shown which
        modules return dicts; the forensic mode armed after a non-finite step)."""
        self.want_backward = True
        if self.backward or not self.seen_forward:
            return
        self.backward = True
        for i, (_, mod) in enumerate(self._modules):
            if i not in self._dict_out:
                self._attach_backward(i, mod)  # torch's full backward hooks need Tensor/tuple outputs

    def forward_done(self, root_output: Any) -> None:
        """Called after each root forward: attach pending backward hooks."""
        if not isinstance(root_output, (torch.Tensor, tuple)):
            self._dict_out.add(self.names.index(""))
        self.seen_forward = True
        if self.want_backward and not self.backward:
            self.attach_backward()

    def _attach_backward(self, i: int, mod: nn.Module) -> None:
        # Modules without an input that needs a gradient (embeddings) get no backward hooks (torch
        # would warn on each call); their parameters' gradients still name them.
        if i not in self._no_grad_in:
            self.handles.append(mod.register_full_backward_pre_hook(self._bwd_pre_hook(i)))
            self.handles.append(mod.register_full_backward_hook(self._bwd_hook(i)))

    def _fwd_hook(self, idx: int):
        def hook(module: nn.Module, args: Any, kwargs: dict, output: Any) -> None:
            if not self.seen_forward:
                if not isinstance(output, (torch.Tensor, tuple)):
                    self._dict_out.add(idx)
                if not any(t.requires_grad for t in args if isinstance(t, torch.Tensor)):
                    self._no_grad_in.add(idx)  # torch would warn when its full backward hook fires
            if self.backward and (idx in self._dict_out or idx in self._no_grad_in) and torch.is_grad_enabled():
                # No full backward hooks here: a tensor hook on the output marks when the gradient
                # arrives (the module "opens" and, lacking an input gradient, stays open).
                t = next((t for t in float_tensors(output) if t.requires_grad), None)
                if t is not None:
                    t.register_hook(self._tensor_pre_hook(idx))
            if not self.forward or not self.enabled or not torch.is_grad_enabled() or len(self.fwd) > self._cap:
                return
            out = min_max(float_tensors(output))
            if out is None:
                return
            ins = list(float_tensors(args, 1))
            ins += [
                v
                for k, v in kwargs.items()
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.numel() and "mask" not in k
            ]
            self.fwd.append((idx, min_max(ins), out))

        return hook

    def _bwd_pre_hook(self, idx: int):
        def hook(module: nn.Module, grad_output: Any) -> None:
            if self.enabled and len(self.bwd) <= self._cap:
                g = min_max(t for t in grad_output if t is not None and t.is_floating_point() and t.numel())
                if g is not None:
                    self.bwd.append((idx, "pre", g))

        return hook

    def _tensor_pre_hook(self, idx: int):
        def hook(grad: torch.Tensor) -> None:
            if self.enabled and len(self.bwd) <= self._cap:
                self.bwd.append((idx, "pre", min_max([grad])))

        return hook

    def _bwd_hook(self, idx: int):
        def hook(module: nn.Module, grad_input: Any, grad_output: Any) -> None:
            if self.enabled and len(self.bwd) <= self._cap:
                # None: no input needed a gradient, and torch calls this hook as the gradient
                # *arrives*, so it says nothing about when the module's backward ends.
                g = min_max(t for t in grad_input if t is not None and t.is_floating_point() and t.numel())
                self.bwd.append((idx, "post", g))

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.reset()

    def reset(self) -> None:
        self.fwd.clear()
        self.bwd.clear()

    # -- packing ------------------------------------------------------------------------------
    def packed(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward records ``(n, 4)`` [in min, in max, out min, out max] and backward records
        ``(m, 2)`` [min, max], float32 (0 where a side had no tensor), for the watch's single host
        copy."""
        zero = torch.zeros((), device=device)
        none = (zero, zero)
        fwd = [t for _, a, b in self.fwd for pair in (a or none, b) for t in pair]
        bwd = [t for _, _, g in self.bwd for t in (g or none)]
        f = torch.stack([t.float().to(device) for t in fwd]).view(-1, 4) if fwd else torch.zeros(0, 4, device=device)
        b = torch.stack([t.float().to(device) for t in bwd]).view(-1, 2) if bwd else torch.zeros(0, 2, device=device)
        return f, b

    # -- reading (host values) ----------------------------------------------------------------
    def first_forward(self, values: list[list[float]]) -> dict[str, Any] | None:
        """The first forward record with a non-finite output and finite inputs (or, failing
        that, the first with a non-finite output). ``values``: host rows of :meth:`packed`."""
        found = None
        for (idx, _, _), row in zip(self.fwd, values):
            vin, vout = host_absmax(row[0], row[1]), host_absmax(row[2], row[3])
            if math.isfinite(vout):
                continue
            rec = {"module": self.names[idx], "input_absmax": vin, "output_absmax": vout}
            if math.isfinite(vin):
                return rec
            found = found or rec
        return found

    def _is_ancestor(self, a: int, c: int) -> bool:
        an, cn = self.names[a], self.names[c]
        return an == "" or cn.startswith(an + ".")

    def first_backward(self, values: list[list[float]], param_bad: list[int]) -> dict[str, Any] | None:
        """Where the first non-finite gradient was made (see the class docstring).

        ``values`` are the host values of :meth:`packed`'s backward records; ``param_bad`` the
        owning-module indices of parameters with non-finite gradients, in parameter order.
        Returns ``{"module", "grad_output_absmax", "grad_input_absmax"}`` (``module`` is
        ``"(loss)"`` when the gradient reaching the model was already non-finite), or None.
        """
        open_: dict[int, float] = {}
        for (idx, kind, t), pair in zip(self.bwd, values):
            v = host_absmax(*pair)
            if kind == "pre":
                if math.isfinite(v):
                    open_[idx] = v
                    continue
                anc = [a for a in open_ if self._is_ancestor(a, idx)]
                if not anc:
                    return {"module": "(loss)", "grad_output_absmax": v, "grad_input_absmax": math.nan}
                a = max(anc, key=lambda i: len(self.names[i]))
                return {
                    "module": self.names[a],
                    "grad_output_absmax": open_[a],
                    "grad_input_absmax": math.nan,
                    "seen_at": self.names[idx],
                }
            if t is None:
                continue  # no input gradient: the module stays open
            if not math.isfinite(v):
                return {
                    "module": self.names[idx],
                    "grad_output_absmax": open_.get(idx, math.nan),
                    "grad_input_absmax": v,
                }
            open_.pop(idx, None)
        if param_bad:
            return {
                "module": self.names[param_bad[0]],
                "grad_output_absmax": math.nan,
                "grad_input_absmax": math.nan,
                "parameter": True,
            }
        return None
