"""The embedded default dataset: synthetic pedestrians written in the Market-1501 course layout.

Nothing is downloaded: ``ensure_synthetic()`` draws the images with Pillow and writes them as
JPEG files plus ``annotations_train.csv`` exactly as the course layout has them, so the real
loader (:mod:`mtl.data.sources.market_course`) reads them and every code path after it is the
one real data takes.

Each identity has a fixed set of the Market attributes, each drawn as a cue large enough to survive
resizing to a quarter of the drawn size (every task of the README's first command must be learnable):
hair length, sleeve and lower-body length, dress or pants, hat, backpack, bag, handbag, upper/lower
colour or a multicolour stripe pattern, gender as body shape (broad shoulders, or narrow shoulders
over wide hips) and age as stature and hair shade (a short, big-headed child with fair hair; a
teenager in between with brown hair; a tall adult with dark hair; an old person with white hair
and a walking stick). A few identity-only details (skin tone, shoe colour, a chest badge, the
stripes' colours, small hair-shade shifts) make re-identification learnable. Each camera has its
own background and light; each image varies scale, position, mirroring and noise. Deterministic
for a given seed.
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

VERSION = 3  # bump when the drawing changes, so old caches are not reused
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
        "age": rng.choice([1, 2, 3, 4], p=[0.15, 0.25, 0.4, 0.2]),
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


# Age (course coding 1 young, 2 teenager, 3 adult, 4 old) as body proportions and hair shade. As
# in real pedestrian crops the figure fills the frame whatever its size, so age shows as proportion:
# a child's head is half as large again as an adult's, on shorter legs; an old person is a little
# stooped (shorter, wider) and walks with a stick. Per age: head radius, torso and leg lengths
# (pixels at scale 1) and a width factor.
AGE_BODY = {1: (12.0, 36.0, 40.0, 1.1), 2: (10.0, 38.0, 47.0, 1.0), 3: (8.0, 40.0, 52.0, 1.0), 4: (8.5, 37.0, 46.0, 1.1)}
AGE_HAIR = {1: (225, 190, 100), 2: (130, 72, 30), 3: (35, 30, 30), 4: (228, 228, 228)}
STRIPE = 6  # multicolour stripe height (pixels at scale 1): still 1.5 pixels at a quarter size


def _garment_fill(draw: ImageDraw.ImageDraw, box, attrs: dict, columns, stripe_colors, shade: float, step: int):
    """Fill a garment box with its colour, or stripes of two colours for multicolour."""
    set_cols = [c for c in columns if attrs[c] == 2]
    x0, y0, x1, y1 = box
    if y1 <= y0 or x1 <= x0:
        return
    if set_cols:
        name = set_cols[0][len("up"):] if set_cols[0].startswith("up") else set_cols[0][len("down"):]
        draw.rectangle(box, fill=_shade(PALETTE[name], shade))
        return
    for i, y in enumerate(np.arange(y0, y1, step)):
        draw.rectangle((x0, y, x1, min(y + step - 1, y1)), fill=_shade(stripe_colors[i % 2], shade))


def _shade(rgb, f):
    return tuple(int(np.clip(c * f, 0, 255)) for c in rgb)


def render_person(attrs: dict, ident: dict, camera: int, rng: np.random.Generator) -> Image.Image:
    """Draw one image of an identity seen by ``camera`` (0-based), with random position/scale/light.

    The figure fills the frame's height, its proportions follow the age (``AGE_BODY``), its width
    the gender (shoulders and hips).
    """
    bg = np.array(CAMERA_BACKGROUNDS[camera % len(CAMERA_BACKGROUNDS)], dtype=np.float32)
    img = Image.new("RGB", (WIDTH, HEIGHT), tuple(int(c) for c in bg))
    draw = ImageDraw.Draw(img)
    # background clutter: a few camera-specific rectangles
    for _ in range(3):
        x, y = rng.integers(0, WIDTH), rng.integers(0, HEIGHT)
        draw.rectangle((x, y, x + rng.integers(4, 20), y + rng.integers(4, 30)),
                       fill=tuple(int(c) for c in np.clip(bg + rng.normal(0, 25, 3), 0, 255)))
    s = rng.uniform(0.92, 1.0)  # scale
    cx = WIDTH / 2 + rng.uniform(-4, 4)
    ground = HEIGHT - 3 - rng.uniform(0, 5)
    light = rng.uniform(0.75, 1.2) * (0.9 + 0.05 * camera % 3)
    skin = _shade(ident["skin"], light)
    head, torso, legs, wide = AGE_BODY[attrs["age"]]
    stature = torso / 40 * s  # lengths of the torso's parts (arms, sleeves, straps) follow it
    # gender as body shape: broad shoulders and straight hips, or narrow shoulders over wide hips
    shoulders = (18 if attrs["gender"] == 1 else 12) * s * wide
    hips = (15 if attrs["gender"] == 1 else 18) * s * wide
    head_r = head * s
    legs_len, torso_len = legs * s, torso * s
    torso_bot = ground - legs_len
    torso_top = torso_bot - torso_len
    head_y = torso_top - 1 - head_r
    waist = torso_top + 0.6 * torso_len  # shoulders' width above, hips' below
    hair_color = _shade(tuple(np.clip(np.add(AGE_HAIR[attrs["age"]], ident["hair_shift"]), 0, 255)), light)
    step = max(3, round(STRIPE * s))
    arm_len = 30 * stature
    hand_y = torso_top + 1 + arm_len
    # backpack first: it shows beside the torso; its straps cross the chest (drawn after the top)
    if attrs["backpack"] == 2:
        draw.rectangle((cx + shoulders / 2 - 2, torso_top + 3, cx + shoulders / 2 + 9 * s, torso_top + 28 * stature),
                       fill=_shade((70, 45, 20), light))
    # long hair falls behind the shoulders
    if attrs["hair"] == 2:
        draw.rectangle((cx - head_r - 1, head_y, cx + head_r + 1, torso_top + 16 * stature), fill=hair_color)
    # torso and sleeves
    stripes_up = (ident["stripe1"], ident["stripe2"])
    _garment_fill(draw, (cx - shoulders / 2, torso_top, cx + shoulders / 2, waist), attrs, UP_COLUMNS, stripes_up,
                  light, step)
    _garment_fill(draw, (cx - hips / 2, waist, cx + hips / 2, torso_bot), attrs, UP_COLUMNS, stripes_up, light, step)
    sleeve = arm_len if attrs["up"] == 1 else 11 * stature
    for side in (-1, 1):
        ax0 = cx + side * shoulders / 2 + (0 if side > 0 else -5 * s)
        box = (ax0, torso_top + 1, ax0 + 5 * s, hand_y)
        draw.rectangle(box, fill=skin)
        _garment_fill(draw, (box[0], box[1], box[2], torso_top + 1 + sleeve), attrs, UP_COLUMNS, stripes_up, light,
                      step)
    if attrs["backpack"] == 2:
        for x in (cx - shoulders / 4, cx + shoulders / 4):
            draw.line((x, torso_top, x, torso_top + 0.5 * torso_len), fill=_shade((70, 45, 20), light), width=2)
    # badge: identity-only detail
    bx, by = cx + ident["badge_dx"] * s, torso_top + ident["badge_dy"] * stature
    draw.rectangle((bx, by, bx + 4 * s, by + 4 * s), fill=_shade(ident["badge"], light))
    # lower body
    stripes_down = (ident["stripe2"], ident["stripe1"])
    lower_len = legs_len if attrs["down"] == 1 else legs_len * 0.45
    leg_w = hips / 2 - 1
    for side in (-1, 1):
        lx0 = cx - hips / 2 if side < 0 else cx + 1
        draw.rectangle((lx0, torso_bot, lx0 + leg_w, ground), fill=skin)
        if attrs["clothes"] == 2:  # pants: two legs
            _garment_fill(draw, (lx0, torso_bot, lx0 + leg_w, torso_bot + lower_len), attrs, DOWN_COLUMNS,
                          stripes_down, light, step)
        draw.rectangle((lx0, ground - 3, lx0 + leg_w + 2, ground), fill=_shade(ident["shoes"], light))
    if attrs["clothes"] == 1:  # dress: one flared piece
        flare = 6 * s
        draw.polygon([(cx - hips / 2, torso_bot), (cx + hips / 2, torso_bot),
                      (cx + hips / 2 + flare, torso_bot + lower_len), (cx - hips / 2 - flare, torso_bot + lower_len)],
                     fill=_shade(PALETTE["black"], light))
        _garment_fill(draw, (cx - hips / 2 - flare / 2, torso_bot, cx + hips / 2 + flare / 2, torso_bot + lower_len),
                      attrs, DOWN_COLUMNS, stripes_down, light, step)
    # head, hair, hat
    draw.ellipse((cx - head_r, head_y - head_r, cx + head_r, head_y + head_r), fill=skin)
    # hair: the upper half of the head and its sides (the age's shade must show at a quarter size)
    draw.chord((cx - head_r - 1, head_y - head_r - 2, cx + head_r + 1, head_y + head_r * 1.2), 180, 360,
               fill=hair_color)
    for side in (-1, 1):
        x0, x1 = sorted((cx + side * (head_r + 1), cx + side * (head_r - 2)))
        draw.rectangle((x0, head_y - 1, x1, head_y + head_r * 0.5), fill=hair_color)
    if attrs["hat"] == 2:  # a cap above the hairline: the hair's shade still shows below its brim
        hat = _shade(ident["hat"], light)
        draw.rectangle((cx - head_r + 1, head_y - head_r - 5, cx + head_r - 1, head_y - head_r * 0.65), fill=hat)
        draw.rectangle((cx - head_r - 3, head_y - head_r * 0.8, cx + head_r + 3, head_y - head_r * 0.55), fill=hat)
    # bag on a strap at the hip, handbag hanging from the hand, an old person's walking stick
    if attrs["bag"] == 2:
        draw.line((cx - shoulders / 2, torso_top + 2, cx + hips / 2, torso_bot - 6), fill=(30, 30, 30), width=2)
        draw.rectangle((cx - hips / 2 - 8 * s, torso_bot - 11 * s, cx - hips / 2 + 2, torso_bot + 2),
                       fill=_shade((150, 100, 50), light))
    if attrs["handbag"] == 2:
        hx = cx + shoulders / 2 + 1
        draw.rectangle((hx, hand_y, hx + 8 * s, hand_y + 10 * s), fill=_shade((180, 30, 90), light))
    if attrs["age"] == 4:
        sx = cx - shoulders / 2 - 4 * s
        draw.line((sx, hand_y - 4, sx - 3 * s, ground), fill=_shade((95, 60, 30), light), width=4)
        draw.line((sx - 1, hand_y - 4, sx + 4 * s, hand_y - 4), fill=_shade((95, 60, 30), light), width=4)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (HEIGHT, WIDTH, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _identity_details(rng: np.random.Generator) -> dict:
    def color():
        return tuple(int(c) for c in rng.integers(20, 235, 3))
    return {
        "skin": tuple(int(c) for c in np.array([225, 185, 150]) * rng.uniform(0.5, 1.05)),
        "hair_shift": tuple(int(c) for c in rng.integers(-25, 26, 3)),  # around the age's shade
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
