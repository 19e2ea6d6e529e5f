"""OpenAI CLIP ViT image and text encoders, written for VideoColBERT.

The architecture follows OpenAI's CLIP ViT models (ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14@336px)
so that ``state_dict()`` keys and shapes are exactly OpenAI's and their checkpoints load with
``strict=True``. With the same weights, ``encode_image`` / ``encode_text`` match OpenAI's code.

Additions VideoColBERT needs (the reason this is not just OpenAI's file):

* ``encode_text_tokens``: the projected state of every text position, not only the EOT token;
* text of any length ``L <= context_length`` (the causal mask and positional embedding are sliced),
  so 32-word queries do not pay for 77 positions;
* ``key_padding_mask`` in the residual blocks (the temporal encoder reuses them over frames);
* gradient checkpointing;
* ``load_clip``: OpenAI names (downloaded and sha256-checked), checkpoint files, or random
  ``scratch:<config>`` models for CPU experiments.

Layout conventions: the transformers work sequence-first (``L x N x D``) as OpenAI's do.
"""

import logging
import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tvr.models.clip_checkpoint import (  # re-exported: the loading API lives here
    CACHE_ENV_VAR,
    OPENAI_MODELS,
    default_cache_dir,
    download_openai_checkpoint,
    read_state_dict,
)
from tvr.models.text_tokenizers import CLIPTextTokenizer
from tvr.models.tokenization_clip import tokenize

logger = logging.getLogger(__name__)

OPEN_CLIP_PREFIX = "open_clip:"

__all__ = [
    "CACHE_ENV_VAR", "CLIP", "CLIPConfig", "OPENAI_MODELS", "SCRATCH_CONFIGS", "LayerNorm", "QuickGELU",
    "ResidualAttentionBlock", "Transformer", "VisionTransformer", "available_models", "build_model",
    "default_cache_dir", "download_openai_checkpoint", "infer_config", "load_clip", "read_state_dict",
]


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------

