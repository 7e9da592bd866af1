"""A tiny real task for trainer tests: next-token prediction on arithmetic progressions modulo V.

Each sequence is ``x_t = (start + t * stride) mod V`` with a random start and stride in {1, 2, 3}; after two
tokens the rest is determined, so a 2-layer transformer learns it in a few dozen steps on a CPU.

Importable by tests (``from toy_task import ToyConfig, ToyTrainer, ToyLoader``) and runnable::

    python -m tests.toy_task --max_steps=50 --tensorboard_logdir=/tmp/toy
    torchrun --nproc_per_node=2 -m tests.toy_task --device=cpu --param_dump_path=/tmp/p{rank}.pt
"""

import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from iluvattnshun import distributed as tdist
from iluvattnshun.nn import MultilayerTransformer
from iluvattnshun.trainer import Trainer, TrainerConfig
from iluvattnshun.utils import parse_config


@dataclass(kw_only=True)
class ToyConfig(TrainerConfig):
    """Toy arithmetic-progression task."""

    vocab_size: int = 16
    """Modulus V (and vocabulary size)."""
    seq_len: int = 12
    """Tokens per sequence."""
    d_model: int = 32
    """Model width."""
    n_heads: int = 2
    """Attention heads."""
    n_layers: int = 2
    """Transformer layers."""
    dropout: float = 0.1
    """Dropout everywhere (non-zero so that resume tests exercise the RNG state)."""
    lr: float = 3e-3
    """AdamW learning rate."""
    warmup_steps: int = 5
    """Linear learning-rate warmup steps (a LambdaLR scheduler)."""
    train_size: int = 256
    """Training sequences."""
    val_size: int = 64
    """Validation sequences."""
    data_seed: int = 1234
    """Seed of the dataset (independent of the training seed)."""
    loader_skip: bool = True
    """Whether the training loader offers skip(n) (otherwise the trainer draws and drops batches)."""
    step_sleep: float = 0.0
    """Seconds to sleep in every training step (tests use it to slow a run down)."""
    param_dump_path: str | None = None
    """After training, save the parameters to this path ({rank} is replaced by the rank)."""

    batch_size: int = 32
    """Samples per micro-batch on each process."""
    eval_every_n_samples: int | None = 256
    """Evaluate every this many training samples."""
    tensorboard_logdir: str = "logs/toy"
    """Directory holding the toy task's run directories."""

    def data_fields(self) -> list[str]:
        return [*super().data_fields(), "vocab_size", "seq_len", "train_size", "val_size", "data_seed"]

    def validate(self) -> None:
        """Check the task fields, then the trainer fields."""
        super().validate()
        if self.seq_len < 3:
            raise ValueError(f"seq_len must be >= 3, got {self.seq_len}")
        if self.vocab_size < 4:
            raise ValueError(f"vocab_size must be >= 4, got {self.vocab_size}")


PRESETS = {
    "default": ToyConfig,
    "tiny": lambda: ToyConfig(d_model=16, n_layers=1, train_size=128, val_size=32, batch_size=16),
}


