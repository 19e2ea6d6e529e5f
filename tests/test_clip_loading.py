"""load_clip: OpenAI-format files, the download path (no network: file:// URLs and fake openers),
and every user-facing error."""

import hashlib
import io
import os
import urllib.error
import urllib.request
import warnings

import clip.model as ref_clip  # test-only reference: OpenAI's code
import pytest
import torch

from tvr.models import clip_checkpoint
from tvr.models.module_clip import (CACHE_ENV_VAR, OPENAI_MODELS, SCRATCH_CONFIGS, available_models, build_model,
                                    default_cache_dir, load_clip)

SOT, EOT = 49406, 49407


def perturbed_state_dict(model: torch.nn.Module, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.02 * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}


def write_openai_archive(state_dict: dict, path: str) -> None:
    """A TorchScript archive as OpenAI ships theirs: OpenAI's model, weights cast to fp16 by its
    ``convert_weights``, scalar buffers ``input_resolution`` / ``context_length`` / ``vocab_size``,
    traced on (image, text) and saved with ``torch.jit.save``."""
    cfg = SCRATCH_CONFIGS["tiny"]
    ref = ref_clip.build_model(dict(state_dict))  # fp16 weights, like the released files
    del ref.context_length, ref.vocab_size  # plain ints in the Python class, buffers in the archives
    ref.register_buffer("input_resolution", torch.tensor(cfg.image_resolution))
    ref.register_buffer("context_length", torch.tensor(cfg.context_length))
    ref.register_buffer("vocab_size", torch.tensor(cfg.vocab_size))
    image = torch.randn(1, 3, cfg.image_resolution, cfg.image_resolution).half()
    text = torch.zeros(1, cfg.context_length, dtype=torch.long)
    text[0, :3] = torch.tensor([SOT, 320, EOT])
    with warnings.catch_warnings():  # tracing and TorchScript deprecation notices: expected here
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(ref.eval(), (image, text))
        torch.jit.save(traced, path)


@pytest.fixture(scope="module")
def tiny_state():
    torch.manual_seed(0)
    return perturbed_state_dict(load_clip("scratch:tiny"), seed=1)


@pytest.fixture(scope="module")
def archive(tiny_state, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("archive") / "ViT-tiny.pt")
    write_openai_archive(tiny_state, path)
    return path


def sha256_of(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def encode_both(model):
    gen = torch.Generator().manual_seed(5)
    image = torch.randn(2, 3, 64, 64, generator=gen)
    text = torch.randint(1, SOT, (2, 77), generator=gen)
    text[:, 0], text[0, 9], text[0, 10:], text[1, 76] = SOT, EOT, 0, EOT
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(text)


# ---------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------

def test_openai_archive_and_plain_state_dict_load_the_same(tiny_state, archive, tmp_path):
    from_archive = load_clip(archive)
    # The archive holds fp16 weights; everything must come back as fp32 on the CPU.
    assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in from_archive.state_dict().values())
    in_archive = clip_checkpoint.read_state_dict(archive)
    rounded = {k: v.to(in_archive[k].dtype).float() for k, v in tiny_state.items()}
    assert any(v.dtype == torch.float16 for v in in_archive.values())
    for key, value in from_archive.state_dict().items():
        assert torch.equal(value, rounded[key]), key

    plain = tmp_path / "plain.pt"
    torch.save(from_archive.state_dict(), plain)
    from_plain = load_clip(str(plain))
    for got, want in zip(encode_both(from_plain), encode_both(from_archive)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_archive_matches_reference_loader(archive):
    """What OpenAI's own code makes of the archive's weights, in fp32, equals our model."""
    ours = load_clip(archive)
    state = {k: v.float() for k, v in clip_checkpoint.read_state_dict(archive).items()
             if k not in ("input_resolution", "context_length", "vocab_size")}
    ref = ref_clip.build_model(dict(state)).float()
    ref.load_state_dict(state)
    for got, want in zip(encode_both(ours), encode_both(ref.eval())):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_fp16_and_wrapped_state_dicts(tiny_state, tmp_path):
    half = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in tiny_state.items()}, half)
    model = load_clip(str(half))
    assert all(t.dtype == torch.float32 for t in model.state_dict().values())

    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": tiny_state, "epoch": 3}, wrapped)
    model = load_clip(str(wrapped))
    assert torch.equal(model.text_projection, tiny_state["text_projection"])


