"""Decoding of the node's observation messages into the policy's pixel-frame inputs. Each
decoder raises ValueError naming what is wrong with a message (the node logs it and skips it)."""
from __future__ import annotations

from collections import deque
from typing import Dict, Sequence

import numpy as np

from real_robot.kinematics import PlanarCalibration, yaw_of_quaternion


def joints_from_state(msg, joint_names: Sequence[str]) -> np.ndarray:
    """JointState positions reordered as ``joint_names``."""
    names = list(msg.name)
    try:
        return np.array([msg.position[names.index(n)] for n in joint_names], dtype=np.float64)
    except (ValueError, IndexError):
        raise ValueError(f"joint_states lacks one of {list(joint_names)}") from None


def agent_from_pose(msg, calibration: PlanarCalibration) -> np.ndarray:
    """Agent (end-effector) pixel position from its table-frame PoseStamped."""
    return calibration.to_pixels(np.array([msg.pose.position.x, msg.pose.position.y]))


def keypoints_from_array(msg) -> np.ndarray:
    """The 9 block keypoints as 18 pixel values, as the low-dim policy was trained on."""
    values = np.asarray(msg.data, dtype=np.float64)
    if values.shape != (18,) or not np.isfinite(values).all():
        raise ValueError(f"block_keypoints must hold 18 finite pixel values, got {values.shape}")
    return values


def keypoints_from_polygon(msg) -> np.ndarray:
    """The 9 block keypoints from a geometry_msgs/PolygonStamped (x, y in pixels; z ignored): a stamped
    form, so the node uses the keypoints' capture time, not their arrival."""
    values = np.array([(point.x, point.y) for point in msg.polygon.points], dtype=np.float64).reshape(-1)
    if values.shape != (18,) or not np.isfinite(values).all():
        raise ValueError(f"block keypoints polygon must hold 9 finite points, got {len(msg.polygon.points)}")
    return values


# The T block's 9 body-frame keypoints in the dataset's order (pixels). The node keeps its own copy so that
# it imports nothing of the simulator (gymnasium, pygame, numba); a test pins it to dpstack.envs.geometry.
TEE_KEYPOINTS = np.array([
    [9.26978651, 90.04097386], [-60.98347195, -1.18673018], [60.91275546, -1.39336347],
    [-0.27050367, 25.54362508], [-14.06492744, 122.81585387], [39.00273833, 32.85740441],
    [-39.9664144, 32.72965538], [-16.82434402, 62.86317907], [23.54146135, -1.70028786],
])


def block_pose_pixels(msg, calibration: PlanarCalibration) -> np.ndarray:
    """The block's (x, y, θ) in the training frame from its table-frame pose (position + yaw)."""
    q = msg.pose.orientation
    xy = calibration.to_pixels(np.array([msg.pose.position.x, msg.pose.position.y]))
    return np.array([xy[0], xy[1], calibration.angle_to_pixels(yaw_of_quaternion((q.x, q.y, q.z, q.w)))])


def keypoints_from_pose(msg, calibration: PlanarCalibration) -> np.ndarray:
    """Block keypoints from the block's table-frame pose: R(θ) k + (x, y) for each keypoint."""
    x, y, theta = block_pose_pixels(msg, calibration)
    cos, sin = np.cos(theta), np.sin(theta)
    return (TEE_KEYPOINTS @ np.array([[cos, sin], [-sin, cos]]) + (x, y)).reshape(-1)


def _linear_taps(source_size: int, size: int):
    """Per output pixel d: the two source pixels around s = (d + ½)·source/size − ½ (clamped to the image)
    and their weights, OpenCV's INTER_LINEAR convention, as the simulator's renderer resizes."""
    position = np.clip((np.arange(size) + 0.5) * (source_size / size) - 0.5, 0, source_size - 1)
    first = np.minimum(np.floor(position).astype(np.int64), source_size - 1)
    second = np.minimum(first + 1, source_size - 1)
    weight_second = position - first
    return np.stack([first, second], axis=1), (1 - weight_second).astype(np.float32), weight_second.astype(np.float32)


