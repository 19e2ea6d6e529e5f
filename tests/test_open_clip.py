"""open_clip backbones (SigLIP-style and OpenCLIP-style) behind our encoder interface.

Two tiny model configs are registered with open_clip's public ``add_model_config``: a SigLIP-like one
(timm ViT with attention pooling, bidirectional text tower pooling its last position, projection
with bias, sentencepiece tokenizer) and an OpenCLIP-like one (causal text tower, EOT pooling, CLIP
BPE). The references are open_clip models built by open_clip itself from the same weights.
"""
import json
import os
import pickle
import shutil

import pytest
import torch

open_clip = pytest.importorskip("open_clip")
spm = pytest.importorskip("sentencepiece")

from tvr.dataloaders.config import DataConfig  # noqa: E402
from tvr.models.modeling import ModelConfig, VideoColBERT  # noqa: E402
from tvr.models.module_clip import CLIP, SCRATCH_CONFIGS, load_clip  # noqa: E402
from tvr.models.open_clip_backbone import manual_folder, plan_weights  # noqa: E402
from tvr.models.text_tokenizers import SentencePieceTokenizer  # noqa: E402
from tvr.models.tokenization_clip import tokenize as clip_tokenize  # noqa: E402

SIGLIP, OPENCLIP = "vc-test-siglip", "vc-test-openclip"
CAPTIONS = ["a man is playing a guitar on stage", "a woman cooks pasta in a kitchen", "a dog runs across the park",
            "two children ride bicycles down a street", "a cat sleeps on a sofa", "people dance at a party"]

