"""Push-T drawing with pygame, as the reference draws it, and an OpenCV-compatible bilinear resize.

The scene is drawn on a 512x512 canvas: white background, the goal T in LightGreen, then the
block pieces (fill lightened ×1.2, 4 px outline), the agent (RoyalBlue disc with a lighter
inner disc of radius 11), the walls (LightGray 4 px segments) and the contact points of the
latest substep (short anti-aliased segments). The static layer (background, goal, walls) is
drawn once and copied under each frame; walls are redrawn on top only when the agent is
close enough to overlap them. Observations are the canvas resized to 96x96 with
OpenCV's INTER_LINEAR convention (no antialiasing): source coordinate
``s = (d + ½)·(512 / 96) − ½``, output ``Σ w_ij · src[i, j]`` over the 2x2 neighbours.
"""
from __future__ import annotations

import numba
import numpy as np
import pygame

from dpstack.envs.geometry import (
    AGENT_RADIUS,
    GOAL_POLYGONS,
    TEE_POLYGONS,
    WALL_RADIUS,
    WALL_SEGMENTS,
    WORKSPACE_SIZE,
    transform_points,
)

WHITE = (255, 255, 255)
GOAL_COLOR = (144, 238, 144)  # LightGreen
BLOCK_COLOR = (119, 136, 153)  # LightSlateGray
AGENT_COLOR = (65, 105, 225)  # RoyalBlue
WALL_COLOR = (211, 211, 211)  # LightGray
CONTACT_COLOR = (231, 76, 60)  # pymunk's default collision point colour
ACTION_MARKER_COLOR = (255, 0, 0)
OUTLINE_RADIUS = 2.0
CONTACT_HALF_LENGTH = 2.0
# Walls (and their 2 px outline) lie within this distance of the canvas border.
WALL_EXTENT = 5 + WALL_RADIUS + 2


