"""ROS-free parts of the deployment package: UR5/UR5e and FR3 IK round trips, calibration, the
latency-compensated schedule, clamps, parameter coercion and the inference thread."""
import math
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "real_robot"
sys.path.insert(0, str(PACKAGE))

from real_robot.control import ActionSchedule, clamp_actions, coerce, joint_speed_ok  # noqa: E402
from real_robot.kinematics import (  # noqa: E402
    PlanarCalibration, URKinematics, matrix_to_quaternion, quaternion_to_matrix,
)
from real_robot.observations import TimedObservations  # noqa: E402
from real_robot.worker import WakeableWorker  # noqa: E402
from waiting import wait_for  # noqa: E402

DEFAULT_AFFINE = [0.0008, 0.0, 0.25, 0.0, -0.0008, 0.2]


@pytest.mark.parametrize("model", ["ur5", "ur5e"])
def test_ur_ik_round_trips_random_reachable_poses(model):
    kin = URKinematics(model)
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = rng.uniform(-math.pi, math.pi, 6)
        pose = kin.forward(q)  # reachable by construction
        solutions = kin.inverse_all(pose)
        assert solutions, "a reachable pose must have an IK solution"
        for solution in solutions:
            np.testing.assert_allclose(kin.forward(solution), pose, atol=1e-8)
        # Seeded with the current joints, IK returns exactly the branch we came from ...
        np.testing.assert_allclose(kin.inverse(pose, q), q, atol=1e-6)
        # ... and with any seed, the solution nearest to it (max joint distance, 2*pi-unwrapped).
        seed = q + rng.normal(0, 0.3, 6)
        chosen = kin.inverse(pose, seed)
        np.testing.assert_allclose(kin.forward(chosen), pose, atol=1e-8)
        distances = [np.abs(np.arctan2(np.sin(s - seed), np.cos(s - seed))).max() for s in solutions]
        assert np.abs(chosen - seed).max() == pytest.approx(min(distances), abs=1e-9)


def test_ur_ik_unwraps_to_seed_and_rejects_unreachable():
    kin = URKinematics("ur5e")
    q = np.array([0.3, -1.2, 1.4, -1.8, -1.5, 2.9])
    seed = q.copy()
    seed[5] += 2 * math.pi  # the robot's wrist is one turn further: keep it there
    np.testing.assert_allclose(kin.inverse(kin.forward(q), seed), q + [0, 0, 0, 0, 0, 2 * math.pi], atol=1e-6)
    far = np.eye(4)
    far[:3, 3] = [2.0, 0.0, 0.3]
    assert kin.inverse(far, q) is None
    with pytest.raises(ValueError, match="unknown UR model"):
        URKinematics("ur99")


def test_ur5e_known_forward_kinematics():
    # All joints zero: flange at x = a2 + a3, y = -(d4 + d6), z = d1 - d5 (standard DH).
    pose = URKinematics("ur5e").forward(np.zeros(6))
    np.testing.assert_allclose(pose[:3, 3], [-0.8172, -0.2329, 0.0628], atol=1e-9)


def test_calibration_round_trip_and_workspace_reachable_with_continuous_ik():
    calibration = PlanarCalibration(DEFAULT_AFFINE, 0.15, (1.0, 0.0, 0.0, 0.0))
    pixels = np.random.default_rng(1).uniform(0, 512, (50, 2))
    np.testing.assert_allclose(calibration.to_pixels(calibration.to_table(pixels)), pixels, atol=1e-9)
    for theta in (0.0, 1.0, -2.5):
        assert calibration.angle_to_pixels(calibration.angle_to_table(theta)) == pytest.approx(theta)
    kin = URKinematics("ur5e")
    seed = np.array([0.0, -1.5708, 1.5708, -1.5708, -1.5708, 0.0])
    for u in np.linspace(0, 512, 9):  # a raster over the whole Push-T workspace
        for v in np.linspace(0, 512, 9):
            pose = calibration.tool_pose(np.array([u, v]))
            q = kin.inverse(pose, seed)
            assert q is not None, (u, v)
            np.testing.assert_allclose(kin.forward(q), pose, atol=1e-8)
            seed = q
    with pytest.raises(ValueError, match="singular"):
        PlanarCalibration([0, 0, 0, 0, 0, 0], 0.1)
    with pytest.raises(ValueError, match="6 finite numbers"):
        PlanarCalibration([1, 0, 0], 0.1)