SIGLIP_CFG = {
    "embed_dim": 64, "init_logit_bias": -10, "custom_text": True,
    "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit", "timm_model_pretrained": False,
                   "timm_pool": "map", "timm_proj": "none"},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "hf_tokenizer_name": "example/vc-test-siglip",
                 "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 64, "heads": 1, "layers": 2,
                 "no_causal_mask": True, "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6}},
}
OPENCLIP_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2},
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_clip_configs")
    for name, cfg in ((SIGLIP, SIGLIP_CFG), (OPENCLIP, OPENCLIP_CFG)):
        (root / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(root)
    return root


def write_tokenizer(folder, pad_token="</s>"):
    """A tiny sentencepiece model trained on CAPTIONS, laid out like a SigLIP hub repository."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(CAPTIONS * 5))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=40,
                                   hard_vocab_limit=False, model_type="unigram", pad_id=0, eos_id=1, unk_id=2,
                                   bos_id=-1, minloglevel=2)
    corpus.unlink()
    (folder / "spiece.vocab").unlink()
    special = {"eos_token": "</s>", "unk_token": "<unk>"}
    if pad_token:
        special["pad_token"] = {"content": pad_token}  # the dict form Hugging Face also writes
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    return folder


@pytest.fixture(scope="module")
def sp_folder(tmp_path_factory):
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@torch.no_grad()
def perturb_affine(model):
    """Random biases and norm scales: open_clip initialises them to 0 / 1, which would hide a missing
    bias or norm in the code under test."""
    for name, p in model.named_parameters():
        if p.ndim == 1 and name.rsplit(".", 1)[-1] in ("bias", "weight"):
            p.add_(0.1 * torch.randn_like(p))


@pytest.fixture(scope="module")
def siglip_file(configs, tmp_path_factory):
    """Weights of a SigLIP-like open_clip model, saved as a plain state dict; and the model itself."""
    torch.manual_seed(0)
    ref = open_clip.create_model(SIGLIP).eval()
    perturb_affine(ref)
    path = tmp_path_factory.mktemp("siglip_weights") / "weights.pt"
    torch.save(ref.state_dict(), path)
    return path, ref


@pytest.fixture(scope="module")
def siglip(siglip_file, sp_folder):
    path, _ = siglip_file
    return load_clip(f"open_clip:{SIGLIP}", pretrained=str(path), tokenizer=str(sp_folder))


def images(n, size, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Encoders against open_clip
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_siglip_encoders_equal_open_clip(siglip_file, siglip):
    _, ref = siglip_file
    enc = siglip
    ids, mask = enc.tokenize(CAPTIONS[:4], 16)
    torch.testing.assert_close(enc.encode_image(images(3, 160)), ref.encode_image(images(3, 160)), rtol=0, atol=1e-5)
    torch.testing.assert_close(enc.encode_text(ids), ref.encode_text(ids), rtol=0, atol=1e-5)
    # Every position: open_clip's own token output (the text tower's forward with output_tokens), projected.
    ref.text.output_tokens = True
    try:
        _, states = ref.text(ids)  # B x L x W after the final norm
    finally:
        ref.text.output_tokens = False
    tokens = enc.encode_text_tokens(ids)  # B x L x D
    torch.testing.assert_close(tokens, ref.text.text_projection(states), rtol=0, atol=1e-5)
    pooled = tokens[torch.arange(4), enc.text_pool_index(ids)]
    torch.testing.assert_close(pooled, enc.encode_text(ids), rtol=0, atol=1e-5)
    assert enc.text_pool_index(ids).tolist() == [15] * 4  # SigLIP pools the last position
    assert not enc.text_start_token and CLIP.text_start_token
    assert (enc.input_resolution, enc.embed_dim, enc.text_width) == (160, 64, 64)
    assert float(enc.logit_scale) == float(ref.logit_scale) and not enc.model.logit_bias.requires_grad


@torch.no_grad()
def test_openclip_causal_tower_reads_short_texts(configs):
    """A causal tower padded internally: a 10-token query gives what open_clip gives for the same text
    tokenized by open_clip's own tokenizer at the full context length (zero padded)."""
    torch.manual_seed(1)
    ref = open_clip.create_model(OPENCLIP).eval()
    perturb_affine(ref)
    enc = load_clip(f"open_clip:{OPENCLIP}")
    enc.model.load_state_dict(ref.state_dict())
    texts = ["a dog runs", "two children ride bicycles"]
    ids, mask = enc.tokenize(texts, 10)
    full = open_clip.get_tokenizer(OPENCLIP)(texts, context_length=24)
    assert torch.equal(full[:, :10], ids) and not full[:, 10:].any()
    torch.testing.assert_close(enc.encode_text(ids), ref.encode_text(full), rtol=0, atol=1e-5)
    tokens = enc.encode_text_tokens(ids)
    assert tokens.shape == (2, 10, 64)
    torch.testing.assert_close(tokens[torch.arange(2), enc.text_pool_index(ids)], enc.encode_text(ids), rtol=0, atol=1e-5)
    torch.testing.assert_close(enc.encode_image(images(2, 32)), ref.encode_image(images(2, 32)), rtol=0, atol=1e-5)
    # open_clip's CLIP BPE is OpenAI's: same ids and mask as our CLIP tokenizer.
    ours_ids, ours_mask = clip_tokenize(texts, 10)
    assert torch.equal(ids, ours_ids) and torch.equal(mask, ours_mask)
    with pytest.raises(ValueError, match="context length 24"):
        enc.encode_text(torch.zeros(1, 25, dtype=torch.long))


def test_checkpoint_file_loads(siglip_file, sp_folder, tmp_path):
    """Weights saved from open_clip load through pretrained=FILE (safetensors too) or a folder
    holding them; the tokenizer and the preprocessing config beside the weights are used."""
    from safetensors.torch import save_file

    _, ref = siglip_file
    folder = tmp_path / "ViT-tiny"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    for name in ("spiece.model", "special_tokens_map.json"):
        shutil.copy(sp_folder / name, folder / name)
    pre = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic", "resize_mode": "squash"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": SIGLIP_CFG, "preprocess_cfg": pre}))
    for pretrained in (folder / "open_clip_model.safetensors", folder):
        enc = load_clip(f"open_clip:{SIGLIP}", pretrained=str(pretrained))
        for name, value in ref.state_dict().items():
            assert torch.equal(enc.model.state_dict()[name], value), name
        assert (enc.image_mean, enc.image_std, enc.resize_mode) == ((0.5,) * 3, (0.5,) * 3, "squash")
        ids, mask = enc.tokenize(["a cat"], 16)
        assert mask.sum() == len(enc.tokenizer.encode("a cat")) + 1
    bad = tmp_path / "bad.pt"
    torch.save({"visual.nothing": torch.zeros(1)}, bad)
    with pytest.raises(RuntimeError, match="bad.pt"):
        load_clip(f"open_clip:{SIGLIP}", pretrained=str(bad))


