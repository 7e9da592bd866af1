"""A ready trainer for prompt tasks: a Prompter's aligned (prompt, answer) pairs, a RoPE transformer, per-depth metrics.

A synthetic task (see ``examples/var_rename``) is a config class, a ``Prompter`` and presets::

    @dataclass(kw_only=True)
    class MyConfig(PromptTaskConfig):
        TASK = "my_task"              # logs/my_task, data/my_task
        num_things: int = 3
        def data_hash_params(self) -> list[str]:
            return ["num_things"]

    class MyPrompter(Prompter[MyConfig]):
        ...

    if __name__ == "__main__":
        main(MyPrompter, {"quick": lambda: MyConfig(max_steps=2000)})

The model reads the prompt and, at every position, predicts the answer character aligned with it (the mask
character marks positions without a target, which the loss ignores). Every hook of ``Trainer`` can still be
overridden in a subclass of ``PromptTaskTrainer``.
"""

import contextlib
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

import datasets
import torch
import torch.nn as nn
import torch.nn.functional as F

from iluvattnshun import distributed as tdist
from iluvattnshun.data import ArrayLoader, StreamingDataset, StreamingLoader, batch_rows
from iluvattnshun.datasets import dataset_arrays, dataset_meta, make_dataset
from iluvattnshun.model_config import ModelConfig, build_model, training_step_memory
from iluvattnshun.nn import MultilayerTransformer
from iluvattnshun.optim import OptimConfig
from iluvattnshun.cli import run_from_command_line
from iluvattnshun.prompter import PromptConfig, Prompter, smallest_uint_dtype
from iluvattnshun.trainer import Trainer, TrainerConfig
from iluvattnshun.viz import attention_image


@dataclass(kw_only=True)
class PromptTaskConfig(TrainerConfig, PromptConfig, ModelConfig, OptimConfig):
    """Training config of a prompt task: trainer, data, model and optimiser fields together."""

    streaming: bool = False
    """Train on an endless stream of fresh examples instead of the cached train split."""
    batch_tokens: int = 0
    """Streaming: at most this many tokens per batch (fewer than batch_size prompts once a curriculum's prompts
    are longer than batch_tokens / batch_size), so a late step costs and scores about as much as an early one;
    0: always batch_size prompts."""
    num_workers: int = 0
    """DataLoader worker processes for streaming generation (0: generate in the training process)."""
    val_batch_size: int | None = None
    """Validation batch size (none: batch_size)."""
    depth_min_positions: int = 100
    """Depths with fewer test positions than this are left out of depth_reach_90 / depth_reach_99."""

    def validate(self) -> None:
        super().validate()
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.val_batch_size is not None and self.val_batch_size < 1:
            raise ValueError(f"val_batch_size must be >= 1, got {self.val_batch_size}")
        if self.batch_size > self.train_size and not self.streaming:
            raise ValueError(f"batch_size ({self.batch_size}) must not exceed train_size ({self.train_size})")
        if self.batch_tokens < 0:
            raise ValueError(f"batch_tokens must be >= 0, got {self.batch_tokens}")
        if self.batch_tokens and not self.streaming:
            raise ValueError("batch_tokens needs --streaming (a cached dataset's batches hold batch_size rows)")
        if self.depth_min_positions < 1:
            raise ValueError(f"depth_min_positions must be >= 1, got {self.depth_min_positions}")


C = TypeVar("C", bound=PromptTaskConfig)