def test_quaternion_round_trip():
    rng = np.random.default_rng(2)
    for _ in range(20):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        q = q if q[3] >= 0 else -q
        np.testing.assert_allclose(matrix_to_quaternion(quaternion_to_matrix(q)), q, atol=1e-9)


def test_schedule_drops_due_actions_and_hands_over_without_gap():
    dt = 0.1
    schedule = ActionSchedule(dt, margin=0.01)
    chunk = np.arange(16, dtype=float).reshape(8, 2)
    # Inference took 0.23 s after the observation at t=10: actions 0..2 are due -> dropped.
    timed, report = schedule.schedule(chunk, t_obs=10.0, now=10.23)
    assert report.n_dropped == 3 and report.handed_over_on_time is None and not report.all_stale
    assert [p.time for p in timed] == pytest.approx([10.3, 10.4, 10.5, 10.6, 10.7])
    schedule.commit(timed)
    # Remaining after t=10.45: 10.5, 10.6, 10.7 -> replan once what is left covers L + 1 step.
    assert not schedule.needs_replan(10.35, latency=0.05, margin_steps=1)
    assert schedule.needs_replan(10.55, latency=0.05, margin_steps=1)
    timed, report = schedule.schedule(chunk + 100, t_obs=10.5, now=10.58)
    assert report.handed_over_on_time and timed[0].time == pytest.approx(10.6)
    schedule.commit(timed)
    times = [p.time for p in schedule.plan]
    assert times == sorted(times) and np.allclose(np.diff(times), dt)
    assert schedule.plan[times.index(pytest.approx(10.6))].pixels[0] == 102  # the new chunk replaced the old


def test_schedule_all_stale_keeps_last_action_at_next_slot():
    schedule = ActionSchedule(0.1, margin=0.01)
    chunk = np.arange(8, dtype=float)[:, None].repeat(2, 1)
    timed, report = schedule.schedule(chunk, t_obs=5.0, now=6.03)
    assert report.all_stale and len(timed) == 1 and timed[0].pixels[0] == 7
    assert timed[0].time == pytest.approx(6.1)


def test_schedule_late_handover_is_reported():
    schedule = ActionSchedule(0.1)
    schedule.commit(schedule.schedule(np.zeros((3, 2)), t_obs=0.0, now=0.05)[0])  # plan ends at 0.2
    _, report = schedule.schedule(np.zeros((8, 2)), t_obs=0.35, now=0.36)  # starts at 0.45: a gap
    assert report.handed_over_on_time is False


def frame_stamps(observations, t_obs, key="agent", n=2, dt=0.1):
    return [round(frame[key][1], 4) for frame in observations.history(t_obs, n, dt, max_hold=2 * dt)]


def test_history_frames_are_picked_by_stamp_not_by_tick():
    """Whatever a tick saw, the frames are one period apart, each part at its own nearest message."""
    rng = np.random.default_rng(0)
    observations = TimedObservations(span=0.5)
    for k in range(40):  # agent stamped by a jittery 10 Hz sensor; keypoints stamped on receipt, 3 ms later
        stamp = k * 0.1 + rng.uniform(0, 0.004)
        observations.add("agent", np.array([k]), stamp)
        observations.add("keypoints", np.array([k]), stamp + 0.003)
        frames = observations.history(stamp, 2, 0.1, max_hold=0.2)
        assert [int(f["agent"][0][0]) for f in frames] == [max(k - 1, 0), k]
        assert [int(f["keypoints"][0][0]) for f in frames] == [max(k - 1, 0), k]  # same tick as the agent


