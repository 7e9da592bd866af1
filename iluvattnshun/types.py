"""Shared type aliases."""

from typing import Mapping, Sequence, Union

import torch

TensorTree = Union[torch.Tensor, Mapping[str, "TensorTree"], Sequence["TensorTree"]]
"""A tensor, or a (nested) dict / list / tuple of tensors, as a batch is."""

Metric = float | str
"""A logged value: floats are averaged and plotted, strings are shown as text."""

Metrics = dict[str, Metric]
