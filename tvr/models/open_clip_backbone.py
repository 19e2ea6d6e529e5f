"""open_clip backbones (SigLIP, SigLIP 2, OpenCLIP, ...) with the face of our CLIP class.

``load_open_clip("open_clip:ViT-B-16-SigLIP", pretrained="webli")`` builds the model with open_clip
and wraps it in ``OpenCLIPEncoder``:

* ``encode_image``: the backbone's pooled image embedding (SigLIP: its attention-pooling head);
* ``encode_text_tokens``: the text tower's final states at EVERY position, after its final norm
  and through its projection (an ``nn.Linear`` with bias for SigLIP), so the row at
  ``text_pool_index`` is exactly ``encode_text``;
* the tokenizer and the image mean / std / resize mode the backbone was trained with.

Weights: ``pretrained`` is an open_clip tag (open_clip downloads and caches it; a file placed by
hand in ``<cache>/open_clip/<model>/<tag>/`` is used first, for machines without internet), a
checkpoint file (read with ``weights_only=True``) or a folder holding one, or None (random).

Text length. A causal tower (OpenCLIP) gives the same states for the first L positions whatever
follows, so shorter texts are padded to the context length inside and cut back after. A
bidirectional tower (SigLIP) reads the whole row, padding included, as it was trained; it runs at
the text's own length, which should be the context length it was trained on (64 for SigLIP) so
that the pooled last position is the one it learnt to pool.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import nn

from .clip_checkpoint import default_cache_dir
from .text_tokenizers import (
    SENTENCEPIECE_FILES,
    SPECIAL_TOKEN_FILES,
    OpenCLIPBPETokenizer,
    SentencePieceTokenizer,
    find_sentencepiece_model,
)

logger = logging.getLogger(__name__)

PREFIX = "open_clip:"
# Weights file names open_clip uses on the Hugging Face hub, preferred first.
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
                "model.safetensors", "pytorch_model.bin")
WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".pth", ".pt", ".npz")
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")
_HUB_URL = "https://huggingface.co"


def is_open_clip(name: str) -> bool:
    return name.startswith(PREFIX)


def manual_folder(model_name: str, tag: str, cache_dir: Optional[str] = None) -> str:
    """Where a tag's files can be put by hand: ``<cache>/open_clip/<model>/<tag>``."""
    root = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
    return os.path.join(root, "open_clip", model_name.replace("/", "-"), tag)


# --------------------------------------------------------------------------------------------
# The encoder
# --------------------------------------------------------------------------------------------

@dataclass
class TokenizerSpec:
    """How to build the tokenizer, resolved on first use (a checkpoint-rebuilt model may never need it)."""

    model_name: str
    kind: str  # "bpe" (open_clip's CLIP BPE) | "sentencepiece"
    clean: str
    vocab_size: int
    folders: List[str] = field(default_factory=list)  # searched in order for a sentencepiece model
    hub_repo: Optional[str] = None  # the hub repository holding it (open_clip's hf_tokenizer_name)
    download: bool = False  # fetch it from hub_repo when no folder has one (weights given as a tag)
    cache_dir: Optional[str] = None
    manual: Optional[str] = None  # the folder the error message tells the user to fill


