"""Consistency distillation of a trained Diffusion Policy: a student that samples an action chunk in 1–3
U-Net calls instead of its teacher's DDIM-10 (Song et al. 2023, Algorithm 2; target network θ⁻ = stopgrad θ,
Song & Dhariwal 2024; the boundary condition of Latent Consistency Models).

Per batch, with K training timesteps and a teacher step of k timesteps:

    t ~ U{1, …, K − k},  s = max(t − k, 0),  A^t = √ᾱ_t A⁰ + √(1 − ᾱ_t) ε
    Â^s = DDIM_teacher(A^t, t → s)                          one deterministic teacher step (x̂_0 clipped)
    L   = ‖f_θ(A^t, t, c) − stopgrad f_θ(Â^s, s, c)‖²        f_θ(x, 0) = x: the boundary condition

``objective: trajectory`` instead regresses the teacher's whole deterministic solve (Luhman & Luhman 2021,
"knowledge distillation in iterative generative models"), only at the student's own sampling timesteps t_i:

    A^{t_0} = ε ~ N(0, I) (as sampling starts),  A^{t_i} = √ᾱ_{t_i} A⁰ + √(1 − ᾱ_{t_i}) ε for i ≥ 1
    L = ‖f_θ(A^{t_i}, t_i, c) − DDIM_teacher(A^{t_i}, t_i → t_i − k → … → clean)‖²

so with one step the student learns the teacher's DDIM-10 map from noise to actions, call for call.

``objective: progressive`` makes each student call one DDIM step that lands where several teacher steps land
(Salimans & Ho 2022, eq. 8). The student is a DDIM policy whose n timesteps t_0 > … > t_{n−1} lie on the
teacher's grid (t_0 = K − k; DDIM-2: 90, 40). With t = t_i, s = t_{i+1}, α = √ᾱ, σ = √(1 − ᾱ):

    x_s = DDIM_teacher(A^t, t → s)                          the teacher's steps between the two (x̂_0 after t_{n−1})
    x̃_0 = (x_s − (σ_s/σ_t) A^t) / (α_s − (σ_s/σ_t) α_t)      the x̂_0 whose single DDIM step t → s lands on x_s
    L   = ‖x̂_0,θ(A^t, t, c) − x̃_0‖²

and sampling is the student's own deterministic DDIM chain, which hands each state to the next call
(no re-noising, unlike the consistency sampler). Its timesteps are the leading grid shifted to start at K − k
(DDIM-4: 90, 65, 40, 15); where one is off the teacher's grid, the teacher's solve shortens its last step to land on it.

``objective: imitation`` is output-level knowledge distillation (Kim et al. 2024, BK-SDM) for a cheaper student on
that same DDIM chain: each call reproduces the teacher's own call at the same state, L = ‖ε_θ(A^t, t, c) −
ε_teacher(A^t, t, c)‖² at the student's timesteps, so the student learns the teacher's DDIM-n (whose teacher
is a zero-loss solution) rather than a new, coarser map. ``imitation_states`` says where A^t comes from: ``noised``,
as above, or ``student_chain``, the states the student's own sampler visits (on-policy distillation, as DAgger and
GKD, Agarwal et al. 2024): A^{t_i} = DDIM_θ(ε, t_0 → t_1 → … → t_i) without gradient, so each call learns the
teacher's ε where its own earlier calls leave it.

``student_blocks_per_level`` makes the student a cheaper U-Net initialised by block removal from the teacher
(Kim et al. 2024, BK-SDM; ``ConditionalUnet1D.init_from_deeper``): more calls for the same latency. 1: one residual
block per level and in the middle instead of two; per stage, e.g. [2, 2, 1, 0, 2, 2]: only the deepest level's
second block and both middle blocks removed (the blocks whose removal costs the teacher least, about half of a
call's latency at batch 1).

The student starts from the teacher's weights and is an ordinary ``DiffusionUnetPolicy`` whose config says
``sampler: consistency`` (from timestep K − k, where the teacher's DDIM chain starts), or ``sampler: ddim`` with
a ``ddim_steps_offset`` for the progressive and imitation objectives: its checkpoint loads
with ``load_policy`` into eval.py, the benchmarks and the robot node like any other policy.
``python train.py --config-name=pusht_lowdim_consistency`` runs it through the training workspace (recipe
``consistency_distillation``).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from dpstack.diffusion.consistency import consistency_function, ddim_jump
from dpstack.diffusion.gaussian import predict_x0, q_sample
from dpstack.policy.diffusion_policy import DiffusionPolicyConfig, DiffusionUnetPolicy


OBJECTIVES = ("consistency", "trajectory", "progressive", "imitation")
DDIM_STUDENTS = ("progressive", "imitation")  # objectives whose student samples with the DDIM chain
IMITATION_STATES = ("noised", "student_chain")


@dataclass
class ConsistencyDistillationConfig:
    """The ``distillation`` section of a run config."""

    teacher_checkpoint: str = "pretrained/pusht_lowdim.ckpt"  # a policy checkpoint (EMA weights are used)
    skip_steps: int = 10           # k: one teacher DDIM step spans k training timesteps (DDIM-10 over K = 100)
    num_inference_steps: int = 2   # the student's sampling steps (U-Net calls per chunk), written into its config
    objective: str = "consistency"  # or "trajectory" / "progressive" / "imitation" (module docstring)
    student_blocks_per_level: int | list[int] | None = None  # None: the teacher's; fewer: a block-removed student
    imitation_states: str = "noised"  # objective imitation: "noised" demonstrations or "student_chain" (docstring)

    def __post_init__(self) -> None:
        problems = []
        if not Path(self.teacher_checkpoint).is_file():
            problems.append(f"distillation.teacher_checkpoint={self.teacher_checkpoint} is not a file: point it at "
                            "a policy checkpoint, e.g. pretrained/pusht_lowdim.ckpt")
        if not (isinstance(self.skip_steps, int) and self.skip_steps >= 1):
            problems.append(f"distillation.skip_steps must be an integer ≥ 1, got {self.skip_steps!r}")
        if not (isinstance(self.num_inference_steps, int) and self.num_inference_steps >= 1):
            problems.append(f"distillation.num_inference_steps must be an integer ≥ 1, got {self.num_inference_steps!r}")
        blocks = self.student_blocks_per_level
        if isinstance(blocks, (list, tuple)):
            self.student_blocks_per_level = blocks = list(blocks)
        if blocks is not None and not (isinstance(blocks, int) and blocks >= 1) and not (
                isinstance(blocks, list) and blocks and all(isinstance(b, int) and b >= 0 for b in blocks)):
            problems.append(f"distillation.student_blocks_per_level must be null, an integer ≥ 1 or a list of counts "
                            f"per stage (down levels, middle, up levels; e.g. [2, 2, 1, 0, 2, 2]), got {blocks!r}")
        if self.objective not in OBJECTIVES:
            problems.append(f"distillation.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.imitation_states not in IMITATION_STATES:
            problems.append(f"distillation.imitation_states must be one of {IMITATION_STATES}, got {self.imitation_states!r}")
        elif self.imitation_states != "noised" and self.objective != "imitation":
            problems.append(f"distillation.imitation_states={self.imitation_states} needs distillation.objective=imitation "
                            f"(got {self.objective}); leave it at noised for other objectives")
        if problems:
            raise ValueError("invalid distillation config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, values: dict) -> "ConsistencyDistillationConfig":
        return cls(**values)  # unknown keys are reported by training.schema with a suggestion

    def to_dict(self) -> dict:
        return asdict(self)


def student_ddim_chain(num_train_timesteps: int, skip_steps: int, num_inference_steps: int) -> dict:
    """The DDIM settings of a progressive student: n "leading" timesteps (spacing K // n) shifted to start at
    the teacher's first timestep K − k (DDIM-2: 90, 40; DDIM-4: 90, 65, 40, 15)."""
    spacing = num_train_timesteps // num_inference_steps
    offset = num_train_timesteps - skip_steps - (num_inference_steps - 1) * spacing
    if offset < 0:
        raise ValueError(f"a progressive student with {num_inference_steps} DDIM steps {spacing} apart cannot start at "
                         f"the teacher's first timestep {num_train_timesteps - skip_steps}; choose fewer steps")
    return dict(sampler="ddim", num_inference_steps=num_inference_steps, ddim_steps_offset=offset)


class ConsistencyStudent(DiffusionUnetPolicy):
    """A few-step policy being distilled from ``teacher`` (frozen, held outside the module's parameters
    and state dict: checkpoints hold the student only)."""

    def __init__(self, teacher: DiffusionUnetPolicy, skip_steps: int, num_inference_steps: int,
                 objective: str = "consistency", blocks_per_level: int | None = None,
                 imitation_states: str = "noised") -> None:
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if imitation_states not in IMITATION_STATES or (imitation_states != "noised" and objective != "imitation"):
            raise ValueError(f"imitation_states must be one of {IMITATION_STATES} ('noised' unless the objective is "
                             f"imitation), got {imitation_states!r} with objective {objective!r}")
        if teacher.config.sampler == "consistency":
            raise ValueError("the teacher is itself a consistency policy; distil from a diffusion policy")
        max_timestep = teacher.config.num_train_timesteps - skip_steps
        if objective in DDIM_STUDENTS:
            sampling = student_ddim_chain(teacher.config.num_train_timesteps, skip_steps, num_inference_steps)
        else:
            sampling = dict(sampler="consistency", num_inference_steps=num_inference_steps,
                            consistency_max_timestep=max_timestep)
        if blocks_per_level is not None:
            sampling["blocks_per_level"] = blocks_per_level
        config = DiffusionPolicyConfig.from_dict(teacher.config.to_dict() | sampling)
        super().__init__(config, copy.deepcopy(teacher.normalizer))
        if config.blocks_per_level == teacher.config.blocks_per_level:
            self.load_state_dict(teacher.state_dict())
        else:  # everything but the U-Net as is; the U-Net block-removed (ConditionalUnet1D.init_from_deeper)
            outside_unet = {name: value for name, value in teacher.state_dict().items() if not name.startswith("model.")}
            missing, unexpected = self.load_state_dict(outside_unet, strict=False)
            if unexpected or any(not name.startswith("model.") for name in missing):
                raise ValueError(f"the teacher's state does not fit the student: missing {missing}, unexpected {unexpected}")
            self.model.init_from_deeper(teacher.model)
        self.skip_steps, self.objective, self.imitation_states = skip_steps, objective, imitation_states
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))

    def _apply(self, fn, *args, **kwargs):
        """``.to(device)`` and friends move the teacher too."""
        super()._apply(fn, *args, **kwargs)
        self.teacher._apply(fn, *args, **kwargs)
        return self

    def _consistency(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """f_θ(x_t, t, c) = c_skip(t) x_t + c_out(t) x̂_0(x_t, t)."""
        return consistency_function(self.noise_scheduler.schedule, self.model(x_t, t, cond), x_t, t,
                                    self.config.prediction_type)

    @torch.no_grad()
    def _teacher_step(self, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Â^s: the teacher's deterministic DDIM step t → s, with x̂_0 clipped as its sampler does."""
        return ddim_jump(self.noise_scheduler.schedule, self.teacher.model(x_t, t, cond), x_t, t, s,
                         self.config.prediction_type, self.config.clip_sample)

    @torch.no_grad()
    def _teacher_solve(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                       until: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's DDIM solve from per-sample timesteps t down to timesteps ``until`` (−1, the default: to
        the end): steps of k timesteps (the last one shortened to land on ``until``) while t ≥ k, then its
        clipped x̂_0 (the last DDIM step, to ᾱ = 1). From t = K − k to the end this is the teacher's DDIM-(K/k)
        chain."""
        schedule, k = self.noise_scheduler.schedule, self.skip_steps
        until = torch.full_like(t, -1) if until is None else until
        x, t = x_t, t.clone()
        done = t <= until
        while not done.all():
            t_now = t.clamp(min=0)  # finished samples sit below 0; their results are discarded
            output = self.teacher.model(x, t_now, cond)
            last = (t < k).reshape(-1, *([1] * (x.ndim - 1)))
            x0 = predict_x0(schedule, output, x, t_now, self.config.prediction_type)
            t_next = torch.maximum(t - k, until)
            stepped = torch.where(last, x0.clamp(-1, 1) if self.config.clip_sample else x0,
                                  ddim_jump(schedule, output, x, t_now, t_next.clamp(min=0),
                                            self.config.prediction_type, self.config.clip_sample))
            x = torch.where(done.reshape(last.shape), x, stepped)
            t = torch.where(done, t, t_next)
            done = done | (t <= until)
        return x

    @torch.no_grad()
    def _student_chain_states(self, noise: torch.Tensor, index: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """A^{t_i} = DDIM_θ(ε, t_0 → … → t_i) for each sample's chain index i: the student's own deterministic
        steps (x̂_0 clipped as its sampler does), without gradient."""
        chain = self.inference_scheduler.timesteps.to(noise.device)
        x = noise.clone()
        for step in range(int(index.max())):
            active = index > step
            x_active, count = x[active], int(active.sum())
            t, s = chain[step].expand(count), chain[step + 1].expand(count)
            x[active] = ddim_jump(self.noise_scheduler.schedule, self.model(x_active, t, cond[active]), x_active, t, s,
                                  self.config.prediction_type, self.config.clip_sample)
        return x

    def _progressive_target(self, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x̃_0 = (x_s − (σ_s/σ_t) x_t) / (α_s − (σ_s/σ_t) α_t) for the teacher's x_s (s = −1: its final x̂_0)."""
        schedule = self.noise_scheduler.schedule
        x_s = self._teacher_solve(x_t, t, cond, until=s)
        final = (s < 0).reshape(-1, *([1] * (x_t.ndim - 1)))
        s = s.clamp(min=0)
        ratio = schedule.extract("sqrt_one_minus_alphas_cumprod", s, x_t) / schedule.extract(
            "sqrt_one_minus_alphas_cumprod", t, x_t)
        implied = (x_s - ratio * x_t) / (schedule.extract("sqrt_alphas_cumprod", s, x_t)
                                         - ratio * schedule.extract("sqrt_alphas_cumprod", t, x_t))
        return torch.where(final, x_s, implied)

    def compute_loss(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        """The distillation loss of the module docstring for ``objective`` (squared ℓ2, mean over elements)."""
        cond = self._global_condition(batch["obs"])
        with torch.no_grad():
            teacher_cond = self.teacher._global_condition(batch["obs"])
        if self.config.cond_noise_std > 0:  # the teacher's training noise, the same draw on both conditions
            cond_noise = self.config.cond_noise_std * torch.randn(cond.shape, generator=generator, device=cond.device)
            cond, teacher_cond = cond + cond_noise, teacher_cond + cond_noise
        actions = self.normalizer["action"].normalize(batch["action"])
        noise = torch.randn(actions.shape, generator=generator, device=actions.device)
        if self.objective in ("trajectory", *DDIM_STUDENTS):
            chain = self.inference_scheduler.timesteps.to(actions.device)
            index = torch.randint(0, len(chain), (actions.shape[0],), generator=generator, device=actions.device)
            t = chain[index]
            if self.imitation_states == "student_chain":
                x_t = self._student_chain_states(noise, index, cond)
            else:
                starts = (index == 0).reshape(-1, 1, 1)
                x_t = torch.where(starts, noise, q_sample(self.noise_scheduler.schedule, actions, t, noise))
            if self.objective == "trajectory":
                return F.mse_loss(self._consistency(x_t, t, cond), self._teacher_solve(x_t, t, teacher_cond))
            if self.objective == "imitation":
                with torch.no_grad():
                    target = self.teacher.model(x_t, t, teacher_cond)
                return F.mse_loss(self.model(x_t, t, cond), target)
            s = torch.cat([chain[1:], chain.new_full((1,), -1)])[index]
            x0 = predict_x0(self.noise_scheduler.schedule, self.model(x_t, t, cond), x_t, t, self.config.prediction_type)
            return F.mse_loss(x0, self._progressive_target(x_t, t, s, teacher_cond))
        t = torch.randint(1, self.config.consistency_max_timestep + 1, (actions.shape[0],), generator=generator,
                          device=actions.device)
        s = (t - self.skip_steps).clamp(min=0)
        x_t = q_sample(self.noise_scheduler.schedule, actions, t, noise)
        x_s = self._teacher_step(x_t, t, s, teacher_cond)
        with torch.no_grad():
            target = self._consistency(x_s, s, cond)
        return F.mse_loss(self._consistency(x_t, t, cond), target)