def depth_reach(accuracy: Mapping[int, float], counts: Mapping[int, int], threshold: float, min_positions: int) -> int:
    """The deepest depth d such that every depth <= d with at least ``min_positions`` scored positions has
    accuracy >= ``threshold`` (-1 when depth 0 already fails; depths with fewer positions are skipped)."""
    reach = -1
    for d in sorted(accuracy):
        if counts.get(d, 0) < min_positions:
            continue
        if accuracy[d] < threshold:
            break
        reach = d
    return reach


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device``: a CUDA GPU's own; otherwise this machine's RAM, or its cgroup's limit when that is
    lower (CPU, and MPS, which shares the RAM). None when it cannot be read."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        total = min(total, int(limit)) if limit != "max" else total
    return int(total)


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def check_training_memory(config: Any, device: torch.device, vocab_size: int, seq_len: int) -> None:
    """Refuse, before any work, a run of ``build_model(vocab_size, config)`` whose training step cannot fit: a lower
    bound on the step (``model_config.training_step_memory``) against the device's total memory, and the step's
    micro-batches, which the loop draws before it trains on them, against this machine's RAM. A run refused here is
    one that cannot fit.

    Args:
        config: a config with ``ModelConfig`` and ``TrainerConfig`` fields.
        device: the device the run trains on.
        vocab_size, seq_len: the model's vocabulary and the longest training sequence.

    Raises:
        ValueError: naming the field to change (dim_model, batch_size, grad_accum_steps).
    """
    c = config
    total, host = device_memory_bytes(device), device_memory_bytes(torch.device("cpu"))
    if total is None or host is None:
        return
    where = f"the {_gib(total)} of {'this machine' if device.type != 'cuda' else device}"
    need = training_step_memory(vocab_size, c, c.batch_size, seq_len, 4 if c.precision == "fp32" else 2)
    if need.state > total:
        raise ValueError(
            f"dim_model: the model's parameters with their gradients and AdamW state need {_gib(need.state)}, "
            f"more than {where}; choose a smaller model (dim_model, num_layers)"
        )
    if sum(need) > total:
        raise ValueError(
            f"batch_size: a training step on {c.batch_size:,} sequences of {seq_len:,} tokens needs at least "
            f"{_gib(sum(need))} (activations kept for the backward pass, logits), more than {where}; lower "
            "batch_size (grad_accum_steps keeps the step's size) or the sequence length"
        )
    # A step's micro-batches are drawn before it trains on them: their int64 input and target ids are held together
    # (in this machine's memory; on the CPU it is the step's memory too, where one of them is counted above).
    held = c.grad_accum_steps * c.batch_size * seq_len * 16
    if held + (sum(need) - c.batch_size * seq_len * 16 if device.type != "cuda" else 0) > host:
        raise ValueError(
            f"grad_accum_steps: an optimizer step holds its {c.grad_accum_steps:,} micro-batches of "
            f"{c.batch_size:,} sequences of {seq_len:,} tokens at once ({_gib(held)} of token ids), which with the "
            f"step itself is more than the {_gib(host)} of this machine; lower grad_accum_steps or batch_size"
        )


def marker_line(pred: str, answer: str, mask_char: str) -> str:
    """One character per position: ✓ correct, ✗ wrong, . masked."""
    return "".join("." if a == mask_char else ("✓" if p == a else "✗") for p, a in zip(pred, answer))


