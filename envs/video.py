"""mp4 writing for rollout and replay videos (H.264 through the ffmpeg that imageio-ffmpeg ships)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np


def write_video(path: str | os.PathLike, frames: Sequence[np.ndarray], fps: int = 10) -> Path:
    """Write (H, W, 3) uint8 frames to ``path`` as mp4; written to a temp file, then renamed."""
    import imageio.v2 as imageio

    if len(frames) == 0:
        raise ValueError(f"no frames to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial" + path.suffix)
    with imageio.get_writer(partial, fps=fps, codec="libx264", macro_block_size=1,
                            ffmpeg_log_level="error", output_params=["-pix_fmt", "yuv420p"]) as writer:
        for frame in frames:
            writer.append_data(np.asarray(frame, dtype=np.uint8))
    os.replace(partial, path)
    return path
