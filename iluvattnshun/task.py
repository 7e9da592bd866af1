"""A ready trainer for prompt tasks: a Prompter's aligned (prompt, answer) pairs, a RoPE transformer, per-depth metrics.

A synthetic task (see ``examples/var_rename``) is a config class, a ``Prompter`` and a few lines::

    @dataclass(kw_only=True)
    class MyConfig(PromptTaskConfig):
        num_things: int = 3
        def data_hash_params(self) -> list[str]:
            return ["num_things"]

    class MyTrainer(PromptTaskTrainer[MyConfig]):
        def get_prompter(self) -> Prompter[MyConfig]:
            return MyPrompter(self.config)

The model reads the prompt and, at every position, predicts the answer character aligned with it (the mask
character marks positions without a target, which the loss ignores). Every hook of ``Trainer`` can still be
overridden.
"""

import math
from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Generic, Iterable, Literal, Mapping, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from iluvattnshun import distributed as tdist
from iluvattnshun.data import ArrayLoader, StreamingDataset, StreamingLoader
from iluvattnshun.nn import MultilayerTransformer
from iluvattnshun.prompter import Prompter, PromptConfig, dataset_arrays, leakage_stats
from iluvattnshun.trainer import Trainer, TrainerConfig
from iluvattnshun.viz import attention_image


@dataclass(kw_only=True)
class ModelConfig:
    """Shape of the RoPE transformer."""

    num_layers: int = 4
    """Number of transformer layers."""
    dim_model: int = 128
    """Width of the residual stream."""
    num_heads: int = 4
    """Attention heads per layer (dim_model must be divisible by it)."""
    rope_base: float = 10000.0
    """RoPE base: smaller values rotate faster and favour local attention."""
    dropout_attn: float = 0.0
    """Dropout on each attention block's output."""
    dropout_mlp: float = 0.0
    """Dropout on each MLP block's output."""
    dropout_emb: float = 0.0
    """Dropout on the token embeddings."""
    tie_weights: bool = False
    """Use the token embedding as the output projection (a predicted token and the same token read as input
    then share one direction in the residual stream)."""


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW with linear warmup and an optional decay."""

    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.01
    """AdamW weight decay (applied to matrices only, not to norms, biases or embeddings)."""
    beta2: float = 0.99
    """AdamW beta2."""
    warmup_steps: int = 100
    """Steps of linear warmup from warmup_start_factor * lr to lr."""
    warmup_start_factor: float = 0.01
    """Learning-rate factor at step 0 of the warmup."""
    lr_decay: Literal["none", "cosine", "linear"] = "none"
    """Decay after warmup, down to min_lr_factor * lr at lr_decay_steps (or max_steps)."""
    lr_decay_steps: int | None = None
    """Step at which the decay ends (none: max_steps)."""
    min_lr_factor: float = 0.1
    """Learning-rate factor at the end of the decay."""


@dataclass(kw_only=True)
class PromptTaskConfig(TrainerConfig, PromptConfig, ModelConfig, OptimConfig):
    """Training config of a prompt task: trainer, data, model and optimiser fields together."""

    streaming: bool = False
    """Train on an endless stream of fresh examples instead of the cached train split."""
    dedup_test: bool = False
    """Remove test prompts that also occur in the train split."""
    num_workers: int = 0
    """DataLoader worker processes for streaming generation (0: generate in the training process)."""
    val_batch_size: int | None = None
    """Validation batch size (none: batch_size)."""

    def validate(self) -> None:
        """Check trainer, model and optimiser fields; raises ValueError naming the first bad one."""
        super().validate()
        for name in ("num_layers", "dim_model", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dim_model % self.num_heads:
            raise ValueError(f"dim_model ({self.dim_model}) must be divisible by num_heads ({self.num_heads})")
        if (self.dim_model // self.num_heads) % 2:
            raise ValueError(f"dim_model / num_heads must be even for RoPE, got {self.dim_model // self.num_heads}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lr_decay != "none" and self.lr_decay_steps is None and self.max_steps is None:
            raise ValueError(f"lr_decay={self.lr_decay} needs lr_decay_steps or max_steps to know where to end")


C = TypeVar("C", bound=PromptTaskConfig)


def build_model(vocab_size: int, config: ModelConfig) -> MultilayerTransformer:
    """The RoPE transformer a ``ModelConfig`` describes."""
    return MultilayerTransformer(
        vocab_size,
        d_model=config.dim_model,
        n_heads=config.num_heads,
        n_layers=config.num_layers,
        rope_base=config.rope_base,
        dropout_attn=config.dropout_attn,
        dropout_mlp=config.dropout_mlp,
        dropout_emb=config.dropout_emb,
        tie_weights=config.tie_weights,
    )


def build_optimizer(model: nn.Module, config: OptimConfig, device: torch.device) -> Optimizer:
    """AdamW with weight decay on matrices only (not on norms, biases or embeddings); fused on CUDA."""
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2 and id(p) not in embeddings]
    no_decay = [p for p in params if p.dim() < 2 or id(p) in embeddings]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, config.beta2), fused=device.type == "cuda")


def build_scheduler(optimizer: Optimizer, config: OptimConfig, max_steps: int | None) -> LRScheduler:
    """Per-step ``lr_factor`` schedule (warmup, then constant or decay)."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, config, max_steps))


