"""Validation metrics over batches and ranks: ``MetricSums`` adds each batch's values weighted by its size and
reduces them into means across the processes of a distributed run."""

from typing import Any, Mapping

from iluvattnshun import distributed as tdist

Key = tuple[str, str | None]
"""A metric's name, and its key for a dict-valued metric (None for a plain number)."""


class MetricSums:
    """Batch-size-weighted sums of metric values (``evaluate``'s accumulator).

    Values are floats or scalar tensors (averaged), dicts of them (averaged per key), or strings (the last one is
    kept). Metrics keep the order in which they first appeared.
    """

    def __init__(self) -> None:
        self.sums: dict[Key, float] = {}
        self.weights: dict[Key, int] = {}
        self.texts: dict[str, str] = {}
        self.order: list[str] = []

    def add(self, metrics: Mapping[str, Any], weight: int) -> None:
        """Add one batch's metrics, each value counted ``weight`` times (its batch size)."""
        for name, value in metrics.items():
            if name not in self.order:
                self.order.append(name)
            if isinstance(value, str):
                self.texts[name] = value
                continue
            items = value.items() if isinstance(value, Mapping) else [(None, value)]
            for key, v in items:
                k = (name, None if key is None else str(key))
                self.sums[k] = self.sums.get(k, 0.0) + float(v) * weight
                self.weights[k] = self.weights.get(k, 0) + weight

    def reduce(self) -> dict[str, Any]:
        """The means over every rank's batches (collective in a distributed run), dict metrics as dicts."""
        gathered = tdist.all_gather_object((self.sums, self.weights, self.order))
        total: dict[Key, float] = {}
        total_w: dict[Key, int] = {}
        order = list(self.order)
        for r_sums, r_weights, r_order in gathered:
            for k, v in r_sums.items():
                total[k] = total.get(k, 0.0) + v
                total_w[k] = total_w.get(k, 0) + r_weights[k]
            order.extend(n for n in r_order if n not in order)
        result: dict[str, Any] = {}
        for name in order:
            if name in self.texts:
                result[name] = self.texts[name]
            for (n, key), v in total.items():
                if n != name:
                    continue
                mean = v / max(total_w[(n, key)], 1)
                if key is None:
                    result[name] = mean
                else:
                    result.setdefault(name, {})[key] = mean
        return result