class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (OpenAI's models run in fp16 on GPU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that CLIP was trained with (not ``nn.GELU``): x * sigmoid(1.702 x).

    Written as silu(1.702 x) / 1.702, the same function: autograd then keeps one tensor for the
    backward pass (1.702 x) instead of two (x and the sigmoid), a fifth of the activations a ViT-B/32
    training step saves (bench/bench_train_step.py), and the backward pass runs three elementwise
    kernels instead of five.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(1.702 * x) / 1.702


# Up to this many positions, CPU attention runs as explicit matrix products. The fused kernel
# (scaled_dot_product_attention) tiles for long sequences; for the short ones here (frames of a small
# ViT, captions, video tokens) it costs more. Forward + backward, 2 threads (python
# bench/bench_attention.py): the demo's vision attention (384 frames x 2 heads x 17 positions) 14.7 ms
# fused, 8.6 ms explicit; ViT-B/32 frames (50 positions) 0.79x; 128 positions 0.78x; 197 positions
# about even. The explicit form keeps the L x L probabilities for the backward pass, which is why long
# sequences and GPUs (whose fused kernels win everywhere) keep the fused kernel.
EXPLICIT_ATTENTION_MAX_LEN = 100


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, blocked: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scaled dot-product attention, N x H x L x Dh -> N x H x L x Dh.

    ``blocked``: bool, broadcastable to N x H x L x L, True = that query does not see that key.
    """
    if q.device.type == "cpu" and q.shape[-2] <= EXPLICIT_ATTENTION_MAX_LEN:
        scores = torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2))  # N x H x L x L
        if blocked is not None:
            scores = scores.masked_fill(blocked, float("-inf"))
        return torch.matmul(scores.softmax(dim=-1), v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if blocked is None else ~blocked)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``.

    ``attn_mask`` (optional, ``C x C``): a causal mask for up to ``C`` positions; a float mask
    (``-inf`` above the diagonal, as OpenAI builds it) or a bool mask (True = blocked). Inputs
    shorter than ``C`` use its top-left corner.
    """

    def __init__(self, d_model: int, n_head: int, attn_mask: Optional[torch.Tensor] = None):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(d_model, 4 * d_model)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(4 * d_model, d_model)),
        ]))
        self.ln_2 = LayerNorm(d_model)
        if attn_mask is not None:
            # Stored as bool (True = blocked) so that it combines with a bool key_padding_mask;
            # a buffer so that it follows .to(device), non-persistent so state_dict stays OpenAI's.
            attn_mask = attn_mask.isinf() if attn_mask.is_floating_point() else attn_mask.bool()
        self.register_buffer("attn_mask", attn_mask, persistent=False)

    def attention(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``self.attn``'s computation (its weights, so checkpoints are OpenAI's), with ``attend``."""
        seq_len, batch, width = x.shape  # L x N x D
        heads = self.attn.num_heads
        blocked = None  # broadcastable to N x H x L x L, True = blocked
        if self.attn_mask is not None:
            if seq_len > self.attn_mask.shape[0]:
                raise ValueError(f"sequence length {seq_len} exceeds the attention mask size {self.attn_mask.shape[0]}")
            blocked = self.attn_mask[:seq_len, :seq_len]  # L x L
        if key_padding_mask is not None:
            ignore = key_padding_mask.bool()  # N x L, True = ignore this key
            # A sample with every key masked (e.g. a video whose frames all failed to decode) would
            # give NaN softmax rows that poison gradients; let it attend everywhere instead. Its
            # outputs are meaningless but finite, and the caller masks them out anyway.
            ignore = (ignore & ~ignore.all(dim=1, keepdim=True))[:, None, None, :]  # N x 1 x 1 x L
            blocked = ignore if blocked is None else blocked | ignore
        qkv = F.linear(x, self.attn.in_proj_weight, self.attn.in_proj_bias)  # L x N x 3D
        q, k, v = qkv.view(seq_len, batch, 3, heads, width // heads).permute(2, 1, 3, 0, 4)  # N x H x L x Dh each
        out = attend(q, k, v, blocked).permute(2, 0, 1, 3).reshape(seq_len, batch, width)  # L x N x D
        return self.attn.out_proj(out)

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attention(self.ln_1(x), key_padding_mask)  # L x N x D
        x = x + self.mlp(self.ln_2(x))
        return x


class Transformer(nn.Module):
    """A stack of ``layers`` residual attention blocks (sequence-first: ``L x N x D``)."""

    def __init__(self, width: int, layers: int, heads: int, attn_mask: Optional[torch.Tensor] = None):
        super().__init__()
        self.width = width
        self.layers = layers
        self.heads = heads
        self.grad_checkpointing = False
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads, attn_mask) for _ in range(layers)])

    def forward(self, x: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.resblocks:
            if use_checkpoint:
                x = checkpoint(block, x, key_padding_mask, use_reentrant=False)
            else:
                x = block(x, key_padding_mask)
        return x


class VisionTransformer(nn.Module):
    """ViT image encoder: patches + CLS token -> transformer -> ``ln_post(CLS) @ proj``."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int):
        super().__init__()
        if input_resolution % patch_size:
            raise ValueError(f"input_resolution {input_resolution} is not a multiple of patch_size {patch_size}")
        self.input_resolution = input_resolution
        self.output_dim = output_dim
        grid = input_resolution // patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape  # N x 3 x R x R
        if h != self.input_resolution or w != self.input_resolution:
            raise ValueError(f"expected images of {self.input_resolution}x{self.input_resolution} pixels, got {h}x{w}")
        x = self.conv1(x)  # N x W x G x G
        x = x.flatten(2).transpose(1, 2)  # N x G*G x W
        cls = self.class_embedding.to(x.dtype).expand(n, 1, -1)  # N x 1 x W
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # N x (1+G*G) x W
        x = self.ln_pre(x)
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)  # N x (1+G*G) x W
        return self.ln_post(x[:, 0]) @ self.proj  # N x D


# --------------------------------------------------------------------------------------------
# CLIP
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CLIPConfig:
    """Hyper-parameters of a CLIP ViT; the field names are the ``CLIP`` constructor's."""

    embed_dim: int
    image_resolution: int
    vision_layers: int
    vision_width: int
    vision_patch_size: int
    context_length: int
    vocab_size: int
    transformer_width: int
    transformer_heads: int
    transformer_layers: int


