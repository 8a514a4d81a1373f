"""The camera-motion generator: label semantics, label-swapping augmentations, determinism, splits, files."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from videoapp.data import synthetic as S

DIRECTIONAL = ("pan_left", "pan_right", "tilt_up", "tilt_down", "zoom_in", "zoom_out", "rotate_cw", "rotate_ccw")


# --------------------------------------------------------------------------- motion measurement
def _phase_shift(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """How far the content of patch ``a`` moved to be found in ``b``: ``(dy, dx)`` in pixels (phase correlation)."""
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    fa = np.fft.fft2((a - a.mean()) * win)
    fb = np.fft.fft2((b - b.mean()) * win)
    cross = fb * np.conj(fa)
    r = np.fft.ifft2(cross / (np.abs(cross) + 1e-9)).real
    iy, ix = np.unravel_index(np.argmax(r), r.shape)
    peak = np.array([iy, ix], dtype=np.float64)
    # Sub-pixel: a parabola through the peak and its neighbours on each axis.
    for axis, (prev, here, nxt) in enumerate((
            (r[iy - 1, ix], r[iy, ix], r[(iy + 1) % r.shape[0], ix]),
            (r[iy, ix - 1], r[iy, ix], r[iy, (ix + 1) % r.shape[1]]))):
        denom = prev - 2 * here + nxt
        if denom < 0:
            peak[axis] += 0.5 * (prev - nxt) / denom
    size = np.array(r.shape)
    peak[peak > size / 2] -= size[peak > size / 2]
    return peak


def _grey(frame: np.ndarray) -> np.ndarray:
    return frame.astype(np.float64).mean(-1)


def patch_motion(first: np.ndarray, last: np.ndarray, patch: int = 48) -> dict[str, np.ndarray]:
    """Content displacement ``(dy, dx)`` between two frames in the top/bottom/left/right patches."""
    h, w = first.shape[:2]
    off = patch // 2 + 4
    centres = {"top": (off, w // 2), "bottom": (h - off, w // 2), "left": (h // 2, off), "right": (h // 2, w - off)}
    out = {}
    for name, (cy, cx) in centres.items():
        sl = (slice(cy - patch // 2, cy + patch // 2), slice(cx - patch // 2, cx + patch // 2))
        out[name] = _phase_shift(_grey(first)[sl], _grey(last)[sl])
    return out


def track_motion(frames: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`patch_motion` summed over consecutive frames (small steps, sub-pixel)."""
    total = {k: np.zeros(2) for k in ("top", "bottom", "left", "right")}
    for a, b in zip(frames[:-1], frames[1:]):
        for k, v in patch_motion(a, b).items():
            total[k] += v
    return total


def classify_motion(frames: np.ndarray) -> str:
    """The directional camera move a clip shows, from the flow of its four border patches.

    Content motion: translation (mean of the patches) -> pan/tilt; expansion
    (right moves right, left moves left, ...) -> zoom; counter-clockwise turn
    of the scene (top moves left, right moves up, ...) -> rotate_cw.
    """
    m = track_motion(frames)
    dy = np.mean([v[0] for v in m.values()])
    dx = np.mean([v[1] for v in m.values()])
    expansion = ((m["right"][1] - m["left"][1]) + (m["bottom"][0] - m["top"][0])) / 4
    ccw_turn = ((m["bottom"][1] - m["top"][1]) + (m["left"][0] - m["right"][0])) / 4
    scores = {"translate": np.hypot(dx, dy), "zoom": abs(expansion), "rotate": abs(ccw_turn)}
    kind = max(scores, key=scores.get)
    if kind == "translate":
        if abs(dx) >= abs(dy):
            return "pan_left" if dx > 0 else "pan_right"  # the scene slides right when the camera pans left
        return "tilt_up" if dy > 0 else "tilt_down"      # the scene slides down when the camera tilts up
    if kind == "zoom":
        return "zoom_in" if expansion > 0 else "zoom_out"
    return "rotate_cw" if ccw_turn > 0 else "rotate_ccw"


@lru_cache(maxsize=None)
def _clip(label: str, seed: int, n: int = 31, size: int = 128) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = S.load_photo("gravel.png")  # texture everywhere: no aperture problem
    return S.camera_motion_clip(label, np.arange(n), size, size, rng, image=image, objects=False)