def test_plain_state_dict_is_read_with_weights_only(tiny_state, tmp_path, monkeypatch):
    path = tmp_path / "plain.pt"
    torch.save(tiny_state, path)
    seen = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k.get("weights_only")) or real_load(*a, **k))
    load_clip(str(path))
    assert seen == [True]


def test_build_model_does_not_modify_its_input(tiny_state):
    state = dict(tiny_state, input_resolution=torch.tensor(64))
    build_model(state)
    assert "input_resolution" in state and len(state) == len(tiny_state) + 1


# ---------------------------------------------------------------------------------------------
# Errors on files
# ---------------------------------------------------------------------------------------------

def test_non_clip_checkpoint_names_missing_keys(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}, path)
    with pytest.raises(ValueError) as err:
        load_clip(str(path))
    message = str(err.value)
    assert str(path) in message and "missing" in message
    assert "visual.conv1.weight" in message and "text_projection" in message
    assert "conv1.weight" in message  # shows what the file does hold


def test_wrong_shapes_and_keys_are_listed(tiny_state, tmp_path):
    state = dict(tiny_state)
    state["transformer.resblocks.0.mlp.c_fc.weight"] = torch.zeros(100, 128)
    state["visual.ln_post.bias"] = torch.zeros(7)
    del state["visual.transformer.resblocks.1.ln_2.weight"]
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pt"
    torch.save(state, path)
    with pytest.raises(ValueError) as err:
        load_clip(str(path))
    message = str(err.value)
    assert "missing keys: visual.transformer.resblocks.1.ln_2.weight" in message
    assert "unexpected keys: extra.weight" in message
    assert "transformer.resblocks.0.mlp.c_fc.weight: checkpoint (100, 128) vs model (512, 128)" in message
    assert "visual.ln_post.bias: checkpoint (7,) vs model (128,)" in message


def test_non_square_patch_grid_is_rejected(tiny_state):
    state = dict(tiny_state)
    state["visual.positional_embedding"] = torch.zeros(18, 128)
    with pytest.raises(ValueError, match="square"):
        build_model(state)


def test_unreadable_files_name_the_file(tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a checkpoint")
    with pytest.raises(RuntimeError, match="notes.txt"):
        load_clip(str(text_file))
    pickled_module = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), pickled_module)  # needs weights_only=False: refused
    with pytest.raises(RuntimeError, match="module.pt"):
        load_clip(str(pickled_module))
    a_list = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], a_list)
    with pytest.raises(RuntimeError, match="list.pt.*does not hold a state dict"):
        load_clip(str(a_list))


def test_unknown_names_list_the_accepted_ones():
    with pytest.raises(ValueError) as err:
        load_clip("ViT-B/99")
    message = str(err.value)
    for name in available_models():
        assert name in message
    assert "ViT-L/14@336px" in message and "scratch:tiny" in message
    with pytest.raises(ValueError, match="scratch:tiny.*scratch:ViT-B/32"):
        load_clip("scratch:huge")


def test_available_models():
    names = available_models()
    assert names[:4] == ["ViT-B/32", "ViT-B/16", "ViT-L/14", "ViT-L/14@336px"]
    assert {"scratch:tiny", "scratch:ViT-B/32", "scratch:ViT-B/16", "scratch:ViT-L/14",
            "scratch:ViT-L/14@336px"} <= set(names)


def test_scratch_models_use_their_resolution():
    torch.manual_seed(0)
    model = load_clip("scratch:tiny")
    assert model.input_resolution == 64 and model.embed_dim == 128 and not model.training


# ---------------------------------------------------------------------------------------------
# Download path (no network: file:// URLs and fake openers)
# ---------------------------------------------------------------------------------------------

def test_openai_urls():
    for name, file in [("ViT-B/32", "ViT-B-32.pt"), ("ViT-B/16", "ViT-B-16.pt"), ("ViT-L/14", "ViT-L-14.pt"),
                       ("ViT-L/14@336px", "ViT-L-14-336px.pt")]:
        url = OPENAI_MODELS[name]
        assert url.startswith("https://openaipublic.azureedge.net/clip/models/") and url.endswith("/" + file)
        assert len(url.split("/")[-2]) == 64
    assert OPENAI_MODELS["ViT-B/32"].split("/")[-2] == \
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"


