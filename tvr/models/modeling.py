"""Video-ColBERT: late interaction between query tokens and frame / video tokens.

One forward pass (the method of Video-ColBERT, CVPR 2025):
  query tokens  q = normalise(text_projection(ln_final(every text position)))
  frame tokens  f = normalise(projected CLS of each frame)
  video tokens  v = normalise(temporal encoder over frames + visual expansion tokens)
  score         s = MMS(q, f) + MMS(q, v)
Training scores each rank's queries against the videos of the whole (all-gathered) batch and
applies one sigmoid loss per branch. ``meanp=True`` turns the same code into CLIP4Clip's
mean-pooling baseline: one EOT query token against the mean of the frame tokens.
"""
import math
from dataclasses import dataclass
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..utils.distributed import all_gather_no_grad, all_gather_with_grad, get_rank
from .losses import RetrievalLoss
from .module_clip import CLIP
from .similarity import mean_max_sim
from .temporal import TemporalEncoder

BRANCHES = ("frame", "video")
INTERACTIONS = ("mms", "maxsim")
TEMPORAL_INPUTS = ("normalized", "raw")


@dataclass
class ModelConfig:
    """Everything that defines a trained model besides its weights; each field mirrors a main.py flag.

    Saved in every checkpoint, so evaluation rebuilds exactly the model that was trained.
    """

    base_encoder: str = "ViT-B/32"  # OpenAI name, checkpoint path, scratch:<config> or open_clip:<name>
    pretrained: Optional[str] = None  # open_clip weights: a tag or a file
    tokenizer: Optional[str] = None  # open_clip: folder of a sentencepiece tokenizer (SigLIP)
    # The encoder's architecture (CLIPConfig fields), filled when the model is built, so a checkpoint
    # rebuilds its encoder without downloading weights it is about to overwrite.
    encoder_config: Optional[dict] = None
    interaction: str = "mms"  # mms (MeanMaxSim) | maxsim (ColBERT's sum)
    meanp: bool = False  # CLIP4Clip mean-pooling baseline instead of late interaction
    branches: Tuple[str, ...] = BRANCHES
    query_expansion: bool = True  # padded query positions count as query tokens
    query_sot: bool = True  # <|startoftext|> counts as a query token
    visual_expansion: int = 2  # learned tokens appended to the temporal encoder's input
    temporal_layers: int = 4
    temporal_input: str = "normalized"  # normalized | raw projected CLS tokens
    max_frames: int = 12
    loss: str = "sigmoid"  # sigmoid | softmax
    dual_loss: bool = True  # one loss per branch (else one loss on the summed score)
    init_log_temperature: float = math.log(10.0)
    init_bias: float = -10.0
    sim_chunk_size: int = 256  # videos scored per chunk at evaluation

    def __post_init__(self):
        self.branches = tuple(self.branches)
        if self.interaction not in INTERACTIONS:
            raise ValueError(f"interaction must be one of {INTERACTIONS}, got {self.interaction!r}")
        if self.temporal_input not in TEMPORAL_INPUTS:
            raise ValueError(f"temporal_input must be one of {TEMPORAL_INPUTS}, got {self.temporal_input!r}")
        if not self.branches or any(b not in BRANCHES for b in self.branches):
            raise ValueError(f"branches must be a non-empty subset of {BRANCHES}, got {self.branches!r}")
        if self.visual_expansion < 0 or self.temporal_layers < 0:
            raise ValueError("visual_expansion and temporal_layers must be >= 0")

    @property
    def active_branches(self) -> Tuple[str, ...]:
        return ("meanp",) if self.meanp else self.branches


class TokenSet(NamedTuple):
    tokens: torch.Tensor  # N x L x D, L2-normalised
    mask: torch.Tensor  # N x L, 1 = real token


