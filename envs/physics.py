"""Push-T rigid-body physics on pymunk, matching the simulator that recorded the demonstrations.

Space: no gravity, damping 0 (a dynamic body keeps v·0^dt = 0 of its velocity each substep, so
the block moves only while pushed), shape friction 0, pymunk's default 10 solver iterations.
Agent: a kinematic circle driven by a PD law on its velocity, once per 100 Hz substep:

    v ← v + (k_p (a − p) + k_v (0 − v)) dt,   k_p = 100, k_v = 20, dt = 0.01

then ``space.step(dt)`` integrates p ← p + v dt. One control step (10 Hz) is 10 substeps.
"""
from __future__ import annotations

import numpy as np
import pymunk
from pymunk._chipmunk import lib as chipmunk  # C API: reads contact sets without building Python objects

from dpstack.envs.geometry import (
    AGENT_RADIUS,
    TEE_CENTER_OF_GRAVITY,
    TEE_MASS,
    TEE_MOMENT,
    TEE_POLYGONS,
    WALL_RADIUS,
    WALL_SEGMENTS,
)

SIM_HZ = 100
CONTROL_HZ = 10
SUBSTEPS = SIM_HZ // CONTROL_HZ
SUBSTEP_DT = 1.0 / SIM_HZ
K_P, K_V = 100.0, 20.0
AGENT_START = (256.0, 400.0)
BLOCK_START = (256.0, 300.0)


def agent_velocity_after_step(position_before, target, position_after) -> np.ndarray:
    """The agent's velocity at the end of a control step, from its positions before and after it and
    the step's target (all (..., 2)); what a recorded state lacks to continue its episode exactly.

    Per axis the substeps are linear in the unknown start velocity v₀:
    v_{k+1} = v_k + (K_P (a − p_k) − K_V v_k) dt,  p_{k+1} = p_k + v_{k+1} dt,  k = 0 … N−1,
    so p_N = c + g v₀ and v_N = c' + g' v₀. Running the substeps for v₀ = 0 and v₀ = 1 gives c, g, c', g';
    then v₀ = (p_N − c) / g and v_N = c' + g' v₀.
    """
    start = np.asarray(position_before, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)

    def substeps(velocity):
        position = start
        for _ in range(SUBSTEPS):
            velocity = velocity + (K_P * (target - position) + K_V * (0.0 - velocity)) * SUBSTEP_DT
            position = position + velocity * SUBSTEP_DT
        return position, velocity

    end_at_rest, velocity_at_rest = substeps(np.zeros_like(start))
    end_unit, velocity_unit = substeps(np.ones_like(start))
    start_velocity = (np.asarray(position_after, dtype=np.float64) - end_at_rest) / (end_unit - end_at_rest)
    return velocity_at_rest + (velocity_unit - velocity_at_rest) * start_velocity