def test_history_reorder_clock_jump_slow_sensor_start_and_gap():
    observations = TimedObservations(span=0.5)
    for stamp in (0.0, 0.1, 0.2, 0.3):
        observations.add("agent", np.array([stamp]), stamp)
    observations.add("agent", np.array([-1.0]), 0.25)   # reordered by the network: ignored
    assert observations.newest()["agent"][1] == 0.3
    observations.add("agent", np.array([9.0]), 0.9)     # a 0.6 s gap in the messages
    assert frame_stamps(observations, 0.9) == [0.9, 0.9]  # the pre-gap message is not a frame
    observations.add("agent", np.array([0.0]), 0.05)    # the clock went back (sim time restarted)
    assert observations.newest()["agent"][1] == 0.05 and len(observations.parts["agent"]) == 1
    assert frame_stamps(observations, 0.05) == [0.05, 0.05]  # start-up: the first frame repeats

    slow = TimedObservations(span=0.5)  # a 4 Hz camera under a 10 Hz control clock
    for stamp in (0.0, 0.25, 0.5):
        slow.add("image", None, stamp)
    assert frame_stamps(slow, 0.5, "image", n=3) == [0.25, 0.25, 0.5]  # nearest within dt/2, else the last one
    assert frame_stamps(slow, 0.45, "image") == [0.25, 0.5]


def test_first_point_lead_respects_the_speed_limits():
    from real_robot.control import PlannedAction, first_point_lead

    first = PlannedAction(0.0, np.array([140.0, 100.0]), np.array([0.3, 0.0]))
    here_px, here_q = np.array([100.0, 100.0]), np.array([0.0, 0.0])
    # 40 px at 400 px/s = 0.1 s; 0.3 rad at 1.5 rad/s = 0.2 s: the slower limit sets the lead.
    assert first_point_lead(first, here_px, here_q, True, 400.0, 1.5, 0.1) == pytest.approx(0.2)
    assert first_point_lead(first, here_px, None, True, 400.0, 1.5, 0.1) == pytest.approx(0.1)
    assert first_point_lead(first, np.array([139.0, 100.0]), None, True, 400.0, 1.5, 0.1) == pytest.approx(0.0025)
    # From a standstill the setpoint is a measurement: at least one period.
    assert first_point_lead(first, np.array([139.0, 100.0]), None, False, 400.0, 1.5, 0.1) == pytest.approx(0.1)


def test_trajectory_keeps_scheduled_times_unless_the_first_point_is_too_close():
    from real_robot.commands import CommandBuilder
    from real_robot.control import PlannedAction

    builder = CommandBuilder(PlanarCalibration(DEFAULT_AFFINE, 0.15, [1.0, 0.0, 0.0, 0.0]), 0.15, "base", ["j"])
    pending = [PlannedAction(10.03 + 0.1 * i, np.zeros(2), np.array([float(i)])) for i in range(3)]

    def seconds(msg):
        return [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in msg.points]

    delay = builder.trajectory_delay(pending, now=10.0, min_lead=0.01)  # a running plan: on schedule
    assert delay == 0.0 and seconds(builder.trajectory(pending, 10.0, delay)) == pytest.approx([0.03, 0.13, 0.23])
    delay = builder.trajectory_delay(pending, now=10.0, min_lead=0.1)   # from a standstill a step away
    msg = builder.trajectory(pending, 10.0, delay, velocities=np.array([[1.0], [2.0], [0.0]]))
    assert delay == pytest.approx(0.07) and seconds(msg) == pytest.approx([0.1, 0.2, 0.3])
    assert [list(p.velocities) for p in msg.points] == [[1.0], [2.0], [0.0]]


def test_clamps():
    low, high = np.array([10.0, 10.0]), np.array([500.0, 500.0])
    actions = np.array([[0.0, 0.0], [600.0, 20.0], [600.0, 20.0]])
    out, n = clamp_actions(actions, start=np.array([10.0, 10.0]), low=low, high=high, max_step=50.0)
    assert np.all(out >= low) and np.all(out <= high) and n == 3
    steps = np.linalg.norm(np.diff(np.vstack([[10.0, 10.0], out]), axis=0), axis=1)
    assert np.all(steps <= 50.0 + 1e-9)
    assert joint_speed_ok(np.zeros(6), np.full(6, 0.1), 0.1, 1.5)
    assert not joint_speed_ok(np.zeros(6), np.full(6, 0.2), 0.1, 1.5)


