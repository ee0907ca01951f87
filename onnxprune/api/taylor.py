"""The ``taylor`` criterion: first-order Taylor / Fisher importance from real gradients.

Removing channel ``c`` sets its parameters ``w`` (the producers' weights and bias, BatchNorm
scale and shift: every tensor slice that makes the channel) to zero; to first order the loss
changes by ``−Σ_{w∈c} g·w`` (``g = ∂L/∂w``). Molchanov et al. (2019) score each channel by
the square of that sum, accumulated over batches:

    score(c) = Σ_batches (Σ_{w ∈ c} g_w · w)²

The loss: cross-entropy against ``labels`` when the data has them. Without labels, the
distillation loss against the original's own outputs has a zero gradient at the original
(it is its own minimum), so the gradient is that of the Gaussian likelihood of targets
sampled around the original's outputs, ``½‖f(x) − (f(x) + σε)‖²/σ²`` with ``ε ~ N(0, 1)``:
the squared scores then estimate the Fisher information along each channel's weights (the
second-order cost of removing it), ``σ`` each output's standard deviation on the data.

Gradients come from PyTorch through onnx2torch (:mod:`.torch_bridge`, the ``distill`` extra);
a model the converter cannot take is declined with its reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxprune.api.torch_bridge import to_torch
from onnxprune.calibration import Dataset
from onnxprune.errors import UsageError
from onnxprune.passes.prune.activations import to_channels
from onnxprune.passes.prune.group import Group, Role
from onnxprune.passes.prune.importance import Criterion, combine


class Taylor(Criterion):
    name = "taylor"
    needs_data = True

    def __init__(self, dataset: Dataset, batch_size: int = 32, labels: np.ndarray | None = None, seed: int = 0):
        super().__init__()
        self.dataset, self.batch_size, self.labels, self.seed = dataset, batch_size, labels, seed
        self.contributions: dict[int, np.ndarray] = {}  # group id -> Σ_batches (Σ g·w)²
        self.loss = ""

    def prepare(self, model: ir.Model, groups: Sequence[Group]) -> None:
        import torch

        try:
            graph = to_torch(model, next(iter(self.dataset.batches(self.batch_size)), None))
        except UsageError as error:
            raise UsageError(f"criterion 'taylor': {error}") from None
        bound = {b.name: b for b in graph.bindings}
        rng = torch.Generator().manual_seed(self.seed)
        self.contributions = {g.id: np.zeros(g.size) for g in groups}
        self.loss = "cross-entropy on labels" if self.labels is not None else "Fisher (Gaussian targets at the outputs)"
        start = 0
        for feeds in self.dataset.batches(self.batch_size):
            n = self.dataset.batch_len(feeds)
            for p in graph.parameters():
                p.grad = None
            outputs = graph(feeds)
            if self.labels is not None:
                loss = _label_loss(outputs[0], torch.from_numpy(np.asarray(self.labels[start:start + n])))
            else:
                loss = sum(torch.sum(o * torch.randn(o.shape, generator=rng)) / max(float(o.detach().std()), 1e-12)
                           for o in outputs if o.is_floating_point() and o.requires_grad)
            start += n
            if not torch.is_tensor(loss) or not loss.requires_grad:
                raise UsageError("criterion 'taylor': the outputs do not depend on any trainable weight")
            loss.backward()
            products = {name: (b.tensor.grad * b.tensor).detach().numpy() / b.scale
                        for name, b in bound.items() if b.tensor.grad is not None}
            products = {name: p.T if bound[name].transpose else p for name, p in products.items()}
            for group in groups:
                self.contributions[group.id] += self._channel_sums(group, products) ** 2
        if start == 0:
            raise UsageError("criterion 'taylor': the calibration data is empty")

    @staticmethod
    def _channel_sums(group: Group, products: dict[str, np.ndarray]) -> np.ndarray:
        """Σ g·w over every tensor slice that makes each channel (producers and parameters)."""
        sums = np.zeros(group.size)
        for slot in group.by_role(Role.PRODUCER) + group.by_role(Role.PARAM):
            gw = products.get(slot.value.name)
            if gw is None or gw.ndim <= slot.axis:
                continue
            axes = tuple(i for i in range(gw.ndim) if i != slot.axis)
            channels, values = to_channels(gw.sum(axis=axes, dtype=np.float64), slot, group.size)
            sums += np.nan_to_num(combine(group.size, [(channels, values)]))
        return sums

    def __call__(self, group: Group) -> np.ndarray:
        scores = self.contributions.get(group.id)
        if scores is None:
            raise UsageError(f"criterion 'taylor': no gradients for group '{group.name}'")
        return scores


def _label_loss(output, labels):
    """Cross-entropy of a [N, classes] output against integer labels (probabilities or logits)."""
    import torch

    if output.ndim != 2 or labels.shape[0] != output.shape[0]:
        raise UsageError(f"criterion 'taylor': labels need a [batch, classes] first output (it is "
                         f"{list(output.shape)}); drop the labels for the label-free (Fisher) loss")
    rows = output.detach()
    if bool((rows >= 0).all()) and bool(torch.allclose(rows.sum(1), torch.ones(len(rows)), atol=1e-3)):
        return torch.nn.functional.nll_loss(torch.log(output.clamp_min(1e-12)), labels.long(), reduction="sum")
    return torch.nn.functional.cross_entropy(output, labels.long(), reduction="sum")