# ---------------------------------------------------------------------------------------------
# Tokenizers
# ---------------------------------------------------------------------------------------------

def test_sentencepiece_tokenizer_from_folder(sp_folder):
    tok = SentencePieceTokenizer(str(sp_folder), clean="canonicalize")
    sp = spm.SentencePieceProcessor(model_file=str(sp_folder / "spiece.model"))
    assert (tok.eos_id, tok.pad_id) == (1, 1)  # SigLIP's convention: pad with the end token, as the file says
    ids, mask = tok.tokenize(["A cat, sleeps on a SOFA!", "a dog"], 32)
    expected = sp.encode("a cat sleeps on a sofa")  # canonicalised: lower case, no punctuation
    n = len(expected) + 1
    assert n < 32 and ids[0, :n].tolist() == expected + [1] and ids[0, n:].eq(1).all()
    assert mask[0].tolist() == [1] * n + [0] * (32 - n)
    assert mask[1].sum() == len(sp.encode("a dog")) + 1
    # Truncation keeps the end token in the last position.
    ids, mask = tok.tokenize([CAPTIONS[3]], 5)
    assert ids[0].tolist() == sp.encode(CAPTIONS[3])[:4] + [1] and mask.all()
    # Picklable (DataLoader workers), with the same output.
    clone = pickle.loads(pickle.dumps(tok))
    assert torch.equal(clone.tokenize(CAPTIONS, 16)[0], tok.tokenize(CAPTIONS, 16)[0])


def test_sentencepiece_tokenizer_bad_folders(sp_folder, tmp_path, configs):
    no_pad = write_tokenizer(tmp_path / "no_pad", pad_token=None)
    with pytest.raises(ValueError, match="no pad_token"):
        SentencePieceTokenizer(str(no_pad))
    assert SentencePieceTokenizer(str(no_pad), pad_id=0).pad_id == 0
    with pytest.raises(FileNotFoundError, match="spiece.model"):
        SentencePieceTokenizer(str(tmp_path))
    wrong = tmp_path / "wrong"
    shutil.copytree(sp_folder, wrong)
    (wrong / "special_tokens_map.json").write_text(json.dumps({"eos_token": "</s>", "pad_token": "<nope>"}))
    with pytest.raises(ValueError, match="<nope>"):
        SentencePieceTokenizer(str(wrong))
    with pytest.raises(ValueError, match="canonicalise"):
        SentencePieceTokenizer(str(sp_folder), clean="canonicalise")
    # A SigLIP model without any tokenizer folder: a clear message naming the files and the flag.
    enc = load_clip(f"open_clip:{SIGLIP}")
    with pytest.raises(FileNotFoundError) as err:
        enc.tokenize(["a cat"], 16)
    for part in ("spiece.model", "special_tokens_map.json", "--tokenizer", "example/vc-test-siglip"):
        assert part in str(err.value)
    with pytest.raises(FileNotFoundError, match="--tokenizer"):
        load_clip(f"open_clip:{SIGLIP}", tokenizer=str(tmp_path / "missing"))