def test_clamps_never_pass_a_non_finite_point():
    low, high = np.array([10.0, 10.0]), np.array([500.0, 500.0])
    with pytest.raises(ValueError, match="not finite"):  # no step from an unknown point can be bounded
        clamp_actions(np.array([[500.0, 500.0]]), start=np.array([np.nan, 10.0]), low=low, high=high, max_step=50.0)
    actions = np.array([[40.0, 10.0], [np.nan, 20.0], [np.inf, 0.0], [60.0, 10.0]])
    out, n = clamp_actions(actions, start=np.array([10.0, 10.0]), low=low, high=high, max_step=50.0)
    assert np.isfinite(out).all() and n == 2
    np.testing.assert_array_equal(out[1], out[0])  # a NaN action holds the point before it
    np.testing.assert_array_equal(out[2], out[0])


def test_parameter_coercion_accepts_integer_for_double():
    assert coerce("rate", 10, "float") == 10.0 and isinstance(coerce("rate", 10, "float"), float)
    assert coerce("v", [1, 2.5], "float_list") == [1.0, 2.5]
    assert coerce("n", 3.0, "int") == 3
    assert coerce("flag", "true", "bool") is True
    for name, value, kind in (("rate", "fast", "float"), ("rate", True, "float"), ("n", 2.5, "int"),
                              ("flag", 1, "bool"), ("topic", 5, "str")):
        with pytest.raises(ValueError, match=name):
            coerce(name, value, kind)


def test_handover_off_the_control_grid_keeps_points_one_period_apart():
    schedule = ActionSchedule(0.1, margin=0.01)
    schedule.commit(schedule.schedule(np.zeros((8, 2)), t_obs=10.0, now=10.05)[0])  # 10.1 ... 10.7
    timed, _ = schedule.schedule(np.ones((8, 2)), t_obs=10.437, now=10.52)  # 10.537, 10.637, ...
    assert schedule.anchor_before(timed[0].time).time == pytest.approx(10.5)  # maybe sent already: the clamp's start
    schedule.commit(timed)
    times = [p.time for p in schedule.plan]
    assert times == sorted(times) and min(np.diff(times)) >= 0.1 - 1e-9


def test_fr3_forward_kinematics_and_jacobian():
    from real_robot.kinematics_fr3 import FR3Kinematics, rotation_log

    kin = FR3Kinematics()
    ready = kin.forward(kin.home)  # the documented "ready" pose: flange 0.307 m ahead, 0.59 m up, pointing down
    np.testing.assert_allclose(ready[:3, 3], [0.3069, 0.0, 0.5903], atol=1e-4)
    np.testing.assert_allclose(ready[:3, 2], [0.0, 0.0, -1.0], atol=1e-9)
    q = np.array(kin.home) + 0.1
    numeric = np.zeros((6, 7))
    for i in range(7):
        step = np.zeros(7)
        step[i] = 1e-6
        plus, minus = kin.forward(q + step), kin.forward(q - step)
        numeric[:3, i] = (plus[:3, 3] - minus[:3, 3]) / 2e-6
        numeric[3:, i] = rotation_log(plus[:3, :3] @ minus[:3, :3].T) / 2e-6
    np.testing.assert_allclose(kin.jacobian(q), numeric, atol=1e-8)


def test_rotation_log_inverts_rodrigues_including_near_pi():
    from real_robot.kinematics_fr3 import rotation_log

    rng = np.random.default_rng(0)
    for angle in (0.0, 1e-8, 0.3, 2.0, math.pi - 1e-6, math.pi):
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotation = np.eye(3) + math.sin(angle) * skew + (1 - math.cos(angle)) * skew @ skew
        w = rotation_log(rotation)
        assert abs(np.linalg.norm(w) - angle) < 1e-6
        if angle > 1e-6:
            assert abs(abs(np.dot(w / np.linalg.norm(w), axis)) - 1) < 1e-6


