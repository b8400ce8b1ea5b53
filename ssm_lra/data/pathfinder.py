"""Pathfinder and Path-X: a seeded, vectorized generator of the LRA release layout, and its reader.

The reader reads the folders of the LRA release (`lra_release/pathfinder32/curv_contour_length_14`,
...) and the ones written by `generate_pathfinder_release` through the same code.

Layout of a difficulty folder (release and generated alike)::

    <difficulty>/imgs/<batch>/sample_<i>.png     8-bit grayscale, i = 0 .. count-1 within the batch
    <difficulty>/metadata/<batch>.npy            TEXT despite the name, one line per image:
        imgs/<batch> sample_<i>.png <i> <label> <continuity> <contour_length> <distractor_length>
        <paddle_length> <paddle_thickness> <margin> <number_of_contrasts>
    <difficulty>/generator.json                  generated folders only: parameters, seed, counts

Generated folders hold `BATCH_SIZE` (1000) images per batch folder, like the original generator's
one-batch-per-job output. The reader also accepts real numpy `.npy` metadata (an array of strings
with the same fields), detected by the numpy magic bytes.

Generator
---------
The procedure is the published one (Linsley et al. 2018, the `snakes2` code), restated in
/work/shared/reference/lra-tasks.md; the code is our own. For one image:

1. The label is drawn uniformly (0 or 1).
2. Two target snakes. Snake 1's tail is drawn uniformly among the pixels at least
   2 * seed_distance from the border where its first paddle (at a uniform integer-degree
   orientation) fits; snake 2's tail lies seed_distance away at a uniform integer-degree angle.
   The snakes then grow alternately, one paddle each per round, `contour_length` paddles each.
   A new paddle starts a margin m past the pivot, which lies m past the end of the previous paddle
   (gap of about 2m: the dashed look). Its far end is drawn among the integer points on the circle
   of radius L + m around the pivot, weighted by (1 - dilated occupancy at the point) x
   cos^2(min(|turn| * continuity, pi/2)). A paddle whose exclusion mask (the paddle dilated by m)
   overlaps the occupied area (sum >= 1.8, as in the original) is redrawn from the same weights, at
   most `max_paddle_retrial` more times; if a snake cannot grow, the pair is drawn again from scratch.
   The two target snakes keep a clearance from each other (not in the original; see below).
3. Distractor snakes of contour_length // 3 paddles (integer division, as the Python-2 original),
   `distractor_budget // distractor_length` of them. Each gets `max_distractor_retrial` more
   attempts (a failed attempt leaves no trace) and is then skipped; adding stops once fewer than
   1% of the pixels are free.
4. Markers (disks of marker_radius) at the tail of one target snake and at the far end of the same
   snake (label 1) or of the other one (label 0). Image = max(paddles, markers), then min-max
   scaled to 0..255 (round half up): the maximum is always 255, at a marker (at 32 px a distractor
   paddle of contrast 2.0 can tie or pass it by a few levels in about 1 image in 6).

Drawing. Paddle end points are integer pixels (as in the original), so every paddle is one of a
finite set: 360 seed orientations and the integer points of the candidate circle. Their stamps are
rasterized once per parameter set at the anti-aliasing scale (PIL lines of width
round(thickness * aa)) and downsampled: the paddle image with Lanczos, clipped to [0, 1] (the
original's filter: a 0.5 px line peaks at 0.42-0.49), the exclusion mask (the paddle dilated at the
aa scale by a disk of radius margin * aa) by area averaging, and the "near" map that weights the
candidates is that mask dilated once more by m. Drawing an image is then pasting these stamps with
numpy slices (np.maximum into windows). All per-image state is padded by the stamp radius (the
padding counts as occupied), so no paste is ever clipped. Markers are Lanczos-downsampled disks.
The clearance works the same way at the aa scale: per stamp, the aa pixels it adds to its snake's
curve (paddle, links, marker disk) and their one-pixel dilation are precomputed as offsets into a
per-snake boolean map, and a bounding box per snake settles most checks without touching the map.

Differences from the original, on purpose:
- Rounding instead of the original's ceil/trunc when points land between pixels (the original's
  rounding shifts every snake by up to one pixel toward the top-left); the next pivot is m past the
  end of the previous paddle, which is what the original's pivot arithmetic computes up to rounding.
- The overlap test also counts the other target snake's newest paddle, and both target snakes'
  last paddles are marked occupied before distractors are drawn: the original missed these (the two
  targets could cross at their newest paddles, and distractors could overlap the last paddle of
  target snake 1, where a marker sits).
- Tails of distractors are drawn by rejection from the free pixels, checked with the fully covered
  part of the paddle's mask (the original's dilation by the same footprint gives the same set;
  an exact computation takes over after 64 rejections). Uniform over the same set either way.
- Target snakes keep a 1-pixel clearance from each other at the anti-aliasing scale (format
  version 2). Why: the original's overlap rule (dilated masks may not overlap by >= 1.8) lets
  paddles of different snakes come within about one aa pixel at 32 px (0.5 px lines, 1 px margin),
  and a paddle may cross another snake's gap. With the two target curves (paddles + links) and
  both marker disks labelled together (scipy.ndimage.label, 8-connected, aa scale), the markers of
  a negative were then apart in only ~40% of negatives at 32 px contour 14 (~77% at contour 6, ~89%
  at 64 px contour 9, ~98% at 128 px contour 14), and in ~1% of negatives at 32 px (0.6-1.5%
  measured) one snake's curve ran through the other marker's centre: such a negative is drawn as
  a connected path, its label is noise. Now every aa pixel one target snake gains (a paddle; the links from the previous
  paddle's end through the pivot to it, and on to its next pivot; the marker disks at its tail and
  at its far end) lies outside the other target snake's pixels dilated by one aa pixel (3 x 3): the
  two snakes are never 8-connected at the aa scale, so in every negative the markers are apart and
  in every positive connected (checked on every image of the tests). Disks count at all four ends
  whatever the label, so the targets' geometry does not depend on it. A candidate far end that
  would touch gets weight 0 (the draw is repeated without it, not counted as a retrial); a second
  tail that would touch is redrawn like one whose paddle leaves the image. Distractors are
  unchanged: they may touch and cross the targets, as in the original. Cost: more pairs are drawn
  again from scratch at 32 px contour 14 (34 per image instead of 25), about as many at 128 px.

Parameters (`PARAMS`). 32 and 128 px are the reference table's values; for 128 the margin is 2
(the table says "2 or 3") and the anti-aliasing scale 2. 64 px is not in the table: each value is
the geometric mean of the 32 and 128 ones (64 is the geometric mean of 32 and 128), rounded to what
the drawing needs (integer lengths, thickness * aa an integer): paddle length 3 (3.16), thickness
1.0 (0.87), margin 1 (1.41), marker radius 2.0 (2.12), seed distance 12 (11.8), continuity 1.3
(1.34), distractor budget 26 (26.5). 256 px is extrapolated the same way (x sqrt(p128 / p32)):
paddle length 8, thickness 2.5, margin 3, marker radius 4.0, seed distance 34, distractor budget 46,
with continuity kept at 1.8 (extrapolating gives 2.4; the original's 300 px set used 1.8).
Contrasts: the table gives target 1.5 / distractor 2.0 / marker 1.0 for 32 px, where a 0.5 px paddle
peaks at about 0.47 of full intensity, so paddles peak at about 0.7 / 0.94 of the marker (after
scaling: targets up to ~190, distractors up to ~250, markers 255). Thicker paddles (64 px and up)
reach full intensity, so there the contrasts are 0.7 / 0.94 / 1.0: the same peaks (measured:
targets up to 179, distractors up to 240, markers 255).

Determinism: image `g` (global index batch * BATCH_SIZE + i) draws from its own stream, seeded by
SeedSequence([seed, resolution, contour_length, g]); PNGs are written by pillow with fixed options.
The same seed gives byte-identical folders whatever the number of workers.

Speed, rendering + PNG writing, per CPU-second of one core (Python 3.11, numpy 2.4, a 2-core
machine shared with other jobs): 32 px contour 14: 84-107 images/CPU-s (the original: ~3.5);
Path-X (128 px, contour 14): 46-58 images/CPU-s (the original: ~0.3). The clearance costs ~35% at
32 px contour 14 and a few % at 128 px, paid for by a leaner paddle loop. Building the stamps of a
parameter set takes 0.1-0.5 s once per process. `LAST_RUN` holds the timing of the last run.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import json
import math
import multiprocessing
import os
import re
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ssm_lra import atomic
from ssm_lra.data.generation import check_generation_args, generation_progress
from ssm_lra.errors import DataError, UserError

DIFFICULTY_FOLDERS = {6: "curv_baseline", 9: "curv_contour_length_9", 14: "curv_contour_length_14"}
NUM_CLASSES = 2
BATCH_SIZE = 1000  # images per imgs/<batch> folder and metadata/<batch>.npy file
SPLIT_SEED = 0  # split_indices' default seed: the fixed 80/10/10 split
GENERATE_HINT = "python -m ssm_lra.data generate --task pathfinder32 --out DIR"

_CHUNK = 100  # images per work unit (divides BATCH_SIZE); does not change the data
_FORMAT_VERSION = 2  # bump when the generated data for a given seed changes
_NUM_CONTRASTS = 1  # the release's last metadata field: one paddle contrast level
_NUMPY_MAGIC = b"\x93NUMPY"

# Timing of the last generate_pathfinder_release in this process: images, wall_s, worker_cpu_s
# (CPU seconds spent rendering and writing images, summed over the workers).
LAST_RUN: dict[str, float] = {}

# ----------------------------------------------------------------------------------------------
# Parameters

_COMMON = dict(
    padding=1,  # border pixels that count as occupied
    antialias_scale=2,
    max_paddle_retrial=2,  # a paddle is drawn at most 1 + this many times
    max_distractor_retrial=4,  # a distractor snake is attempted at most 1 + this many times
    stop_with_availability=0.01,  # no more distractors once fewer than 1% of the pixels are free
)

PARAMS: dict[int, dict[str, Any]] = {
    32: dict(
        resolution=32, paddle_length=2, paddle_thickness=0.5, margin=1, marker_radius=1.5, seed_distance=7,
        continuity=1.0, distractor_budget=20, target_contrast=1.5, distractor_contrast=2.0, marker_contrast=1.0,
        **_COMMON,
    ),
    64: dict(  # geometric means of the 32 and 128 px values, rounded (not in the reference table)
        resolution=64, paddle_length=3, paddle_thickness=1.0, margin=1, marker_radius=2.0, seed_distance=12,
        continuity=1.3, distractor_budget=26, target_contrast=0.7, distractor_contrast=0.94, marker_contrast=1.0,
        **_COMMON,
    ),
    128: dict(
        resolution=128, paddle_length=5, paddle_thickness=1.5, margin=2, marker_radius=3.0, seed_distance=20,
        continuity=1.8, distractor_budget=35, target_contrast=0.7, distractor_contrast=0.94, marker_contrast=1.0,
        **_COMMON,
    ),
    256: dict(  # extrapolated from 32 and 128 px (not in the reference table)
        resolution=256, paddle_length=8, paddle_thickness=2.5, margin=3, marker_radius=4.0, seed_distance=34,
        continuity=1.8, distractor_budget=46, target_contrast=0.7, distractor_contrast=0.94, marker_contrast=1.0,
        **_COMMON,
    ),
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Spec:
    resolution: int
    padding: int
    antialias_scale: int
    paddle_length: int
    paddle_thickness: float
    margin: int
    marker_radius: float
    seed_distance: int
    continuity: float
    distractor_budget: int
    target_contrast: float
    distractor_contrast: float
    marker_contrast: float
    max_paddle_retrial: int
    max_distractor_retrial: int
    stop_with_availability: float


def _as_spec(params) -> _Spec:
    if isinstance(params, _Spec):
        return params
    if isinstance(params, (int, np.integer)):
        params = PARAMS[int(params)]
    try:
        return _Spec(**params)
    except TypeError as exc:
        raise ValueError(f"bad Pathfinder parameters: {exc}") from None


def distractor_counts(params, contour_length: int) -> tuple[int, int]:
    """(distractor length, number of distractors): contour // 3 and budget // length, integer division."""
    spec = _as_spec(params)
    length = contour_length // 3
    return length, (spec.distractor_budget // length if length > 0 else 0)


# ----------------------------------------------------------------------------------------------
# Stamps: every paddle the generator can draw, rasterized once per parameter set


def _disk(radius: float) -> np.ndarray:
    r = int(math.floor(radius))
    y, x = np.ogrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= radius * radius


def _round(v) -> np.ndarray:
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def _lanczos(raster: np.ndarray, size: int) -> np.ndarray:
    """A binary anti-aliasing raster downsampled to size x size with Lanczos, clipped to [0, 1].

    The original's filter (scipy's imresize, which also clipped to 8 bits): a 0.5 px line peaks at
    0.42-0.49 of full intensity where area averaging gives 0.5, and a marker disk saturates at 1.
    """
    from PIL import Image

    small = Image.fromarray(raster.astype(np.float32)).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(small, np.float64).clip(0.0, 1.0)


def _turn_weights(prev: np.ndarray, new: np.ndarray, continuity: float) -> np.ndarray:
    """cos^2(min(|turn| * continuity, pi/2)) for every (previous, new) orientation pair."""
    d = np.abs(prev[:, None] - new[None, :]) % (2 * np.pi)
    d = np.minimum(d, 2 * np.pi - d)
    return (np.cos(np.minimum(d * continuity, np.pi / 2)) ** 2).clip(0.0, 1.0)


class _Geometry:
    """Precomputed stamps and tables of one parameter set.

    Stamps 0..359 are seed paddles (orientation deg - 180, anchored at the tail, drawn towards the
    orientation); stamps 360.. are extension paddles, one per integer point d of the candidate circle,
    anchored at their far end ("head" = pivot + d) and drawn back towards the pivot.
    Coordinates are (y, x); final pixel p corresponds to anti-aliasing pixel p * aa.
    """

    def __init__(self, spec: _Spec):
        from PIL import Image, ImageDraw
        from scipy import ndimage

        self.spec = spec
        R, aa, L, m = spec.resolution, spec.antialias_scale, spec.paddle_length, spec.margin
        width = round(spec.paddle_thickness * aa)
        if abs(width - spec.paddle_thickness * aa) > 1e-9 or width < 1:
            raise ValueError("paddle_thickness * antialias_scale must be a positive integer")
        self.R, self.aa = R, aa
        F = int(math.ceil(L + spec.paddle_thickness + 2 * m)) + 2  # stamp radius, final pixels
        S = 2 * F + 1
        self.F, self.S, self.P = F, S, R + 2 * F
        disk_aa = _disk(m * aa)
        disk_px = _disk(m)

        def stamp(a, b):
            """Stamps of a paddle from a to b, (y, x) in final pixels relative to the anchor."""
            img = Image.new("L", (S * aa, S * aa), 0)
            (ay, ax), (by, bx) = _round(np.multiply(a, aa) + F * aa), _round(np.multiply(b, aa) + F * aa)
            ImageDraw.Draw(img).line([(int(ax), int(ay)), (int(bx), int(by))], fill=255, width=width)
            body_aa = np.asarray(img) > 0
            mask_aa = ndimage.binary_dilation(body_aa, structure=disk_aa)
            body = _lanczos(body_aa, S)
            mask = mask_aa.reshape(S, aa, S, aa).mean(axis=(1, 3), dtype=np.float64)
            near = ndimage.grey_dilation(mask, footprint=disk_px, mode="constant", cval=0.0)
            return body_aa, body, mask, near

        # Seed paddles.
        seed_orient = np.deg2rad(np.arange(-180, 180))
        seed_u = np.stack([np.sin(seed_orient), np.cos(seed_orient)], axis=1)
        seeds = [stamp((0.0, 0.0), L * u) for u in seed_u]
        self.seed_end = L * seed_u  # float offset of the far end from the tail
        self.seed_head = _round(L * seed_u)  # must lie in the image (the original's check)
        self.seed_back = _round(-m * seed_u)  # the original's pivot of a seed, behind the tail
        self.seed_pivot = _round((L + m) * seed_u)  # the next pivot: m past the far end
        # Candidate far ends: the integer points of the circle of radius L + m, in angle order.
        r = L + m
        n_angles = int(math.ceil(2 * np.pi * r))
        angles = np.arange(n_angles) * (2 * np.pi / n_angles)
        points = _round(np.stack([r * np.sin(angles), r * np.cos(angles)], axis=1))
        _, first = np.unique(points, axis=0, return_index=True)
        cand = points[np.sort(first)]
        self.K = len(cand)
        self.cand_dy, self.cand_dx = cand[:, 0].copy(), cand[:, 1].copy()
        cand_orient = np.arctan2(cand[:, 0], cand[:, 1])
        cand_u = cand / np.linalg.norm(cand, axis=1, keepdims=True)
        exts = [stamp((0.0, 0.0), -L * u) for u in cand_u]
        self.cand_start = -L * cand_u  # float offset of the near end from the far end
        next_pivot = _round(m * cand_u)
        self.next_dy, self.next_dx = next_pivot[:, 0].copy(), next_pivot[:, 1].copy()
        # The same as Python ints (cheaper in the per-paddle loop), and candidate offsets into the
        # flattened (P, P) maps.
        self.cand_y, self.cand_x = self.cand_dy.tolist(), self.cand_dx.tolist()
        self.next_y, self.next_x = self.next_dy.tolist(), self.next_dx.tolist()
        self.cand_flat = (self.cand_dy * self.P + self.cand_dx).astype(np.intp)
        # Tables.
        everything = seeds + exts
        self.body_aa = np.stack([s[0] for s in everything])
        body = np.stack([s[1] for s in everything])
        self.body = {
            "target": (body * spec.target_contrast).astype(np.float32),
            "distractor": (body * spec.distractor_contrast).astype(np.float32),
        }
        self.mask = np.stack([s[2] for s in everything]).astype(np.float32)
        self.near = np.stack([s[3] for s in everything]).astype(np.float32)
        self.mask_near = np.stack([self.mask, self.near], axis=1)  # what commit pastes, in one go
        self.seed_turn = _turn_weights(seed_orient, cand_orient, spec.continuity)
        self.ext_turn = _turn_weights(cand_orient, cand_orient, spec.continuity)
        # The fully covered part of each seed's mask: the footprint that decides where a tail fits.
        P = self.P
        self.seed_core = []
        self.seed_core_flat = []
        for i in range(360):
            ys, xs = np.nonzero(self.mask[i] >= 1.0 - 1e-6)
            ys, xs = ys - F, xs - F
            self.seed_core.append(list(zip(ys.tolist(), xs.tolist())))
            self.seed_core_flat.append((ys * P + xs).astype(np.int64))
        # Target snake 1: tail at least 2 * seed_distance from the border, with its core inside.
        band = min(2 * spec.seed_distance, (R - 1) // 2)
        self.target_rect = []
        for core in self.seed_core:
            ys = [c[0] for c in core]
            xs = [c[1] for c in core]
            self.target_rect.append((band - min(ys), R - band - max(ys), band - min(xs), R - band - max(xs)))
        if not any(a < b and c < d for a, b, c, d in self.target_rect):
            raise ValueError("seed_distance too large for the resolution: no room for the first target snake")
        deg = np.deg2rad(np.arange(360))
        self.second_tail = _round(spec.seed_distance * np.stack([np.sin(deg), np.cos(deg)], axis=1))
        # Initial occupancy: padding rows inside the image, and everything outside, count as occupied.
        occ = np.ones((P, P), np.float32)
        p = spec.padding
        occ[F + p : F + R - p, F + p : F + R - p] = 0.0
        self.occ0 = occ
        self.near0 = ndimage.grey_dilation(occ, footprint=disk_px, mode="nearest").astype(np.float32)
        self.state0 = np.stack([self.occ0, self.near0])  # per-image state: occupancy and near map
        off_image = np.ones((P, P), bool)
        off_image[F : F + R, F : F + R] = False
        if not (self.near.max() <= 1.0 and self.near0.max() <= 1.0 and self.near0[off_image].min() == 1.0):
            raise AssertionError("_extend relies on near <= 1, and near == 1 off the image")  # pragma: no cover
        # Marker disk, anchored like the paddles (centre at aa pixel p * aa).
        Fm = int(math.ceil(spec.marker_radius)) + 1
        Sm = 2 * Fm + 1
        yy, xx = np.ogrid[: Sm * aa, : Sm * aa]
        disk = (yy - Fm * aa) ** 2 + (xx - Fm * aa) ** 2 <= (spec.marker_radius * aa) ** 2
        self.Fm, self.Sm = Fm, Sm
        self.marker_aa = disk
        self.marker = (_lanczos(disk, Sm) * spec.marker_contrast).astype(np.float32)
        self._clearance_stamps(ndimage, Image, ImageDraw)

    def _clearance_stamps(self, ndimage, Image, ImageDraw) -> None:
        """Claims and zones of the target snakes' clearance (see `_Clearance`), at the aa scale.

        The claim of a target paddle is every aa pixel that its snake's curve gains with it: the
        paddle, its link from the pivot to its near end, and either its link on to the next pivot
        (a seed paddle or a middle one) or the marker disk at its far end (the last paddle; a seed
        paddle also claims the disk at its tail). Links are 1 aa pixel wide lines between the same
        rounded points as `_masks` draws. The zone is the claim dilated by one aa pixel (3 x 3).
        Index: the stamp (seeds 0..359, extensions 360 + k with the link on), or 360 + K + k for
        the last paddle of a snake (disk instead of the link on).
        """
        aa, F, S, K = self.aa, self.F, self.S, self.K
        SA = S * aa
        Fm, Sm = self.Fm, self.Sm
        if F - Fm < 1:  # pragma: no cover - no parameter set comes close
            raise ValueError("marker_radius too large for the paddle stamps")
        disk = np.zeros((SA, SA), bool)
        disk[(F - Fm) * aa : (F - Fm + Sm) * aa, (F - Fm) * aa : (F - Fm + Sm) * aa] = self.marker_aa

        def links(*pairs) -> np.ndarray:
            img = Image.new("L", (SA, SA), 0)
            draw = ImageDraw.Draw(img)
            for a, b in pairs:  # offsets from the anchor, final pixels; rounded like _masks
                (ay, ax), (by, bx) = _round(np.multiply(a, aa)) + F * aa, _round(np.multiply(b, aa)) + F * aa
                draw.line([(int(ax), int(ay)), (int(bx), int(by))], fill=255, width=1)
            return np.asarray(img) > 0

        claims = []
        for i in range(360):
            claims.append(self.body_aa[i] | disk | links((self.seed_end[i], self.seed_pivot[i])))
        cand = np.stack([self.cand_dy, self.cand_dx], axis=1)
        nxt = np.stack([self.next_dy, self.next_dx], axis=1)
        back = [self.body_aa[360 + k] | links((-cand[k], self.cand_start[k])) for k in range(K)]
        claims += [back[k] | links(((0, 0), nxt[k])) for k in range(K)]
        claims += [back[k] | disk for k in range(K)]
        zones = [ndimage.binary_dilation(c, structure=np.ones((3, 3), bool)) for c in claims]
        if any(z[[0, -1], :].any() or z[:, [0, -1]].any() for z in zones):  # pragma: no cover
            raise ValueError("paddle stamps too small for the clearance zones")
        PA = self.P * aa
        self.PA = PA

        def flat(a: np.ndarray) -> np.ndarray:  # offsets into a flattened (PA, PA) map
            ys, xs = np.nonzero(a)
            return (ys * PA + xs).astype(np.intp)

        def box(a: np.ndarray) -> tuple[int, int, int, int]:  # inclusive bounds of the set pixels
            ys, xs = np.nonzero(a)
            return int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())

        self.claim_idx = [flat(c) for c in claims]
        self.zone_idx = [flat(z) for z in zones]
        self.claim_box = [box(c) for c in claims]
        self.zone_box = [box(z) for z in zones]

    def commit(self, state: np.ndarray, paddle) -> None:
        """Mark a paddle occupied: its mask into state[0] (occupancy), its near map into state[1]."""
        k, y, x = paddle
        S = self.S
        window = state[:, y : y + S, x : x + S]
        np.maximum(window, self.mask_near[k], out=window)


@functools.lru_cache(maxsize=8)
def _geometry(spec: _Spec) -> _Geometry:
    return _Geometry(spec)


# ----------------------------------------------------------------------------------------------
# One image


class _Snake:
    __slots__ = ("tail", "head", "pivot", "turn", "pending", "paddles", "pivots")

    def __init__(self, g: _Geometry, i: int, ty: int, tx: int):
        self.tail = (ty, tx)
        self.head = (ty + int(g.seed_head[i, 0]), tx + int(g.seed_head[i, 1]))
        self.pivot = (ty + int(g.seed_pivot[i, 0]), tx + int(g.seed_pivot[i, 1]))
        self.turn = g.seed_turn[i]
        self.pending = (i, ty, tx)  # the newest paddle: occupied only once the next one is placed
        self.paddles = [(i, ty, tx)]  # (stamp, anchor y, anchor x), image coordinates
        self.pivots: list[tuple[int, int]] = []


class _Stop(Exception):
    """Fewer than stop_with_availability of the pixels are free: no more distractors."""


_MAX_PAIR_ATTEMPTS = 100_000
_REJECTIONS = 64


def _inside(g: _Geometry, *points) -> bool:
    R = g.R
    return all(0 <= y < R and 0 <= x < R for y, x in points)


def _seed_ok(g: _Geometry, i: int, ty: int, tx: int) -> bool:
    head = (ty + int(g.seed_head[i, 0]), tx + int(g.seed_head[i, 1]))
    back = (ty + int(g.seed_back[i, 0]), tx + int(g.seed_back[i, 1]))
    return _inside(g, (ty, tx), head, back)


class _Clearance:
    """The clearance between the two target snakes: no claim of one may touch the other's zones.

    `maps` is bool (2, (P * aa) ** 2), flattened: per target snake, the union of its zones, i.e. its
    curve (paddles + links) and marker disks dilated by one aa pixel (see `_Geometry._clearance_stamps`).
    A claim that meets no zone of the other snake keeps a clearance of at least one aa pixel: the two
    are not 8-connected. `boxes` bound each snake's zones (aa pixels, inclusive), so most checks
    need no array access.
    """

    __slots__ = ("g", "maps", "boxes")

    def __init__(self, g: _Geometry):
        self.g = g
        self.maps = np.zeros((2, g.PA * g.PA), bool)
        self.boxes = [[g.PA, -1, g.PA, -1], [g.PA, -1, g.PA, -1]]

    def touches(self, s: int, j: int, y: int, x: int) -> bool:
        """Whether claim j anchored at (y, x) touches the other target snake (1 - s)."""
        g = self.g
        Y, X = y * g.aa, x * g.aa
        y0, y1, x0, x1 = g.claim_box[j]
        b = self.boxes[1 - s]
        if Y + y1 < b[0] or Y + y0 > b[1] or X + x1 < b[2] or X + x0 > b[3]:
            return False
        return bool(self.maps[1 - s].take(g.claim_idx[j] + (Y * g.PA + X)).any())

    def claim(self, s: int, j: int, y: int, x: int) -> None:
        """Add the zone of claim j anchored at (y, x) to target snake s."""
        g = self.g
        Y, X = y * g.aa, x * g.aa
        self.maps[s][g.zone_idx[j] + (Y * g.PA + X)] = True
        y0, y1, x0, x1 = g.zone_box[j]
        b = self.boxes[s]
        b[0], b[1], b[2], b[3] = min(b[0], Y + y0), max(b[1], Y + y1), min(b[2], X + x0), max(b[3], X + x1)


def _seed_targets(rand, g: _Geometry, clear: _Clearance) -> tuple[_Snake, _Snake] | None:
    tries = g.spec.max_paddle_retrial + 1
    for _ in range(tries):
        i = int(rand() * 360)
        y0, y1, x0, x1 = g.target_rect[i]
        if y0 >= y1 or x0 >= x1:
            return None  # no room for this orientation: the pair is drawn again
        ty, tx = y0 + int(rand() * (y1 - y0)), x0 + int(rand() * (x1 - x0))
        if _seed_ok(g, i, ty, tx):
            first = _Snake(g, i, ty, tx)
            clear.claim(0, i, ty, tx)
            break
    else:
        return None
    for _ in range(tries):
        i, a = int(rand() * 360), int(rand() * 360)
        sy, sx = ty + int(g.second_tail[a, 0]), tx + int(g.second_tail[a, 1])
        if _seed_ok(g, i, sy, sx) and not clear.touches(1, i, sy, sx):
            clear.claim(1, i, sy, sx)
            return first, _Snake(g, i, sy, sx)
    return None


def _sample_tail(rand, g: _Geometry, occ: np.ndarray, free: np.ndarray, i: int) -> tuple[int, int] | None:
    """A tail drawn uniformly among the free pixels where seed paddle i's core meets no occupied pixel."""
    R, F, P = g.R, g.F, g.P
    flat = occ.ravel()
    core = g.seed_core_flat[i]
    for _ in range(_REJECTIONS):
        j = int(free[int(rand() * free.size)])
        ty, tx = divmod(j, R)
        if flat[(ty + F) * P + tx + F + core].max() <= 0.3:
            return ty, tx
    bad = np.zeros((R, R), bool)  # crowded: compute the whole set
    for dy, dx in g.seed_core[i]:
        bad |= occ[F + dy : F + dy + R, F + dx : F + dx + R] > 0.3
    ok = np.flatnonzero(~bad.ravel())
    if ok.size == 0:
        return None
    return divmod(int(ok[int(rand() * ok.size)]), R)


def _seed_distractor(rand, g: _Geometry, occ: np.ndarray) -> _Snake | None:
    R, F = g.R, g.F
    free = np.flatnonzero(occ[F : F + R, F : F + R].ravel() <= 0.3)
    if free.size < g.spec.stop_with_availability * R * R or free.size == 0:
        raise _Stop
    for _ in range(g.spec.max_paddle_retrial + 1):
        i = int(rand() * 360)
        tail = _sample_tail(rand, g, occ, free, i)
        if tail is None:
            return None
        if _seed_ok(g, i, *tail):
            return _Snake(g, i, *tail)
    return None


def _extend(
    rand, g: _Geometry, state: np.ndarray, snake: _Snake, other: tuple | None,
    clear: _Clearance | None = None, s: int = 0, last: bool = False,
) -> bool:
    """Add one paddle to `snake`; `other` is the other target snake's newest paddle (or None).

    Target snakes pass `clear` (see `_Clearance`), their index `s` and whether this is their `last`
    paddle: a candidate whose claim touches the other target snake gets weight 0 (found lazily: the
    draw is repeated without it, which does not count as a retrial), so the far end is drawn from the
    weights restricted to the candidates that keep the clearance; then the overlap rule as before.
    """
    F, S, K = g.F, g.S, g.K
    py, px = snake.pivot
    # Weights of the candidate far ends. near <= 1 everywhere and == 1 off the image (the padding
    # counts as occupied), so candidates off the image get weight 0 and no weight is negative.
    occ, near = state
    w = (1.0 - near.take(g.cand_flat + ((py + F) * g.P + px + F))) * snake.turn
    c = w.cumsum()
    total = c[-1]
    if total < 1e-4:
        return False
    tries = g.spec.max_paddle_retrial + 1
    while tries > 0:
        k = int(c.searchsorted(rand() * total, side="right"))
        if k >= K:
            k = int(np.flatnonzero(w)[-1])
        y, x = py + g.cand_y[k], px + g.cand_x[k]
        stamp = 360 + k
        j = stamp + K if last else stamp
        if clear is not None and clear.touches(s, j, y, x):
            w[k] = 0.0
            c = w.cumsum()
            total = c[-1]
            if total < 1e-4:
                return False
            continue
        tries -= 1
        mask = g.mask[stamp]
        ok = (occ[y : y + S, x : x + S] + mask).max() < 1.8
        if ok and other is not None:  # the other target's newest paddle counts as occupied too
            k2, y2, x2 = other
            dy, dx = y2 - y, x2 - x
            if -S < dy < S and -S < dx < S:
                a0, a1, b0, b1 = max(0, dy), min(S, S + dy), max(0, dx), min(S, S + dx)
                ok = (g.mask[k2][a0 - dy : a1 - dy, b0 - dx : b1 - dx] + mask[a0:a1, b0:b1]).max() < 1.8
        if ok:
            if clear is not None:
                clear.claim(s, j, y, x)
            g.commit(state, snake.pending)
            snake.pending = (stamp, y, x)
            snake.paddles.append((stamp, y, x))
            snake.pivots.append((py, px))
            snake.head = (y, x)
            snake.pivot = (y + g.next_y[k], x + g.next_x[k])
            snake.turn = g.ext_turn[k]
            return True
    return False


def _grow_targets(rand, g: _Geometry, contour_length: int):
    state = g.state0.copy()
    clear = _Clearance(g)
    pair = _seed_targets(rand, g, clear)
    if pair is None:
        return None
    a, b = pair
    for r in range(contour_length - 1):
        last = r == contour_length - 2
        if not _extend(rand, g, state, a, b.pending, clear, 0, last):
            return None
        if not _extend(rand, g, state, b, a.pending, clear, 1, last):
            return None
    g.commit(state, a.pending)
    g.commit(state, b.pending)
    return state, (a, b)


def _grow_distractor(rand, g: _Geometry, state: np.ndarray, length: int):
    snake = _seed_distractor(rand, g, state[0])
    if snake is None:
        return None
    state = state.copy()  # a failed snake leaves no trace
    for _ in range(length - 1):
        if not _extend(rand, g, state, snake, None):
            return None
    g.commit(state, snake.pending)
    return state, snake.paddles


def render_sample(rng: np.random.Generator, params, contour_length: int, with_masks: bool = True):
    """One Pathfinder image: (image uint8 (R, R), label 0/1, masks).

    `params` is a `PARAMS` entry (or a resolution). `masks` (None unless `with_masks`) is a dict,
    at the anti-aliasing scale aa (final pixel p is aa pixel p * aa):
      "targets"       bool (2, R*aa, R*aa): the paddles of target snake 0 and 1;
      "links"         bool (2, R*aa, R*aa): the gaps of each target snake, end of one paddle -> pivot
                      -> start of the next (1 aa pixel wide): targets | links is the whole curve;
      "marker_disks"  bool (2, R*aa, R*aa): the origin and terminal marker disks;
      "distractors"   bool (R*aa, R*aa): all distractor paddles;
      "markers"       int (2, 2): origin and terminal marker centres (y, x), final pixels;
      "marked_snakes" (origin snake, terminal snake); equal exactly when the label is 1;
      "ends"          int (2, 2, 2): per target snake, its tail and far end (y, x), final pixels;
      "aa_scale", "num_distractors" (snakes drawn).
    The two target snakes (targets | links, and a marker disk of the size drawn at each of their
    four ends) are never 8-connected to each other at the aa scale (see `_Clearance`).
    """
    spec = _as_spec(params)
    if contour_length < 2:
        raise ValueError(f"contour_length must be at least 2 (paddles per target snake), got {contour_length}")
    g = _geometry(spec)
    rand = rng.random
    label = int(rand() < 0.5)
    for _ in range(_MAX_PAIR_ATTEMPTS):
        grown = _grow_targets(rand, g, contour_length)
        if grown is not None:
            break
    else:  # pragma: no cover - needs parameters with no room for the snakes
        raise RuntimeError(f"could not place two target snakes of {contour_length} paddles")
    state, targets = grown
    d_length, d_count = distractor_counts(spec, contour_length)
    distractors: list[tuple[int, int, int]] = []
    drawn = 0
    try:
        for _ in range(d_count):
            for _ in range(spec.max_distractor_retrial + 1):
                result = _grow_distractor(rand, g, state, d_length)
                if result is not None:
                    state, paddles = result
                    distractors += paddles
                    drawn += 1
                    break
    except _Stop:
        pass
    origin = int(rand() < 0.5)
    terminal = origin if label == 1 else 1 - origin
    markers = [targets[origin].tail, targets[terminal].head]

    F, S, R = g.F, g.S, g.R
    canvas = np.zeros((g.P, g.P), np.float32)
    for kind, paddles in (("target", [p for t in targets for p in t.paddles]), ("distractor", distractors)):
        bodies = g.body[kind]
        for k, y, x in paddles:
            np.maximum(canvas[y : y + S, x : x + S], bodies[k], out=canvas[y : y + S, x : x + S])
    Fm, Sm = g.Fm, g.Sm
    for y, x in markers:
        y, x = y + F - Fm, x + F - Fm
        np.maximum(canvas[y : y + Sm, x : x + Sm], g.marker, out=canvas[y : y + Sm, x : x + Sm])
    image = canvas[F : F + R, F : F + R]
    peak = float(image.max())
    scaled = (image * np.float32(255.0 / peak) + np.float32(0.5)) if peak > 0 else image
    image = np.clip(scaled, 0, 255).astype(np.uint8)
    masks = _masks(g, targets, distractors, markers, (origin, terminal), drawn) if with_masks else None
    return image, label, masks


def _masks(g: _Geometry, targets, distractors, markers, marked, drawn) -> dict:
    from PIL import Image, ImageDraw

    aa, F, S, R = g.aa, g.F, g.S, g.R
    PA, RA = g.P * aa, R * aa

    def paste(out, paddles):
        for k, y, x in paddles:
            out[y * aa : (y + S) * aa, x * aa : (x + S) * aa] |= g.body_aa[k]

    target_masks = np.zeros((2, RA, RA), bool)
    link_masks = np.zeros((2, RA, RA), bool)
    for s, snake in enumerate(targets):
        full = np.zeros((PA, PA), bool)
        paste(full, snake.paddles)
        target_masks[s] = full[F * aa : F * aa + RA, F * aa : F * aa + RA]
        img = Image.new("L", (RA, RA), 0)
        draw = ImageDraw.Draw(img)
        (i0, ty, tx) = snake.paddles[0]
        end = (ty + g.seed_end[i0, 0], tx + g.seed_end[i0, 1])
        for (k, y, x), (py, px) in zip(snake.paddles[1:], snake.pivots):
            start = (y + g.cand_start[k - 360, 0], x + g.cand_start[k - 360, 1])
            pts = [_round(np.multiply(p, aa)) for p in (end, (py, px), start)]
            draw.line([(int(p[1]), int(p[0])) for p in pts], fill=255, width=1)
            end = (y, x)
        link_masks[s] = np.asarray(img) > 0
    full = np.zeros((PA, PA), bool)
    paste(full, distractors)
    distractor_mask = full[F * aa : F * aa + RA, F * aa : F * aa + RA]
    disks = np.zeros((2, RA, RA), bool)
    Fm, Sm = g.Fm, g.Sm
    for j, (y, x) in enumerate(markers):
        full = np.zeros((PA, PA), bool)
        y0, x0 = (y + F - Fm) * aa, (x + F - Fm) * aa
        full[y0 : y0 + Sm * aa, x0 : x0 + Sm * aa] = g.marker_aa
        disks[j] = full[F * aa : F * aa + RA, F * aa : F * aa + RA]
    return {
        "targets": target_masks,
        "links": link_masks,
        "marker_disks": disks,
        "distractors": distractor_mask,
        "markers": np.array(markers, np.int64),
        "marked_snakes": marked,
        "ends": np.array([[t.tail, t.head] for t in targets], np.int64),
        "aa_scale": aa,
        "num_distractors": drawn,
    }


def image_rng(seed: int, resolution: int, contour_length: int, index: int) -> np.random.Generator:
    """The random stream of image `index` (batch * BATCH_SIZE + i) of a generated folder."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, resolution, contour_length, index])))


# ----------------------------------------------------------------------------------------------
# Writing a release folder


def encode_png(image: np.ndarray) -> bytes:
    """8-bit grayscale PNG with fixed options, so that the same pixels give the same bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def metadata_line(batch: int, i: int, label: int, params, contour_length: int) -> str:
    """One release metadata line (without the newline)."""
    spec = _as_spec(params)
    d_length, _ = distractor_counts(spec, contour_length)
    fields = [
        f"imgs/{batch}", f"sample_{i}.png", i, label, spec.continuity, contour_length, d_length,
        spec.paddle_length, spec.paddle_thickness, spec.margin, _NUM_CONTRASTS,
    ]  # fmt: skip
    return " ".join(str(f) for f in fields)


def _render_chunk(task: tuple) -> tuple[int, list[tuple[int, int]], float]:
    """Render and write images start .. start+count-1 of one batch; returns (batch, [(i, label)], cpu s)."""
    folder, resolution, contour_length, seed, batch, start, count = task
    cpu = time.process_time()
    img_dir = Path(folder) / "imgs" / str(batch)
    rows = []
    for i in range(start, start + count):
        rng = image_rng(seed, resolution, contour_length, batch * BATCH_SIZE + i)
        image, label, _ = render_sample(rng, resolution, contour_length, with_masks=False)
        atomic.write_bytes(img_dir / f"sample_{i}.png", encode_png(image))
        rows.append((i, label))
    return batch, rows, time.process_time() - cpu


def _check_args(resolution, contour_length, num, seed, workers) -> None:
    if resolution not in PARAMS:
        raise UserError(f"unknown Pathfinder resolution {resolution}; choose one of {', '.join(map(str, PARAMS))}.")
    if contour_length not in DIFFICULTY_FOLDERS:
        raise UserError(
            f"contour length must be one of {', '.join(map(str, DIFFICULTY_FOLDERS))} "
            f"(easy / medium / hard), got {contour_length}."
        )
    check_generation_args(num, seed, workers, items="images")


def _metadata(resolution: int, contour_length: int, num: int, seed: int) -> dict:
    d_length, d_count = distractor_counts(resolution, contour_length)
    return {
        "task": "pathfinder",
        "format_version": _FORMAT_VERSION,
        "resolution": resolution,
        "contour_length": contour_length,
        "difficulty": DIFFICULTY_FOLDERS[contour_length],
        "num": num,
        "seed": seed,
        "batch_size": BATCH_SIZE,
        "distractor_length": d_length,
        "num_distractors": d_count,
        "params": dict(PARAMS[resolution]),
    }


def _batch_counts(num: int) -> dict[int, int]:
    return {b: min(BATCH_SIZE, num - b * BATCH_SIZE) for b in range((num + BATCH_SIZE - 1) // BATCH_SIZE)}


def _remove_stale(folder: Path, counts: dict[int, int]) -> None:
    """Drop metadata and images a previous, larger run left behind (they would be read as data)."""
    meta_dir = folder / "metadata"
    if meta_dir.is_dir():
        for path in meta_dir.glob("*.npy"):
            path.unlink()
    img_root = folder / "imgs"
    if not img_root.is_dir():
        return
    for sub in img_root.iterdir():
        if not (sub.is_dir() and sub.name.isdigit()):
            continue
        keep = counts.get(int(sub.name), 0)
        for png in sub.glob("sample_*.png"):
            stem = png.stem[len("sample_") :]
            if not stem.isdigit() or int(stem) >= keep:
                png.unlink()
        if keep == 0 and not any(sub.iterdir()):
            sub.rmdir()


def _run_chunks(tasks: list[tuple], workers: int) -> Iterable[tuple[int, list, float]]:
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield _render_chunk(task)
        return
    # spawn, not fork: the parent may hold JAX or other threads, which fork can deadlock.
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap_unordered(_render_chunk, tasks)


def generate_pathfinder_release(
    out_dir,
    resolution: int,
    contour_length: int,
    num: int,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Write `num` images in the release layout under `out_dir/<difficulty>/`; returns that folder.

    `out_dir` plays the role of `lra_release/pathfinder<resolution>`. The same seed gives
    byte-identical files whatever `workers`. generator.json is written last (and removed first),
    so a folder without it is incomplete.
    """
    _check_args(resolution, contour_length, num, seed, workers)
    folder = Path(out_dir) / DIFFICULTY_FOLDERS[contour_length]
    meta_path = folder / "generator.json"
    counts = _batch_counts(num)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        meta_path.unlink(missing_ok=True)
        _remove_stale(folder, counts)
        (folder / "metadata").mkdir(exist_ok=True)
        for b in counts:
            (folder / "imgs" / str(b)).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write to {folder}: {exc.strerror or exc}; choose a writable output directory.")
    _geometry(_as_spec(resolution))  # fail early on bad parameters, before any worker starts

    tasks = [
        (str(folder), resolution, contour_length, seed, b, s, min(_CHUNK, n - s))
        for b, n in counts.items()
        for s in range(0, n, _CHUNK)
    ]
    rows: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    cpu = 0.0
    start = time.perf_counter()
    LAST_RUN.clear()

    def consume(advance) -> None:
        nonlocal cpu
        for batch, chunk_rows, chunk_cpu in _run_chunks(tasks, workers):
            cpu += chunk_cpu
            rows[batch].extend(chunk_rows)
            if len(rows[batch]) == counts[batch]:
                lines = "".join(
                    metadata_line(batch, i, label, resolution, contour_length) + "\n"
                    for i, label in sorted(rows[batch])
                )
                atomic.write_text(folder / "metadata" / f"{batch}.npy", lines)
            advance(len(chunk_rows))

    try:
        if progress:
            with generation_progress(f"Pathfinder-{resolution} images") as bar:
                task = bar.add_task("images", total=num)
                consume(lambda n: bar.advance(task, n))
        else:
            consume(lambda n: None)
        positives = sum(label for batch_rows in rows.values() for _, label in batch_rows)
        meta = {
            **_metadata(resolution, contour_length, num, seed),
            "counts": {"images": num, "label_1": positives, "label_0": num - positives, "batches": len(counts)},
        }  # no timings here: the file is part of the byte-identical output
        atomic.write_text(meta_path, json.dumps(meta, indent=2, sort_keys=True) + "\n")
        LAST_RUN.update(images=num, wall_s=time.perf_counter() - start, worker_cpu_s=cpu)
    except OSError as exc:
        raise UserError(f"cannot write to {folder}: {exc.strerror or exc}; choose a writable output directory.")
    return folder


def ensure_pathfinder(
    out_dir, resolution: int, contour_length: int, num: int, seed: int, workers: int = 1, progress: bool = True
) -> Path:
    """The difficulty folder under `out_dir`, generated unless generator.json says it matches."""
    _check_args(resolution, contour_length, num, seed, workers)
    folder = Path(out_dir) / DIFFICULTY_FOLDERS[contour_length]
    if _matches(folder, _metadata(resolution, contour_length, num, seed)):
        return folder
    return generate_pathfinder_release(out_dir, resolution, contour_length, num, seed, workers, progress)


def _matches(folder: Path, expected: dict) -> bool:
    try:
        meta = json.loads((folder / "generator.json").read_text())
    except (OSError, ValueError):
        return False
    if not (isinstance(meta, dict) and all(meta.get(k) == v for k, v in expected.items())):
        return False
    return all((folder / "metadata" / f"{b}.npy").is_file() for b in _batch_counts(expected["num"]))


# ----------------------------------------------------------------------------------------------
# Reader


def _natural_key(text: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text))


def _metadata_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of one metadata file, text or numpy."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}.") from None
    if data.startswith(_NUMPY_MAGIC):
        try:
            array = np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: not a readable numpy array of strings ({exc}).") from None
        def text(x) -> str:
            return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)

        if array.ndim == 1:  # one string per image: split like a text line
            return [(n, text(row).split()) for n, row in enumerate(array.tolist(), start=1)]
        if array.ndim != 2:
            raise DataError(f"{path}: expected a 2-D numpy array (one row per image), found {array.ndim} dimensions.")
        return [(n, [text(x).strip() for x in row]) for n, row in enumerate(array.tolist(), start=1)]
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: neither a text metadata file nor a numpy array ({exc.reason}).") from None
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_pathfinder_index(folder) -> tuple[list[Path], np.ndarray, dict]:
    """Image paths, int32 labels and stats of a difficulty folder, sorted by (batch, index).

    Reads every `metadata/*.npy` (text, or a numpy array of strings). Raises DataError naming the
    file and line for a malformed line or a line whose PNG is missing.
    """
    folder = Path(folder)
    meta_dir = folder / "metadata"
    hint = (
        f"Point the data directory at a difficulty folder of the release (e.g. "
        f"lra_release/pathfinder32/curv_contour_length_14) or generate one with `{GENERATE_HINT}` "
        f"(add --contour-length 6 or 9 for the easier sets; --task pathx for Path-X)."
    )
    if not meta_dir.is_dir():
        raise DataError(
            f"Pathfinder metadata not found: looked for the folder {meta_dir} (metadata/<batch>.npy). {hint}"
        )
    files = sorted(meta_dir.glob("*.npy"), key=lambda p: _natural_key(p.name))
    if not files:
        raise DataError(f"Pathfinder metadata not found: {meta_dir} has no <batch>.npy files. {hint}")
    entries = []
    listings: dict[Path, set[str]] = {}
    for path in files:
        for lineno, fields in _metadata_rows(path):
            where = f"{path}, line {lineno}"
            if len(fields) < 4:
                raise DataError(
                    f"{where}: expected at least 4 space-separated fields (sub-folder, file name, index, "
                    f"label; the release has 11), found {len(fields)}."
                )
            sub, name, index, label = fields[:4]
            try:
                index = int(index)
            except ValueError:
                raise DataError(f"{where}: image index {index!r} is not an integer.") from None
            try:
                value = float(label)
            except ValueError:
                value = -1.0
            if value not in (0.0, 1.0):
                raise DataError(f"{where}: label {label!r} is not 0 or 1.")
            directory = folder / sub
            if directory not in listings:
                try:
                    listings[directory] = {e.name for e in os.scandir(directory) if e.is_file()}
                except OSError:
                    listings[directory] = set()
            if name not in listings[directory]:
                raise DataError(f"{where}: image {directory / name} does not exist.")
            entries.append((_natural_key(sub), index, name, directory / name, int(value)))
    entries.sort(key=lambda e: (e[0], e[1], _natural_key(e[2])))
    paths = [e[3] for e in entries]
    labels = np.array([e[4] for e in entries], np.int32)
    stats = {
        "images": len(paths),
        "metadata_files": len(files),
        "label_counts": {0: int((labels == 0).sum()), 1: int((labels == 1).sum())},
    }
    return paths, labels, stats


def load_image(path) -> np.ndarray:
    """The image at `path` as uint8 (R, R); DataError naming the file if it cannot be read."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode != "L":
                img = img.convert("L")
            array = np.array(img, dtype=np.uint8)
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        raise DataError(f"{path}: cannot read the image ({type(exc).__name__}: {exc}); the file is damaged "
                        f"or not a PNG: regenerate or re-download it.") from None  # fmt: skip
    if array.ndim != 2 or array.shape[0] != array.shape[1]:
        raise DataError(f"{path}: expected a square grayscale image, found shape {array.shape}.")
    return array


def is_empty(image: np.ndarray) -> bool:
    """True for an all-zero image (the release has one: pathfinder32/curv_baseline/imgs/0/sample_172.png)."""
    return not np.any(image)


def to_unit_float(image: np.ndarray) -> np.ndarray:
    """Pixels as float32 in [0, 1], as models see them."""
    return np.asarray(image, np.float32) / np.float32(255.0)


def split_indices(n: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """The fixed 80/10/10 train/validation/test split of n images (indices into the sorted index).

    A permutation by numpy's default_rng(seed) (seed 0 unless given); train gets floor(0.8 n),
    validation floor(0.1 n), test the rest: 200,000 -> 160,000 / 20,000 / 20,000. Each split's
    indices are returned sorted.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_val = (8 * n) // 10, n // 10
    return {
        "train": np.sort(order[:n_train]),
        "validation": np.sort(order[n_train : n_train + n_val]),
        "test": np.sort(order[n_train + n_val :]),
    }