def test_every_encoder_tokenizes_and_pools():
    """OpenAI CLIP has the same tokenizer interface, delegating to our CLIP tokenizer."""
    torch.manual_seed(0)
    clip = CLIP.from_config(SCRATCH_CONFIGS["tiny"])
    ids, mask = clip.tokenize(CAPTIONS[:2], 12)
    ref_ids, ref_mask = clip_tokenize(CAPTIONS[:2], 12)
    assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask)
    tok = pickle.loads(pickle.dumps(clip.tokenizer))
    assert torch.equal(tok.tokenize(CAPTIONS[:2], 12)[0], ref_ids)
    assert torch.equal(clip.text_pool_index(ids), mask.sum(1) - 1)  # the EOT position
    assert (clip.image_mean, clip.resize_mode, clip.interpolation) == (DataConfig().image_mean, "shortest", "bicubic")


# ---------------------------------------------------------------------------------------------
# Weights: tags, offline downloads, preprocessing
# ---------------------------------------------------------------------------------------------

def test_offline_download_names_the_file_and_the_folder(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, no retries
    with pytest.raises(RuntimeError) as err:
        load_clip("open_clip:ViT-B-16-SigLIP", pretrained="webli", cache_dir=str(tmp_path))
    message = str(err.value)
    folder = os.path.join(str(tmp_path), "open_clip", "ViT-B-16-SigLIP", "webli")
    assert folder == manual_folder("ViT-B-16-SigLIP", "webli", str(tmp_path))
    for part in ("https://huggingface.co/timm/ViT-B-16-SigLIP/resolve/main/open_clip_pytorch_model.bin",
                 folder, "spiece.model", "special_tokens_map.json", "--pretrained"):
        assert part in message, part
    with pytest.raises(ValueError, match="webli"):  # a typo lists the real tags
        load_clip("open_clip:ViT-B-16-SigLIP", pretrained="webly", cache_dir=str(tmp_path))


def test_tag_files_placed_by_hand_are_used(siglip_file, sp_folder, tmp_path, monkeypatch):
    """A tag whose files were copied into <cache>/open_clip/<model>/<tag>/ loads without a download,
    with the tag's preprocessing and the tokenizer from the same folder."""
    import tvr.models.open_clip_backbone as backbone

    path, ref = siglip_file
    tag = {"hf_hub": "example/vc-test-siglip/", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
           "interpolation": "bilinear", "resize_mode": "squash"}
    monkeypatch.setattr(backbone, "tag_config", lambda model, t: tag if t == "demo" else {})
    folder = manual_folder(SIGLIP, "demo", str(tmp_path))
    shutil.copytree(sp_folder, folder)
    shutil.copy(path, os.path.join(folder, "open_clip_pytorch_model.bin"))
    enc = load_clip(f"open_clip:{SIGLIP}", pretrained="demo", cache_dir=str(tmp_path))
    assert torch.equal(enc.model.text.token_embedding.weight, ref.text.token_embedding.weight)
    assert (enc.image_mean, enc.interpolation, enc.resize_mode) == ((0.5,) * 3, "bilinear", "squash")
    assert enc.tokenize(["a cat"], 16)[0][0, -1] == 1
    # Rebuilding for a checkpoint: same preprocessing and tokenizer, weights not loaded.
    torch.manual_seed(5)
    bare = load_clip(f"open_clip:{SIGLIP}", pretrained="demo", cache_dir=str(tmp_path), load_weights=False)
    assert not torch.equal(bare.model.text.token_embedding.weight, ref.text.token_embedding.weight)
    assert (bare.image_mean, bare.interpolation, bare.resize_mode) == ((0.5,) * 3, "bilinear", "squash")
    assert torch.equal(bare.tokenize(["a cat"], 16)[0], enc.tokenize(["a cat"], 16)[0])
    gone = load_clip(f"open_clip:{SIGLIP}", pretrained=str(tmp_path / "moved.pt"), load_weights=False)
    assert gone.input_resolution == 160


def test_preprocessing_of_published_tags_without_download():
    """Weights from a file (or none) get the preprocessing the model's tags publish: SigLIP's mean/std
    0.5 and squash resize, not open_clip's CLIP default."""
    plan = plan_weights("ViT-B-16-SigLIP", None, None)
    assert plan.preprocess == {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bicubic",
                               "resize_mode": "squash"}
    assert plan_weights("ViT-B-16-SigLIP", "webli", "/nonexistent").tag == "webli"


def test_data_config_carries_preprocessing():
    cfg = DataConfig(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resize_mode="squash")
    assert cfg.image_mean == (0.5, 0.5, 0.5) and cfg.interpolation == "bicubic"
    assert DataConfig().image_std == (0.26862954, 0.26130258, 0.27577711)
    with pytest.raises(ValueError, match="resize_mode"):
        DataConfig(resize_mode="crop")
    with pytest.raises(ValueError, match="image_std"):
        DataConfig(image_std=(0.5, 0.0, 0.5))


# ---------------------------------------------------------------------------------------------
# Video-ColBERT on an open_clip backbone
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_temporal_encoder_copies_open_clip_blocks(siglip):
    model = VideoColBERT(siglip, ModelConfig(max_frames=4, temporal_layers=2, visual_expansion=1)).eval()
    blocks = model.temporal.transformer.resblocks
    source = siglip.text_transformer.resblocks
    assert isinstance(blocks[0].mlp.gelu, torch.nn.GELU) and blocks[0].ln_1.eps == 1e-6
    for block, src in zip(blocks, source):
        for (name, p), (_, q) in zip(block.state_dict().items(), src.state_dict().items()):
            assert torch.equal(p, q) and p.data_ptr() != q.data_ptr(), name
    assert torch.equal(model.temporal.frame_position_embedding, siglip.text_positional_embedding[:4])
    # Without padding the temporal blocks compute what the backbone's own blocks compute.
    x = torch.randn(2, 5, 64)  # B x (T+N) x D
    expected = x
    for src in source:
        expected = src(expected)
    got = model.temporal.transformer(x.transpose(0, 1), key_padding_mask=torch.zeros(2, 5, dtype=torch.bool))
    torch.testing.assert_close(got.transpose(0, 1), expected, rtol=0, atol=1e-5)
    # Padded frames do not reach the real ones.
    frames, frame_mask = torch.randn(2, 4, 64), torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out, _ = model.temporal(frames, frame_mask)
    changed = frames.clone()
    changed[0, 2:] = torch.randn(2, 64)
    out2, _ = model.temporal(changed, frame_mask)
    torch.testing.assert_close(out2[0, :2], out[0, :2], rtol=0, atol=1e-6)
    torch.testing.assert_close(out2[0, 4:], out[0, 4:], rtol=0, atol=1e-6)
    # The mean-pooling baseline reads the backbone's pooled position (SigLIP: the last one).
    meanp = VideoColBERT(siglip, ModelConfig(meanp=True, max_frames=4)).eval()
    ids, mask = siglip.tokenize(CAPTIONS[:2], 16)
    query = meanp.encode_text(ids, mask).tokens[:, 0]
    torch.testing.assert_close(query, torch.nn.functional.normalize(siglip.encode_text(ids), dim=-1), rtol=0, atol=1e-5)


def test_temporal_encoder_random_when_text_width_differs(configs, tmp_path, caplog):
    cfg = json.loads(json.dumps(OPENCLIP_CFG))
    cfg["text_cfg"].update(width=128, heads=2)
    (tmp_path / "vc-test-wide-text.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "vc-test-wide-text.json")
    enc = load_clip("open_clip:vc-test-wide-text")
    with caplog.at_level("WARNING"):
        model = VideoColBERT(enc, ModelConfig(max_frames=4, temporal_layers=1))
    assert "random weights" in caplog.text
    assert model.temporal.transformer.resblocks[0].attn.embed_dim == 64


def test_siglip_training_steps(siglip_file, sp_folder):
    """A few optimiser steps of Video-ColBERT on the SigLIP-like backbone: finite loss that falls on a
    fixed batch, and both the backbone and the temporal encoder learn."""
    path, _ = siglip_file
    torch.manual_seed(0)
    enc = load_clip(f"open_clip:{SIGLIP}", pretrained=str(path), tokenizer=str(sp_folder))
    model = VideoColBERT(enc, ModelConfig(max_frames=3, temporal_layers=1, loss="sigmoid")).train()
    ids, mask = enc.tokenize(CAPTIONS[:4], 16)
    video = torch.randn(4, 3, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    video_mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1], [1, 0, 0]])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(4):
        loss, _ = model(ids, mask, video, video_mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    for name in ("clip.model.visual.trunk.blocks.0.mlp.fc1.weight", "clip.model.text.token_embedding.weight",
                 "clip.model.text.transformer.resblocks.0.attn.in_proj_weight", "clip.model.text.text_projection.bias",
                 "temporal.transformer.resblocks.0.mlp.c_fc.weight", "temporal.expansion_tokens"):
        assert not torch.equal(dict(model.named_parameters())[name], before[name]), name


# ---------------------------------------------------------------------------------------------
# Datasets and main.py
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from tvr.dataloaders.synthetic import main as synthetic_main

    root = tmp_path_factory.mktemp("synthetic")
    synthetic_main(["--output_dir", str(root), "--num_train", "16", "--num_test", "8", "--seed", "5"])
    return root


def test_dataset_uses_backbone_tokenizer_and_preprocessing(synthetic, siglip):
    from tvr.dataloaders import build_eval_dataset

    cfg = DataConfig(datatype="msrvtt", anno_path=str(synthetic / "anns"), video_path=str(synthetic / "videos"),
                     max_words=16, max_frames=2, input_resolution=160, image_mean=(0.5, 0.5, 0.5),
                     image_std=(0.5, 0.5, 0.5), resize_mode="squash")
    data = build_eval_dataset(cfg, "test", tokenizer=siglip.tokenizer)
    item = data.texts[0]
    ids, mask = siglip.tokenize([data.captions[0]], 16)
    assert torch.equal(item["text_ids"], ids[0]) and torch.equal(item["text_mask"], mask[0])
    transform = data.videos.data.transform
    assert (transform.mean, transform.std, transform.resize_mode) == ((0.5,) * 3, (0.5,) * 3, "squash")
    video = data.videos[0]["video"]
    assert video.shape == (2, 3, 160, 160) and video.min() >= -1 and video.max() <= 1  # (x - 0.5) / 0.5


def test_main_trains_and_evaluates_an_open_clip_backbone(synthetic, configs, tmp_path):
    import main as main_module

    out = tmp_path / "run"
    results = main_module.main([
        "--do_train", "--do_eval", "--anno_path", str(synthetic / "anns"), "--video_path", str(synthetic / "videos"),
        "--base_encoder", f"open_clip:{OPENCLIP}", "--output_dir", str(out), "--max_words", "12",
        "--max_frames", "3", "--batch_size", "8", "--batch_size_val", "8", "--workers", "0", "--epochs", "1",
        "--lr", "1e-3", "--coef_lr", "1", "--temporal_layers", "1", "--seed", "3",
    ])
    assert 0 <= results["t2v"]["R1"] <= 100
    ckpt = torch.load(out / "best.pth", weights_only=True)
    assert ckpt["config"]["model"]["base_encoder"] == f"open_clip:{OPENCLIP}"
    assert any(k.startswith("clip.model.visual.") for k in ckpt["model"])
    assert "temporal.transformer.resblocks.0.mlp.c_fc.weight" in ckpt["model"]