def lighten(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """min(1.2·c, 255) per channel, truncated to integers."""
    return tuple(int(min(1.2 * c, 255.0)) for c in color)


LIGHT_BLOCK_COLOR = lighten(BLOCK_COLOR)
LIGHT_AGENT_COLOR = lighten(AGENT_COLOR)


def _pixel(point) -> tuple[int, int]:
    return round(point[0]), round(point[1])


def draw_thick_segment(surface: pygame.Surface, a, b, radius: float, color) -> None:
    """A segment of width 2·radius with round caps, drawn as line + quad + end discs."""
    p1, p2 = _pixel(a), _pixel(b)
    width = round(max(1.0, radius * 2))
    pygame.draw.lines(surface, color, False, [p1, p2], width)
    if width <= 2:
        return
    normal = [abs(p2[1] - p1[1]), abs(p2[0] - p1[0])]
    if normal[0] == 0 and normal[1] == 0:
        return
    scale = radius / (normal[0] ** 2 + normal[1] ** 2) ** 0.5
    ox, oy = round(normal[0] * scale), round(normal[1] * scale)
    quad = [(p1[0] - ox, p1[1] - oy), (p1[0] + ox, p1[1] + oy), (p2[0] + ox, p2[1] + oy), (p2[0] - ox, p2[1] - oy)]
    pygame.draw.polygon(surface, color, quad)
    pygame.draw.circle(surface, color, p1, round(radius))
    pygame.draw.circle(surface, color, p2, round(radius))


def draw_outlined_polygon(surface: pygame.Surface, vertices: np.ndarray, fill_color, color) -> None:
    """Filled polygon, then a thick outline along every edge."""
    points = np.rint(vertices).astype(np.int64).tolist()
    pygame.draw.polygon(surface, fill_color, points + points[:1])
    n = len(vertices)
    for i in range(n):
        draw_thick_segment(surface, vertices[i], vertices[(i + 1) % n], OUTLINE_RADIUS, color)


def _may_overlap_walls(points: np.ndarray, radius: float) -> bool:
    """Whether shapes at ``points`` (..., 2) with the given radius can touch the drawn walls."""
    low, high = np.min(points) - radius - 1, np.max(points) + radius + 1
    return low < WALL_EXTENT or high > WORKSPACE_SIZE - WALL_EXTENT


def _draw_walls(surface: pygame.Surface) -> None:
    for a, b in WALL_SEGMENTS:
        draw_thick_segment(surface, a, b, WALL_RADIUS, WALL_COLOR)


def linear_resize_taps(src_size: int, dst_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (i0, i1) and weights (w0, w1) per output pixel: s = (d + ½)·src/dst − ½, clamped."""
    scale = src_size / dst_size
    source = (np.arange(dst_size) + 0.5) * scale - 0.5
    lower = np.floor(source)
    frac = source - lower
    lower = lower.astype(np.int64)
    frac = np.where(lower < 0, 0.0, frac)
    frac = np.where(lower >= src_size - 1, 0.0, frac)
    lower = np.clip(lower, 0, src_size - 1)
    upper = np.minimum(lower + 1, src_size - 1)
    index = np.stack([lower, upper], axis=1)
    weight = np.stack([1.0 - frac, frac], axis=1).astype(np.float32)
    return index, weight[:, 0], weight[:, 1]


@numba.njit(cache=True)
def _resize_packed(packed_xy, index, w0, w1, channel_shifts, out):
    """out[c, y, x] = rint(Σ_ij wy_i wx_j channel_c(src[x_j, y_i])) for a packed uint32 (X, Y) view."""
    n = index.shape[0]
    for c in range(3):
        shift = channel_shifts[c]
        for y in range(n):
            y0, y1 = index[y, 0], index[y, 1]
            for x in range(n):
                x0, x1 = index[x, 0], index[x, 1]
                top = w0[x] * ((packed_xy[x0, y0] >> shift) & 255) + w1[x] * ((packed_xy[x1, y0] >> shift) & 255)
                bottom = w0[x] * ((packed_xy[x0, y1] >> shift) & 255) + w1[x] * ((packed_xy[x1, y1] >> shift) & 255)
                out[c, y, x] = np.uint8(np.rint(w0[y] * top + w1[y] * bottom))


class BilinearResizer:
    """Square resize with fixed taps: out[y, x] = Σ_ij wy_i wx_j src[y_i, x_j], rounded to uint8."""

    def __init__(self, src_size: int, dst_size: int) -> None:
        self.index, w0, w1 = linear_resize_taps(src_size, dst_size)
        self.w0, self.w1 = w0.astype(np.float64), w1.astype(np.float64)
        self.dst_size = dst_size

    def __call__(self, packed_xy: np.ndarray, channel_shifts: np.ndarray) -> np.ndarray:
        """Resize a surface given as pygame's (X, Y) uint32 pixel view; ``channel_shifts`` are the
        bit shifts of R, G, B inside a pixel. Returns a (3, dst, dst) uint8 image."""
        out = np.empty((3, self.dst_size, self.dst_size), dtype=np.uint8)
        _resize_packed(packed_xy, self.index, self.w0, self.w1, channel_shifts, out)
        return out


class PushTRenderer:
    """Draws Push-T scenes and produces the observation image and video frames."""

    def __init__(self, obs_size: int = 96, video_size: int = 256) -> None:
        self.canvas = pygame.Surface((WORKSPACE_SIZE, WORKSPACE_SIZE), depth=32)
        self.channel_shifts = np.array(self.canvas.get_shifts()[:3], dtype=np.uint32)
        self.static_layer = pygame.Surface((WORKSPACE_SIZE, WORKSPACE_SIZE))
        self.static_layer.fill(WHITE)
        for polygon in GOAL_POLYGONS:
            points = [_pixel(v) for v in polygon]
            pygame.draw.polygon(self.static_layer, GOAL_COLOR, points + points[:1])
        _draw_walls(self.static_layer)
        self.obs_resizer = BilinearResizer(WORKSPACE_SIZE, obs_size)
        self.video_resizer = BilinearResizer(WORKSPACE_SIZE, video_size)
        self.video_size = video_size

    def draw(self, agent_position: np.ndarray, block_pose: np.ndarray, contacts=()) -> pygame.Surface:
        """Draw one scene onto the canvas and return it."""
        canvas = self.canvas
        canvas.blit(self.static_layer, (0, 0))
        block_polygons = transform_points(TEE_POLYGONS, block_pose)
        for polygon in block_polygons:
            draw_outlined_polygon(canvas, polygon, LIGHT_BLOCK_COLOR, BLOCK_COLOR)
        center = _pixel(agent_position)
        pygame.draw.circle(canvas, AGENT_COLOR, center, round(AGENT_RADIUS))
        pygame.draw.circle(canvas, LIGHT_AGENT_COLOR, center, round(AGENT_RADIUS - 4))
        if _may_overlap_walls(agent_position, AGENT_RADIUS) or _may_overlap_walls(block_polygons, OUTLINE_RADIUS):
            _draw_walls(canvas)  # the reference draws walls after the moving shapes
        for ax, ay, bx, by, nx, ny in contacts:
            start = _pixel((ax - CONTACT_HALF_LENGTH * nx, ay - CONTACT_HALF_LENGTH * ny))
            end = _pixel((bx + CONTACT_HALF_LENGTH * nx, by + CONTACT_HALF_LENGTH * ny))
            pygame.draw.aalines(canvas, CONTACT_COLOR, False, [start, end])
        return canvas

    def observation_image(self) -> np.ndarray:
        """The current canvas resized to the observation size, (3, H, W) uint8."""
        return self.obs_resizer(pygame.surfarray.pixels2d(self.canvas), self.channel_shifts)

    def video_frame(self, action: np.ndarray | None) -> np.ndarray:
        """The current canvas at video size, (H, W, 3) uint8, with the commanded action as a red cross."""
        frame = self.video_resizer(pygame.surfarray.pixels2d(self.canvas), self.channel_shifts).transpose(1, 2, 0).copy()
        if action is not None:
            draw_cross(frame, np.asarray(action) * self.video_size / WORKSPACE_SIZE, ACTION_MARKER_COLOR)
        return frame


def draw_cross(frame: np.ndarray, center: np.ndarray, color, half_size: int | None = None) -> None:
    """Mark ``center`` (x, y) on an (H, W, 3) frame with a '+' of the given half size (in place)."""
    size = frame.shape[0]
    half = half_size if half_size is not None else max(2, size // 24)
    thickness = max(1, size // 192)
    cx, cy = int(center[0]), int(center[1])
    y0, y1 = max(cy - half, 0), min(cy + half + 1, size)
    x0, x1 = max(cx - half, 0), min(cx + half + 1, size)
    t0, t1 = cy - thickness // 2, cy - thickness // 2 + thickness
    if 0 <= cy < size:
        frame[max(t0, 0):max(t1, 0), x0:x1] = color
    t0, t1 = cx - thickness // 2, cx - thickness // 2 + thickness
    if 0 <= cx < size:
        frame[y0:y1, max(t0, 0):max(t1, 0)] = color