class PushTPhysics:
    """One Push-T scene: walls, the kinematic agent and the T block.

    Build a fresh instance for every episode (as the reference does on reset), so that no
    cached contact state leaks from one episode into the next.
    """

    def __init__(self, record_contact_points: bool = True) -> None:
        self.record_contact_points = record_contact_points  # only drawing needs their geometry
        self.space = pymunk.Space()
        self.space.gravity = (0.0, 0.0)
        self.space.damping = 0.0
        self.walls = [pymunk.Segment(self.space.static_body, a, b, WALL_RADIUS) for a, b in WALL_SEGMENTS]
        self.space.add(*self.walls)

        self.agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        self.agent.position = AGENT_START
        self.space.add(self.agent, pymunk.Circle(self.agent, AGENT_RADIUS))

        self.block = pymunk.Body(TEE_MASS, TEE_MOMENT)
        self.block_shapes = [pymunk.Poly(self.block, polygon.tolist()) for polygon in TEE_POLYGONS]
        self.block.center_of_gravity = TEE_CENTER_OF_GRAVITY
        self.block.position = BLOCK_START
        self.space.add(self.block, *self.block_shapes)

        self.contact_points_this_step = 0
        # Contacts of the latest substep as (point_a, point_b, normal) rows, for debug drawing.
        self.latest_contacts: list[tuple[float, float, float, float, float, float]] = []
        self.space.on_collision(0, 0, post_solve=self._record_contacts)

    def _record_contacts(self, arbiter: pymunk.Arbiter, space: pymunk.Space, data) -> None:
        contact_set = chipmunk.cpArbiterGetContactPointSet(arbiter._arbiter)
        self.contact_points_this_step += contact_set.count
        if not self.record_contact_points:
            return
        normal = contact_set.normal
        for i in range(contact_set.count):
            a, b = contact_set.points[i].pointA, contact_set.points[i].pointB
            self.latest_contacts.append((a.x, a.y, b.x, b.y, normal.x, normal.y))

    def place(self, state: np.ndarray, position_before_angle: bool = False) -> None:
        """Teleport the agent to state[0:2] and the block to pose state[2:5]; velocities and
        cached contacts are kept.

        pymunk rotates a body about its centre of gravity, so setting the angle after the
        position moves the body origin: ``position_before_angle=True`` reproduces the
        reference's ``legacy`` order; False places the origin exactly at state[2:4].
        """
        agent_x, agent_y, block_x, block_y, angle = (float(v) for v in state)
        self.agent.position = (agent_x, agent_y)
        if position_before_angle:
            self.block.position = (block_x, block_y)
            self.block.angle = angle
        else:
            self.block.angle = angle
            self.block.position = (block_x, block_y)

    def set_state(self, state: np.ndarray, position_before_angle: bool = False,
                  agent_velocity: np.ndarray | None = None) -> None:
        """Place the scene at ``state`` (see ``place``) and run one settling substep at rest, as the
        reference does on reset (it moves the block only if it overlaps the agent); then give the agent
        ``agent_velocity`` (px/s), so that an episode resumed mid-way continues as it was recorded."""
        self.place(state, position_before_angle)
        self._substep()
        if agent_velocity is not None:
            self.agent.velocity = (float(agent_velocity[0]), float(agent_velocity[1]))

    def step(self, target: np.ndarray) -> int:
        """Drive the agent toward ``target`` for one control step; return contact points per substep."""
        self.contact_points_this_step = 0
        target_x, target_y = float(target[0]), float(target[1])
        agent = self.agent
        # The kinematic agent ignores contacts, so p ← p + v dt is tracked here in the same
        # float64 operations pymunk performs; pymunk's position is read back once per step.
        px, py = agent.position
        vx, vy = agent.velocity
        for _ in range(SUBSTEPS):
            vx = vx + (K_P * (target_x - px) + K_V * (0.0 - vx)) * SUBSTEP_DT
            vy = vy + (K_P * (target_y - py) + K_V * (0.0 - vy)) * SUBSTEP_DT
            agent.velocity = (vx, vy)
            self._substep()
            px, py = px + vx * SUBSTEP_DT, py + vy * SUBSTEP_DT
        return int(np.ceil(self.contact_points_this_step / SUBSTEPS))

    def _substep(self) -> None:
        self.latest_contacts.clear()
        self.space.step(SUBSTEP_DT)

    @property
    def agent_position(self) -> np.ndarray:
        return np.array(self.agent.position)

    @property
    def agent_velocity(self) -> np.ndarray:
        return np.array(self.agent.velocity)

    @property
    def block_pose(self) -> np.ndarray:
        """(x, y, theta) of the block's body origin; theta is not wrapped."""
        x, y = self.block.position
        return np.array([x, y, self.block.angle])

    @property
    def state(self) -> np.ndarray:
        """[agent_x, agent_y, block_x, block_y, block_angle mod 2π]."""
        ax, ay = self.agent.position
        bx, by = self.block.position
        return np.array([ax, ay, bx, by, self.block.angle % (2 * np.pi)])
