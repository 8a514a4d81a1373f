"""Generated clips: the demo clip, and (later) the camera-motion training data.

Run ``python -m videoapp.data.synthetic OUT.mp4`` to write a short demo clip
(a textured scene panned by a virtual camera) encoded as H.264 with PyAV.
"""
from __future__ import annotations

import argparse
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import numpy as np


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 30.0,
    codec: str = "libx264",
    crf: int = 23,
) -> Path:
    """Encode uint8 RGB frames ``[H, W, 3]`` (even H and W for H.264) into ``path`` with PyAV.

    Frames are consumed one at a time, so arbitrarily long videos use constant memory.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = None
        for frame in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=rate)
                stream.width, stream.height = frame.shape[1], frame.shape[0]
                stream.pix_fmt = "yuv420p"
                if codec == "libx264":
                    stream.options = {"crf": str(crf), "preset": "veryfast"}
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        if stream is None:
            raise ValueError("no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    return path


def procedural_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random smooth colour texture with sharp edges, uint8 ``[height, width, 3]``.

    Sums of random sinusoids plus a few rectangles: enough structure at every
    scale for motion to be visible.
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            fy, fx = rng.uniform(0.005, 0.06, size=2)
            phase = rng.uniform(0, 2 * np.pi)
            img[..., c] += np.sin(fy * yy + fx * xx + phase)
    img = (img - img.min()) / (np.ptp(img) + 1e-6) * 255
    for _ in range(12):
        h, w = rng.integers(height // 16, height // 4), rng.integers(width // 16, width // 4)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        img[y : y + h, x : x + w] = rng.integers(0, 256, size=3)
    return img.astype(np.uint8)


def demo_frames(num_frames: int = 150, height: int = 240, width: int = 320, seed: int = 0) -> Iterable[np.ndarray]:
    """Frames of a camera panning right over a procedural scene (the scene slides left)."""
    rng = np.random.default_rng(seed)
    scene = procedural_texture(height, width * 3, rng)
    speed = (scene.shape[1] - width) / max(num_frames - 1, 1)
    for t in range(num_frames):
        x = int(round(t * speed))
        yield scene[:, x : x + width]


def main(argv: list[str] | None = None) -> int:
    """Write the demo clip: ``python -m videoapp.data.synthetic OUT.mp4 [--seconds S]``."""
    parser = argparse.ArgumentParser(description="Write a generated demo clip (H.264).")
    parser.add_argument("out", help="output video path, e.g. out/demo.mp4")
    parser.add_argument("--seconds", type=float, default=5.0, help="length in seconds (default 5)")
    parser.add_argument("--fps", type=float, default=30.0)
    args = parser.parse_args(argv)
    path = write_video(args.out, demo_frames(int(args.seconds * args.fps)), fps=args.fps)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
