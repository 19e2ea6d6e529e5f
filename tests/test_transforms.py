"""Frame transforms: CLIP default unchanged, backbone preprocessing configs (mean/std, interpolation,
resize mode) against torchvision's and open_clip's own pipelines."""
import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from tvr.dataloaders.transforms import (CLIP_MEAN, CLIP_STD, build_frame_transform, center_crop, frames_to_tensor)

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


def torchvision_pipeline(res, mean, std, interpolation):
    """The transform as it was first written: torchvision v2 ops composed (the reference)."""
    mode = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR}[interpolation]
    return v2.Compose([v2.Resize(res, interpolation=mode, antialias=True), v2.CenterCrop(res),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=mean, std=std)])


def random_frames(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, dtype=torch.uint8, generator=g).numpy()  # T x H x W x 3


@pytest.mark.parametrize("shape,res", [((3, 90, 161, 3), 64), ((2, 720, 1280, 3), 224),
                                       ((2, 144, 176, 3), 224), ((1, 300, 200, 3), 37), ((2, 64, 64, 3), 64),
                                       # already at the resize size: only cropped (offsets 13, 13.5, 14.5)
                                       ((2, 64, 90, 3), 64), ((1, 91, 64, 3), 64), ((1, 64, 93, 3), 64)])
def test_default_is_byte_identical_to_torchvision_ops(shape, res):
    frames = random_frames(shape)
    ours = build_frame_transform(res)(frames_to_tensor(frames))
    ref = torchvision_pipeline(res, CLIP_MEAN, CLIP_STD, "bicubic")(frames_to_tensor(frames))
    assert ours.shape == (shape[0], 3, res, res) and ours.dtype == torch.float32 and ours.is_contiguous()
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_mean_std_and_interpolation_are_used(interpolation):
    frames = random_frames((2, 100, 150, 3), seed=1)
    ours = build_frame_transform(48, SIGLIP_MEAN, SIGLIP_STD, interpolation)(frames_to_tensor(frames))
    ref = torchvision_pipeline(48, SIGLIP_MEAN, SIGLIP_STD, interpolation)(frames_to_tensor(frames))
    assert torch.equal(ours, ref)
    # (x / 255 - 0.5) / 0.5 stays within [-1, 1]
    assert ours.min() >= -1 and ours.max() <= 1


def test_two_stages_compose_to_the_whole():
    frames = frames_to_tensor(random_frames((2, 72, 128, 3), seed=2))
    t = build_frame_transform(32)
    mid = t.resize_crop(frames)
    assert mid.dtype == torch.uint8 and mid.shape == (2, 3, 32, 32)
    assert torch.equal(t.normalize(mid), t(frames))


@pytest.mark.parametrize("mode", ["shortest", "squash", "longest"])
@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_matches_open_clip_preprocessing(mode, interpolation):
    """open_clip's PIL-based eval transform for the same config: within 1 grey level per pixel
    (PIL resamples in fixed point; measured mean 0.16 grey levels at worst)."""
    open_clip = pytest.importorskip("open_clip")
    from PIL import Image

    # smooth content (a blurred random field) like real video; 170 x 90 and 90 x 170 frames (the
    # scaled sides are not whole numbers: 120.9 and 33.9)
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(3)),
                                           size=(90, 170), mode="bilinear", align_corners=False)
    land = (base[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    for frame in (land, np.ascontiguousarray(land.transpose(1, 0, 2))):
        for mean, std in ((CLIP_MEAN, CLIP_STD), (SIGLIP_MEAN, SIGLIP_STD)):
            ref = open_clip.image_transform(64, is_train=False, mean=mean, std=std, resize_mode=mode,
                                            interpolation=interpolation)(Image.fromarray(frame))
            ours = build_frame_transform(64, mean, std, interpolation, mode)(frames_to_tensor(frame[None]))[0]
            assert ours.shape == ref.shape == (3, 64, 64)
            grey_levels = (ours - ref).abs() * torch.tensor(std).view(3, 1, 1) * 255
            assert grey_levels.max() <= 1.01 and grey_levels.mean() < 0.3, (grey_levels.max(), grey_levels.mean())


def test_longest_pads_with_zeros_and_squash_keeps_everything():
    frames = np.full((1, 40, 120, 3), 255, np.uint8)  # a white 3:1 strip
    t = build_frame_transform(30, mean=(0, 0, 0), std=(1, 1, 1), resize_mode="longest")
    out = t(frames_to_tensor(frames))[0]  # long side 120 -> 30, short 40 -> 10, padded to 30
    assert t.resize_size(40, 120) == (10, 30)
    rows = out[0, :, 15]
    assert rows[:10].eq(0).all() and rows[10:20].eq(1).all() and rows[20:].eq(0).all()
    out = build_frame_transform(30, (0, 0, 0), (1, 1, 1), resize_mode="squash")(frames_to_tensor(frames))
    assert out.eq(1).all()


@pytest.mark.parametrize("h,w,size", [(9, 9, 4), (9, 8, 4), (12, 11, 4), (10, 13, 5), (3, 5, 6), (4, 7, 5), (2, 2, 5), (6, 3, 6)])
def test_center_crop_equals_torchvision(h, w, size):
    """Crop, pad and both at once, odd and even differences (the extra pixel's side, Python's round)."""
    from torchvision.transforms.v2 import functional as F

    frames = torch.randint(1, 256, (2, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(h * w))
    ours = center_crop(frames, size)
    assert ours.shape == (2, 3, size, size)
    assert torch.equal(ours, F.center_crop(frames, [size, size]))


def test_frames_at_the_resize_size_do_not_import_torchvision():
    """Cached or decode-resized frames need no resampling, so torchvision (seconds to import) stays unloaded."""
    import subprocess
    import sys

    code = ("import sys, torch; from tvr.dataloaders.transforms import build_frame_transform as b; "
            "b(64)(torch.zeros(2, 3, 64, 90, dtype=torch.uint8)); print('torchvision' in sys.modules, end=' '); "
            "b(64)(torch.zeros(2, 3, 80, 90, dtype=torch.uint8)); print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_resize_size_follows_torchvision_truncation():
    t = build_frame_transform(224)
    assert t.resize_size(720, 1280) == (224, 398)  # 398.2
    assert t.resize_size(272, 640) == (224, 527)  # 527.06
    assert t.resize_size(1280, 720) == (398, 224)
    assert t.resize_size(224, 224) == (224, 224)


@pytest.mark.parametrize("kwargs,match", [
    (dict(interpolation="lanczos3"), "interpolation"),
    (dict(resize_mode="crop"), "resize_mode"),
    (dict(std=(0.5, 0.0, 0.5)), "std"),
    (dict(mean=(0.5, 0.5)), "mean"),
])
def test_bad_settings_are_refused_with_their_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_frame_transform(32, **kwargs)