def test_fr3_ik_round_trips_within_joint_limits_and_rejects_unreachable():
    from real_robot.kinematics_fr3 import FR3Kinematics

    kin = FR3Kinematics()
    rng = np.random.default_rng(1)
    solved = 0
    for _ in range(100):
        q = rng.uniform(kin.lower + 0.2, kin.upper - 0.2)
        seed = np.clip(q + rng.normal(0.0, 0.15, 7), kin.lower, kin.upper)
        target = kin.forward(q)
        joints = kin.inverse(target, seed)
        if joints is None:
            continue
        solved += 1
        assert np.all(joints >= kin.lower) and np.all(joints <= kin.upper)
        np.testing.assert_allclose(kin.forward(joints), target, atol=1e-5)
    assert solved >= 95, solved
    far = np.eye(4)
    far[:3, 3] = [1.5, 0.0, 0.3]  # beyond the 0.855 m reach
    assert kin.inverse(far, kin.home) is None


def test_jtc_interpolation_used_by_the_sim():
    from real_robot.control import sample_trajectory

    times, points = np.array([1.0, 1.1, 1.3]), np.array([[0.0, 0.0], [10.0, 20.0], [10.0, 40.0]])
    np.testing.assert_allclose(sample_trajectory(times, points, 0.5), [0.0, 0.0])   # before: the start
    np.testing.assert_allclose(sample_trajectory(times, points, 1.05), [5.0, 10.0])
    np.testing.assert_allclose(sample_trajectory(times, points, 1.2), [10.0, 30.0])
    np.testing.assert_allclose(sample_trajectory(times, points, 9.0), [10.0, 40.0])  # after: the last point


def test_camera_images_are_resized_like_the_simulator_renders_them():
    """A 512x512 frame sent as a ROS image decodes to exactly the simulator's 96x96 observation."""
    from types import SimpleNamespace

    from dpstack.envs.pusht_env import PushTEnv
    from real_robot.observations import image_from_msg

    env = PushTEnv(obs_type="image", obs_image_size=96)
    env.reset(seed=3)
    big = PushTEnv(obs_type="image", obs_image_size=512)
    big.reset(seed=3)
    observation = np.asarray(env._draw().observation_image())        # (3, 96, 96) uint8
    frame = np.asarray(big._draw().observation_image()).transpose(1, 2, 0)  # (512, 512, 3)
    for encoding, data in (("rgb8", frame), ("bgr8", frame[..., ::-1])):
        msg = SimpleNamespace(encoding=encoding, height=512, width=512, step=512 * 3,
                              data=np.ascontiguousarray(data).tobytes())
        decoded = image_from_msg(msg, 96)
        assert decoded.shape == (3, 96, 96) and decoded.dtype == np.float32
        np.testing.assert_array_equal(np.rint(decoded * 255), observation)
    with pytest.raises(ValueError, match="encoding"):
        image_from_msg(SimpleNamespace(encoding="16UC1", height=1, width=1, step=2, data=b"\0\0"), 96)
    with pytest.raises(ValueError, match="too short"):
        image_from_msg(SimpleNamespace(encoding="rgb8", height=4, width=4, step=12, data=b"\0" * 10), 96)


def test_camera_frames_of_any_encoding_compressed_or_cropped_decode_to_the_training_image():
    """A 96x96 table view inside a larger 4:3 camera frame: the ``image_crop`` of it decodes to exactly the
    view, from rgb8, bgra8 and a PNG CompressedImage (JPEG decodes too, within its loss); mono8 gives
    three equal channels; a crop outside the frame is refused."""
    from types import SimpleNamespace

    from io import BytesIO

    from PIL import Image

    from real_robot.observations import image_from_compressed, image_from_msg

    def encoded(kind, **options):
        buffer = BytesIO()
        Image.fromarray(frame).save(buffer, format=kind, **options)
        return SimpleNamespace(format=kind.lower(), data=buffer.getvalue())

    y, x = np.mgrid[0:120, 0:160]
    frame = np.stack([x * 1.5, y * 2.0, 128 + 100 * np.sin(x / 9.0) * np.cos(y / 7.0)], axis=2).astype(np.uint8)
    crop = [30, 12, 96, 96]
    view = frame[12:108, 30:126].transpose(2, 0, 1).astype(np.float32) / 255

    def raw(encoding, pixels):
        return SimpleNamespace(encoding=encoding, height=120, width=160, step=160 * pixels.shape[2],
                               data=np.ascontiguousarray(pixels).tobytes())

    bgra = np.concatenate([frame[..., ::-1], np.full((120, 160, 1), 255, np.uint8)], axis=2)
    for msg in (raw("rgb8", frame), raw("bgra8", bgra)):
        np.testing.assert_array_equal(image_from_msg(msg, 96, crop), view)
    np.testing.assert_array_equal(image_from_compressed(encoded("PNG"), 96, crop), view)
    jpeg_error = np.abs(image_from_compressed(encoded("JPEG", quality=95), 96, crop) - view).mean()
    assert jpeg_error < 2 / 255  # lossy, but the same picture
    gray = image_from_msg(raw("mono8", frame[..., :1]), 96, crop)
    np.testing.assert_array_equal(gray[0], gray[2])
    np.testing.assert_array_equal(gray[0], view[0])
    with pytest.raises(ValueError, match="does not fit"):
        image_from_msg(raw("rgb8", frame), 96, [100, 50, 96, 96])
    with pytest.raises(ValueError, match="decode"):
        image_from_compressed(SimpleNamespace(format="jpeg", data=b"not an image"), 96)


