"""ROS 2 control-loop benchmark: policy_node + sim_robot as separate processes over DDS.

    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST python benchmarks/ros_control_loop.py \
        [--checkpoint PATH (default pretrained/pusht_lowdim.ckpt)] [--duration 300] [--rate 10]

Measures, from a monitor node: the JointTrajectory command period (p50 / p99 and jitter
|period - dt|), the policy's inference latency, the share of chunks handed over on time (the
next chunk's first action due no later than one period after the previous chunk's last), and
the end-to-end latency from an observation's stamp to the first command computed from it.
The sim robot resets to the next seed whenever an episode ends, so the loop runs throughout;
the task score of each finished episode (seeds from ``--first-seed``, 100000 by default: max reward,
and success = max coverage > 0.95 as in ``eval.py``) is reported too, to compare with ``eval.py`` on the same seeds.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "real_robot"))
from real_robot.control import percentile  # noqa: E402  (NaN for an empty window instead of a crash)

SHIPPED_POLICY = REPO / "pretrained" / "pusht_lowdim.ckpt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(SHIPPED_POLICY), help="policy checkpoint (default: the shipped one)")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of control (default 300)")
    parser.add_argument("--rate", type=float, default=10.0, help="control rate in Hz")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds ignored after the first command")
    parser.add_argument("--first-seed", type=int, default=100000, help="the sim's first episode seed")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(random.randint(20, 100)))
    import rclpy
    import yaml
    from std_msgs.msg import Float64MultiArray, String
    from trajectory_msgs.msg import JointTrajectory

    env = dict(os.environ, PYTHONPATH=f"{REPO / 'real_robot'}:{REPO}", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    workdir = Path(tempfile.mkdtemp(prefix="ros_bench_"))
    preset = yaml.safe_load((REPO / "real_robot" / "config" / "sim.yaml").read_text())["/**"]["ros__parameters"]
    policy_params = workdir / "policy.yaml"
    policy_params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        **preset, "checkpoint": str(Path(args.checkpoint).resolve()), "enabled": True, "control_rate_hz": args.rate}}}))
    sim_params = workdir / "sim.yaml"
    sim_params.write_text(yaml.safe_dump({"/**": {"ros__parameters": {
        "control_rate_hz": args.rate, "max_steps": 300, "auto_reset": True, "seed": args.first_seed}}}))
    procs = [subprocess.Popen([sys.executable, "-m", f"real_robot.{exe}", "--ros-args", "-r", "__ns:=/bench",
                               "--params-file", str(params)], env=env, stdout=open(workdir / f"{exe}.log", "w"),
                              stderr=subprocess.STDOUT)
             for exe, params in (("sim_robot", sim_params), ("policy_node", policy_params))]

    rclpy.init()
    node = rclpy.create_node("ros_control_loop_benchmark")
    commands, statuses = [], []
    node.create_subscription(JointTrajectory, "/bench/joint_trajectory", lambda m: commands.append(time.monotonic()), 50)
    node.create_subscription(String, "/bench/policy_node/status", lambda m: statuses.append(json.loads(m.data)), 50)
    episodes, coverage = [], [0.0]  # (max reward, max coverage) of each finished episode

    def on_score(msg):  # step, reward, max reward, coverage, done
        coverage[0] = max(coverage[0], msg.data[3])
        if msg.data[4] == 1.0:
            episodes.append((msg.data[2], coverage[0]))
            coverage[0] = 0.0

    node.create_subscription(Float64MultiArray, "/bench/sim_robot/score", on_score, 50)
    spinner = threading.Thread(target=rclpy.spin, args=(node,), daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + 120
        while not commands:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise SystemExit(f"no commands; see logs in {workdir}")
            time.sleep(0.1)
        time.sleep(args.warmup)
        start_index, start_status = len(commands), len(statuses)
        first = statuses[-1]
        time.sleep(args.duration)
        end_index, last = len(commands), statuses[-1]
        window = statuses[start_status:]
    finally:
        for proc in procs:
            proc.send_signal(2)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        node.destroy_node()
        rclpy.shutdown()

    dt = 1.0 / args.rate
    periods = np.diff(commands[start_index:end_index])
    jitter = np.abs(periods - dt)
    chunks = {}
    for status in window:  # one entry per chunk: its inference latency and end-to-end latency
        chunks[status["chunks"]] = (status["last_inference_s"], status["last_e2e_s"])
    inference = np.array([v[0] for v in chunks.values() if v[0] is not None])
    e2e = np.array([v[1] for v in chunks.values() if v[1] is not None])
    on_time = last["on_time"] - first["on_time"]
    late = last["late"] - first["late"]
    results = {
        "duration_s": args.duration, "rate_hz": args.rate, "commands": int(len(periods) + 1),
        "period_ms_p50": 1e3 * percentile(periods, 50), "period_ms_p99": 1e3 * percentile(periods, 99),
        "jitter_ms_p50": 1e3 * percentile(jitter, 50), "jitter_ms_p99": 1e3 * percentile(jitter, 99),
        "inference_ms_p50": 1e3 * percentile(inference, 50), "inference_ms_p99": 1e3 * percentile(inference, 99),
        "chunks": int(on_time + late), "handover_on_time_share": on_time / max(1, on_time + late),
        "e2e_obs_to_command_ms_p50": 1e3 * percentile(e2e, 50),
        "e2e_obs_to_command_ms_p99": 1e3 * percentile(e2e, 99),
        "stale_holds": last["holds"] - first["holds"], "inference_timeouts": last["timeouts"] - first["timeouts"],
        "all_stale_chunks": last["stale_chunks"] - first["stale_chunks"],
        "ik_or_joint_speed_truncations": last["ik_failures"] - first["ik_failures"],
        # Episodes over the whole run (the first starts with the first command, before the warm-up).
        "episodes": len(episodes),
        "episode_seeds": f"{args.first_seed}-{args.first_seed + len(episodes) - 1}" if episodes else "none",
        "episode_mean_max_score": float(np.mean([score for score, _ in episodes])) if episodes else float("nan"),
        "episode_success_rate": float(np.mean([cov > 0.95 for _, cov in episodes])) if episodes else float("nan"),
        "episode_max_scores": [round(float(score), 4) for score, _ in episodes],
    }
    for key, value in results.items():
        print(f"{key:28s} {value:.3f}" if isinstance(value, float) else f"{key:28s} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
