"""A CLIP-style image-text model as plain ``nn.Module``s.

A small ViT encodes images, a small transformer encodes token sequences, linear maps project
both into one embedding space, and :func:`clip_loss` pulls matching pairs together
(symmetric InfoNCE, Radford et al. 2021). Sizes are named presets of :class:`ClipConfig`;
``ClipConfig.param_count()`` gives the parameter count without building the model, so the
runtime can plan WAN payloads for the ``1b`` preset without allocating it.

The model knows nothing of distribution: no process groups, no devices beyond what the
caller moves it to.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClipConfig", "ClipModel", "clip_loss"]

# CLIP's temperature: initialised at 1/0.07 and never allowed past 100.
_LOGIT_SCALE_INIT = math.log(1 / 0.07)
_LOGIT_SCALE_MAX = math.log(100.0)


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    """Sizes of a :class:`ClipModel`.

    The defaults fit the offline digits data (``suanwang.models.data``): 8x8 grey images
    and a word vocabulary under 64 tokens with captions of at most 16 tokens.

    Attributes:
        image_size: side of the square input image in pixels.
        in_channels: image channels.
        patch_size: side of a square ViT patch; must divide ``image_size``.
        vision_width, vision_layers, vision_heads: the ViT's residual width, depth and heads.
        text_width, text_layers, text_heads: the text transformer's width, depth and heads.
        mlp_ratio: hidden width of every MLP as a multiple of its block's width.
        vocab_size: number of token ids; id ``pad_id`` marks padding.
        context_length: the longest token sequence.
        embed_dim: width of the shared embedding space.
        pad_id: the padding token id; padded positions are masked out of attention and pooling.
        logit_scale_init: initial log of the contrastive temperature's inverse.
        logit_scale_max: the log scale is clamped to at most this in ``forward``.

    Raises:
        ValueError: on construction, naming the field and the allowed values.
    """

    image_size: int = 8
    in_channels: int = 1
    patch_size: int = 4
    vision_width: int = 64
    vision_layers: int = 2
    vision_heads: int = 4
    text_width: int = 32
    text_layers: int = 1
    text_heads: int = 2
    mlp_ratio: int = 2
    vocab_size: int = 64
    context_length: int = 16
    embed_dim: int = 256
    pad_id: int = 0
    logit_scale_init: float = _LOGIT_SCALE_INIT
    logit_scale_max: float = _LOGIT_SCALE_MAX

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        # The defaults (~104k parameters). Demo size: AdamW at lr 2e-3, batch 32 takes the
        # digits held-out loss below 0.6x its initial value in ~75-150 steps (~1 s, 1 core).
        # Patches of 4x4 (not 2x2) and a 256-wide embedding space were measured: smaller
        # patches learn several times slower, and a narrower space starts far above ln(B).
        "tiny": {},
        # A few million parameters: still quick on CPU, enough to make codecs matter.
        "small": dict(
            vision_width=192, vision_layers=4, vision_heads=4,
            text_width=192, text_layers=4, text_heads=4,
            mlp_ratio=4, embed_dim=128,
        ),
        # ViT-B/CLIP-B widths (about 125M parameters).
        "base": dict(
            vision_width=768, vision_layers=12, vision_heads=12,
            text_width=512, text_layers=12, text_heads=8,
            mlp_ratio=4, embed_dim=512,
        ),
        # About 1.0B parameters (ViT-H-like vision tower, wide text tower), for WAN-scale runs.
        "1b": dict(
            vision_width=1280, vision_layers=32, vision_heads=16,
            text_width=1024, text_layers=30, text_heads=16,
            mlp_ratio=4, embed_dim=1024,
        ),
    }

    def __post_init__(self) -> None:
        positive = (
            "image_size", "in_channels", "patch_size", "vision_width", "vision_layers",
            "vision_heads", "text_width", "text_layers", "text_heads", "mlp_ratio",
            "vocab_size", "context_length", "embed_dim",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ClipConfig.{name}={value!r}: must be an integer >= 1")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ClipConfig.patch_size={self.patch_size}: must divide "
                f"image_size={self.image_size}"
            )
        for tower in ("vision", "text"):
            width, heads = getattr(self, f"{tower}_width"), getattr(self, f"{tower}_heads")
            if width % heads:
                raise ValueError(
                    f"ClipConfig.{tower}_heads={heads}: must divide {tower}_width={width}"
                )
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(
                f"ClipConfig.pad_id={self.pad_id}: must be in [0, vocab_size={self.vocab_size})"
            )
        if not (math.isfinite(self.logit_scale_max) and self.logit_scale_max >= 0):
            raise ValueError(
                f"ClipConfig.logit_scale_max={self.logit_scale_max}: must be finite and >= 0"
            )
        if not 0 <= self.logit_scale_init <= self.logit_scale_max:
            raise ValueError(
                f"ClipConfig.logit_scale_init={self.logit_scale_init}: must be in "
                f"[0, logit_scale_max={self.logit_scale_max}]"
            )

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ClipConfig":
        """A named size, optionally with some fields changed.

        Args:
            name: one of ``tiny``, ``small``, ``base``, ``1b``.
            **overrides: fields to set on top of the preset.

        Raises:
            ValueError: for an unknown name or an invalid field.
        """
        if name not in cls.PRESETS:
            raise ValueError(f"ClipConfig preset {name!r}: must be one of {sorted(cls.PRESETS)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ValueError(f"ClipConfig has no field(s) {unknown}; fields are {sorted(fields)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def param_count(self) -> int:
        """The number of parameters of ``ClipModel(self)``, computed from the sizes alone."""
        return sum(self.param_breakdown().values())

    def param_breakdown(self) -> dict[str, int]:
        """Parameters per part (``vision``, ``text``, ``logit_scale``), from the sizes alone."""

        def block(w: int) -> int:
            hidden = self.mlp_ratio * w
            attention = (w * 3 * w + 3 * w) + (w * w + w)  # qkv and output projections
            mlp = (w * hidden + hidden) + (hidden * w + w)
            norms = 2 * 2 * w
            return attention + mlp + norms

        vw, tw, e = self.vision_width, self.text_width, self.embed_dim
        vision = (
            self.in_channels * self.patch_size**2 * vw + vw  # patch embedding (with bias)
            + vw  # class token
            + (self.num_patches + 1) * vw  # positions
            + 2 * vw  # ln_pre
            + self.vision_layers * block(vw)
            + 2 * vw  # ln_post
            + vw * e  # projection (no bias)
        )
        text = (
            self.vocab_size * tw
            + self.context_length * tw
            + self.text_layers * block(tw)
            + 2 * tw  # ln_final
            + tw * e
        )
        return {"vision": vision, "text": text, "logit_scale": 1}


class Attention(nn.Module):
    """Multi-head self-attention with an optional key mask (True = attend)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        mask = None if key_mask is None else key_mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, w))