def test_stamped_keypoints_keep_their_capture_stamp():
    """block_source keypoints_stamped: a PolygonStamped's 9 points decode to the 18 values, and the node
    files them under the message's stamp (capture time), not the arrival time."""
    from types import SimpleNamespace

    from real_robot.observations import keypoints_from_polygon

    values = np.arange(18, dtype=np.float64) * 10.5
    msg = SimpleNamespace(polygon=SimpleNamespace(points=[SimpleNamespace(x=x, y=y, z=0.0)
                                                          for x, y in values.reshape(9, 2)]))
    np.testing.assert_array_equal(keypoints_from_polygon(msg), values)
    msg.polygon.points = msg.polygon.points[:8]
    with pytest.raises(ValueError, match="9 finite points"):
        keypoints_from_polygon(msg)


def test_parameters_validate_per_arm():
    from real_robot.params import PARAMETERS, ConfigError, validate

    base = {name: default for name, (_, default) in PARAMETERS.items()}
    values = dict(base, checkpoint="x.ckpt", arm_model="fr3")
    arm = validate(values)
    assert values["joint_names"] == [f"fr3_joint{i}" for i in range(1, 8)] and len(values["home_joints"]) == 7
    assert arm.forward(values["home_joints"]).shape == (4, 4)
    with pytest.raises(ConfigError, match="7 joints"):
        validate(dict(base, checkpoint="x.ckpt", arm_model="fr3", joint_names=["a"] * 6))
    with pytest.raises(ConfigError, match="arm_model"):
        validate(dict(base, checkpoint="x.ckpt", arm_model="kuka"))
    with pytest.raises(ConfigError, match="checkpoint"):
        validate(dict(base))
    with pytest.raises(ConfigError, match="renamed: set arm_model: ur5"):  # an old params file fails loudly
        validate(dict(base, checkpoint="x.ckpt", ur_model="ur5"))
    # Cartesian output drives any arm: its joint names are not checked against arm_model.
    validate(dict(base, checkpoint="x.ckpt", output_mode="pose", joint_names=[f"j{i}" for i in range(7)]))


def test_inference_worker_coalesces_wakes_survives_errors_and_stops():
    """Wakes during a run give one more run, not one each; a failing run is reported and the
    thread goes on; ``stop`` ends it after the current run."""
    import threading
    import time

    runs, errors, release = [], [], threading.Event()

    def work():
        runs.append(time.monotonic())
        if len(runs) == 1:
            release.wait(5)  # the first run blocks while more wakes arrive
        if len(runs) == 2:
            raise RuntimeError("bad chunk")

    worker = WakeableWorker(work, on_error=errors.append, name="test-inference")
    worker.start()
    worker.wake()
    wait_for(lambda: runs, 5, step=0.005)
    for _ in range(5):
        worker.wake()
    release.set()
    wait_for(lambda: errors, 5, step=0.005)
    time.sleep(0.1)  # no third run follows
    assert len(runs) == 2 and [str(e) for e in errors] == ["bad chunk"]
    worker.wake()  # still alive after the error
    wait_for(lambda: len(runs) >= 3, 5, step=0.005)
    assert len(runs) == 3
    worker.stop()
    assert not worker.thread.is_alive()
    worker.wake()
    time.sleep(0.05)
    assert len(runs) == 3