def _openai_vit(embed_dim, resolution, v_layers, v_width, patch, t_width, t_layers=12):
    return CLIPConfig(embed_dim, resolution, v_layers, v_width, patch, 77, 49408, t_width, t_width // 64, t_layers)


# Built-in shapes for ``scratch:<name>``: random initialisation, no download.
SCRATCH_CONFIGS: Dict[str, CLIPConfig] = {
    # Small enough to train on a laptop CPU in minutes; text width == embed_dim like OpenAI's.
    "tiny": CLIPConfig(embed_dim=128, image_resolution=64, vision_layers=2, vision_width=128,
                       vision_patch_size=16, context_length=77, vocab_size=49408,
                       transformer_width=128, transformer_heads=2, transformer_layers=4),
    "ViT-B/32": _openai_vit(512, 224, 12, 768, 32, 512),
    "ViT-B/16": _openai_vit(512, 224, 12, 768, 16, 512),
    "ViT-L/14": _openai_vit(768, 224, 24, 1024, 14, 768),
    "ViT-L/14@336px": _openai_vit(768, 336, 24, 1024, 14, 768),
}


class CLIP(nn.Module):
    """CLIP ViT: ``visual`` image encoder plus a causal text transformer, both projected to
    ``embed_dim``. Outputs are not normalised."""

    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int, vision_width: int,
                 vision_patch_size: int, context_length: int, vocab_size: int, transformer_width: int,
                 transformer_heads: int, transformer_layers: int):
        super().__init__()
        self.config = CLIPConfig(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                                 context_length, vocab_size, transformer_width, transformer_heads,
                                 transformer_layers)
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        heads=vision_width // 64, output_dim=embed_dim)
        causal = torch.ones(context_length, context_length, dtype=torch.bool).triu(1)  # True = future
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads, attn_mask=causal)
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.initialize_parameters()

    @classmethod
    def from_config(cls, config: CLIPConfig) -> "CLIP":
        return cls(**asdict(config))

    def initialize_parameters(self) -> None:
        """OpenAI's initialisation (what ``scratch:`` models start from). The scaled std of the
        output projections keeps the residual stream's variance flat with depth."""
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        width, layers = self.transformer.width, self.transformer.layers
        attn_std = width ** -0.5
        proj_std = attn_std * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=attn_std)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    @property
    def embed_dim(self) -> int:
        return self.text_projection.shape[1]

    @property
    def input_resolution(self) -> int:
        return self.visual.input_resolution

    # Image preprocessing CLIP was trained with (OpenAI's values): short side resized, centre crop.
    image_mean = (0.48145466, 0.4578275, 0.40821073)
    image_std = (0.26862954, 0.26130258, 0.27577711)
    interpolation = "bicubic"
    resize_mode = "shortest"

    # Every tokenized text starts with <|startoftext|> (SigLIP's texts start with their first word).
    text_start_token = True
    # The text tower is causal and reads texts of any length: trailing padding can be left out
    # without changing the states of the positions before it.
    text_padding_skippable = True

    # Text-tower views shared with open_clip encoders (the temporal encoder copies from them).
    @property
    def text_transformer(self) -> "Transformer":
        return self.transformer

    @property
    def text_width(self) -> int:
        return self.transformer.width

    @property
    def text_positional_embedding(self) -> torch.Tensor:
        return self.positional_embedding  # C x W

    @property
    def tokenizer(self) -> CLIPTextTokenizer:
        """CLIP's BPE as ``tokenize(texts, max_words) -> (ids, mask)`` (light: give it to DataLoaders)."""
        return CLIPTextTokenizer()

    def tokenize(self, texts, max_words: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """SOT, at most ``max_words - 2`` BPE tokens, EOT, zeros; mask 1 on SOT..EOT."""
        return tokenize(texts, max_words)

    def text_pool_index(self, text: torch.Tensor) -> torch.Tensor:
        """``B``: the position ``encode_text`` reads, the EOT token (the largest id in CLIP's vocabulary)."""
        return text.argmax(dim=-1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward (both towers): memory for compute."""
        self.visual.transformer.grad_checkpointing = enable
        self.transformer.grad_checkpointing = enable

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``N x 3 x R x R`` normalised images -> ``N x D`` projected CLS (e.g. one row per frame)."""
        return self.visual(image.to(self.dtype))

    def _text_states(self, text: torch.Tensor) -> torch.Tensor:
        """``N x L`` token ids -> ``N x L x W`` states after ``ln_final`` (before projection)."""
        seq_len = text.shape[-1]
        if seq_len > self.context_length:
            raise ValueError(f"text has {seq_len} tokens, more than the context length {self.context_length}")
        x = self.token_embedding(text).to(self.dtype) + self.positional_embedding[:seq_len].to(self.dtype)
        x = self.transformer(x.transpose(0, 1)).transpose(0, 1)  # N x L x W (causal: no padding mask)
        return self.ln_final(x)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """``N x L`` token ids (SOT ... EOT, zero padded) -> ``N x D``: the projected state at the EOT
        token, found as the largest id in each row (EOT has the largest id in CLIP's vocabulary)."""
        x = self._text_states(text)  # N x L x W
        eot = text.argmax(dim=-1)  # N
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection

    def encode_text_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """``N x L`` token ids -> ``N x L x D``: the projected state of every position. Row
        ``text.argmax(-1)`` of the result equals ``encode_text``; take it from here instead of
        running the text transformer twice."""
        return self._text_states(text) @ self.text_projection

    def forward(self, image: torch.Tensor, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """CLIP's image-text logits (``logits_per_image``, ``logits_per_text``), as OpenAI's."""
        img = F.normalize(self.encode_image(image), dim=-1)
        txt = F.normalize(self.encode_text(text), dim=-1)
        logits = self.logit_scale.exp() * img @ txt.t()
        return logits, logits.t()


# --------------------------------------------------------------------------------------------
# Building from a state dict, loading
# --------------------------------------------------------------------------------------------

# Extra entries in OpenAI's TorchScript archives (scalars, not weights).
_ARCHIVE_EXTRAS = ("input_resolution", "context_length", "vocab_size")
# Entries from which the configuration is read.
_CONFIG_KEYS = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "text_projection",
                "positional_embedding", "token_embedding.weight", "ln_final.weight")
_MAX_LISTED = 8  # how many offending keys an error message lists


def _listing(items: List[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


def _count_blocks(state_dict: Mapping[str, torch.Tensor], prefix: str) -> int:
    indices = set()
    for key in state_dict:
        if key.startswith(prefix):
            head = key[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                indices.add(int(head))
    return max(indices) + 1 if indices else 0


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> CLIPConfig:
    """Read a CLIP ViT configuration off tensor shapes (heads = width / 64, as OpenAI's)."""
    missing = [k for k in _CONFIG_KEYS if k not in state_dict]
    if missing:
        hint = ""
        if any(k.startswith("visual.layer1.") for k in state_dict):
            hint = " It looks like a ResNet CLIP, which VideoColBERT does not support (ViT only)."
        elif any(k.startswith("module.") for k in state_dict):
            hint = " Its keys start with 'module.' (a DDP wrapper?)."
        sample = _listing(sorted(state_dict)[:_MAX_LISTED])
        raise ValueError(f"Not a CLIP ViT state dict: missing {_listing(missing)}.{hint} "
                         f"Its first keys are: {sample}")
    conv = state_dict["visual.conv1.weight"]  # W x 3 x P x P
    vision_width, patch = conv.shape[0], conv.shape[-1]
    num_patches = state_dict["visual.positional_embedding"].shape[0] - 1
    grid = round(num_patches ** 0.5)
    if grid * grid != num_patches:
        raise ValueError(f"visual.positional_embedding has {num_patches + 1} rows, not 1 + a square number of patches")
    transformer_width = state_dict["ln_final.weight"].shape[0]
    return CLIPConfig(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=grid * patch,
        vision_layers=_count_blocks(state_dict, "visual.transformer.resblocks."),
        vision_width=vision_width,
        vision_patch_size=patch,
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        transformer_width=transformer_width,
        transformer_heads=max(transformer_width // 64, 1),
        transformer_layers=_count_blocks(state_dict, "transformer.resblocks."),
    )


def _check_against(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise a ValueError naming missing / unexpected keys and shape disagreements."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {expected[k]}"
              for k in sorted(expected) if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if shapes:
        problems.append(f"shape mismatches: {_listing(shapes)}")
    if problems:
        raise ValueError("Checkpoint does not match the CLIP ViT its shapes describe; " + "; ".join(problems))


def build_model(state_dict: Mapping[str, torch.Tensor]) -> CLIP:
    """Build a CLIP ViT from an OpenAI-layout state dict (config inferred from its shapes).

    The input is not modified. All floating tensors are loaded as fp32 (OpenAI's archives store
    many in fp16). The model is returned on the CPU in eval mode, like OpenAI's ``clip.load``.
    """
    state_dict = {k: v for k, v in state_dict.items() if k not in _ARCHIVE_EXTRAS}
    config = infer_config(state_dict)
    model = CLIP.from_config(config)
    _check_against(model, state_dict)
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def available_models() -> List[str]:
    """Every name ``load_clip`` accepts besides a file path and ``open_clip:<model>``: OpenAI's models,
    then ``scratch:`` ones."""
    return list(OPENAI_MODELS) + [f"scratch:{name}" for name in SCRATCH_CONFIGS]


def load_clip(name_or_path: str, cache_dir: Optional[str] = None, pretrained: Optional[str] = None,
              tokenizer: Optional[str] = None, load_weights: bool = True):
    """Return a fp32 CLIP ViT on the CPU, in eval mode, from one of:

    * an OpenAI model name (``ViT-B/32``, ``ViT-B/16``, ``ViT-L/14``, ``ViT-L/14@336px``):
      downloaded once to ``cache_dir`` (default ``$VIDEOCOLBERT_CLIP_CACHE`` or ``~/.cache/clip``)
      and verified against the sha256 in its URL;
    * a path to a checkpoint file: OpenAI's TorchScript archive or a plain state dict;
    * ``scratch:<config>`` (``tiny`` or an OpenAI name): random OpenAI-style initialisation,
      drawn from torch's global RNG (seed it first for reproducibility);
    * ``open_clip:<model>`` (e.g. ``open_clip:ViT-B-16-SigLIP``): an open_clip model wrapped with the
      same interface; ``pretrained`` is its tag or weights file (None: random weights) and
      ``tokenizer`` a folder with its sentencepiece tokenizer (see ``open_clip_backbone``);
      ``load_weights=False`` builds it with random weights but the preprocessing and tokenizer
      ``pretrained`` implies (a checkpoint overwrites the weights).
    """
    if name_or_path.startswith(OPEN_CLIP_PREFIX):
        from tvr.models.open_clip_backbone import load_open_clip  # open_clip is imported only when used

        return load_open_clip(name_or_path, cache_dir=cache_dir, pretrained=pretrained, tokenizer=tokenizer,
                              load_weights=load_weights)
    if pretrained is not None or tokenizer is not None:
        raise ValueError(f"--pretrained / --tokenizer apply to open_clip backbones ({OPEN_CLIP_PREFIX}<model>), "
                         f"not to {name_or_path!r}")
    if name_or_path.startswith("scratch:"):
        config_name = name_or_path[len("scratch:"):]
        if config_name not in SCRATCH_CONFIGS:
            raise ValueError(f"Unknown scratch CLIP configuration '{config_name}'; "
                             f"available: {', '.join('scratch:' + n for n in SCRATCH_CONFIGS)}")
        logger.info("Building a randomly initialised CLIP (%s)", name_or_path)
        return CLIP.from_config(SCRATCH_CONFIGS[config_name]).eval()

    if name_or_path in OPENAI_MODELS:
        path = download_openai_checkpoint(name_or_path, cache_dir)
    elif os.path.isfile(os.path.expanduser(name_or_path)):
        path = os.path.expanduser(name_or_path)
    else:
        raise ValueError(
            f"Unknown CLIP model '{name_or_path}': not an OpenAI model name, a scratch configuration, "
            f"an open_clip model ({OPEN_CLIP_PREFIX}<name>) or an existing checkpoint file. "
            f"Accepted names: {', '.join(available_models())}; "
            f"or a path to a CLIP ViT checkpoint (OpenAI TorchScript archive or plain state dict)."
        )
    state_dict = read_state_dict(path)
    try:
        model = build_model(state_dict)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e
    logger.info("Loaded CLIP from %s (%s)", path, model.config)
    return model
