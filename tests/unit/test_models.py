"""The CLIP model and the digits image-caption data set (suanwang.models)."""

from __future__ import annotations

import ast
import collections
import math
import pathlib

import pytest
import torch

import suanwang.models
from suanwang.models.clip import ClipConfig, ClipModel, clip_loss
from suanwang.models.data import (
    Batches,
    PairDataset,
    Tokenizer,
    digits_tokenizer,
    eval_loss,
    load_digits_pairs,
    shard,
)

N_DIGITS = 1797


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Two shared cores: one intra-op thread is both faster and repeatable here.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pairs() -> tuple[PairDataset, PairDataset]:
    return load_digits_pairs(seed=0)


def tiny_model(seed: int = 0) -> ClipModel:
    torch.manual_seed(seed)
    return ClipModel(ClipConfig.preset("tiny"))


def _batch(dataset: PairDataset, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return dataset.images[:n], dataset.tokens[:n]


# --- the model ---------------------------------------------------------------------------


def test_models_never_import_the_runtime():
    root = pathlib.Path(suanwang.models.__file__).parent
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert "runtime" not in name.split("."), f"{path.name} imports {name}"


@pytest.mark.parametrize("size", ["tiny", "small"])
def test_analytic_param_count_equals_real(size):
    config = ClipConfig.preset(size)
    model = ClipModel(config)
    real = {
        "vision": sum(p.numel() for p in model.visual.parameters()),
        "text": sum(p.numel() for p in model.text.parameters()),
        "logit_scale": model.logit_scale.numel(),
    }
    assert config.param_breakdown() == real
    assert config.param_count() == sum(p.numel() for p in model.parameters())


def test_preset_sizes():
    counts = {name: ClipConfig.preset(name).param_count() for name in ClipConfig.PRESETS}
    assert 50_000 <= counts["tiny"] <= 200_000
    assert counts["tiny"] < counts["small"] < counts["base"] < counts["1b"]
    assert 0.95e9 <= counts["1b"] <= 1.05e9


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="patch_size"):
        ClipConfig(patch_size=3)
    with pytest.raises(ValueError, match="vision_heads"):
        ClipConfig(vision_width=64, vision_heads=5)
    with pytest.raises(ValueError, match="text_layers"):
        ClipConfig(text_layers=0)
    with pytest.raises(ValueError, match="pad_id"):
        ClipConfig(pad_id=64, vocab_size=64)
    with pytest.raises(ValueError, match="logit_scale_init"):
        ClipConfig(logit_scale_init=10.0)
    with pytest.raises(ValueError, match="one of"):
        ClipConfig.preset("huge")
    with pytest.raises(ValueError, match="no field"):
        ClipConfig.preset("tiny", depth=3)
    assert ClipConfig.preset("tiny", embed_dim=16).embed_dim == 16


def test_forward_shapes_and_norms(pairs):
    model = tiny_model()
    config = model.config
    images, tokens = _batch(pairs[0], 5)
    image_emb, text_emb, scale = model(images, tokens)
    assert image_emb.shape == text_emb.shape == (5, config.embed_dim)
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(text_emb.norm(dim=-1), torch.ones(5))
    assert scale.shape == () and scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    # shorter token sequences than the context are fine; malformed inputs are not
    assert model.encode_text(tokens[:, :4]).shape == (5, config.embed_dim)
    with pytest.raises(ValueError, match="images"):
        model(images[:, :, :4], tokens)
    with pytest.raises(ValueError, match="tokens"):
        model(images, torch.zeros(5, config.context_length + 1, dtype=torch.long))


def test_logit_scale_is_clamped_like_clip(pairs):
    model = tiny_model()
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    _, _, scale = model(*_batch(pairs[0], 2))
    assert scale.item() == pytest.approx(100.0)


def test_padding_does_not_change_the_text_embedding():
    model = tiny_model()
    tokens = torch.tensor([[5, 7, 9, 0, 0, 0]])
    torch.testing.assert_close(model.encode_text(tokens), model.encode_text(tokens[:, :3]))


