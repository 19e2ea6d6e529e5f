"""tools/compress_videos.py with the OpenCV backend (ffmpeg is not on PATH here)."""
import importlib.util
import os
import sys

import decord
import numpy as np
import pytest

from tvr.dataloaders.synthetic import write_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("compress_videos", os.path.join(ROOT, "tools", "compress_videos.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["compress_videos"] = module  # worker processes pickle its functions by module name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("compress_videos", None)


def test_scaled_size_and_resampling_rules(tool):
    assert tool.scaled_size(1280, 720, 224) == (398, 224)
    assert tool.scaled_size(272, 640, 224) == (224, 528)
    assert tool.scaled_size(176, 144, 224) == (176, 144)  # never upscaled
    assert tool.scaled_size(175, 143, 0) == (176, 144)  # even sizes
    # 10 fps -> 5 fps keeps every other frame; 30 -> 30 keeps all; 5 -> 10 doubles (outputs at
    # 0, 0.1, ..., 1.8 s: times nearest to input frames 0..9; the last frame is not extended)
    assert [tool.copies_for_frame(i, 10, 5) for i in range(6)] == [1, 0, 1, 0, 1, 0]
    assert all(tool.copies_for_frame(i, 30, 30) == 1 for i in range(100))
    assert sum(tool.copies_for_frame(i, 5, 10) for i in range(10)) == 19
    assert sum(tool.copies_for_frame(i, 29.97, 3) for i in range(300)) == pytest.approx(30, abs=1)


def test_opencv_compress_skip_and_failures(tool, tmp_path, capsys):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    frames = np.zeros((30, 48, 80, 3), np.uint8)  # 30 frames at 10 fps, 80x48
    frames[:, :, :, 1] = np.arange(30, dtype=np.uint8)[:, None, None] * 8  # brightness encodes time
    write_video(str(src / "sub" / "clip.avi"), frames, 10.0)
    (src / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    (src / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    args = ["--input_dir", str(src), "--output_dir", str(out), "--fps", "5", "--short_side", "32",
            "--backend", "opencv", "--workers", "2"]
    assert tool.main(args) == 1  # one failure -> exit status 1
    report = capsys.readouterr().out
    assert "2 videos, 1 converted, 0 already done, 1 failed" in report
    assert str(src / "broken.mp4") in report.split("failed:")[1]
    result = out / "sub" / "clip.mp4"
    vr = decord.VideoReader(str(result))
    assert len(vr) == 15 and vr.get_avg_fps() == pytest.approx(5.0)
    assert vr[0].shape == (32, 54, 3)  # short side 32, 80 * 32 / 48 = 53.3 -> even 54
    green = vr.get_batch(list(range(15))).asnumpy()[..., 1].mean(axis=(1, 2))
    np.testing.assert_allclose(green, np.arange(0, 30, 2) * 8, atol=6)  # frames 0, 2, 4, ...
    assert not [f for f in os.listdir(out) if f.endswith(".part.mp4")]
    # second run: the finished file is skipped, the broken one is reported again
    mtime = os.path.getmtime(result)
    assert tool.main(args[:-1] + ["1"]) == 1
    assert "1 already done, 1 failed" in capsys.readouterr().out
    assert os.path.getmtime(result) == mtime


def test_same_input_and_output_folder_is_refused(tool, tmp_path):
    with pytest.raises(SystemExit):
        tool.main(["--input_dir", str(tmp_path), "--output_dir", str(tmp_path), "--backend", "opencv"])