class PromptTaskTrainer(Trainer[C], Generic[C]):
    """Trains a ``MultilayerTransformer`` on a ``Prompter``'s aligned answers: ``PromptTaskTrainer(prompter).run()``."""

    DEPTH_COLUMN: str = "depth"
    """Metadata column whose values split the accuracy (``acc_per_depth/<d>``); absent columns are skipped."""

    def __init__(self, prompter: Prompter[C]) -> None:
        """Args:
        prompter: the task; its config is the run's config.
        """
        self.prompter = prompter
        super().__init__(prompter.config)

    def init_state(self) -> None:
        self._depth_hits: torch.Tensor | None = None  # per-depth counts of the evaluation in progress
        self._depth_totals: torch.Tensor | None = None

    def setup(self) -> None:
        self.check_memory()

    def check_memory(self) -> None:
        """Refuse a run whose training step or cached data cannot fit in memory, before any data or run directory
        exists (``check_training_memory``, then the cached splits that the loaders hold, against this machine's RAM).

        Raises:
            ValueError: naming the field to change (dim_model, batch_size, grad_accum_steps, train_size, test_size).
        """
        c, p = self.config, self.prompter
        seq_len = p.max_seq_len
        host = device_memory_bytes(torch.device("cpu"))
        if seq_len is None or host is None:
            return
        check_training_memory(c, self.device, p.vocab_size, seq_len)
        token_bytes = smallest_uint_dtype(max(p.vocab_size - 1, 0)).itemsize
        # The loaders hold their splits in memory, prompt and answer at least (streaming: the test split only).
        for name, size in (("train_size", 0 if c.streaming else c.train_size), ("test_size", c.test_size)):
            split = size * seq_len * 2 * token_bytes
            if split > host:
                fix = "; lower it" + (" or train on fresh examples (--streaming)" if name == "train_size" else "")
                raise ValueError(
                    f"{name}: the cached {name[:-5]} split of {size:,} prompts of {seq_len:,} tokens is held in memory "
                    f"({_gib(split)} at least), more than the {_gib(host)} of this machine{fix}"
                )

    def get_model(self) -> nn.Module:
        return build_model(self.prompter.vocab_size, self.config)

    def sequence_length(self) -> int | None:
        return self.prompter.max_seq_len

    def step_cost(self, step: int) -> float:
        """A step costs ~ B * T * (1 + T / 480) with B prompts of length T (attention grows with T^2; measured on
        var_rename's depth recipe: 4 layers, d_model 64, 11.5x the time per step at T 256 as at T 32, B 64)."""
        length = self.prompter.at_step(step).max_seq_len
        if length is None:
            return 1.0
        return batch_rows(self.config.batch_size, self.config.batch_tokens, length) * length * (1 + length / 480)

    def output_dirs(self) -> dict[str, str]:
        return {**super().output_dirs(), "dataset_path": self.config.dataset_path}

    # --- data -----------------------------------------------------------------------------------------

    @functools.cached_property
    def dataset(self) -> datasets.DatasetDict:
        """The cached dataset, built (rank 0) or loaded (the other ranks, once it exists) when the loaders ask for
        it: after the model and its weights, so that a run refused for those leaves no dataset behind."""
        if self.rank != 0:
            tdist.barrier()  # wait until rank 0 has generated and saved it; then load the cache
        dsd = make_dataset(self.prompter, progress=self.is_main)
        if self.rank == 0:
            tdist.barrier()
        return dsd

    def get_train_dataloader(self) -> Iterable[Any]:
        c = self.config
        if c.streaming:
            stream = StreamingDataset(
                self.prompter,
                batch_size=c.batch_size,
                batch_tokens=c.batch_tokens,
                rank=self.rank,
                world_size=self.world_size,
                batches_per_step=c.grad_accum_steps,
            )
            return StreamingLoader(stream, num_workers=c.num_workers, pin_memory=self.device.type == "cuda")
        return ArrayLoader(
            dataset_arrays(self.dataset["train"]),
            batch_size=c.batch_size,
            shuffle=True,
            seed=c.seed,
            drop_last=True,
            rank=self.rank,
            world_size=self.world_size,
        )

    def get_val_dataloader(self) -> Iterable[Any]:
        c = self.config
        return ArrayLoader(
            dataset_arrays(self.dataset["test"]),
            batch_size=c.val_batch_size or c.batch_size,
            shuffle=False,
            drop_last=False,
            rank=self.rank,
            world_size=self.world_size,
        )

    def on_run_start(self) -> None:
        if self.config.streaming:
            return
        stats = dataset_meta(self.prompter).get("leakage", {})
        self.logger.log_text("dataset", "\n".join(f"{k}: {v:,}" for k, v in stats.items()), save_to_file=False)
        self.logger.log_metrics(dict(stats), "data", 0, force=True)

    def task_classes(self) -> dict[str, type]:
        return {**super().task_classes(), "prompter": type(self.prompter)}

    # --- loss and metrics -----------------------------------------------------------------------------

    def get_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        logits = model(batch["prompt"]).logits  # (B, T, V)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), batch["answer"].flatten(), ignore_index=self.prompter.mask_token
        )
        return loss, logits.argmax(-1)

    def val_metrics(self, model: nn.Module, batch: Any, preds: Any) -> Mapping[str, Any]:
        answer = batch["answer"]
        target = answer != self.prompter.mask_token  # (B, T)
        correct = (preds == answer) & target
        n_target = target.sum().clamp(min=1)
        metrics: dict[str, Any] = {"accuracy": correct.sum() / n_target}
        # Exact per-depth accuracy: accumulate counts and divide once in post_val_metrics.
        depth = batch.get(self.DEPTH_COLUMN)
        if depth is not None:
            depths = torch.where(target, depth, -1)
            size = int(depths.max().item()) + 2 if depths.numel() else 1
            totals = torch.bincount((depths + 1).flatten(), minlength=size)[1:]
            hits = torch.bincount((torch.where(correct, depth, -1) + 1).flatten(), minlength=size)[1:]
            self._depth_hits = _add_counts(self._depth_hits, hits)
            self._depth_totals = _add_counts(self._depth_totals, totals)
        if not hasattr(self, "_sample_batch"):
            self._sample_batch = ({k: v[:1].cpu() for k, v in batch.items()}, preds[:1].cpu())
        return metrics

    def post_val_metrics(self, model: nn.Module) -> Mapping[str, Any]:
        metrics: dict[str, Any] = {}
        hits, totals = self._depth_hits, self._depth_totals
        if hits is not None and totals is not None:
            gathered = tdist.all_gather_object((hits.cpu(), totals.cpu()))
            hits = _sum_counts([h for h, _ in gathered])
            totals = _sum_counts([t for _, t in gathered])
            counts = {d: int(t) for d, t in enumerate(totals.tolist()) if t > 0}
            accuracy = {d: float(h) / counts[d] for d, h in enumerate(hits.tolist()) if d in counts}
            metrics["acc_per_depth"] = {str(d): a for d, a in accuracy.items()}
            metrics["positions_per_depth"] = {str(d): n for d, n in counts.items()}
            for threshold, name in ((0.9, "depth_reach_90"), (0.99, "depth_reach_99")):
                metrics[name] = depth_reach(accuracy, counts, threshold, self.config.depth_min_positions)
        self._depth_hits = self._depth_totals = None
        sample = getattr(self, "_sample_batch", None)
        if sample is not None:
            metrics["sample"] = self.decode_sample(sample[0], sample[1])
            if self.config.log_attention_maps and self.is_main:
                self._log_attention(model, sample[0])
            del self._sample_batch
        return metrics

    def decode_sample(self, batch: Mapping[str, torch.Tensor], preds: torch.Tensor) -> str:
        """Prompt, answer, prediction and a ✓/✗/. marker line for the first example of a batch."""
        p = self.prompter
        prompt, answer, pred = (p.detokenize(t[0].cpu().numpy()) for t in (batch["prompt"], batch["answer"], preds))
        if p.PAD_CHAR is not None:
            keep = len(prompt.rstrip(p.PAD_CHAR))
            prompt, answer, pred = prompt[:keep], answer[:keep], pred[:keep]
        pred = "".join(c if a != p.MASK_CHAR else p.MASK_CHAR for c, a in zip(pred, answer))
        return "\n".join(
            [
                f"prompt: {prompt}",
                f"answer: {answer}",
                f"pred:   {pred}",
                f"marks:  {marker_line(pred, answer, p.MASK_CHAR)}",
            ]
        )

    def _log_attention(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> None:
        if not isinstance(model, MultilayerTransformer):
            return
        prompt = batch["prompt"].to(self.device)
        weights = model(prompt, return_attn_weights=True).attn_weights
        image = attention_image([w[0].float().cpu() for w in weights])
        self.logger.log_image("val/attention", image, self.progress.step)


def _add_counts(acc: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    if acc is None:
        return new.clone()
    size = max(acc.numel(), new.numel())
    return F.pad(acc, (0, size - acc.numel())) + F.pad(new, (0, size - new.numel()))


def _sum_counts(parts: list[torch.Tensor]) -> torch.Tensor:
    out: torch.Tensor | None = None
    for part in parts:
        out = _add_counts(out, part)
    assert out is not None
    return out


def main(
    prompter_class: type[Prompter[Any]],
    presets: Mapping[str, Callable[[], PromptTaskConfig]] | None = None,
    default_preset: str | None = "quick",
    argv: list[str] | None = None,
) -> None:
    """The command line of a prompt task: parse ``--preset`` / ``--config`` / ``--field=value`` and train.

    Args:
        prompter_class: the task's prompter; its config class is the one parsed.
        presets: named base configs; ``default_preset`` is used without ``--preset`` (if there are presets).
        argv: arguments (default ``sys.argv[1:]``).
    """
    chosen = default_preset if presets and default_preset in presets else None
    config_class: type[PromptTaskConfig] = prompter_class.config_class()  # type: ignore[assignment]
    run_from_command_line(config_class, lambda c: PromptTaskTrainer(prompter_class(c)), argv, presets, chosen)