def test_clip_loss_matches_reference():
    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1)
    logits = 3.0 * a @ b.t()
    i2t = -torch.log_softmax(logits, dim=1).diagonal().mean()
    t2i = -torch.log_softmax(logits, dim=0).diagonal().mean()
    torch.testing.assert_close(clip_loss(a, b, 3.0), (i2t + t2i) / 2)
    # uninformative embeddings: exactly ln(B); matched one-hot embeddings: near zero
    same = torch.ones(6, 8) / math.sqrt(8)
    assert clip_loss(same, same, 14.0).item() == pytest.approx(math.log(6))
    eye = torch.eye(6)
    assert clip_loss(eye, eye, 100.0).item() < 1e-6
    with pytest.raises(ValueError):
        clip_loss(a, b[:5], 1.0)


def test_loss_at_init_is_near_ln_batch(pairs):
    model = tiny_model()
    _, held_out = pairs
    batch = 64
    loss = model.loss(_batch(held_out, batch)).item()
    assert loss == pytest.approx(math.log(batch), rel=0.1)


def test_init_and_forward_are_deterministic(pairs):
    a, b = tiny_model(3), tiny_model(3)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    batch = _batch(pairs[0], 8)
    assert torch.equal(a.loss(batch), b.loss(batch))
    assert not torch.equal(tiny_model(4).visual.proj.weight, a.visual.proj.weight)


# --- the data ----------------------------------------------------------------------------


def test_tokenizer_round_trip_and_padding(pairs):
    tokenizer = digits_tokenizer()
    train, held_out = pairs
    for caption in train.captions + held_out.captions:
        assert tokenizer.decode(tokenizer.encode(caption)) == caption
    for row, caption in zip(train.tokens[:50], train.captions[:50]):
        assert tokenizer.decode(row) == caption
    tokens = tokenizer(["a bold zero", "the number nine"])
    assert tokens.dtype == torch.long and tokens.shape == (2, tokenizer.max_length)
    assert tokens[0, 3:].eq(tokenizer.pad_id).all()
    assert tokenizer.encode("a purple zero")[1] == tokenizer.unk_id
    with pytest.raises(ValueError, match="max_length"):
        tokenizer.encode(" ".join(["a"] * (tokenizer.max_length + 1)))
    # deterministic, and it fits the model's defaults
    assert tokenizer.vocab == digits_tokenizer.__wrapped__().vocab
    assert tokenizer.vocab_size <= ClipConfig().vocab_size
    assert tokenizer.max_length <= ClipConfig().context_length
    assert tokenizer.pad_id == ClipConfig().pad_id
    with pytest.raises(ValueError):
        Tokenizer(["a", "a"], 4)


def test_split_is_stratified_disjoint_and_deterministic(pairs):
    train, held_out = pairs
    assert len(train) + len(held_out) == N_DIGITS
    ids = torch.cat([train.ids, held_out.ids])
    assert torch.equal(ids.sort().values, torch.arange(N_DIGITS))
    per_class = collections.Counter(torch.cat([train.labels, held_out.labels]).tolist())
    held = collections.Counter(held_out.labels.tolist())
    assert all(held[c] == round(0.2 * n) for c, n in per_class.items())
    again_train, again_held = load_digits_pairs(seed=0)
    assert torch.equal(again_train.ids, train.ids) and torch.equal(again_held.ids, held_out.ids)
    assert again_train.captions == train.captions
    other_train, _ = load_digits_pairs(seed=1)
    assert not torch.equal(other_train.ids, train.ids)
    _, small_held = load_digits_pairs(seed=0, eval_fraction=0.1)
    assert len(small_held) < len(held_out)
    with pytest.raises(ValueError, match="eval_fraction"):
        load_digits_pairs(seed=0, eval_fraction=1.0)


def test_images_are_normalised_and_captions_describe_them(pairs):
    train, _ = pairs
    assert train.images.dtype == torch.float32 and train.images.shape[1:] == (1, 8, 8)
    assert abs(train.images.mean().item()) < 0.05
    assert train.images.std().item() == pytest.approx(1.0, abs=0.05)
    names = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
    for label, caption in zip(train.labels.tolist(), train.captions):
        assert names[label] in caption.split()
    # captions of one digit differ: descriptors are split into terciles within each class
    for digit in range(10):
        captions = [c for c, y in zip(train.captions, train.labels.tolist()) if y == digit]
        assert len(set(captions)) >= 9
        for word in ("thin", "regular", "bold"):
            assert sum(word in c.split() for c in captions) > len(captions) / 5


