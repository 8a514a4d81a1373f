"""Large articulated movers for the generated camera-motion clips: person-like figures that walk, wave and bend.

A real tripod shot often has a person moving through it; a classifier trained
only on small distractors reads the person's motion as camera shake.
:mod:`videoapp.data.synthetic` therefore draws (optionally) one or two of
these figures over its clips, in screen space, so the clip's label still
follows the camera alone.

A figure is eleven rigid parts in a fixed drawing order: the far arm (upper
arm, forearm), the two legs (thigh, shin), the torso, the neck, the head and
the near arm. Every part is a capsule (a segment with a radius, i.e. a
rounded rectangle; the head is an almost round one), posed per frame by
joint angles that follow one of :data:`ACTIONS`:

==========  ==============================================================
``walk``    side view; legs and arms swing in opposition, the body bobs and
            crosses the frame at 0.5-1 body heights per second
``wave``    one or both arms raised, forearms swinging at 1.5-3 Hz
``bend``    the torso bends forward by 40-80 degrees and back, arms hanging
``jacks``   front view; arms and legs spread and close together
==========  ==============================================================

Body units: the standing figure is 1 tall (head top to soles), ``y`` points
down, the origin is the pelvis. Each part's texture is cut from a picture and
fixed to the part (a sleeve's pattern moves with the arm), tinted like
clothing (top, trousers) or skin (head), with cylinder-like shading across
the part. This module only draws; the caller picks the pictures.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ACTIONS: tuple[str, ...] = ("walk", "wave", "bend", "jacks")
_ACTION_P = (0.4, 0.2, 0.2, 0.2)

# Part names in drawing order (back to front); "a" is the far side, "b" the near side.
PARTS: tuple[str, ...] = ("upper_arm_a", "forearm_a", "thigh_a", "shin_a", "thigh_b", "shin_b",
                          "torso", "neck", "head", "upper_arm_b", "forearm_b")
_GROUP = {"upper_arm_a": 0, "forearm_a": 0, "torso": 0, "upper_arm_b": 0, "forearm_b": 0,  # top
          "thigh_a": 1, "shin_a": 1, "thigh_b": 1, "shin_b": 1,                                # trousers
          "neck": 2, "head": 2}                                                                # skin
# Skin-like base colours (RGB, 0-255), varied per figure.
_SKIN = np.array([[233, 190, 160], [198, 140, 105], [141, 85, 60], [90, 56, 40]], np.float64)


@dataclass
class Figure:
    """One figure over a clip.

    ``height`` is its standing height in pixels (head top to soles);
    ``x_mid``, ``feet_y`` the pelvis's horizontal position at the clip's
    middle time ``t_mid`` (s) and the soles' row (px); ``vx`` its horizontal
    speed (px/s); ``facing`` +1 (right) or -1; ``width`` how far apart the
    left and right limbs are drawn (0 = side view, 1 = front view); ``body``
    the part lengths and radii in body units; ``motion`` the action's
    frequencies (Hz), amplitudes (radians) and phases; ``look`` the texture
    offsets, scale and tints.
    """

    action: str
    height: float
    x_mid: float
    feet_y: float
    t_mid: float
    vx: float
    facing: float
    width: float
    body: dict
    motion: dict
    look: dict


def _body(rng: np.random.Generator) -> dict:
    """Part lengths and radii (body units, normalised so that the standing figure is 1 tall)."""
    j = lambda v: v * rng.uniform(0.9, 1.1)  # noqa: E731 - per-figure proportions
    b = dict(head_r=j(0.065), neck=j(0.03), torso=j(0.30), shoulder=j(0.11), hip=j(0.055),
             upper_arm=j(0.16), forearm=j(0.15), thigh=j(0.245), shin=j(0.24),
             torso_r=j(0.1), upper_arm_r=j(0.042), forearm_r=j(0.034), thigh_r=j(0.06), shin_r=j(0.045),
             neck_r=j(0.035))
    up = b["torso"] + b["neck"] + 2 * b["head_r"]     # pelvis to head top
    down = b["thigh"] + b["shin"] + b["shin_r"]        # pelvis to soles
    total = up + down
    b = {k: v / total for k, v in b.items()}
    b["down"] = down / total
    return b


def _motion(action: str, speed: float, height: float, rng: np.random.Generator) -> dict:
    """Frequencies (Hz), amplitudes (radians) and phases of one action; ``speed`` in px/s for the gait."""
    m = dict(phase=rng.uniform(0, 2 * np.pi), lean=math.radians(rng.uniform(0, 6)),
             sway=math.radians(rng.uniform(3, 10)), sway_f=rng.uniform(0.3, 0.8))
    if action == "walk":
        # One gait cycle (two steps) covers about 0.8 body heights.
        m.update(f=max(abs(speed) / (0.8 * height), 0.5), hip=math.radians(rng.uniform(22, 35)),
                 knee=math.radians(rng.uniform(30, 55)), arm=math.radians(rng.uniform(20, 40)),
                 elbow=math.radians(rng.uniform(10, 35)), bob=rng.uniform(0.01, 0.02))
    elif action == "wave":
        m.update(f=rng.uniform(1.5, 3.0), raise_=math.radians(rng.uniform(120, 170)),
                 swing=math.radians(rng.uniform(25, 50)), both=bool(rng.uniform() < 0.4))
    elif action == "bend":
        m.update(f=rng.uniform(0.4, 0.9), bend=math.radians(rng.uniform(40, 80)))
    else:  # jacks
        m.update(f=rng.uniform(0.8, 1.6), arm=math.radians(rng.uniform(100, 160)),
                 leg=math.radians(rng.uniform(12, 22)))
    return m


def random_figure(height: int, width: int, t: np.ndarray, rng: np.random.Generator,
                  action: str | None = None, size: tuple[float, float] = (0.3, 0.7)) -> Figure:
    """A random figure for frames ``height x width`` at times ``t`` (seconds).

    Its standing height is ``size`` (fractions of the frame height, uniform);
    it stands fully inside the frame vertically and is in view at the clip's
    middle time (a walker may enter or leave over a long clip).
    """
    if action is None:
        action = str(rng.choice(ACTIONS, p=_ACTION_P))
    if action not in ACTIONS:
        raise ValueError(f"unknown figure action {action!r} (known: {', '.join(ACTIONS)})")
    fig_h = rng.uniform(*size) * height
    facing = 1.0 if rng.uniform() < 0.5 else -1.0
    if action == "walk":
        vx = facing * rng.uniform(0.5, 1.0) * fig_h
        view = rng.uniform(0.1, 0.4)
    else:
        vx = rng.uniform(-0.15, 0.15) * fig_h
        view = rng.uniform(0.7, 1.0) if action == "jacks" else rng.uniform(0.2, 1.0)
    feet_y = rng.uniform(min(0.99 * height, fig_h + 0.01 * height), 0.99 * height)
    look = dict(
        offsets=rng.uniform(-0.7, 0.7, size=(len(PARTS), 2)),      # texture position of each part (normalised)
        turns=rng.uniform(0, 2 * np.pi, size=len(PARTS)),          # texture orientation of each part
        scale=rng.uniform(0.6, 1.5),                               # texture px per frame px
        base=np.stack([rng.uniform(20, 235, size=3), rng.uniform(15, 160, size=3),
                       _SKIN[int(rng.integers(0, len(_SKIN)))] * rng.uniform(0.85, 1.1)]),
        contrast=np.array([rng.uniform(0.4, 1.1), rng.uniform(0.3, 0.9), rng.uniform(0.05, 0.25)]),
    )
    return Figure(action=action, height=fig_h, x_mid=rng.uniform(0.15, 0.85) * width, feet_y=feet_y,
                  t_mid=float((t.min() + t.max()) / 2), vx=vx, facing=facing, width=view,
                  body=_body(rng), motion=_motion(action, vx, fig_h, rng), look=look)


def _angles(fig: Figure, t: np.ndarray) -> dict[str, np.ndarray]:
    """Joint angles per frame (radians; limbs from straight down, positive towards ``facing``).

    Keys: ``lean`` (torso from upright, forward positive), ``ua_a``/``fa_a``
    (upper arm / forearm of the far side, absolute), ``ua_b``/``fa_b``,
    ``th_a``/``sh_a``/``th_b``/``sh_b`` (thigh / shin), ``bob`` (pelvis lift,
    body units).
    """
    m = fig.motion
    ph = 2 * np.pi * m.get("f", 1.0) * t + m["phase"]
    sway = m["sway"] * np.sin(2 * np.pi * m["sway_f"] * t + m["phase"])  # idle arm sway
    zero = np.zeros_like(t)
    a = dict(lean=m["lean"] + zero, bob=zero, ua_a=sway, ua_b=-sway, th_a=zero, th_b=zero)
    a["fa_a"], a["fa_b"] = a["ua_a"] + math.radians(10), a["ua_b"] + math.radians(10)
    if fig.action == "walk":
        a["th_a"], a["th_b"] = m["hip"] * np.sin(ph), -m["hip"] * np.sin(ph)
        # The knee bends while the leg swings forward.
        a["sh_a"] = a["th_a"] - m["knee"] * 0.5 * (1 - np.cos(ph))
        a["sh_b"] = a["th_b"] - m["knee"] * 0.5 * (1 + np.cos(ph))
        a["ua_a"], a["ua_b"] = -m["arm"] * np.sin(ph), m["arm"] * np.sin(ph)
        a["fa_a"], a["fa_b"] = a["ua_a"] + m["elbow"], a["ua_b"] + m["elbow"]
        a["bob"] = m["bob"] * np.abs(np.cos(ph))
    elif fig.action == "wave":
        a["ua_b"] = m["raise_"] + 0.15 * m["swing"] * np.sin(ph)
        a["fa_b"] = a["ua_b"] + 0.3 + m["swing"] * np.sin(ph)
        if m["both"]:
            a["ua_a"], a["fa_a"] = a["ua_b"].copy(), a["fa_b"].copy()
    elif fig.action == "bend":
        a["lean"] = m["lean"] + m["bend"] * 0.5 * (1 - np.cos(ph))
        # Arms hang (nearly straight down in the world) while the torso bends.
        a["ua_a"], a["ua_b"] = 0.2 * a["lean"] + sway, 0.2 * a["lean"] - sway
        a["fa_a"], a["fa_b"] = a["ua_a"] + 0.1, a["ua_b"] + 0.1
        a["th_a"] = a["th_b"] = -0.1 * a["lean"]
    else:  # jacks: open and close; on the far side "towards facing" is outwards too (front view)
        open_ = 0.5 * (1 - np.cos(ph))
        a["ua_a"] = a["ua_b"] = math.radians(10) + m["arm"] * open_
        a["fa_a"] = a["fa_b"] = a["ua_a"] + math.radians(10) * open_
        a["th_a"] = a["th_b"] = m["leg"] * open_
        a["bob"] = 0.03 * np.sin(ph) ** 2
    a.setdefault("sh_a", a["th_a"])
    a.setdefault("sh_b", a["th_b"])
    return a


def figure_parts(fig: Figure, t: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Each part's segment per frame: ``{name: (A [T, 2], B [T, 2], radius)}`` in frame pixels (x, y).

    ``t`` in seconds. The pelvis is at ``(x_mid + vx (t - t_mid), feet_y -
    down * height)``, lifted by the gait's bob.
    """
    b, h = fig.body, fig.height
    a = _angles(fig, t)
    px = fig.x_mid + fig.vx * (t - fig.t_mid)
    py = fig.feet_y - (b["down"] + a["bob"]) * h
    pelvis = np.stack([px, py], -1)
    # Sides: in a front view (jacks) each side's limbs open outwards; otherwise both point towards `facing`.
    off_a = np.array([-fig.facing * fig.width, 0.0])  # the far side is behind
    off_b = -off_a
    sign_a = -fig.facing if fig.action == "jacks" else fig.facing
    sign_b = fig.facing

    def limb(theta: np.ndarray, sign: float) -> np.ndarray:
        return np.stack([sign * np.sin(theta), np.cos(theta)], -1)

    spine = np.stack([fig.facing * np.sin(a["lean"]), -np.cos(a["lean"])], -1)
    shoulders = pelvis + b["torso"] * h * spine
    head = shoulders + (b["neck"] + b["head_r"]) * h * spine
    parts = {}
    for side, sign, off in (("a", sign_a, off_a), ("b", sign_b, off_b)):
        s = shoulders + off * b["shoulder"] * h
        elbow = s + b["upper_arm"] * h * limb(a["ua_" + side], sign)
        hand = elbow + b["forearm"] * h * limb(a["fa_" + side], sign)
        hip = pelvis + off * b["hip"] * h
        knee = hip + b["thigh"] * h * limb(a["th_" + side], sign)
        ankle = knee + b["shin"] * h * limb(a["sh_" + side], sign)
        parts[f"upper_arm_{side}"] = (s, elbow, b["upper_arm_r"] * h)
        parts[f"forearm_{side}"] = (elbow, hand, b["forearm_r"] * h)
        parts[f"thigh_{side}"] = (hip, knee, b["thigh_r"] * h)
        parts[f"shin_{side}"] = (knee, ankle, b["shin_r"] * h)
    # The torso capsule's rounded top ends at the shoulders, its bottom covers the hips.
    parts["torso"] = (pelvis + 0.3 * b["torso_r"] * h * spine, shoulders - 0.6 * b["torso_r"] * h * spine,
                      b["torso_r"] * h)
    parts["neck"] = (shoulders - 0.5 * b["neck"] * h * spine, head, b["neck_r"] * h)
    r_head = b["head_r"] * h
    parts["head"] = (head - 0.15 * r_head * spine, head + 0.15 * r_head * spine, 0.88 * r_head)
    return {name: parts[name] for name in PARTS}


