"""Character-level language model on Tiny Shakespeare.

    python -m examples.shakespeare                      # quick preset: 4 layers, d 128, 2,000 steps on CPU
    python -m examples.shakespeare --preset=paper       # the original study's recipe (a GPU)
    python -m examples.shakespeare --preset=nanogpt     # nanoGPT's shakespeare-char recipe (a GPU)
    python -m examples.shakespeare --data_path=my.txt   # any text file

The text comes from ``--data_path`` (default ``data/shakespeare/input.txt``, downloaded on first use). The first
90% of the characters train, the last 10% validate. Training samples random windows; validation covers the
whole validation split exactly once per evaluation. Reports loss, bits per character and a sample continued from
a fixed prompt with the KV-cached ``generate``.
"""

import math
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from iluvattnshun.files import atomic_write
from iluvattnshun.model_config import ModelConfig, build_model
from iluvattnshun.nn import MultilayerTransformer
from iluvattnshun.optim import OptimConfig
from iluvattnshun.task import check_training_memory
from iluvattnshun.trainer import Trainer, TrainerConfig

DATA_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
DEFAULT_PATH = "data/shakespeare/input.txt"
IGNORE = -100


@dataclass(kw_only=True)
class ShakespeareConfig(TrainerConfig, ModelConfig, OptimConfig):
    """Character-level Tiny Shakespeare."""

    TASK = "shakespeare"
    ALIASES = {"max_context_length": "context_len"}

    data_path: str = DEFAULT_PATH
    """Text file to train on; the default location is downloaded from the char-rnn repository if missing."""
    context_len: int = 64
    """Characters per training window."""
    sample_prompt: str = "ROMEO:\n"
    """Text the sample generation continues at every evaluation."""
    sample_tokens: int = 200
    """Characters generated for the sample."""
    sample_temperature: float = 0.8
    """Sampling temperature of the sample (0: greedy)."""

    def validate(self) -> None:
        super().validate()
        if self.context_len < 2:
            raise ValueError(f"context_len must be >= 2, got {self.context_len}")
        if not (math.isfinite(self.sample_temperature) and self.sample_temperature >= 0):
            raise ValueError(f"sample_temperature must be a finite number >= 0, got {self.sample_temperature}")
        if not 0 <= self.sample_tokens <= 100_000:
            raise ValueError(f"sample_tokens must be in 0..100000, got {self.sample_tokens}")
        if self.sample_tokens and not self.sample_prompt:
            raise ValueError("sample_prompt must not be empty (samples continue it); --sample_tokens=0 turns them off")

    def data_fields(self) -> list[str]:
        return [*super().data_fields(), "data_path"]


def quick() -> ShakespeareConfig:
    """nanoGPT's CPU 'baby GPT' recipe: 4 layers, 4 heads, d 128, context 64, batch 12, 2,000 steps."""
    return ShakespeareConfig(
        num_layers=4,
        num_heads=4,
        dim_model=128,
        context_len=64,
        batch_size=12,
        max_steps=2000,
        num_epochs=-1,
        lr=1e-3,
        lr_decay="cosine",
        min_lr_factor=0.1,
        warmup_steps=100,
        weight_decay=0.1,
        beta2=0.99,
        rope_base=10000.0,
        eval_every_n_samples=12 * 500,
        save_every_n_seconds=120,
    )


def paper() -> ShakespeareConfig:
    """The original study's recipe: 8 layers, d_model 128, 4 heads, RoPE base 1024, context 128, batch 64,
    AdamW lr 1e-3 with weight decay 0.1 on every parameter, no schedule, dropout 0.1 (meant for a GPU)."""
    return ShakespeareConfig(
        num_layers=8,
        dim_model=128,
        num_heads=4,
        rope_base=1024.0,
        dropout_attn=0.1,
        dropout_mlp=0.1,
        dropout_emb=0.1,
        context_len=128,
        batch_size=64,
        num_epochs=-1,
        lr=1e-3,
        beta2=0.999,
        weight_decay=0.1,
        decay_all_params=True,
        warmup_steps=0,
        eval_every_n_samples=20_000,
        log_every_n_seconds=3.0,
        save_every_n_seconds=100.0,
    )


def nanogpt() -> ShakespeareConfig:
    """nanoGPT's GPU shakespeare-char recipe: 6 layers, 6 heads, d_model 384 (RoPE head dims even), context 256."""
    return ShakespeareConfig(
        num_layers=6,
        num_heads=6,
        dim_model=384,
        context_len=256,
        batch_size=64,
        max_steps=5000,
        num_epochs=-1,
        lr=1e-3,
        lr_decay="cosine",
        min_lr_factor=0.1,
        warmup_steps=100,
        weight_decay=0.1,
        beta2=0.99,
        dropout_attn=0.2,
        dropout_mlp=0.2,
        dropout_emb=0.2,
        eval_every_n_samples=64 * 500,
        save_every_n_seconds=300,
    )


PRESETS: dict[str, Callable[[], ShakespeareConfig]] = {"quick": quick, "paper": paper, "nanogpt": nanogpt}