class OpenCLIPEncoder(nn.Module):
    """An open_clip CLIP / CustomTextCLIP behind our CLIP class's interface (see the module doc)."""

    def __init__(self, model: nn.Module, model_name: str, preprocess_cfg: dict, tokenizer_spec: TokenizerSpec):
        super().__init__()
        self.model = model
        self.model_name = model_name
        self._tokenizer_spec = tokenizer_spec
        self._tokenizer = None
        tower = self._text_tower
        if getattr(tower, "cls_emb", None) is not None:
            raise ValueError(f"open_clip model {model_name} appends a class token to its text (CoCa); not supported")
        self.context_length = int(tower.context_length)
        self.pool_type = getattr(tower, "pool_type", None) or getattr(model, "text_pool_type")
        if self.pool_type not in ("argmax", "last", "first", "eos"):
            raise ValueError(f"open_clip model {model_name} pools its text with {self.pool_type!r}; "
                             f"VideoColBERT needs one pooled position (argmax, last, first or eos)")
        self.eos_id = getattr(tower, "eos_id", getattr(model, "text_eos_id", None))
        self.causal = tower.attn_mask is not None
        # open_clip's CLIP class adds its whole positional embedding: it only reads full-length texts.
        self._full_length_only = tower is model
        size = preprocess_cfg["size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        if size[0] != size[1]:
            raise ValueError(f"open_clip model {model_name} takes {size[0]}x{size[1]} images; only square inputs "
                             f"are supported")
        self.input_resolution = int(size[0])
        self.image_mean = tuple(float(v) for v in preprocess_cfg["mean"])
        self.image_std = tuple(float(v) for v in preprocess_cfg["std"])
        self.interpolation = str(preprocess_cfg["interpolation"])
        self.resize_mode = str(preprocess_cfg["resize_mode"])
        # SigLIP's logit bias is never used here; frozen so that DDP does not wait for its gradient.
        if getattr(model, "logit_bias", None) is not None:
            model.logit_bias.requires_grad_(False)

    # ---- the text tower, wherever open_clip keeps it ---------------------------------------
    @property
    def _text_tower(self) -> nn.Module:
        """CustomTextCLIP keeps a TextTransformer in ``model.text``; CLIP keeps its parts on itself."""
        text = getattr(self.model, "text", None)
        return text if text is not None else self.model

    @property
    def text_transformer(self) -> nn.Module:
        """open_clip ``Transformer`` of the text tower (``resblocks``, ``width``, ``batch_first``)."""
        return self._text_tower.transformer

    @property
    def text_width(self) -> int:
        return int(self.text_transformer.width)

    @property
    def text_positional_embedding(self) -> torch.Tensor:
        return self._text_tower.positional_embedding  # C x W

    @property
    def embed_dim(self) -> int:
        proj = self._text_tower.text_projection
        if proj is None:
            return self.text_width
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    # ---- encoders -------------------------------------------------------------------------
    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``N x 3 x R x R`` normalised images -> ``N x D`` pooled image embedding."""
        return self.model.encode_image(image.to(self.dtype))

    def _fit_length(self, text: torch.Tensor) -> torch.Tensor:
        """Text as the tower can read it: padded to the context length where that is exact (causal)."""
        length = text.shape[-1]
        if length > self.context_length:
            raise ValueError(f"text has {length} tokens, more than {self.model_name}'s context length "
                             f"{self.context_length}")
        if length == self.context_length or not (self.causal or self._full_length_only):
            return text
        if not self.causal:
            raise ValueError(f"{self.model_name} reads texts of exactly {self.context_length} tokens "
                             f"(bidirectional text tower): use --max_words {self.context_length}")
        if self.pool_type == "last":
            raise ValueError(f"{self.model_name} pools the last of its {self.context_length} positions: use "
                             f"--max_words {self.context_length}")
        pad = text.new_full((text.shape[0], self.context_length - length), self.tokenizer_pad_id)
        return torch.cat([text, pad], dim=1)

    @property
    def tokenizer_pad_id(self) -> int:
        return int(getattr(self._text_tower, "pad_id", 0))

    def _project(self, states: torch.Tensor) -> torch.Tensor:
        proj = self._text_tower.text_projection
        if proj is None:
            return states
        return proj(states) if isinstance(proj, nn.Linear) else states @ proj

    def encode_text_tokens(self, text: torch.Tensor) -> torch.Tensor:
        """``B x L`` token ids -> ``B x L x D``: every position's final state, projected."""
        length = text.shape[-1]
        out = self.model.forward_intermediates(text=self._fit_length(text), text_indices=1,
                                               normalize_intermediates=True, intermediates_only=True)
        states = out["text_intermediates"][-1][:, :length]  # B x L x W, after the final norm
        return self._project(states)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """``B x L`` token ids -> ``B x D``: the backbone's own pooled text embedding."""
        return self.model.encode_text(self._fit_length(text))

    def text_pool_index(self, text: torch.Tensor) -> torch.Tensor:
        """``B``: the position the backbone pools (SigLIP: the last; OpenCLIP: the end token)."""
        batch, length = text.shape
        if self.pool_type == "argmax":
            return text.argmax(dim=-1)
        if self.pool_type == "eos":
            return (text == self.eos_id).int().argmax(dim=-1)
        position = length - 1 if self.pool_type == "last" else 0
        return torch.full((batch,), position, dtype=torch.long, device=text.device)

    # Trailing padding is always encoded: bidirectional towers read it, and most causal ones pad
    # back to their full context anyway (see _fit_length), so leaving it out would save nothing.
    text_padding_skippable = False

    # ---- tokenizer --------------------------------------------------------------------------
    @property
    def text_start_token(self) -> bool:
        """Whether position 0 is a start token (CLIP BPE) rather than the first word (SigLIP)."""
        return self._tokenizer_spec.kind == "bpe"

    @property
    def tokenizer(self):
        """The backbone's tokenizer (``tokenize(texts, max_words) -> (ids, mask)``), built on first use."""
        if self._tokenizer is None:
            self._tokenizer = build_tokenizer(self._tokenizer_spec)
        return self._tokenizer

    def tokenize(self, texts, max_words: int) -> Tuple[torch.Tensor, torch.Tensor]:
        if max_words != self.context_length and not self.causal and not getattr(self, "_warned_length", False):
            self._warned_length = True
            logger.warning("%s's text tower is bidirectional and was trained on %d tokens; max_words %d "
                           "moves the pooled position and the padding it reads", self.model_name,
                           self.context_length, max_words)
        return self.tokenizer.tokenize(texts, max_words)


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------

def build_tokenizer(spec: TokenizerSpec):
    if spec.kind == "bpe":
        return OpenCLIPBPETokenizer(clean=spec.clean)
    folder = next((f for f in spec.folders if f and find_sentencepiece_model(f)), None)
    if folder is None and spec.hub_repo and spec.download:
        folder = _download_tokenizer(spec)
    if folder is None:
        raise FileNotFoundError(_tokenizer_help(spec, "no tokenizer folder was found"))
    tok = SentencePieceTokenizer(folder, clean=spec.clean)
    if tok.vocab_size > spec.vocab_size:
        raise ValueError(f"the tokenizer in {folder} has {tok.vocab_size} pieces, more than the {spec.vocab_size} "
                         f"token embeddings of {spec.model_name}: it is another model's tokenizer")
    return tok


def _tokenizer_help(spec: TokenizerSpec, what: str) -> str:
    searched = ", ".join(f for f in spec.folders if f) or "none given"
    repo = f"{_HUB_URL}/{spec.hub_repo}/tree/main" if spec.hub_repo else "the model's hub repository"
    where = spec.manual or "a folder of your choice"
    return (f"open_clip model {spec.model_name} needs its sentencepiece tokenizer, and {what} (searched: {searched}). "
            f"Download {SENTENCEPIECE_FILES[0]} (SigLIP 2: {SENTENCEPIECE_FILES[1]}) together with "
            f"{' and '.join(SPECIAL_TOKEN_FILES)} from {repo}, put them in {where}, and pass --tokenizer "
            f"with that folder (or keep them beside the --pretrained weights file).")


def _download_tokenizer(spec: TokenizerSpec) -> Optional[str]:
    """The tokenizer files of ``spec.hub_repo`` through huggingface_hub's cache; the folder holding them."""
    from huggingface_hub import hf_hub_download

    folder, errors = None, []
    for name in SENTENCEPIECE_FILES[:2]:
        try:
            folder = os.path.dirname(hf_hub_download(spec.hub_repo, name, cache_dir=spec.cache_dir))
            break
        except Exception as e:  # offline, missing file, ...: the help message names what to fetch
            errors.append(f"{name}: {type(e).__name__}")
    if folder is None:
        raise FileNotFoundError(_tokenizer_help(spec, f"downloading it failed ({'; '.join(errors)})"))
    for name in SPECIAL_TOKEN_FILES:
        try:
            hf_hub_download(spec.hub_repo, name, cache_dir=spec.cache_dir)  # same snapshot folder
        except Exception as e:
            logger.info("%s has no %s (%s)", spec.hub_repo, name, type(e).__name__)
    return folder


# --------------------------------------------------------------------------------------------
# Weights and preprocessing
# --------------------------------------------------------------------------------------------

def _preprocess_subset(cfg: Optional[dict]) -> Optional[dict]:
    if not cfg:
        return None
    sub = {k: (tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k]) for k in _PREPROCESS_KEYS if cfg.get(k) is not None}
    return sub or None