def draw_figure(frames, fig: Figure, t: np.ndarray, texture):
    """Draw ``fig`` at times ``t`` (s) over float frames ``[T, 3, H, W]`` (0-255), in place; returns its alpha ``[T, H, W]``.

    ``texture``: float tensor ``[1, 3, h, w]`` (0-255) the parts' patterns are
    cut from. Edges are antialiased (alpha falls from 1 to 0 over one pixel).
    Work is limited to the figure's bounding box over the clip.
    """
    import torch
    import torch.nn.functional as F

    n, _, height, width = frames.shape
    parts = figure_parts(fig, t)
    alpha_full = torch.zeros(n, height, width)
    pts = np.concatenate([np.concatenate([a, b]) for a, b, _ in parts.values()])
    pad = max(r for _, _, r in parts.values()) + 2
    x0, x1 = max(0, int(pts[:, 0].min() - pad)), min(width, int(pts[:, 0].max() + pad) + 1)
    y0, y1 = max(0, int(pts[:, 1].min() - pad)), min(height, int(pts[:, 1].max() + pad) + 1)
    if x1 <= x0 or y1 <= y0:
        return alpha_full  # entirely outside the frame
    xx = torch.arange(x0, x1, dtype=torch.float32).view(1, 1, -1) + 0.5
    yy = torch.arange(y0, y1, dtype=torch.float32).view(1, -1, 1) + 0.5
    shape = (n, y1 - y0, x1 - x0)
    # Per pixel, blended back to front: coverage, texture coordinates, and the part's tint and shading.
    alpha = torch.zeros(shape)
    tex_xy = torch.zeros(shape + (2,))
    base = torch.zeros(shape + (3,))
    contrast = torch.zeros(shape)
    shade = torch.zeros(shape)
    look = fig.look
    tex_h, tex_w = texture.shape[-2:]
    k = 2 * look["scale"] / np.array([tex_w, tex_h])  # normalised texture units per frame pixel
    for i, (name, (pa, pb, r)) in enumerate(parts.items()):
        ax, ay = (torch.from_numpy(pa[:, j]).float().view(-1, 1, 1) for j in (0, 1))
        dx, dy = (torch.from_numpy(pb[:, j] - pa[:, j]).float().view(-1, 1, 1) for j in (0, 1))
        length = torch.sqrt(dx * dx + dy * dy).clamp(min=1e-3)
        ux, uy = dx / length, dy / length
        rx, ry = xx - ax, yy - ay
        along = rx * ux + ry * uy                      # distance along the part from A (px)
        across = -rx * uy + ry * ux                    # signed distance from its axis (px)
        # Distance to the segment: past either end, the distance to that end.
        outside = along.clamp(max=0) + (along - length).clamp(min=0)
        dist = torch.sqrt(outside * outside + across * across)
        a_p = (r - dist + 0.5).clamp(0, 1)
        # The pattern is fixed to the part: texture coordinates follow (along, across).
        c, s = math.cos(look["turns"][i]), math.sin(look["turns"][i])
        tx = look["offsets"][i, 0] + k[0] * (c * across - s * along)
        ty = look["offsets"][i, 1] + k[1] * (s * across + c * along)
        g = _GROUP[name]
        w = a_p.unsqueeze(-1)
        tex_xy = tex_xy * (1 - w) + torch.stack([tx, ty], -1) * w
        base = base * (1 - w) + torch.tensor(look["base"][g], dtype=torch.float32) * w
        contrast = contrast * (1 - a_p) + float(look["contrast"][g]) * a_p
        shade = shade * (1 - a_p) + (1 - 0.35 * (across / r).clamp(-1, 1) ** 2) * a_p
        alpha = alpha + a_p * (1 - alpha)
    covered = alpha.clamp(min=1e-6)
    grid = (tex_xy / covered.unsqueeze(-1)).clamp(-1, 1)
    tex = F.grid_sample(texture.expand(n, -1, -1, -1), grid, mode="bilinear", padding_mode="reflection",
                        align_corners=False)                            # [T, 3, h, w]
    colour = (base / covered.unsqueeze(-1)).permute(0, 3, 1, 2) + \
        (contrast / covered).unsqueeze(1) * (tex - texture.mean())
    colour = (colour * (shade / covered).unsqueeze(1)).clamp(0, 255)
    a4 = alpha.unsqueeze(1)
    region = frames[:, :, y0:y1, x0:x1]
    region.mul_(1 - a4).add_(colour * a4)
    alpha_full[:, y0:y1, x0:x1] = alpha
    return alpha_full
