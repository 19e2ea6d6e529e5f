"""Temporal encoder: contextualises frame tokens across time into video tokens.

Video-ColBERT's second visual branch. A few residual attention blocks (initialised from the
backbone's text transformer, so training starts from attention weights that already mix tokens
sensibly) run over the frame tokens plus a handful of learned "visual expansion" tokens, which give
the video extra slots for content no single frame holds (motion, order of events).

Where the blocks come from (``TemporalEncoder.from_backbone``):

* OpenAI CLIP: our own blocks (QuickGELU, as CLIP's), weights copied from CLIP's first text blocks;
* open_clip (SigLIP, OpenCLIP, ...): copies of the backbone's first text blocks, whatever they
  are (``nn.GELU``, norm eps, layer scale ...), run over frames by ``CopiedTextBlocks``;
* text width != embedding dim (the text blocks cannot read frame tokens): CLIP-style blocks with
  random weights and a random position embedding, with a logged warning.

Frame position embeddings start from the text positional embedding's first rows when it is copied.
"""
import copy
import logging
from typing import Optional

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .module_clip import CLIP, Transformer

logger = logging.getLogger(__name__)


class CopiedTextBlocks(nn.Module):
    """Copies of an open_clip text transformer's first ``layers`` blocks, with a padding mask.

    Same call as our ``Transformer``: ``x`` is ``L x N x D``, ``key_padding_mask`` ``N x L``
    (True = ignore that key). open_clip blocks take an additive attention mask instead, built here.
    """

    def __init__(self, source: nn.Module, layers: int):
        super().__init__()
        if layers > len(source.resblocks):
            raise ValueError(f"temporal_layers {layers} exceeds the {len(source.resblocks)} text blocks it copies")
        self.resblocks = nn.ModuleList(copy.deepcopy(block) for block in source.resblocks[:layers])
        self.heads = self.resblocks[0].attn.num_heads
        self.batch_first = getattr(source, "batch_first", True)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        mask = None
        if key_padding_mask is not None:
            ignore = key_padding_mask.bool()  # N x L
            # A sample with every key masked would give NaN rows; let it attend everywhere (its
            # outputs are meaningless but finite, and the caller masks them out).
            ignore = ignore & ~ignore.all(dim=1, keepdim=True)
            length = ignore.shape[1]
            mask = torch.zeros(ignore.shape, dtype=x.dtype, device=x.device).masked_fill(ignore, float("-inf"))
            mask = mask[:, None, None, :].expand(-1, self.heads, length, -1).reshape(-1, length, length)  # N*H x L x L
        if self.batch_first:
            x = x.transpose(0, 1)  # N x L x D
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.resblocks:
            if use_checkpoint:
                x = checkpoint(block, x, attn_mask=mask, use_reentrant=False)
            else:
                x = block(x, attn_mask=mask)
        return x.transpose(0, 1) if self.batch_first else x


class TemporalEncoder(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, max_frames: int, num_expansion: int,
                 transformer: Optional[nn.Module] = None):
        """``transformer``: the blocks to run (e.g. ``CopiedTextBlocks``); by default ``layers``
        randomly initialised CLIP-style blocks of ``heads`` heads."""
        super().__init__()
        self.max_frames = max_frames
        self.num_expansion = num_expansion
        self.frame_position_embedding = nn.Parameter(torch.empty(max_frames, width))  # T x D
        self.expansion_tokens = nn.Parameter(torch.empty(num_expansion, width))  # N x D
        # No causal mask: every frame sees the whole clip.
        if transformer is None and layers > 0:
            transformer = Transformer(width, layers, heads)
        self.transformer = transformer
        nn.init.normal_(self.frame_position_embedding, std=0.01)
        nn.init.normal_(self.expansion_tokens, std=0.02)

    @classmethod
    def from_backbone(cls, backbone: nn.Module, layers: int, max_frames: int, num_expansion: int) -> "TemporalEncoder":
        """The temporal encoder for ``backbone`` (our CLIP or an open_clip encoder), initialised
        from its text transformer where the widths allow (see the module doc)."""
        width = backbone.embed_dim
        if width % 64:
            raise ValueError(f"the temporal encoder has width / 64 heads, so it needs an embedding dim that is a "
                             f"multiple of 64; the backbone's is {width}")
        text_width = backbone.text_width
        if text_width != width:
            logger.warning("the backbone's text width (%d) differs from its embedding dim (%d): the temporal "
                           "encoder cannot copy its text blocks and starts from random weights", text_width, width)
            return cls(width, layers, width // 64, max_frames, num_expansion)
        source = backbone.text_transformer
        if isinstance(source, Transformer):  # OpenAI CLIP
            encoder = cls(width, layers, width // 64, max_frames, num_expansion)
            encoder.init_from_clip(backbone)
            return encoder
        blocks = CopiedTextBlocks(source, layers) if layers > 0 else None
        encoder = cls(width, layers, width // 64, max_frames, num_expansion, transformer=blocks)
        encoder.copy_positions(backbone.text_positional_embedding)
        return encoder

    @torch.no_grad()
    def copy_positions(self, text_positions: torch.Tensor) -> None:
        """Frame position embeddings from the first rows of a text positional embedding (C x D)."""
        n = min(self.max_frames, text_positions.shape[0])
        self.frame_position_embedding[:n].copy_(text_positions[:n])

    @torch.no_grad()
    def init_from_clip(self, clip: CLIP) -> None:
        """Copy CLIP's first text blocks and text positional embedding.

        Blocks beyond the depth of CLIP's text transformer keep their random initialisation.
        """
        if self.transformer is not None:
            text_blocks = clip.transformer.resblocks
            for block, source in zip(self.transformer.resblocks, text_blocks):
                block.load_state_dict(source.state_dict())
        self.copy_positions(clip.positional_embedding)

    def forward(self, frames: torch.Tensor, frame_mask: torch.Tensor):
        """frames: B x T x D normalised frame tokens, frame_mask: B x T (1 = real frame).

        Returns video tokens B x (T + N) x D (not normalised) and their mask B x (T + N).
        """
        batch, num_frames, _ = frames.shape
        if num_frames > self.max_frames:
            raise ValueError(f"{num_frames} frames exceed the temporal encoder's max_frames={self.max_frames}")
        frame_mask = frame_mask.bool()
        expansion = self.expansion_tokens.to(frames.dtype).expand(batch, -1, -1)  # B x N x D
        x = torch.cat([frames + self.frame_position_embedding[:num_frames].to(frames.dtype), expansion], dim=1)
        mask = torch.cat([frame_mask, frame_mask.new_ones(batch, self.num_expansion)], dim=1)  # B x (T+N)
        if self.transformer is not None:
            # Expansion tokens are never padding, so no row of the key mask is all-True (no NaN).
            x = self.transformer(x.permute(1, 0, 2), key_padding_mask=~mask).permute(1, 0, 2)
            # Frame outputs keep a residual from their input tokens; expansion outputs have none.
            x = torch.cat([x[:, :num_frames] + frames, x[:, num_frames:]], dim=1)
        return x, mask