def resize_bilinear(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 -> (size, size, C) float64 in [0, 255] with the simulator's resize (OpenCV's
    INTER_LINEAR convention, source coordinate s = (d + ½)·src/dst − ½), in its order: rows of
    horizontal taps, then the vertical blend, out = Σ_i wy_i Σ_j wx_j img[y_i, x_j]. A non-square
    camera image is stretched to a square: calibrate the camera crop to the table square."""
    rows, row_w0, row_w1 = _linear_taps(image.shape[0], size)
    cols, col_w0, col_w1 = _linear_taps(image.shape[1], size)
    pixels = image.astype(np.float64)
    horizontal = (col_w0.astype(np.float64)[None, :, None] * pixels[:, cols[:, 0]]
                  + col_w1.astype(np.float64)[None, :, None] * pixels[:, cols[:, 1]])
    return (row_w0.astype(np.float64)[:, None, None] * horizontal[rows[:, 0]]
            + row_w1.astype(np.float64)[:, None, None] * horizontal[rows[:, 1]])


CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}


def crop_resize(image: np.ndarray, size: int, crop: Sequence[int] = ()) -> np.ndarray:
    """(H, W, 3) uint8 → (3, size, size) float32 in [0, 1]: the ``crop`` [x, y, width, height] (camera pixels;
    empty: the whole frame) resized with the simulator's bilinear resize and rounded to uint8 levels as its
    renderer's are. Crop the camera frame to the table square the training images show."""
    if len(crop):
        x, y, width, height = (int(v) for v in crop)
        if x < 0 or y < 0 or width <= 0 or height <= 0 or x + width > image.shape[1] or y + height > image.shape[0]:
            raise ValueError(f"image_crop {list(crop)} does not fit a {image.shape[1]}x{image.shape[0]} image")
        image = image[y:y + height, x:x + width]
    if image.shape[:2] != (size, size):
        image = np.rint(resize_bilinear(image, size))
    return np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)) / np.float32(255.0)