class VideoColBERT(nn.Module):
    def __init__(self, clip: CLIP, config: ModelConfig):
        super().__init__()
        self.config = config
        self.clip = clip
        self.temporal: Optional[TemporalEncoder] = None
        if not config.meanp and "video" in config.branches:
            # Initialised from the backbone's first text blocks (random if its text width differs).
            self.temporal = TemporalEncoder.from_backbone(
                clip, config.temporal_layers, config.max_frames, config.visual_expansion
            )
        if not config.query_sot and not getattr(clip, "text_start_token", True):
            raise ValueError("query_sot=False drops a start token, but this backbone's tokenizer has none "
                             "(its first position is the first word)")
        self.loss = RetrievalLoss(
            loss=config.loss,
            dual=config.dual_loss,
            branches=config.active_branches,
            init_log_temperature=config.init_log_temperature,
            init_bias=config.init_bias,
            init_logit_scale=float(clip.logit_scale.detach()),
        )
        # CLIP's own logit scale is never used (the softmax loss keeps a copy): freezing it keeps
        # DDP from waiting for a gradient that never comes.
        clip.logit_scale.requires_grad_(False)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.clip.set_grad_checkpointing(enable)
        if self.temporal is not None and self.temporal.transformer is not None:
            self.temporal.transformer.grad_checkpointing = enable

    # ---- encoders -------------------------------------------------------------------------
    def encode_text(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> TokenSet:
        """text_ids, text_mask: B x L (mask 1 on SOT..EOT). Returns the query token set."""
        tokens = F.normalize(self._text_tokens(text_ids, text_mask), dim=-1)  # B x L x D
        if self.config.meanp:
            pooled = self.clip.text_pool_index(text_ids)  # B: CLIP's EOT, SigLIP's last position
            tokens = tokens[torch.arange(tokens.shape[0], device=tokens.device), pooled].unsqueeze(1)  # B x 1 x D
            return TokenSet(tokens, text_mask.new_ones(tokens.shape[:2]))
        mask = torch.ones_like(text_mask) if self.config.query_expansion else text_mask.clone()
        if not self.config.query_sot:
            mask[:, 0] = 0  # every query starts with SOT, whose output is the same for every query
        return TokenSet(tokens, mask)

    def _text_tokens(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """B x L x D projected text states, running the text tower only as far as the longest text.

        Positions after every text's EOT are padding. When no query token is read there (query
        expansion off, or the mean-pooling baseline, which reads only the pooled token) and the
        tower is causal (a position's state depends only on the tokens before it), those positions
        change nothing, so the tower skips them and they come back as zero vectors. Captions are
        usually far shorter than ``max_words``: this halves the text tower's cost on the demo.
        """
        length = text_ids.shape[1]
        reads_padding = self.config.query_expansion and not self.config.meanp
        if reads_padding or not getattr(self.clip, "text_padding_skippable", False):
            return self.clip.encode_text_tokens(text_ids)
        used = max(1, int(text_mask.sum(dim=1).max()))  # the longest text, SOT..EOT
        tokens = self.clip.encode_text_tokens(text_ids[:, :used])  # B x used x D
        return F.pad(tokens, (0, 0, 0, length - used))  # B x L x D

    def encode_frames(self, video: torch.Tensor, video_mask: torch.Tensor) -> torch.Tensor:
        """video: B x T x 3 x R x R, video_mask: B x T. Returns projected CLS tokens B x T x D (not normalised).

        Only real frames go through the image encoder; padded slots stay zero vectors.
        """
        batch, num_frames = video_mask.shape
        valid = video_mask.bool()
        encoded = self.clip.encode_image(video[valid])  # n_valid x D
        frames = encoded.new_zeros(batch, num_frames, encoded.shape[-1])
        frames[valid] = encoded
        return frames

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor) -> Dict[str, TokenSet]:
        """Returns one token set per active branch."""
        raw_frames = self.encode_frames(video, video_mask)  # B x T x D
        frames = F.normalize(raw_frames, dim=-1)
        frame_mask = video_mask.long()
        out: Dict[str, TokenSet] = {}
        if self.config.meanp:
            weights = frame_mask.unsqueeze(-1).to(frames.dtype)  # B x T x 1
            mean = (frames * weights).sum(1) / weights.sum(1).clamp(min=1)  # B x D
            out["meanp"] = TokenSet(F.normalize(mean, dim=-1).unsqueeze(1), frame_mask.new_ones(frames.shape[0], 1))
            return out
        if "frame" in self.config.branches:
            out["frame"] = TokenSet(frames, frame_mask)
        if "video" in self.config.branches:
            # By default the temporal encoder reads the normalised frame tokens: unit vectors sit
            # close to the scale of the text residual stream its blocks were trained on.
            temporal_in = frames if self.config.temporal_input == "normalized" else raw_frames
            tokens, mask = self.temporal(temporal_in, frame_mask)  # B x (T+N) x D
            out["video"] = TokenSet(F.normalize(tokens, dim=-1), mask.long())
        return out

    # ---- scoring --------------------------------------------------------------------------
    def branch_scores(self, text: TokenSet, videos: Dict[str, TokenSet], chunk_size=None) -> Dict[str, torch.Tensor]:
        """Nq x Nv score matrix per branch."""
        return {
            name: mean_max_sim(
                text.tokens, text.mask, video.tokens, video.mask, interaction=self.config.interaction, chunk_size=chunk_size
            )
            for name, video in videos.items()
        }

    def similarity(self, text: TokenSet, videos: Dict[str, TokenSet]) -> torch.Tensor:
        """Evaluation score: the plain sum of the branch scores (no temperature, no bias), each branch
        added into the first one's matrix as it is scored: no other Nq x Nv matrix is made."""
        total = None
        for video in videos.values():  # the call branch_scores makes, summing into `total`
            total = mean_max_sim(text.tokens, text.mask, video.tokens, video.mask, interaction=self.config.interaction,
                                 chunk_size=self.config.sim_chunk_size, add_to=total)
        return total

    # ---- training -------------------------------------------------------------------------
    def forward(self, text_ids, text_mask, video, video_mask):
        """Training loss for this rank's rows against the global batch.

        Returns (loss, dict of scalars for logging).
        """
        text = self.encode_text(text_ids, text_mask)
        videos = self.encode_video(video, video_mask)
        all_videos = {name: _gather(ts) for name, ts in videos.items()}
        scores_t2v = self.branch_scores(text, all_videos)  # each b x B
        scores_v2t = None
        if self.config.loss == "softmax":
            all_text = _gather(text)
            scores_v2t = {name: s.t() for name, s in self.branch_scores(all_text, videos).items()}  # b x B
        row_offset = get_rank() * text_ids.shape[0]
        return self.loss(scores_t2v, row_offset=row_offset, scores_v2t=scores_v2t)


def _gather(tokens: TokenSet) -> TokenSet:
    """Token set of the whole batch across ranks; features keep their gradient, masks need none."""
    return TokenSet(all_gather_with_grad(tokens.tokens), all_gather_no_grad(tokens.mask))