def ensure_text(path: str) -> str:
    """The text at ``path``; the default path is downloaded first if missing (with a progress bar)."""
    file = Path(path)
    if not file.is_file():
        if path != DEFAULT_PATH or file.exists():
            what = "is a directory, not a text file" if file.is_dir() else "no such file"
            raise FileNotFoundError(f"--data_path={path!r}: {what}")

        def download(out: IO[bytes]) -> None:
            with urllib.request.urlopen(DATA_URL, timeout=30) as response:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc="downloading Tiny Shakespeare") as bar:
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        bar.update(len(chunk))

        try:
            atomic_write(file, download)
        except (urllib.error.URLError, OSError) as e:
            raise FileNotFoundError(
                f"could not download Tiny Shakespeare ({e}). Without internet, put the text at {DEFAULT_PATH} "
                f"or pass --data_path=/path/to/input.txt"
            ) from None
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"data_path: {path} is not UTF-8 text (byte {e.start}); give a plain-text file") from None
    if len(text) < 1000:
        raise ValueError(f"{path} holds only {len(text)} characters: too little to train on")
    return text


class RandomWindows:
    """Endless batches of random training windows, gathered with one indexing op per batch."""

    def __init__(self, data: torch.Tensor, context_len: int, batch_size: int, seed: int, rank: int) -> None:
        self.data, self.context_len, self.batch_size = data, context_len, batch_size
        self.generator = torch.Generator().manual_seed(seed * 1000 + rank)
        self.offsets = torch.arange(context_len + 1)  # (T + 1,)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            starts = torch.randint(
                0, len(self.data) - self.context_len - 1, (self.batch_size, 1), generator=self.generator
            )
            window = self.data[starts + self.offsets]  # (B, T + 1)
            yield {"input": window[:, :-1], "target": window[:, 1:]}


class ValWindows:
    """Consecutive windows covering the validation split exactly once (the last one padded, never wrapped)."""

    def __init__(self, data: torch.Tensor, context_len: int, batch_size: int, rank: int, world_size: int) -> None:
        n_pred = len(data) - 1  # every character but the first is predicted once
        n_windows = math.ceil(n_pred / context_len)
        inputs = torch.zeros(n_windows * context_len, dtype=torch.long)
        targets = torch.full((n_windows * context_len,), IGNORE, dtype=torch.long)
        inputs[:n_pred] = data[:-1]
        targets[:n_pred] = data[1:]
        self.inputs = inputs.view(n_windows, context_len)[rank::world_size]
        self.targets = targets.view(n_windows, context_len)[rank::world_size]
        self.batch_size = batch_size

    def __len__(self) -> int:
        return math.ceil(len(self.inputs) / self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for i in range(0, len(self.inputs), self.batch_size):
            yield {"input": self.inputs[i : i + self.batch_size], "target": self.targets[i : i + self.batch_size]}


class ShakespeareTrainer(Trainer[ShakespeareConfig]):
    """Next-character prediction with a RoPE transformer."""

    def setup(self) -> None:
        text = ensure_text(self.config.data_path)
        self.chars = sorted(set(text))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        data = torch.tensor(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64))
        lookup = torch.zeros(int(data.max()) + 1, dtype=torch.long)
        lookup[torch.tensor([ord(c) for c in self.chars])] = torch.arange(len(self.chars))
        data = lookup[data]
        split = int(0.9 * len(data))
        self.train_data, self.val_data = data[:split], data[split:]
        if self.config.context_len >= len(self.val_data):
            raise ValueError(
                f"context_len must be shorter than the validation split ({len(self.val_data):,} characters of "
                f"{self.config.data_path}), got {self.config.context_len:,}"
            )
        missing = sorted(set(self.config.sample_prompt) - set(self.chars))
        if missing:
            raise ValueError(f"sample_prompt uses characters not in the text: {missing}")
        check_training_memory(self.config, self.device, len(self.chars), self.config.context_len)

    def sequence_length(self) -> int:
        return self.config.context_len

    def encode(self, text: str) -> torch.Tensor:
        return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)

    def decode(self, tokens: torch.Tensor) -> str:
        return "".join(self.chars[int(t)] for t in tokens)

    def get_model(self) -> nn.Module:
        return build_model(len(self.chars), self.config)

    def get_train_dataloader(self) -> RandomWindows:
        c = self.config
        return RandomWindows(self.train_data, c.context_len, c.batch_size, c.seed, self.rank)

    def get_val_dataloader(self) -> ValWindows:
        c = self.config
        return ValWindows(self.val_data, c.context_len, 4 * c.batch_size, self.rank, self.world_size)

    def get_loss(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any]:
        logits = model(batch["input"]).logits  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["target"].flatten(), ignore_index=IGNORE)
        return loss, loss.detach()  # a language model's "prediction" to score is its loss

    def val_metrics(self, model: nn.Module, batch: Any, preds: Any) -> Mapping[str, Any]:
        return {"bits_per_char": preds / math.log(2)}

    def post_val_metrics(self, model: nn.Module) -> Mapping[str, Any]:
        c = self.config
        prompt = self.encode(c.sample_prompt).unsqueeze(0).to(self.device)
        generator = torch.Generator(device=self.device).manual_seed(c.seed)
        assert isinstance(model, MultilayerTransformer)
        out = model.generate(prompt, c.sample_tokens, temperature=c.sample_temperature, generator=generator)
        return {"sample": self.decode(out[0].cpu())}


if __name__ == "__main__":
    ShakespeareTrainer.main(PRESETS, default_preset="quick")