def tag_config(model_name: str, tag: str) -> dict:
    """open_clip's record of a pretrained tag (download location, preprocessing); {} if unknown."""
    import open_clip

    return open_clip.get_pretrained_cfg(model_name, tag) or {}


def _tags_preprocess(model_name: str) -> Optional[dict]:
    """The preprocessing all of a model's published tags share (SigLIP: mean/std 0.5, squash), so that
    weights from a file or a checkpoint get what they were trained with; None if they disagree."""
    import open_clip

    subsets = [_preprocess_subset(tag_config(model_name, t)) for t in open_clip.list_pretrained_tags_by_model(model_name)]
    distinct = {json.dumps(s, sort_keys=True) for s in subsets if s}
    if len(distinct) == 1:
        return next(s for s in subsets if s)
    if len(distinct) > 1:
        logger.warning("the pretrained tags of %s preprocess images differently; open_clip's default preprocessing "
                       "is used (pass the tag as --pretrained for its own)", model_name)
    return None


def _sibling_preprocess(weights_file: str) -> Optional[dict]:
    """``preprocess_cfg`` of an ``open_clip_config.json`` beside the weights (hub repository layout)."""
    path = os.path.join(os.path.dirname(weights_file), "open_clip_config.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return _preprocess_subset(json.load(f).get("preprocess_cfg"))
    except (OSError, ValueError, AttributeError) as e:
        raise ValueError(f"{path}: not a readable open_clip config ({e})") from e


def find_weights(folder: str) -> Optional[str]:
    """The weights file in a folder: open_clip's hub names first, else the only checkpoint-like file."""
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    found = sorted(f for f in os.listdir(folder) if f.endswith(WEIGHT_EXTENSIONS))
    return os.path.join(folder, found[0]) if len(found) == 1 else None


@dataclass
class WeightsPlan:
    create_pretrained: Optional[str]  # what create_model gets as ``pretrained``
    preprocess: Optional[dict]  # forced preprocessing (None: open_clip's own choice)
    folder: Optional[str]  # where tokenizer files may sit beside the weights
    tag: Optional[str] = None  # a tag open_clip downloads
    manual: Optional[str] = None  # the hand-filled folder for that tag
    tag_download: bool = False  # weights come from a tag's download (its tokenizer may be fetched too)


def _exists_or_tag(model_name: str, pretrained: str) -> bool:
    return os.path.exists(os.path.expanduser(pretrained)) or bool(tag_config(model_name, pretrained))


def plan_weights(model_name: str, pretrained: Optional[str], cache_dir: Optional[str],
                 load_weights: bool = True) -> WeightsPlan:
    """Turn ``--pretrained`` into what to load, checked before anything is built or downloaded.

    ``load_weights=False`` (a checkpoint is about to overwrite every weight) keeps the preprocessing
    and the tokenizer location that ``pretrained`` implies, but loads and downloads no weights.
    """
    if pretrained is None:
        return WeightsPlan(None, _tags_preprocess(model_name), None)
    if not load_weights:
        plan = plan_weights(model_name, pretrained, cache_dir) if _exists_or_tag(model_name, pretrained) else None
        if plan is None:
            logger.info("--pretrained %s is not here; the architecture of %s is built without it", pretrained, model_name)
            return WeightsPlan(None, _tags_preprocess(model_name), None)
        if plan.tag is not None:
            plan.preprocess = _preprocess_subset(tag_config(model_name, plan.tag))
        plan.create_pretrained, plan.tag_download = None, plan.tag is not None
        plan.tag = None
        return plan
    path = os.path.expanduser(pretrained)
    if os.path.isdir(path):
        weights = find_weights(path)
        if weights is None:
            raise FileNotFoundError(f"--pretrained {pretrained}: the folder holds no weights file "
                                    f"(looked for {', '.join(WEIGHT_FILES)} or one *{', *'.join(WEIGHT_EXTENSIONS)})")
        path = weights
    if os.path.isfile(path):
        return WeightsPlan(path, _sibling_preprocess(path) or _tags_preprocess(model_name), os.path.dirname(path))
    cfg = tag_config(model_name, pretrained)
    if not cfg:
        import open_clip

        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise ValueError(f"--pretrained {pretrained}: neither a file nor a pretrained tag of open_clip model "
                         f"{model_name} (its tags: {', '.join(tags) or 'none'})")
    manual = manual_folder(model_name, pretrained, cache_dir)
    if os.path.isdir(manual) and find_weights(manual):
        weights = find_weights(manual)
        logger.info("open_clip %s %s: using %s (placed by hand)", model_name, pretrained, weights)
        return WeightsPlan(weights, _preprocess_subset(cfg), manual, manual=manual)
    return WeightsPlan(pretrained, None, None, tag=pretrained, manual=manual, tag_download=True)


def download_help(model_name: str, tag: str, manual: str, error: Exception, tokenizer_repo: Optional[str] = None) -> str:
    """Which file to fetch for ``tag`` and where to put it, for a failed (e.g. offline) download."""
    cfg = tag_config(model_name, tag)
    hub, url = cfg.get("hf_hub", ""), cfg.get("url", "")
    if hub:  # "org/repo/" means open_clip's default file name; "org/repo/file" names it
        repo, name = os.path.split(hub)
        name = name or WEIGHT_FILES[1]
        source = f"{_HUB_URL}/{repo}/resolve/main/{name}"
        if name == WEIGHT_FILES[1]:
            source += f" (or {WEIGHT_FILES[0]}, where the repository has it)"
    else:
        source, name = url, os.path.basename(url)
    text = (f"Could not download the weights of open_clip {model_name} '{tag}' ({type(error).__name__}: {error}). "
            f"Fetch {source} by other means and save it in {manual}{os.sep} (then --pretrained {tag} finds it), "
            f"or pass --pretrained with the file's path.")
    if tokenizer_repo:
        text += (f" Its tokenizer goes in the same folder: {SENTENCEPIECE_FILES[0]} (SigLIP 2: "
                 f"{SENTENCEPIECE_FILES[1]}) and {' and '.join(SPECIAL_TOKEN_FILES)} from "
                 f"{_HUB_URL}/{tokenizer_repo}/tree/main.")
    return text


def load_open_clip(name: str, cache_dir: Optional[str] = None, pretrained: Optional[str] = None,
                   tokenizer: Optional[str] = None, load_weights: bool = True) -> OpenCLIPEncoder:
    """``open_clip:<model>`` as an ``OpenCLIPEncoder`` (fp32, CPU, eval mode); see the module doc.

    ``load_weights=False``: random weights, but the preprocessing and tokenizer ``pretrained`` implies
    (for rebuilding a trained model from its checkpoint without fetching weights it overwrites).
    """
    import open_clip

    model_name = name[len(PREFIX):] if is_open_clip(name) else name
    if not model_name:
        raise ValueError(f"--base_encoder {name}: name an open_clip model after '{PREFIX}', e.g. {PREFIX}ViT-B-16-SigLIP")
    model_cfg = open_clip.get_model_config(model_name)
    if model_cfg is None:
        raise ValueError(f"--base_encoder {name}: open_clip has no model {model_name!r}; open_clip.list_models() "
                         f"lists them (e.g. ViT-B-16-SigLIP, ViT-B-16, ViT-L-14)")
    text_cfg = model_cfg.get("text_cfg", {})
    if text_cfg.get("hf_model_name") or "multimodal_cfg" in model_cfg:
        raise ValueError(f"open_clip model {model_name} has a Hugging Face or multimodal text tower; VideoColBERT "
                         f"supports open_clip's own text transformer (CLIP, OpenCLIP, SigLIP, SigLIP 2 ...)")
    if tokenizer is not None and not os.path.exists(os.path.expanduser(tokenizer)):
        raise FileNotFoundError(f"--tokenizer {tokenizer} does not exist")
    local_dir = model_name[len("local-dir:"):] if model_name.startswith("local-dir:") else None
    plan = plan_weights(model_name, pretrained, cache_dir, load_weights) if local_dir is None else \
        WeightsPlan(None, None, local_dir)

    try:
        model = open_clip.create_model(model_name, pretrained=plan.create_pretrained, precision="fp32", device="cpu",
                                       cache_dir=cache_dir, weights_only=True, force_preprocess_cfg=plan.preprocess)
    except Exception as e:
        if plan.tag is not None:
            raise RuntimeError(download_help(model_name, plan.tag, plan.manual, e, text_cfg.get("hf_tokenizer_name"))) from e
        if plan.create_pretrained is not None:
            raise RuntimeError(f"Could not load {plan.create_pretrained} into open_clip {model_name}: "
                               f"{type(e).__name__}: {e}") from e
        raise
    model.eval()

    hub_repo = text_cfg.get("hf_tokenizer_name") or None
    sentencepiece = bool(hub_repo) or "siglip" in model_name.lower()
    clean = (text_cfg.get("tokenizer_kwargs") or {}).get("clean", "whitespace" if sentencepiece else "lower")
    spec = TokenizerSpec(
        model_name=model_name, kind="sentencepiece" if sentencepiece else "bpe", clean=clean,
        vocab_size=int(text_cfg.get("vocab_size", 49408)),
        folders=[os.path.expanduser(tokenizer) if tokenizer else None, local_dir, plan.folder, plan.manual],
        hub_repo=hub_repo, download=plan.tag_download, cache_dir=cache_dir,
        manual=plan.manual or (plan.folder if plan.folder else None),
    )
    encoder = OpenCLIPEncoder(model, model_name, open_clip.get_model_preprocess_cfg(model), spec)
    logger.info("open_clip %s (%s): input %d px, embedding %d, text width %d, %s text tower pooling %r, "
                "mean %s std %s %s/%s", model_name, pretrained or "random weights", encoder.input_resolution,
                encoder.embed_dim, encoder.text_width, "causal" if encoder.causal else "bidirectional",
                encoder.pool_type, encoder.image_mean, encoder.image_std, encoder.interpolation, encoder.resize_mode)
    return encoder