def make_sequences(n: int, seq_len: int, vocab_size: int, seed: int) -> torch.Tensor:
    """(n, seq_len) int64 arithmetic progressions mod ``vocab_size``."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, vocab_size, size=(n, 1))
    stride = rng.integers(1, 4, size=(n, 1))
    t = np.arange(seq_len)[None, :]
    return torch.from_numpy((start + t * stride) % vocab_size).long()


class ToyLoader:
    """Batches of ``{"tokens": (B, T)}`` sharded by rank, reshuffled per epoch from (seed, epoch) only.

    Training loaders drop the remainder so that every rank gets the same number of full batches.
    """

    def __init__(
        self,
        data: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch``."""
        self.epoch = epoch

    def skip(self, n: int) -> None:
        """Start the next iteration at batch ``n``."""
        self._skip = n

    def _shard(self) -> torch.Tensor:
        n = len(self.data)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(n)
        if self.drop_last:
            order = order[: n // (self.batch_size * self.world_size) * self.batch_size * self.world_size]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        per_rank = len(self._shard())
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        shard = self._shard()
        start, self._skip = self._skip, 0
        for i in range(start * self.batch_size, len(shard), self.batch_size):
            yield {"tokens": self.data[shard[i : i + self.batch_size]]}


class SkiplessLoader(ToyLoader):
    """A ToyLoader without ``skip``: the trainer must draw and drop batches to resume mid-epoch."""

    skip = None  # type: ignore[assignment]  # hides ToyLoader.skip


class ToyTrainer(Trainer[ToyConfig]):
    """Trains a tiny MultilayerTransformer on the toy task."""

    def init_state(self) -> None:
        cfg = self.config
        self.train_data = make_sequences(cfg.train_size, cfg.seq_len, cfg.vocab_size, cfg.data_seed)
        self.val_data = make_sequences(cfg.val_size, cfg.seq_len, cfg.vocab_size, cfg.data_seed + 1)

    def get_model(self) -> nn.Module:
        cfg = self.config
        return MultilayerTransformer(
            cfg.vocab_size,
            d_model=cfg.d_model,
            n_heads=cfg.n_heads,
            n_layers=cfg.n_layers,
            dropout_attn=cfg.dropout,
            dropout_mlp=cfg.dropout,
            dropout_emb=cfg.dropout,
        )

    def get_optimizer(self, model: nn.Module) -> Optimizer:
        return torch.optim.AdamW(model.parameters(), lr=self.config.lr, weight_decay=0.0)

    def get_scheduler(self, optimizer: Optimizer) -> LRScheduler | None:
        warmup = max(self.config.warmup_steps, 1)
        return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))

    def get_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if model.training and self.config.step_sleep:
            time.sleep(self.config.step_sleep)
        tokens = batch["tokens"]
        logits = model(tokens[:, :-1])[0]  # (B, T-1, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        return loss, logits.argmax(-1)

    def val_metrics(self, model: nn.Module, batch: Any, preds: Any) -> Mapping[str, Any]:
        self._val_rows = getattr(self, "_val_rows", 0) + len(batch["tokens"])
        targets = batch["tokens"][:, 1:]
        correct = (preds == targets).float()  # (B, T-1)
        # Position 0's target depends on the unseen stride; from position 1 on the task is deterministic.
        return {
            "accuracy": float(correct[:, 1:].mean()),
            "acc_per_position": {str(i): float(correct[:, i].mean()) for i in range(3)},
            "sample": " ".join(str(int(t)) for t in batch["tokens"][0]),
        }

    def post_val_metrics(self, model: nn.Module) -> Mapping[str, Any]:
        # Runs on every rank, so it may gather what val_metrics counted on each shard.
        rows = sum(tdist.all_gather_object(getattr(self, "_val_rows", 0)))
        self._val_rows = 0
        return {"val_sequences": rows}

    def get_train_dataloader(self) -> ToyLoader:
        cfg = self.config
        cls = ToyLoader if cfg.loader_skip else SkiplessLoader
        return cls(
            self.train_data,
            cfg.batch_size,
            shuffle=True,
            seed=cfg.data_seed,
            rank=self.rank,
            world_size=self.world_size,
        )

    def get_val_dataloader(self) -> ToyLoader:
        return ToyLoader(
            self.val_data,
            self.config.batch_size,
            shuffle=False,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=False,
        )

    def on_run_start(self) -> None:
        self.logger.notice("dataset", f"{len(self.train_data):,} train / {len(self.val_data):,} val sequences")


def main(argv: list[str] | None = None) -> ToyTrainer:
    """Parse the command line, train, and optionally dump the parameters."""
    config = parse_config(ToyConfig, argv, presets=PRESETS, default_preset="default")
    trainer = ToyTrainer(config)
    trainer.run()
    if config.param_dump_path:
        params = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
        torch.save(params, config.param_dump_path.format(rank=trainer.rank))
    return trainer


if __name__ == "__main__":
    torch.set_num_threads(1)  # several of these run at once in tests on a small machine
    main()