class Block(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), key_mask)
        return x + self.mlp(self.ln_2(x))


class VisionEncoder(nn.Module):
    """A ViT: patch embedding, class token, transformer blocks, class-token output."""

    def __init__(self, config: ClipConfig):
        super().__init__()
        w, p = config.vision_width, config.patch_size
        self.patch_embed = nn.Conv2d(config.in_channels, w, kernel_size=p, stride=p)
        self.class_token = nn.Parameter(torch.zeros(w))
        self.positions = nn.Parameter(torch.zeros(config.num_patches + 1, w))
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(
            Block(w, config.vision_heads, config.mlp_ratio) for _ in range(config.vision_layers)
        )
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Linear(w, config.embed_dim, bias=False)
        self.image_size = config.image_size
        self.in_channels = config.in_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images`` [B, C, H, W] -> unnormalised embeddings [B, embed_dim]."""
        expected = (self.in_channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be [B, {', '.join(map(str, expected))}], got "
                             f"{list(images.shape)}")
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # [B, patches, w]
        cls = self.class_token.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positions)
        for block in self.blocks:
            x = block(x)
        return self.proj(self.ln_post(x[:, 0]))


class TextEncoder(nn.Module):
    """Token and position embeddings, transformer blocks, mean over non-padding tokens.

    Attention is bidirectional with padding masked out; pooling is a masked mean, so the
    encoder needs no end-of-text token (CLIP pools at its EOT token under a causal mask).
    """

    def __init__(self, config: ClipConfig):
        super().__init__()
        w = config.text_width
        self.token_embed = nn.Embedding(config.vocab_size, w)
        self.positions = nn.Parameter(torch.zeros(config.context_length, w))
        self.blocks = nn.ModuleList(
            Block(w, config.text_heads, config.mlp_ratio) for _ in range(config.text_layers)
        )
        self.ln_final = nn.LayerNorm(w)
        self.proj = nn.Linear(w, config.embed_dim, bias=False)
        self.pad_id = config.pad_id
        self.context_length = config.context_length

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` [B, L] (L <= context_length) -> unnormalised embeddings [B, embed_dim]."""
        if tokens.dim() != 2 or tokens.shape[1] > self.context_length:
            raise ValueError(
                f"tokens must be [B, L] with L <= {self.context_length}, got {list(tokens.shape)}"
            )
        mask = tokens != self.pad_id
        # An all-padding row would make attention divide by zero; let it see itself instead.
        mask = mask | ~mask.any(dim=1, keepdim=True)
        x = self.token_embed(tokens) + self.positions[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln_final(x)
        weights = mask.unsqueeze(-1).to(x.dtype)
        pooled = (x * weights).sum(dim=1) / weights.sum(dim=1)
        return self.proj(pooled)


class ClipModel(nn.Module):
    """Image and text towers projected into one space, plus a learnable temperature.

    Initialisation draws only from torch's default generator, so
    ``torch.manual_seed(s); ClipModel(c)`` is reproducible.
    """

    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config
        self.visual = VisionEncoder(config)
        self.text = TextEncoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.apply(self._init_weights)
        # CLIP-style: embeddings small, projections scaled by the tower width.
        nn.init.normal_(self.visual.class_token, std=config.vision_width**-0.5)
        nn.init.normal_(self.visual.positions, std=0.01)
        nn.init.normal_(self.text.positions, std=0.01)
        nn.init.normal_(self.visual.proj.weight, std=config.vision_width**-0.5)
        nn.init.normal_(self.text.proj.weight, std=config.text_width**-0.5)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings [B, embed_dim]."""
        return F.normalize(self.visual(images), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-norm text embeddings [B, embed_dim]."""
        return F.normalize(self.text(tokens), dim=-1)

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Embed a batch of pairs.

        Args:
            images: float [B, in_channels, image_size, image_size].
            tokens: long [B, L], L <= context_length, padded with ``pad_id``.

        Returns:
            ``(image_emb, text_emb, logit_scale)``: unit-norm [B, embed_dim] embeddings and
            the multiplicative logit scale ``exp(clamp(log_scale, 0, logit_scale_max))``.
        """
        scale = self.logit_scale.clamp(0.0, self.config.logit_scale_max).exp()
        return self.encode_image(images), self.encode_text(tokens), scale

    def loss(self, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """:func:`clip_loss` of a batch ``(images, tokens)``."""
        images, tokens = batch
        return clip_loss(*self(images, tokens))


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """The symmetric contrastive (InfoNCE) loss of CLIP.

    Pair ``i`` is the positive for row and column ``i`` of the similarity matrix; the loss is
    the mean of image-to-text and text-to-image cross entropies. With uninformative
    embeddings it equals ``ln(B)``.

    Args:
        image_emb: [B, D], normally unit-norm.
        text_emb: [B, D], normally unit-norm.
        logit_scale: the multiplicative scale (already exponentiated), a scalar.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: if the embeddings are not two [B, D] tensors of one shape with B >= 1.
    """
    if image_emb.dim() != 2 or image_emb.shape != text_emb.shape or image_emb.shape[0] < 1:
        raise ValueError(
            f"clip_loss needs two [B, D] embeddings of one shape, got "
            f"{list(image_emb.shape)} and {list(text_emb.shape)}"
        )
    logits = logit_scale * image_emb @ text_emb.t()
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