def lr_factor(step: int, config: OptimConfig, max_steps: int | None) -> float:
    """Learning-rate multiplier at ``step``: linear warmup, then constant, cosine or linear decay."""
    if step < config.warmup_steps:
        return config.warmup_start_factor + (1 - config.warmup_start_factor) * step / config.warmup_steps
    end = config.lr_decay_steps or max_steps
    if config.lr_decay == "none" or end is None or end <= config.warmup_steps:
        return 1.0
    progress = min(1.0, (step - config.warmup_steps) / (end - config.warmup_steps))
    if config.lr_decay == "cosine":
        shape = 0.5 * (1 + math.cos(math.pi * progress))
    else:
        shape = 1 - progress
    return config.min_lr_factor + (1 - config.min_lr_factor) * shape


def marker_line(pred: str, answer: str, mask_char: str) -> str:
    """One character per position: ✓ correct, ✗ wrong, . masked."""
    return "".join("." if a == mask_char else ("✓" if p == a else "✗") for p, a in zip(pred, answer))


class PromptTaskTrainer(Trainer[C], Generic[C]):
    """Trains a ``MultilayerTransformer`` on a ``Prompter``'s aligned answers; subclasses give ``get_prompter``."""

    DEPTH_COLUMN: str = "depth"
    """Metadata column whose values split the accuracy (``acc_per_depth/<d>``); absent columns are skipped."""

    prompter: Prompter[Any]

    @abstractmethod
    def get_prompter(self) -> Prompter[Any]:
        """The task's prompter, built from ``self.config``."""

    def init_state(self) -> None:
        self.prompter = self.get_prompter()
        self._dataset: Any = None
        self._depth_hits: torch.Tensor | None = None  # per-depth counts of the evaluation in progress
        self._depth_totals: torch.Tensor | None = None

    # --- model and optimiser --------------------------------------------------------------------------

    def get_model(self) -> nn.Module:
        return build_model(self.prompter.vocab_size, self.config)

    def get_optimizer(self, model: nn.Module) -> Optimizer:
        return build_optimizer(model, self.config, self.device)

    def get_scheduler(self, optimizer: Optimizer) -> LRScheduler | None:
        return build_scheduler(optimizer, self.config, self.config.max_steps)

    # --- data -----------------------------------------------------------------------------------------

    @property
    def dataset(self) -> Any:
        """The cached ``DatasetDict`` (built on first use; rank 0 generates, the others then load it)."""
        if self._dataset is None:
            c = self.config
            if self.rank != 0:
                tdist.barrier()  # wait until rank 0 has generated and saved it; then load the cache
            self._dataset = self.prompter.make_dataset(
                c.dataset_path,
                c.train_size,
                c.test_size,
                seed=c.data_seed,
                dedup_test=c.dedup_test,
                progress=self.is_main,
            )
            if self.rank == 0:
                tdist.barrier()
        return self._dataset

    def get_train_dataloader(self) -> Iterable[Any]:
        c = self.config
        if c.streaming:
            stream = StreamingDataset(
                self.prompter, batch_size=c.batch_size, seed=c.seed, rank=self.rank, world_size=self.world_size
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
        stats = leakage_stats(self.dataset)
        text = "\n".join(f"{k}: {v:,}" for k, v in stats.items())
        self.logger.log_text("dataset", text, save_to_file=False)
        self.logger.log_metrics(dict(stats), "data", 0, force=True)

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
            metrics["acc_per_depth"] = {
                str(d): float(h) / float(t) for d, (h, t) in enumerate(zip(hits.tolist(), totals.tolist())) if t > 0
            }
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
        plain = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
        if not isinstance(plain, MultilayerTransformer):
            return
        prompt = batch["prompt"].to(self.device)
        weights = plain(prompt, return_attn_weights=True).attn_weights
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