def image_from_msg(msg, size: int, crop: Sequence[int] = ()) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8 or mono8; no cv_bridge) → (3, size, size) float32 in [0, 1]."""
    if msg.encoding not in CHANNELS:
        raise ValueError(f"image encoding must be one of {sorted(CHANNELS)}, got {msg.encoding!r}")
    channels = CHANNELS[msg.encoding]
    if msg.step < msg.width * channels or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"image data ({len(msg.data)} bytes, step {msg.step}) too short for "
                         f"{msg.width}x{msg.height} {msg.encoding}")
    rows = np.frombuffer(msg.data, dtype=np.uint8)[:msg.step * msg.height].reshape(msg.height, msg.step)
    image = rows[:, :msg.width * channels].reshape(msg.height, msg.width, channels)
    if msg.encoding.startswith("bgr"):
        image = image[..., 2::-1]
    image = np.repeat(image, 3, axis=2) if channels == 1 else image[..., :3]
    return crop_resize(image, size, crop)


def image_from_compressed(msg, size: int, crop: Sequence[int] = ()) -> np.ndarray:
    """sensor_msgs/CompressedImage (JPEG or PNG, as image_transport's ``compressed`` plugin sends) →
    (3, size, size) float32 in [0, 1], decoded by Pillow (torchvision's own dependency; no OpenCV)."""
    from io import BytesIO

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(BytesIO(bytes(msg.data))) as picture:
            image = np.asarray(picture.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"cannot decode the compressed image (format {msg.format!r}): {error}") from None
    return crop_resize(image, size, crop)


def observation_parts(obs_type: str, agent_from_joints: bool) -> tuple:
    """The keys of ``parts`` an observation is made of: (agent part, block keypoints or image part)."""
    return ("joints" if agent_from_joints else "agent"), ("keypoints" if obs_type == "lowdim" else "image")


def observation_time(parts: dict, obs_type: str, agent_from_joints: bool):
    """t_obs of the observation ``compose_observation`` would build (the oldest stamp of its parts),
    or None while a part is missing."""
    parts = [parts.get(key) for key in observation_parts(obs_type, agent_from_joints)]
    return None if any(part is None for part in parts) else min(part[1] for part in parts)


def compose_observation(parts: dict, obs_type: str, agent_from_joints: bool, arm, calibration: PlanarCalibration):
    """The policy input from decoded messages ``parts[key] = (value, stamp)``:
    ``({"obs": (1, 20)} | {"image": (1, 3, H, W), "agent_pos": (1, 2)}, t_obs, agent_px)`` with
    t_obs the oldest stamp of its parts, or None while a part is missing. The agent comes from
    ``agent_pose`` or, with ``agent_from_joints``, from the joint states through forward kinematics."""
    t_obs = observation_time(parts, obs_type, agent_from_joints)
    if t_obs is None:
        return None
    agent_key, other_key = observation_parts(obs_type, agent_from_joints)
    agent, other = parts[agent_key], parts[other_key]
    if agent_from_joints:
        agent = (calibration.to_pixels(arm.forward(agent[0])[:2, 3]), agent[1])
    if obs_type == "lowdim":
        obs = {"obs": np.concatenate([other[0], agent[0]]).astype(np.float32)[None]}
    else:
        obs = {"image": other[0][None], "agent_pos": agent[0].astype(np.float32)[None]}
    return obs, t_obs, agent[0]


class TimedObservations:
    """Recent decoded messages of each observation part, ``(value, stamp)`` oldest first, kept for
    ``span`` seconds behind the newest. Frames for the policy's history are picked by stamp (as the
    original's real-robot environment aligns them), not by when a control tick happened to run:
    two 10 Hz clocks out of phase would otherwise sample one message twice and skip the next."""

    def __init__(self, span: float) -> None:
        self.span = span
        self.parts: Dict[str, deque] = {}

    def add(self, key: str, value, stamp: float) -> None:
        """Append a message; a slightly older one (reordered) is ignored, one older than the whole
        span means the clock went back (sim time restarted, NTP step): the part starts over."""
        entries = self.parts.setdefault(key, deque())
        if entries and stamp < entries[-1][1]:
            if stamp >= entries[-1][1] - self.span:
                return
            entries.clear()
        entries.append((value, stamp))
        while len(entries) > 1 and entries[1][1] <= stamp - self.span:
            entries.popleft()

    def newest(self) -> Dict[str, tuple]:
        return {key: entries[-1] for key, entries in self.parts.items()}

    def newest_value(self, key: str):
        entries = self.parts.get(key)
        return entries[-1][0] if entries else None

    def at(self, t: float, dt: float, max_hold: float) -> Dict[str, tuple]:
        """Each part as of time ``t``: its message nearest to t within ±dt/2 (ties: the newer);
        failing that, the newest one before t if at most ``max_hold`` old (a sensor slower than the
        control clock); failing that, the oldest one after t, so the first frame repeats at start-up
        and after a gap, as at a reset."""
        frame = {}
        for key, entries in self.parts.items():
            stamps = np.array([stamp for _, stamp in entries])
            distance = np.abs(stamps - t)
            nearest = int(np.flatnonzero(distance == distance.min())[-1])
            before = np.flatnonzero(stamps <= t)
            if distance[nearest] <= dt / 2:
                frame[key] = entries[nearest]
            elif before.size and t - stamps[before[-1]] <= max_hold:
                frame[key] = entries[int(before[-1])]
            else:
                after = np.flatnonzero(stamps > t)
                frame[key] = entries[int(after[0])] if after.size else entries[-1]
        return frame

    def history(self, t_obs: float, n_steps: int, dt: float, max_hold: float) -> list:
        """The parts of the policy's n_steps input frames, at t_obs - (n_steps - 1 - k)·dt for k = 0..n_steps-1."""
        return [self.at(t_obs - (n_steps - 1 - k) * dt, dt, max_hold) for k in range(n_steps)]