def test_the_node_keeps_the_simulators_geometry_without_importing_it():
    """The node's keypoint table and resize taps equal the simulator's (it keeps copies so that it never
    imports gymnasium, pygame or numba)."""
    from dpstack.envs.geometry import TEE_KEYPOINTS, block_keypoints
    from dpstack.envs.render import linear_resize_taps
    from real_robot import observations

    np.testing.assert_array_equal(observations.TEE_KEYPOINTS, TEE_KEYPOINTS)
    for source in (1, 2, 50, 96, 97, 480, 512, 640):
        for ours, theirs in zip(observations._linear_taps(source, 96), linear_resize_taps(source, 96)):
            np.testing.assert_array_equal(ours, theirs)
    calibration = observations.PlanarCalibration([0.001, 0.0, -0.25, 0.0, 0.001, -0.25], 0.0)
    pose = type("Pose", (), {})()
    pose.pose = type("P", (), {"position": type("V", (), {"x": 0.1, "y": 0.2})(),
                               "orientation": type("Q", (), {"x": 0.0, "y": 0.0, "z": np.sin(0.2), "w": np.cos(0.2)})()})()
    xy = calibration.to_pixels(np.array([0.1, 0.2]))
    theta = calibration.angle_to_pixels(0.4)
    np.testing.assert_allclose(observations.keypoints_from_pose(pose, calibration),
                               block_keypoints(np.array([xy[0], xy[1], theta])).ravel(), atol=1e-9)


def test_node_runs_with_the_simulator_packages_blocked(tmp_path):
    """The documented robot install has torch, numpy and ROS only: the node module, its decoders (an image of
    another size, a block pose) and load_policy work with gymnasium, pygame, numba and friends unimportable."""
    import subprocess
    import sys

    script = f"""
import sys
for name in ("gymnasium", "pygame", "numba", "pymunk", "shapely", "zarr", "hydra", "omegaconf", "wandb", "imageio"):
    sys.modules[name] = None
sys.path.insert(0, {str(PACKAGE)!r})
import numpy as np
import real_robot.policy_node
from real_robot import observations
image = type("Image", (), dict(encoding="rgb8", width=64, height=48, step=192, data=bytes(64 * 48 * 3)))()
assert observations.image_from_msg(image, 96).shape == (3, 96, 96)
from io import BytesIO
from PIL import Image
buffer = BytesIO()
Image.new("RGB", (64, 48)).save(buffer, format="JPEG")
compressed = type("C", (), dict(format="jpeg", data=buffer.getvalue()))()
assert observations.image_from_compressed(compressed, 96, [8, 0, 48, 48]).shape == (3, 96, 96)
calibration = observations.PlanarCalibration([0.001, 0.0, -0.25, 0.0, 0.001, -0.25], 0.0)
pose = type("P", (), dict(pose=type("Q", (), dict(position=type("V", (), dict(x=0.1, y=0.2))(),
            orientation=type("O", (), dict(x=0.0, y=0.0, z=0.0, w=1.0))()))()))()
assert observations.keypoints_from_pose(pose, calibration).shape == (18,)
from dpstack.policy.checkpoint import load_policy
load_policy({str(REPO / 'pretrained' / 'pusht_lowdim_small.ckpt')!r})
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_knot_velocities_are_central_differences_ending_at_rest():
    from real_robot.control import knot_velocities

    times = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    positions = np.stack([times ** 2, np.sin(times)], axis=1)  # row 0: the controller's setpoint now
    velocities = knot_velocities(times, positions, max_velocity=10.0)
    assert velocities.shape == (4, 2)
    np.testing.assert_allclose(velocities[:3, 0], 2 * times[1:4], atol=1e-12)  # exact for a parabola
    np.testing.assert_allclose(velocities[-1], 0.0)
    assert np.abs(knot_velocities(times, 100 * positions, max_velocity=1.5)).max() == pytest.approx(1.5)
