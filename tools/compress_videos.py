"""Re-encode a folder of videos to a lower frame rate and short side, so loading is fast.

    python tools/compress_videos.py --input_dir raw/ --output_dir compressed/ --fps 3 --short_side 224

Decoding cost grows with resolution and with the number of frames the decoder has to go
through; raw MSR-VTT-style videos at 30 fps and up to 1080p make the data loader the bottleneck.
This keeps `--fps` frames per second (default 3, comfortably above the 1 fps training default)
and scales the short side down to `--short_side` (never up), keeping the aspect ratio.

- ffmpeg (libx264, no audio) when it is on PATH, OpenCV (mp4v) otherwise; `--backend` forces one.
- Folder structure is mirrored; every output is `<relative path without extension>.mp4`.
- Runs `--workers` processes; a file whose output already exists is skipped (outputs are
  written to a temporary name and renamed when complete, so a present output is a finished one).
- Failures do not stop the run; they are listed at the end and the exit status is 1.
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import shutil
import subprocess
import sys

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv",
                    ".wmv", ".3gp")


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at most `short_side`, aspect kept, both even
    (yuv420p encoders need even sizes)."""
    def even(x: float) -> int:
        return max(2, int(round(x / 2)) * 2)

    if short_side <= 0 or min(width, height) <= short_side:
        return even(width), even(height)
    scale = short_side / min(width, height)
    return even(width * scale), even(height * scale)


def copies_for_frame(i: int, fps_in: float, fps_out: float) -> int:
    """How many times input frame i appears in the resampled output (0 = dropped).

    Output frame k (time k / fps_out) takes the input frame nearest in time, like ffmpeg's fps
    filter; frame i covers times [(i - 0.5) / fps_in, (i + 0.5) / fps_in).
    """
    if fps_out <= 0 or fps_in <= 0:
        return 1

    def outputs_before(t: float) -> int:
        return max(0, math.ceil(t * fps_out - 1e-9))

    return outputs_before((i + 0.5) / fps_in) - outputs_before((i - 0.5) / fps_in)


def compress_ffmpeg(src: str, dst: str, fps: float, short_side: int) -> None:
    s = short_side
    filters = []
    if fps > 0:
        filters.append(f"fps={fps}")
    if s > 0:
        filters.append(f"scale=w='if(gte(iw,ih),-2,min({s},iw))':h='if(gte(iw,ih),min({s},ih),-2)'")
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", src]
    if filters:
        cmd += ["-vf", ",".join(filters)]
    cmd += ["-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
            "-f", "mp4", dst]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg exit {proc.returncode}: {proc.stderr.strip()[-500:]}")


def compress_opencv(src: str, dst: str, fps: float, short_side: int) -> None:
    import cv2

    cap = cv2.VideoCapture(src)
    if not cap.isOpened():
        raise RuntimeError("OpenCV cannot open the file")
    try:
        fps_in = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        fps_out = fps if fps > 0 else fps_in
        if fps_in <= 0:  # unknown rate: keep every frame
            fps_in = fps_out = fps_out if fps_out > 0 else 25.0
        writer = None
        written = 0
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            n = copies_for_frame(i, fps_in, fps_out)
            i += 1
            if n == 0:
                continue
            if writer is None:
                h, w = frame.shape[:2]
                size = scaled_size(w, h, short_side)
                writer = cv2.VideoWriter(dst, cv2.VideoWriter_fourcc(*"mp4v"), fps_out, size)
                if not writer.isOpened():
                    raise RuntimeError("OpenCV cannot write an mp4v video")
            if frame.shape[1::-1] != size:
                frame = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
            for _ in range(n):
                writer.write(frame)
                written += 1
        if writer is None or written == 0:
            raise RuntimeError("no frame could be decoded")
        writer.release()
    finally:
        cap.release()


def output_path(src: str, input_dir: str, output_dir: str) -> str:
    rel = os.path.relpath(src, input_dir)
    return os.path.join(output_dir, os.path.splitext(rel)[0] + ".mp4")


def _job(args: tuple[str, str, str, float, int]) -> tuple[str, str, str]:
    """-> (source, "done" | "skipped" | "failed", message)."""
    src, dst, backend, fps, short_side = args
    if os.path.exists(dst) and os.path.getsize(dst) > 0:
        return src, "skipped", ""
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    tmp = dst + ".part.mp4"
    try:
        if backend == "ffmpeg":
            compress_ffmpeg(src, tmp, fps, short_side)
        else:
            compress_opencv(src, tmp, fps, short_side)
        if not os.path.exists(tmp) or os.path.getsize(tmp) == 0:
            raise RuntimeError("empty output")
        os.replace(tmp, dst)
        return src, "done", ""
    except Exception as exc:  # report and continue with the other files
        if os.path.exists(tmp):
            os.remove(tmp)
        return src, "failed", f"{type(exc).__name__}: {exc}"


def find_videos(input_dir: str) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(input_dir):
        dirnames.sort()
        for f in sorted(filenames):
            if os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS and not f.endswith(".part.mp4"):
                found.append(os.path.join(dirpath, f))
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--fps", type=float, default=3.0, help="output frame rate (0 = keep)")
    p.add_argument("--short_side", type=int, default=224, help="max short side in pixels (0 = keep)")
    p.add_argument("--workers", type=int, default=0, help="processes (0 = all cores)")
    p.add_argument("--backend", choices=["auto", "ffmpeg", "opencv"], default="auto")
    args = p.parse_args(argv)

    backend = args.backend
    if backend == "auto":
        backend = "ffmpeg" if shutil.which("ffmpeg") else "opencv"
    elif backend == "ffmpeg" and not shutil.which("ffmpeg"):
        p.error("--backend ffmpeg: ffmpeg is not on PATH")
    if os.path.abspath(args.input_dir) == os.path.abspath(args.output_dir):
        p.error("--output_dir must differ from --input_dir")
    sources = find_videos(args.input_dir)
    jobs = [(s, output_path(s, args.input_dir, args.output_dir), backend, args.fps, args.short_side)
            for s in sources]
    workers = args.workers or os.cpu_count() or 1
    results = []
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("fork" if hasattr(os, "fork") else "spawn").Pool(workers) as pool:
            results = list(pool.imap_unordered(_job, jobs))
    else:
        results = [_job(j) for j in jobs]
    counts = {k: sum(1 for _, status, _ in results if status == k) for k in ("done", "skipped", "failed")}
    print(f"compress_videos ({backend}): {len(sources)} videos, {counts['done']} converted, "
          f"{counts['skipped']} already done, {counts['failed']} failed")
    failures = sorted((src, msg) for src, status, msg in results if status == "failed")
    if failures:
        print("failed:")
        for src, msg in failures:
            print(f"  {src}: {msg}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