def test_shards_are_disjoint_covering_and_composable(pairs):
    train, _ = pairs
    centers = [shard(train, c, 3) for c in range(3)]
    workers = [shard(center, w, 2) for center in centers for w in range(2)]
    for level in (centers, workers):
        ids = torch.cat([s.ids for s in level])
        assert len(ids) == len(train) and len(set(ids.tolist())) == len(train)
        assert max(len(s) for s in level) - min(len(s) for s in level) <= 1
    for center, mine in zip(centers, [workers[0:2], workers[2:4], workers[4:6]]):
        assert set(center.ids.tolist()) == set(torch.cat([w.ids for w in mine]).tolist())
    # a shuffled data set gives every shard every digit
    assert all(len(set(w.labels.tolist())) == 10 for w in workers)
    assert shard(train, 0, 1).captions == train.captions
    for index, count in [(3, 3), (-1, 3), (0, 0), (0, len(train) + 1)]:
        with pytest.raises(ValueError):
            shard(train, index, count)


def _indexed(n: int) -> PairDataset:
    """A data set whose image ``i`` is filled with ``i``, to see which pairs a batch holds."""
    return PairDataset(
        images=torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 8, 8),
        tokens=torch.arange(n).view(n, 1).expand(n, 4),
        labels=torch.zeros(n, dtype=torch.long),
        ids=torch.arange(n),
        captions=tuple(str(i) for i in range(n)),
    )


def _take(batches: Batches, k: int) -> list[list[int]]:
    return [next(batches)[0][:, 0, 0, 0].long().tolist() for _ in range(k)]


def test_batches_cycle_reshuffle_and_are_deterministic(pairs):
    images, tokens = next(Batches(pairs[0], batch_size=32))
    assert images.shape == (32, 1, 8, 8) and images.dtype == torch.float32
    assert tokens.shape == (32, digits_tokenizer().max_length) and tokens.dtype == torch.long

    data = _indexed(10)
    stream = Batches(data, batch_size=3, seed=7)
    assert stream.batches_per_epoch == 3
    epochs = _take(stream, 9)
    for e in range(3):
        seen = sum(epochs[3 * e : 3 * e + 3], [])
        assert len(set(seen)) == 9  # no repeats within an epoch
    assert epochs[:3] != epochs[3:6]  # reshuffled
    assert stream.epoch == 2
    assert _take(Batches(data, 3, seed=7), 9) == epochs
    assert _take(Batches(data, 3, seed=8), 3) != epochs[:3]
    assert _take(Batches(data, 3, seed=7, epoch=1), 3) == epochs[3:6]

    resumed = Batches(data, 3, seed=7)
    partial = Batches(data, 3, seed=7)
    _take(partial, 4)
    resumed.load_state_dict(partial.state_dict())
    assert _take(resumed, 5) == epochs[4:]
    for bad in (0, 11):
        with pytest.raises(ValueError, match="batch_size"):
            Batches(data, bad)


def test_eval_loss_is_deterministic_and_restores_mode(pairs):
    _, held_out = pairs
    model = tiny_model()
    model.train()
    first = eval_loss(model, held_out, batch_size=64)
    assert model.training
    assert eval_loss(model, held_out, batch_size=64) == first
    assert first == pytest.approx(math.log(60), rel=0.1)  # 359 pairs -> 6 batches of ~60
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError):
        eval_loss(model, held_out, batch_size=1)


def test_tiny_model_learns_the_captions(pairs):
    """The demo budget: a couple hundred AdamW steps cut held-out loss below 0.6x."""
    train, held_out = pairs
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, betas=(0.9, 0.95))
    initial = eval_loss(model, held_out, batch_size=64)
    for _, batch in zip(range(250), Batches(train, batch_size=32, seed=0)):
        loss = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    final = eval_loss(model, held_out, batch_size=64)
    assert final < 0.6 * initial, (initial, final)