# --------------------------------------------------------------------------- semantics
@pytest.mark.parametrize("label", DIRECTIONAL)
def test_camera_motion_directions_follow_the_camera(label):
    for seed in range(3):
        frames = _clip(label, seed)
        assert frames.shape == (31, 128, 128, 3) and frames.dtype == np.uint8
        assert classify_motion(frames) == label, f"{label} seed {seed}"


def _centroid(frame: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(frame[..., 0] > 128)
    assert len(xs), "the marker left the frame"
    return np.array([ys.mean(), xs.mean()])


def _film(pic: np.ndarray, path: S.CameraPath, size: int) -> np.ndarray:
    return S.render_path(pic, path, size, size, np.random.default_rng(0), min_scale=1.0, max_scale=1.0)


@pytest.mark.parametrize("label,expected", [
    ("pan_left", (0, 27)), ("pan_right", (0, -27)), ("tilt_up", (27, 0)), ("tilt_down", (-27, 0)),
])
def test_pans_and_tilts_move_a_marker_against_the_camera(label, expected):
    # A bright square on black; the window moves 3 px per frame the way the camera turns.
    pic = np.zeros((300, 600, 3), np.uint8)
    pic[140:160, 290:310] = 255
    t = np.arange(10, dtype=np.float64)
    window = {"pan_left": (-3, 0), "pan_right": (3, 0), "tilt_up": (0, -3), "tilt_down": (0, 3)}[label]
    # The generator's own path for this label moves the window the same way.
    own = S.motion_segment(label, t, 100, np.random.default_rng(2))
    assert np.sign(own.x[-1]) == np.sign(window[0]) or window[0] == 0
    assert np.sign(own.y[-1]) == np.sign(window[1]) or window[1] == 0
    zero = np.zeros_like(t)
    frames = _film(pic, S.CameraPath(window[0] * t, window[1] * t, zero, zero), 100)
    moved = _centroid(frames[-1]) - _centroid(frames[0])  # (dy, dx) of the scene in the frame
    assert moved == pytest.approx(np.array(expected, dtype=float), abs=1.0)


def test_zoom_in_grows_the_scene():
    # The picture is exactly the first (largest) window, so the frame centre is the picture centre.
    pic = np.zeros((124, 124, 3), np.uint8)
    pic[58:66, 88:96] = 255  # 30 px right of the centre
    t = np.arange(5, dtype=np.float64)
    zero = np.zeros_like(t)
    own = S.motion_segment("zoom_in", t, 120, np.random.default_rng(1))
    assert np.all(np.diff(own.log_scale) < 0)  # zoom_in shrinks the window
    frames = _film(pic, S.CameraPath(zero, zero, -0.1 * t, zero), 120)
    r0, r1 = (np.hypot(*(_centroid(f) - 59.5)) for f in (frames[0], frames[-1]))
    assert r0 == pytest.approx(30.0, abs=1.0)
    assert r1 == pytest.approx(30.0 * np.exp(0.4), abs=1.5)  # the scene grew by e^0.4


def test_rotate_cw_turns_the_scene_counter_clockwise():
    # 40 degrees of clockwise camera roll; the picture just holds every rotated window, centred.
    t = np.arange(5, dtype=np.float64)
    zero = np.zeros_like(t)
    own = S.motion_segment("rotate_cw", t, 120, np.random.default_rng(3))
    assert np.all(np.diff(own.angle) > 0)  # rotate_cw turns the window clockwise on screen
    path = S.CameraPath(zero, zero, zero, np.radians(10.0) * t)
    x0, x1, _, _ = S._bounds(path, 120, 120)
    side = int(np.ceil(x1 - x0)) + 4
    pic = np.zeros((side, side, 3), np.uint8)
    c = side / 2
    pic[int(c) - 4:int(c) + 4, int(c) + 26:int(c) + 34] = 255  # 30 px right of the centre (3 o'clock)
    frames = _film(pic, path, 120)
    angles = []
    for f in (frames[0], frames[-1]):
        dy, dx = _centroid(f) - 59.5
        angles.append(np.degrees(np.arctan2(-dy, dx)))  # counter-clockwise angle, y up
    assert angles[0] == pytest.approx(0.0, abs=3.0)
    assert angles[1] == pytest.approx(40.0, abs=3.0)  # the marker went counter-clockwise, towards 12 o'clock


def test_static_and_shake():
    static = _clip("static", 0, n=12)
    m = patch_motion(static[0], static[-1])
    assert max(np.abs(v).max() for v in m.values()) <= 1
    shake = _clip("shake", 0, n=31)
    moves = [max(np.abs(v).max() for v in patch_motion(shake[0], f).values()) for f in shake[1:]]
    assert max(moves) >= 2  # it does shake


# --------------------------------------------------------------------------- label-swapping augmentations
@pytest.mark.parametrize("name,table,transform", [
    ("reverse", S.TIME_REVERSE, lambda f: f[::-1]),
    ("hflip", S.HFLIP, lambda f: f[:, :, ::-1]),
    ("vflip", S.VFLIP, lambda f: f[:, ::-1]),
    ("transpose", S.TRANSPOSE, lambda f: f.transpose(0, 2, 1, 3)),
])
def test_label_swapping_augmentations_match_the_transformed_motion(name, table, transform):
    for label in DIRECTIONAL:
        frames = _clip(label, 5)
        assert classify_motion(np.ascontiguousarray(transform(frames))) == table[label], (name, label)
    for label in ("static", "shake"):
        assert table[label] == label
    assert sorted(table.values()) == sorted(S.CAMERA_MOTIONS)  # a permutation of the labels


def test_augment_clip_composes_labels():
    frames = _clip("pan_left", 2)
    seen = set()
    for seed in range(16):
        out, label = S.augment_clip(frames, "pan_left", np.random.default_rng(seed))
        assert classify_motion(np.ascontiguousarray(out)) == label
        seen.add(label)
    assert seen == {"pan_left", "pan_right", "tilt_up", "tilt_down"}


# --------------------------------------------------------------------------- pools, splits, files
def test_pool_is_deterministic_and_preprocessed_like_predict(tmp_path):
    a = S.generate_pool(20, seed=3, num_frames=8, sampling_rate=4, crop_size=64)
    b = S.generate_pool(20, seed=3, num_frames=8, sampling_rate=4, crop_size=64)
    c = S.generate_pool(20, seed=4, num_frames=8, sampling_rate=4, crop_size=64)
    assert a.clips.shape == (20, 8, 64, 64, 3) and a.clips.dtype == np.uint8
    assert np.array_equal(a.clips, b.clips) and not np.array_equal(a.clips, c.clips)
    assert a.labels.tolist() == [i % 10 for i in range(20)] and a.classes == list(S.CAMERA_MOTIONS)
    a.save(tmp_path / "pool")
    loaded = S.Pool.load(tmp_path / "pool")
    assert np.array_equal(np.asarray(loaded.clips), a.clips) and loaded.classes == a.classes
    cached = S.cached_pool(tmp_path / "cache", 12, seed=3)
    assert np.array_equal(np.asarray(cached.clips), a.clips[:12])  # clip i depends only on (seed, i)
    assert S.cached_pool(tmp_path / "cache", 12, seed=3).clips.shape[0] == 12  # served from the cache


def test_pool_workers_give_the_same_clips():
    one = S.generate_pool(24, seed=1, workers=1)
    two = S.generate_pool(24, seed=1, workers=2)  # 3 chunks over 2 processes
    assert np.array_equal(one.clips, two.clips)


def test_train_and_test_pictures_are_disjoint():
    assert not set(S.TRAIN_PHOTOS) & set(S.TEST_PHOTOS)
    train = {img.tobytes()[:4096] + str(img.shape).encode() for img in S.source_images("train")}
    test = {img.tobytes()[:4096] + str(img.shape).encode() for img in S.source_images("test")}
    assert not train & test
    assert len(S.source_images("test")) >= 8


def test_camera_motion_videos_are_h264_class_folders(tmp_path):
    from videoapp.data.datasets import read_folder
    from videoapp.data.video import VideoReader

    items = S.write_camera_motion_videos(tmp_path, 1, classes=("zoom_in", "static"), seed=9,
                                         min_frames=20, max_frames=24)
    assert [label for _, label in items] == ["zoom_in", "static"]
    for path, label in items:
        assert path.parent.name == label and path.suffix == ".mp4"
        with VideoReader(path) as r:
            assert r.info.codec in ("h264", "libx264") and 20 <= r.info.num_frames <= 24
            assert r.get_frames([0, 5]).shape[0] == 2
    ann = read_folder(tmp_path)
    assert ann.classes == ["static", "zoom_in"] and len(ann) == 2


def test_demo_main_writes_a_sequence(tmp_path, capsys):
    out = tmp_path / "demo.mp4"
    assert S.main([str(out), "--seconds", "0.4", "--moves", "pan_left,zoom_in"]) == 0
    assert out.stat().st_size > 0 and "pan_left" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        S.main([str(out), "--moves", "fly_away"])
