"""The embedded default dataset: synthetic pedestrians written in the Market-1501 course layout.

Nothing is downloaded: ``ensure_synthetic()`` draws the images with Pillow and writes them as
JPEG files plus ``annotations_train.csv`` exactly as the course layout has them, so the real
loader (:mod:`mtl.data.sources.market_course`) reads them and every code path after it is the
one real data takes.

Each identity has a fixed set of the Market attributes drawn visibly (hair length, sleeve and
lower-body length, dress or pants, hat, backpack, bag, handbag, upper/lower colour or a
multicolour stripe pattern, gender as body shape and age as head size/hair shade) plus a few
identity-only details (skin tone, shoe colour, a chest badge) so that re-identification is
learnable. Each camera has its own background and light; each image varies scale, position,
pose (mirroring, lean) and noise. Deterministic for a given seed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from mtl.data.sources.market_course import ANNOTATION_COLUMNS, DOWN_COLUMNS, UP_COLUMNS

VERSION = 2  # bump when the drawing changes, so old caches are not reused
HEIGHT, WIDTH = 128, 64
PALETTE = {
    "black": (25, 25, 25), "white": (235, 235, 235), "red": (200, 30, 30), "purple": (120, 40, 150),
    "yellow": (230, 210, 40), "gray": (128, 128, 128), "blue": (40, 70, 200), "green": (40, 150, 60),
    "pink": (240, 140, 180), "brown": (120, 70, 30),
}
CAMERA_BACKGROUNDS = [(90, 110, 90), (150, 140, 120), (70, 80, 110), (170, 170, 175), (110, 90, 70), (60, 60, 60)]


def default_cache_dir() -> Path:
    return Path(os.environ.get("MTL_CACHE", Path.home() / ".cache" / "mtl"))


def _draw_identity_attributes(rng: np.random.Generator) -> dict:
    """Draw one identity's coded attributes (course coding: 1/2, age 1-4)."""
    a = {
        "gender": rng.choice([1, 2]),
        "age": rng.choice([1, 2, 3, 4], p=[0.1, 0.2, 0.55, 0.15]),
        "backpack": rng.choice([1, 2], p=[0.7, 0.3]),
        "bag": rng.choice([1, 2], p=[0.75, 0.25]),
        "handbag": rng.choice([1, 2], p=[0.8, 0.2]),
        "up": rng.choice([1, 2], p=[0.4, 0.6]),
        "hat": rng.choice([1, 2], p=[0.85, 0.15]),
    }
    a["hair"] = rng.choice([1, 2], p=[0.8, 0.2] if a["gender"] == 1 else [0.25, 0.75])
    a["clothes"] = 1 if (a["gender"] == 2 and rng.random() < 0.35) else 2
    a["down"] = rng.choice([1, 2], p=[0.6, 0.4])
    up_color = rng.integers(0, len(UP_COLUMNS) + 1)  # last value: multicolour
    down_color = rng.integers(0, len(DOWN_COLUMNS) + 1)
    for i, column in enumerate(UP_COLUMNS):
        a[column] = 2 if i == up_color else 1
    for i, column in enumerate(DOWN_COLUMNS):
        a[column] = 2 if i == down_color else 1
    return {k: int(v) for k, v in a.items()}


def _garment_fill(draw: ImageDraw.ImageDraw, box, attrs: dict, columns, stripe_colors, shade: float):
    """Fill a garment box with its colour, or stripes of two colours for multicolour."""
    set_cols = [c for c in columns if attrs[c] == 2]
    x0, y0, x1, y1 = box
    if set_cols:
        name = set_cols[0][len("up"):] if set_cols[0].startswith("up") else set_cols[0][len("down"):]
        draw.rectangle(box, fill=_shade(PALETTE[name], shade))
        return
    step = 4
    for i, y in enumerate(range(int(y0), int(y1) + 1, step)):
        draw.rectangle((x0, y, x1, min(y + step - 1, y1)), fill=_shade(stripe_colors[i % 2], shade))


def _shade(rgb, f):
    return tuple(int(np.clip(c * f, 0, 255)) for c in rgb)


