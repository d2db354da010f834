"""An offline image-text data set: scikit-learn's 8x8 digits with generated captions.

Each of the 1797 digits is paired with a caption that names the digit and describes the
image itself: stroke weight (from the amount of ink) and slant (from the image's second
moments), each bucketed into terciles *within its class*, so that two captions of one digit
in a batch usually differ and the contrastive loss can fall well below what the class alone
allows. Everything is deterministic and needs no download (the digits ship with
scikit-learn).

The pieces a training job uses::

    train, held_out = load_digits_pairs(seed=0)
    mine = shard(shard(train, center, n_centers), worker, n_workers)
    for images, tokens in Batches(mine, batch_size=32, seed=0): ...
    eval_loss(model, held_out, batch_size=64)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from suanwang.models.clip import clip_loss

__all__ = [
    "Batch",
    "Batches",
    "PairDataset",
    "Tokenizer",
    "digits_tokenizer",
    "eval_loss",
    "load_digits_pairs",
    "shard",
]

Batch = tuple[torch.Tensor, torch.Tensor]
"""``(images float [B, 1, 8, 8] normalised, tokens long [B, L])``."""

# Pixel statistics of all 1797 digits (values 0..16), fixed so that every split and every
# center normalises identically.
PIXEL_MEAN = 4.884164579855314
PIXEL_STD = 6.016787548672236

MAX_CAPTION_TOKENS = 16

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
WEIGHTS = ("thin", "regular", "bold")
SLANTS = ("leaning left", "upright", "leaning right")
TEMPLATES = (
    "a {weight} {slant} {digit}",
    "a photo of the digit {digit} written {slant} in {weight} strokes",
    "the number {digit} drawn with {weight} ink {slant}",
    "a handwritten {digit} {slant} and {weight}",
)


class Tokenizer:
    """A word-level tokenizer with a fixed vocabulary and fixed length.

    Id 0 is ``<pad>``, id 1 is ``<unk>``; words follow in the order given.

    Args:
        words: the vocabulary, without special tokens; no duplicates, no spaces.
        max_length: every encoded sequence is padded to this length.
    """

    PAD = "<pad>"
    UNK = "<unk>"
    pad_id = 0
    unk_id = 1

    def __init__(self, words: Sequence[str], max_length: int):
        if max_length < 1:
            raise ValueError(f"Tokenizer max_length={max_length}: must be >= 1")
        vocab = (self.PAD, self.UNK, *words)
        if len(set(vocab)) != len(vocab) or any(not w or " " in w for w in vocab):
            raise ValueError("Tokenizer words must be distinct, non-empty and contain no spaces")
        self.vocab: tuple[str, ...] = vocab
        self.max_length = max_length
        self._ids = {w: i for i, w in enumerate(vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        """Ids of the words of ``text`` (unpadded); unknown words map to ``<unk>``.

        Raises:
            ValueError: if ``text`` has more than ``max_length`` words (never truncated).
        """
        words = text.split()
        if len(words) > self.max_length:
            raise ValueError(f"{text!r} has {len(words)} words, max_length is {self.max_length}")
        return [self._ids.get(w, self.unk_id) for w in words]

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The text of ``ids``, padding dropped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return " ".join(self.vocab[i] for i in ids if i != self.pad_id)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode and pad: long [len(texts), max_length]."""
        out = torch.full((len(texts), self.max_length), self.pad_id, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


@functools.cache
def digits_tokenizer() -> Tokenizer:
    """The tokenizer of the digits captions: every word the templates can produce, sorted."""
    words: set[str] = set()
    for template in TEMPLATES:
        for digit in DIGIT_NAMES:
            for weight in WEIGHTS:
                for slant in SLANTS:
                    words.update(template.format(digit=digit, weight=weight, slant=slant).split())
    return Tokenizer(sorted(words), MAX_CAPTION_TOKENS)


# eq=False: tensors do not compare to one bool.
@dataclasses.dataclass(frozen=True, eq=False)
class PairDataset:
    """Image-caption pairs held in memory.

    Attributes:
        images: float32 [N, 1, 8, 8], normalised with the fixed digits pixel statistics.
        tokens: long [N, L], padded with id 0.
        labels: long [N], the digit (for analysis; training does not see it).
        ids: long [N], each pair's index in ``sklearn.datasets.load_digits()``; distinct.
        captions: the N caption strings.
    """

    images: torch.Tensor
    tokens: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor
    captions: tuple[str, ...]

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        sizes = {"tokens": self.tokens.shape[0], "labels": self.labels.shape[0],
                 "ids": self.ids.shape[0], "captions": len(self.captions)}
        bad = {k: v for k, v in sizes.items() if v != n}
        if bad:
            raise ValueError(f"PairDataset has {n} images but {bad}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Batch:
        return self.images[i], self.tokens[i]

    def subset(self, index: torch.Tensor | Sequence[int]) -> "PairDataset":
        """The pairs at ``index`` (positions in this data set), in that order."""
        index = torch.as_tensor(index, dtype=torch.long)
        return PairDataset(
            images=self.images[index],
            tokens=self.tokens[index],
            labels=self.labels[index],
            ids=self.ids[index],
            captions=tuple(self.captions[i] for i in index.tolist()),
        )


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float64), bunch.target.astype(np.int64)


def _descriptors(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weight and slant buckets (0, 1, 2) of every image, terciles within its class."""
    ys, xs = np.mgrid[0 : images.shape[1], 0 : images.shape[2]]
    ink = images.sum(axis=(1, 2))
    cx = (images * xs).sum(axis=(1, 2)) / ink
    cy = (images * ys).sum(axis=(1, 2)) / ink
    dx, dy = xs - cx[:, None, None], ys - cy[:, None, None]
    # Horizontal shift per row going up: positive leans right (y grows downwards).
    slant = -(images * dx * dy).sum(axis=(1, 2)) / (images * dy * dy).sum(axis=(1, 2))

    def terciles(values: np.ndarray) -> np.ndarray:
        out = np.empty(len(values), dtype=np.int64)
        for c in np.unique(labels):
            mask = labels == c
            lo, hi = np.quantile(values[mask], [1 / 3, 2 / 3])
            out[mask] = (values[mask] > lo).astype(np.int64) + (values[mask] > hi)
        return out

    return terciles(ink), terciles(slant)


def load_digits_pairs(seed: int = 0, eval_fraction: float = 0.2) -> tuple[PairDataset, PairDataset]:
    """The digits image-caption pairs, split into training and held-out sets.

    The split is stratified by digit (``round(eval_fraction * n)`` of each digit's ``n``
    images are held out); both sets come in a shuffled order. Each image's caption template
    is drawn once per seed. The same ``(seed, eval_fraction)`` always gives the same sets.

    Args:
        seed: chooses the split, the order and the caption templates.
        eval_fraction: share of each digit held out, in (0, 1).

    Returns:
        ``(train, held_out)``.

    Raises:
        ValueError: if ``eval_fraction`` is not in (0, 1).
    """
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction={eval_fraction}: must be in (0, 1)")
    images, labels = _digits()
    weight, slant = _descriptors(images, labels)
    rng = np.random.default_rng(seed)
    template = rng.integers(len(TEMPLATES), size=len(labels))
    captions = tuple(
        TEMPLATES[t].format(digit=DIGIT_NAMES[y], weight=WEIGHTS[w], slant=SLANTS[s])
        for t, y, w, s in zip(template, labels, weight, slant)
    )
    tokenizer = digits_tokenizer()
    everything = PairDataset(
        images=torch.from_numpy((images - PIXEL_MEAN) / PIXEL_STD).float().unsqueeze(1),
        tokens=tokenizer(captions),
        labels=torch.from_numpy(labels),
        ids=torch.arange(len(labels)),
        captions=captions,
    )
    train_idx: list[np.ndarray] = []
    eval_idx: list[np.ndarray] = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_eval = int(round(eval_fraction * len(members)))
        eval_idx.append(members[:n_eval])
        train_idx.append(members[n_eval:])
    train = rng.permutation(np.concatenate(train_idx))
    held_out = rng.permutation(np.concatenate(eval_idx))
    return everything.subset(torch.from_numpy(train)), everything.subset(torch.from_numpy(held_out))


def shard(dataset: PairDataset, index: int, count: int) -> PairDataset:
    """Shard ``index`` of ``count`` disjoint shards that together cover ``dataset``.

    Shard ``i`` holds positions ``i, i + count, i + 2 * count, ...``; on a shuffled data set
    every shard sees every class. Shards compose: ``shard(shard(d, c, C), w, W)`` splits a
    center's shard among its workers.

    Raises:
        ValueError: if ``count < 1``, ``index`` is outside ``[0, count)``, or a shard would be
            empty (``count > len(dataset)``).
    """
    if count < 1:
        raise ValueError(f"shard count={count}: must be >= 1")
    if not 0 <= index < count:
        raise ValueError(f"shard index={index}: must be in [0, {count})")
    if count > len(dataset):
        raise ValueError(f"shard count={count}: more shards than the {len(dataset)} pairs")
    return dataset.subset(torch.arange(index, len(dataset), count))


class Batches:
    """An endless stream of training batches, reshuffled every epoch.

    Epoch ``e`` visits the data set in a permutation fixed by ``(seed, e)`` and yields
    ``len(dataset) // batch_size`` full batches (the remainder of that permutation is
    skipped; the next epoch's shuffle covers it). The stream can be resumed: ``state_dict()``
    records the epoch and the position within it.

    Args:
        dataset: the pairs to draw from.
        batch_size: pairs per batch, at most ``len(dataset)``.
        seed: the shuffle seed.
        epoch: the epoch to start in.

    Raises:
        ValueError: if ``batch_size`` is not in ``[1, len(dataset)]``.
    """

    def __init__(self, dataset: PairDataset, batch_size: int, seed: int = 0, epoch: int = 0):
        if not 1 <= batch_size <= len(dataset):
            raise ValueError(
                f"batch_size={batch_size}: must be in [1, len(dataset)={len(dataset)}]"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.position = 0  # batches already taken in this epoch
        self._order = self._permutation(epoch)

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.batch_size

    def _permutation(self, epoch: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, epoch])
        return torch.from_numpy(rng.permutation(len(self.dataset)))

    def __iter__(self) -> Iterator[Batch]:
        return self

    def __next__(self) -> Batch:
        if self.position == self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._order = self._permutation(self.epoch)
        start = self.position * self.batch_size
        index = self._order[start : start + self.batch_size]
        self.position += 1
        return self.dataset.images[index], self.dataset.tokens[index]

    def state_dict(self) -> dict[str, int]:
        """Where the stream is: ``{"seed", "epoch", "position"}``."""
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (the data set and batch size must match)."""
        if not 0 <= state["position"] <= self.batches_per_epoch:
            raise ValueError(
                f"position={state['position']}: must be in [0, {self.batches_per_epoch}]"
            )
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self._order = self._permutation(self.epoch)


@torch.no_grad()
def eval_loss(model: nn.Module, dataset: PairDataset, batch_size: int) -> float:
    """Mean contrastive loss of ``model`` on ``dataset``, deterministic.

    The data set is cut in order into ``ceil(len / batch_size)`` batches of near-equal size
    (at most ``batch_size``, so every pair counts and no batch is a tiny remainder); the
    result is the mean of the batch losses weighted by batch size. The contrastive loss
    grows with batch size (``ln(B)`` for an untrained model), so compare only numbers taken
    with the same ``batch_size`` and data set.

    Args:
        model: maps ``(images, tokens)`` to ``(image_emb, text_emb, logit_scale)``; it is put
            in eval mode for the call and restored after.
        dataset: the held-out pairs.
        batch_size: the largest batch, >= 2.

    Raises:
        ValueError: if ``batch_size < 2`` or the data set has fewer than 2 pairs.
    """
    if batch_size < 2 or len(dataset) < 2:
        raise ValueError(
            f"eval_loss needs batch_size >= 2 and >= 2 pairs, got {batch_size} and {len(dataset)}"
        )
    n_batches = math.ceil(len(dataset) / batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        total = 0.0
        for index in torch.arange(len(dataset)).tensor_split(n_batches):
            images = dataset.images[index].to(device)
            tokens = dataset.tokens[index].to(device)
            total += clip_loss(*model(images, tokens)).item() * len(index)
        return total / len(dataset)
    finally:
        model.train(was_training)
