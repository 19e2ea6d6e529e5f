"""Temporal encoder: contextualises CLIP frame tokens across time into video tokens.

Video-ColBERT's second visual branch. A few residual attention blocks (initialised from CLIP's
text transformer, so training starts from attention weights that already mix tokens sensibly)
run over the frame tokens plus a handful of learned "visual expansion" tokens, which give the
video extra slots for content no single frame holds (motion, order of events).
"""
import torch
from torch import nn

from .module_clip import CLIP, Transformer


class TemporalEncoder(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, max_frames: int, num_expansion: int):
        super().__init__()
        self.max_frames = max_frames
        self.num_expansion = num_expansion
        self.frame_position_embedding = nn.Parameter(torch.empty(max_frames, width))  # T x D
        self.expansion_tokens = nn.Parameter(torch.empty(num_expansion, width))  # N x D
        # No causal mask: every frame sees the whole clip.
        self.transformer = Transformer(width, layers, heads) if layers > 0 else None
        nn.init.normal_(self.frame_position_embedding, std=0.01)
        nn.init.normal_(self.expansion_tokens, std=0.02)

    @torch.no_grad()
    def init_from_clip(self, clip: CLIP) -> None:
        """Copy CLIP's first text blocks and text positional embedding (DESIGN.md §2).

        Blocks beyond the depth of CLIP's text transformer keep their random initialisation.
        """
        if self.transformer is not None:
            text_blocks = clip.transformer.resblocks
            for block, source in zip(self.transformer.resblocks, text_blocks):
                block.load_state_dict(source.state_dict())
        n = min(self.max_frames, clip.positional_embedding.shape[0])
        self.frame_position_embedding[:n].copy_(clip.positional_embedding[:n])

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