def render_person(attrs: dict, ident: dict, camera: int, rng: np.random.Generator) -> Image.Image:
    """Draw one image of an identity seen by ``camera`` (0-based), with random pose/scale/light."""
    bg = np.array(CAMERA_BACKGROUNDS[camera % len(CAMERA_BACKGROUNDS)], dtype=np.float32)
    img = Image.new("RGB", (WIDTH, HEIGHT), tuple(int(c) for c in bg))
    draw = ImageDraw.Draw(img)
    # background clutter: a few camera-specific rectangles
    for _ in range(3):
        x, y = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        draw.rectangle((x, y, x + rng.integers(4, 20), y + rng.integers(4, 30)),
                       fill=tuple(int(c) for c in np.clip(bg + rng.normal(0, 25, 3), 0, 255)))
    s = rng.uniform(0.8, 1.0)  # scale
    cx = WIDTH / 2 + rng.uniform(-5, 5)
    top = 6 + rng.uniform(-3, 8)
    light = rng.uniform(0.75, 1.2) * (0.9 + 0.05 * camera % 3)
    skin = _shade(ident["skin"], light)
    body_w = (16 if attrs["gender"] == 1 else 13) * s
    head_r = (7.5 if attrs["age"] == 1 else 6.5) * s
    head_y = top + head_r
    torso_top = head_y + head_r + 1
    torso_bot = torso_top + 34 * s
    legs_bot = min(HEIGHT - 3, torso_bot + 46 * s)
    hair_color = _shade((200, 200, 200) if attrs["age"] == 4 else ident["hair"], light)
    # backpack is drawn first: it shows beside the torso
    if attrs["backpack"] == 2:
        draw.rectangle((cx + body_w / 2 - 2, torso_top + 3, cx + body_w / 2 + 7 * s, torso_top + 24 * s),
                       fill=_shade((60, 40, 20), light))
    # long hair falls behind the shoulders
    if attrs["hair"] == 2:
        draw.rectangle((cx - head_r - 1, head_y, cx + head_r + 1, torso_top + 14 * s), fill=hair_color)
    # torso and sleeves
    stripes_up = (ident["stripe1"], ident["stripe2"])
    _garment_fill(draw, (cx - body_w / 2, torso_top, cx + body_w / 2, torso_bot), attrs, UP_COLUMNS, stripes_up, light)
    arm_len = 30 * s
    sleeve = arm_len if attrs["up"] == 1 else 10 * s
    for side in (-1, 1):
        ax0 = cx + side * body_w / 2 + (0 if side > 0 else -5 * s)
        box = (ax0, torso_top + 1, ax0 + 5 * s, torso_top + 1 + arm_len)
        draw.rectangle(box, fill=skin)
        _garment_fill(draw, (box[0], box[1], box[2], torso_top + 1 + sleeve), attrs, UP_COLUMNS, stripes_up, light)
    # badge: identity-only detail
    bx, by = cx + ident["badge_dx"] * s, torso_top + ident["badge_dy"] * s
    draw.rectangle((bx, by, bx + 4 * s, by + 4 * s), fill=_shade(ident["badge"], light))
    # lower body
    stripes_down = (ident["stripe2"], ident["stripe1"])
    lower_len = (legs_bot - torso_bot) if attrs["down"] == 1 else (legs_bot - torso_bot) * 0.45
    leg_w = body_w / 2 - 1
    for side in (-1, 1):
        lx0 = cx - body_w / 2 if side < 0 else cx + 1
        draw.rectangle((lx0, torso_bot, lx0 + leg_w, legs_bot), fill=skin)
        if attrs["clothes"] == 2:  # pants: two legs
            _garment_fill(draw, (lx0, torso_bot, lx0 + leg_w, torso_bot + lower_len), attrs, DOWN_COLUMNS, stripes_down, light)
        draw.rectangle((lx0, legs_bot - 3, lx0 + leg_w + 2, legs_bot), fill=_shade(ident["shoes"], light))
    if attrs["clothes"] == 1:  # dress: one flared piece
        flare = 5 * s
        draw.polygon([(cx - body_w / 2, torso_bot), (cx + body_w / 2, torso_bot),
                      (cx + body_w / 2 + flare, torso_bot + lower_len), (cx - body_w / 2 - flare, torso_bot + lower_len)],
                     fill=_shade(PALETTE["black"], light))
        _garment_fill(draw, (cx - body_w / 2 - flare / 2, torso_bot, cx + body_w / 2 + flare / 2, torso_bot + lower_len),
                      attrs, DOWN_COLUMNS, stripes_down, light)
    # head, hair, hat
    draw.ellipse((cx - head_r, head_y - head_r, cx + head_r, head_y + head_r), fill=skin)
    draw.chord((cx - head_r, head_y - head_r - 1, cx + head_r, head_y + head_r * 0.6), 180, 360, fill=hair_color)
    if attrs["hat"] == 2:
        draw.rectangle((cx - head_r - 3, head_y - head_r * 0.6, cx + head_r + 3, head_y - head_r * 0.3), fill=_shade(ident["hat"], light))
        draw.rectangle((cx - head_r + 1, head_y - head_r - 4, cx + head_r - 1, head_y - head_r * 0.5), fill=_shade(ident["hat"], light))
    # bag on a strap at the hip, handbag hanging from the hand
    if attrs["bag"] == 2:
        draw.line((cx - body_w / 2, torso_top + 2, cx + body_w / 2, torso_bot - 6), fill=(30, 30, 30), width=2)
        draw.rectangle((cx - body_w / 2 - 7 * s, torso_bot - 10 * s, cx - body_w / 2 + 2, torso_bot + 2), fill=_shade((150, 100, 50), light))
    if attrs["handbag"] == 2:
        hx = cx + body_w / 2 + 1
        draw.rectangle((hx, torso_top + arm_len, hx + 8 * s, torso_top + arm_len + 9 * s), fill=_shade((180, 30, 90), light))
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (HEIGHT, WIDTH, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _identity_details(rng: np.random.Generator) -> dict:
    def color():
        return tuple(int(c) for c in rng.integers(20, 235, 3))
    return {
        "skin": tuple(int(c) for c in np.array([225, 185, 150]) * rng.uniform(0.5, 1.05)),
        "hair": tuple(int(c) for c in rng.integers(10, 120, 3)),
        "shoes": color(), "badge": color(), "hat": color(), "stripe1": color(), "stripe2": color(),
        "badge_dx": float(rng.uniform(-6, 2)), "badge_dy": float(rng.uniform(2, 24)),
    }


def generate(out_dir: str | Path, identities: int = 200, images_per_identity: int = 4, cameras: int = 6,
             unlabelled_identities: int = 20, seed: int = 0) -> Path:
    """Write a synthetic course-layout dataset into ``out_dir`` (which must not exist).

    ``train/`` gets ``identities`` labelled identities, each seen by several cameras (many
    identities with few images each: attributes generalise from the variety of people);
    ``queries/`` and ``test/`` get unlabelled images of ``unlabelled_identities`` other people
    (one query per identity and camera, the rest in the gallery), as the course layout has them.
    """
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    (out / "train").mkdir(parents=True)
    (out / "queries").mkdir()
    (out / "test").mkdir()
    rows = []
    counter = {"queries": 0, "test": 0}
    for k in range(identities + unlabelled_identities):
        pid = k + 1
        attrs = _draw_identity_attributes(rng)
        ident = _identity_details(rng)
        cams = rng.choice(cameras, size=min(cameras, max(2, images_per_identity // 3)), replace=False)
        seen_query_cams: set[int] = set()
        for j in range(images_per_identity):
            cam = int(cams[j % len(cams)])
            img = render_person(attrs, ident, cam, rng)
            if k < identities:
                img.save(out / "train" / f"{pid:04d}_c{cam + 1}_{j:09d}.jpg", quality=92)
            else:
                folder = "test" if cam in seen_query_cams else "queries"
                seen_query_cams.add(cam)
                img.save(out / folder / f"{counter[folder]:06d}.jpg", quality=92)
                counter[folder] += 1
        if k < identities:
            rows.append({"id": pid, **attrs})
    pd.DataFrame(rows, columns=["id", *ANNOTATION_COLUMNS]).to_csv(out / "annotations_train.csv", index=False)
    return out


def ensure_synthetic(cache_dir: str | Path | None = None, seed: int = 0, **kwargs) -> Path:
    """Return the folder of the synthetic dataset, generating it on first use.

    The dataset is written into a temporary folder and renamed into place when complete, so an
    interrupted generation never leaves a half-written dataset in the cache.
    """
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    suffix = "-".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
    target = cache / f"synthetic-v{VERSION}-seed{seed}{'-' + suffix if suffix else ''}"
    if (target / "annotations_train.csv").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=cache))
    try:
        generate(tmp / "data", seed=seed, **kwargs)
        try:
            os.replace(tmp / "data", target)
        except OSError:  # another process won the race: use its copy
            if not (target / "annotations_train.csv").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
