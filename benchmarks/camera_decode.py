"""Camera path latency of the robot node: a camera frame to the image policy's (3, 96, 96) input.

    python benchmarks/camera_decode.py [--width 640] [--height 480] [--repeats 200]

Times ``real_robot.observations.image_from_msg`` (raw rgb8 / bgr8) and ``image_from_compressed`` (JPEG at
quality 90, PNG) on one synthetic frame of the given size (smooth gradients and a sinusoid, so that
compression is realistic), with and without a square ``image_crop``; medians of ``--repeats`` calls after 5
untimed ones, one thread. The policy's own chunk latency is in ``inference_latency.py``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "real_robot"))
from real_robot.observations import image_from_compressed, image_from_msg  # noqa: E402


def median_ms(function, repeats: int) -> float:
    for _ in range(5):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    y, x = np.mgrid[0:args.height, 0:args.width]
    frame = np.stack([x * 255.0 / args.width, y * 255.0 / args.height,
                      128 + 100 * np.sin(x / 23.0) * np.cos(y / 17.0)], axis=2).astype(np.uint8)
    side = min(args.width, args.height)
    crops = {"whole frame": [], f"{side}x{side} crop": [(args.width - side) // 2, (args.height - side) // 2, side, side]}
    raw = SimpleNamespace(encoding="rgb8", width=args.width, height=args.height, step=args.width * 3, data=frame.tobytes())
    encoded = {}
    for kind, options in (("JPEG", {"quality": 90}), ("PNG", {})):
        buffer = BytesIO()
        Image.fromarray(frame).save(buffer, format=kind, **options)
        encoded[kind] = SimpleNamespace(format=kind.lower(), data=buffer.getvalue())
    print(f"{time.strftime('%Y-%m-%d %H:%M')}  {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
          f"{args.width}x{args.height} frame, JPEG {len(encoded['JPEG'].data) // 1024} KiB, "
          f"PNG {len(encoded['PNG'].data) // 1024} KiB")
    print("\n| message | region | median ms |\n|---|---|---|")
    for name, crop in crops.items():
        print(f"| Image rgb8 | {name} | {median_ms(lambda: image_from_msg(raw, 96, crop), args.repeats):.2f} |")
        for kind, msg in encoded.items():
            milliseconds = median_ms(lambda: image_from_compressed(msg, 96, crop), args.repeats)
            print(f"| CompressedImage {kind} | {name} | {milliseconds:.2f} |")


if __name__ == "__main__":
    main()