def serve(monkeypatch, tmp_path, source: str, sha: str, name="ViT-B/32") -> str:
    """Point ``name`` at a file:// URL laid out like OpenAI's (``.../<sha256>/<file>``)."""
    folder = tmp_path / "server" / sha
    folder.mkdir(parents=True)
    served = folder / os.path.basename(OPENAI_MODELS[name])
    served.write_bytes(open(source, "rb").read())
    url = served.as_uri()
    monkeypatch.setitem(clip_checkpoint.OPENAI_MODELS, name, url)
    return url


def fail_urlopen(monkeypatch):
    def urlopen(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)


def test_download_verifies_and_caches(archive, tmp_path, monkeypatch):
    serve(monkeypatch, tmp_path, archive, sha256_of(archive))
    cache = tmp_path / "cache"
    model = load_clip("ViT-B/32", cache_dir=str(cache))
    assert os.listdir(cache) == ["ViT-B-32.pt"]  # no temporary file left
    assert sha256_of(str(cache / "ViT-B-32.pt")) == sha256_of(archive)
    assert model.embed_dim == 128
    # Second time: straight from the cache, no network.
    fail_urlopen(monkeypatch)
    again = load_clip("ViT-B/32", cache_dir=str(cache))
    assert torch.equal(again.text_projection, model.text_projection)


def test_cache_dir_from_environment(archive, tmp_path, monkeypatch):
    cache = tmp_path / "env-cache"
    monkeypatch.setenv(CACHE_ENV_VAR, str(cache))
    assert default_cache_dir() == str(cache)
    serve(monkeypatch, tmp_path, archive, sha256_of(archive))
    load_clip("ViT-B/32")
    assert os.listdir(cache) == ["ViT-B-32.pt"]
    monkeypatch.delenv(CACHE_ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == str(tmp_path / "home" / ".cache" / "clip")


def test_sha_mismatch_leaves_nothing_behind(archive, tmp_path, monkeypatch):
    wrong_sha = "0" * 64
    url = serve(monkeypatch, tmp_path, archive, wrong_sha)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError) as err:
        load_clip("ViT-B/32", cache_dir=str(cache))
    message = str(err.value)
    assert url in message and wrong_sha in message and sha256_of(archive) in message
    assert str(cache / "ViT-B-32.pt") in message
    assert os.listdir(cache) == []  # neither the final name nor a temporary file


def test_corrupt_cached_file_is_not_used(archive, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / "ViT-B-32.pt"
    target.write_bytes(b"truncated download")
    # With the network down: an error (naming the stale file), not a load of the corrupt file.
    fail_urlopen(monkeypatch)
    with pytest.raises(RuntimeError, match="was not used"):
        load_clip("ViT-B/32", cache_dir=str(cache))
    assert target.read_bytes() == b"truncated download"
    # With the file reachable: downloaded again and replaced.
    monkeypatch.undo()
    serve(monkeypatch, tmp_path, archive, sha256_of(archive))
    load_clip("ViT-B/32", cache_dir=str(cache))
    assert sha256_of(str(target)) == sha256_of(archive)
    assert os.listdir(cache) == ["ViT-B-32.pt"]


def test_download_failure_names_url_and_path(tmp_path, monkeypatch):
    fail_urlopen(monkeypatch)
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError) as err:
        load_clip("ViT-L/14@336px", cache_dir=str(cache))
    message = str(err.value)
    assert OPENAI_MODELS["ViT-L/14@336px"] in message
    assert str(cache / "ViT-L-14-336px.pt") in message
    assert "name resolution" in message  # the underlying cause
    assert os.listdir(cache) == []


def test_interrupted_download_leaves_nothing_behind(tmp_path, monkeypatch):
    class Broken(io.BytesIO):
        """Serves some bytes, then the connection drops."""
        def read(self, size=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset by peer")
            return super().read(10)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, *a, **k: Broken(b"x" * 100))
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="connection reset"):
        load_clip("ViT-B/16", cache_dir=str(cache))
    assert os.listdir(cache) == []
