"""Consistency distillation: the core's consistency function and sampler, the student policy and its recipe."""
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from dpstack.datasets.normalizer import LinearNormalizer
from dpstack.diffusion.consistency import ConsistencyScheduler, boundary_coefficients, consistency_function, ddim_jump
from dpstack.diffusion.schedulers import DDIMScheduler
from dpstack.diffusion.schedules import NoiseSchedule
from dpstack.policy.checkpoint import load_checkpoint, load_policy
from dpstack.policy.diffusion_policy import DiffusionPolicyConfig, DiffusionUnetPolicy
from dpstack.policy.distillation import ConsistencyStudent
from dpstack.training.config import ConfigError, validate_config
from dpstack.training.workspace import TrainingWorkspace
from test_training import REPO

SCHEDULE = NoiseSchedule.from_name("squaredcos_cap_v2", 100)


def tiny_teacher(**overrides) -> DiffusionUnetPolicy:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    normalizer = LinearNormalizer().fit({"obs": rng.uniform(0, 512, (100, 20)).astype(np.float32),
                                         "action": rng.uniform(0, 512, (100, 2)).astype(np.float32)})
    config = DiffusionPolicyConfig(down_dims=(16, 32, 64), diffusion_step_embed_dim=16, sampler="ddim",
                                   num_inference_steps=10, **overrides)
    return DiffusionUnetPolicy(config, normalizer)


def test_boundary_condition_holds_exactly_and_fades_after_t0():
    c_skip, c_out = boundary_coefficients(torch.tensor([0, 1, 50]))
    assert c_skip[0] == 1 and c_out[0] == 0
    assert c_skip[1] < 3e-3 and c_out[1] > 0.99 and c_skip[2] < 1e-6
    x, output = torch.randn(4, 16, 2), torch.randn(4, 16, 2) * 100
    assert torch.equal(consistency_function(SCHEDULE, output, x, torch.zeros(4, dtype=torch.long)), x)
    t = torch.full((4,), 60)
    x0 = (x - SCHEDULE.sqrt_one_minus_alphas_cumprod[60] * output) / SCHEDULE.sqrt_alphas_cumprod[60]
    torch.testing.assert_close(consistency_function(SCHEDULE, output, x, t), x0.float(), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_jump_is_the_ddim_schedulers_step(prediction_type):
    scheduler = DDIMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                              prediction_type=prediction_type)
    scheduler.set_timesteps(10)
    x, output = torch.randn(8, 16, 2) * 2, torch.randn(8, 16, 2) * 2  # large enough that clipping acts
    for t, s in [(90, 80), (10, 0)]:
        expected = scheduler.step(output, t, x).prev_sample
        got = ddim_jump(SCHEDULE, output, x, torch.full((8,), t), torch.full((8,), s), prediction_type)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_consistency_scheduler_chain_steps_and_serialisation():
    scheduler = ConsistencyScheduler(max_timestep=90)
    for steps, chain in [(1, [90]), (2, [90, 45]), (3, [90, 60, 30])]:
        scheduler.set_timesteps(steps)
        assert scheduler.timesteps.tolist() == chain
    with pytest.raises(ValueError, match="max_timestep"):
        ConsistencyScheduler(max_timestep=100)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(91)
    rebuilt = ConsistencyScheduler.from_dict(scheduler.to_dict())
    rebuilt.set_timesteps(2)
    scheduler.set_timesteps(2)
    x, output = torch.randn(3, 16, 2), torch.randn(3, 16, 2)
    first = scheduler.step(output, 90, x, generator=torch.Generator().manual_seed(1))
    again = rebuilt.step(output, 90, x, generator=torch.Generator().manual_seed(1))
    assert torch.equal(first.prev_sample, again.prev_sample)
    assert first.pred_original_sample.abs().max() <= 1  # x̂_0 is clipped before re-noising
    # Re-noised to t' = 45: x_45 = √ᾱ_45 x̂_0 + √(1 − ᾱ_45) z, z the generator's draw.
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    expected = SCHEDULE.sqrt_alphas_cumprod[45] * first.pred_original_sample + SCHEDULE.sqrt_one_minus_alphas_cumprod[45] * z
    torch.testing.assert_close(first.prev_sample, expected.float())
    last = scheduler.step(output, 45, x)
    assert torch.equal(last.prev_sample, last.pred_original_sample)  # the last step returns x̂_0, no noise


def test_student_starts_as_the_teacher_and_trains_without_touching_it():
    teacher = tiny_teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = ConsistencyStudent(teacher, skip_steps=10, num_inference_steps=2)
    assert student.config.sampler == "consistency" and student.config.consistency_max_timestep == 90
    assert student.state_dict().keys() == teacher.state_dict().keys()  # the teacher is not in the checkpoint
    assert all(torch.equal(student.state_dict()[k], v) for k, v in before.items())
    batch = {"obs": torch.rand(16, 16, 20) * 512, "action": torch.rand(16, 16, 2) * 512}
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    loss = student.compute_loss(batch, torch.Generator().manual_seed(0))
    loss.backward()
    assert loss.item() > 0 and all(p.grad is None for p in teacher.parameters())
    optimizer.step()
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before.items())
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(ValueError, match="teacher is itself a consistency policy"):
        ConsistencyStudent(student, 10, 1)


def test_the_teacher_solve_from_noise_is_its_ddim_chain():
    """The trajectory target from t = K − k is the teacher's own DDIM-10 sample from the same noise; from a
    later timestep it is a shorter solve of the same ODE (finite, inside the clip range)."""
    teacher = tiny_teacher().eval()
    student = ConsistencyStudent(teacher, skip_steps=10, num_inference_steps=2, objective="trajectory")
    cond = teacher._global_condition(torch.rand(5, 2, 20) * 512)
    noise = torch.randn((5, 16, 2), generator=torch.Generator().manual_seed(3))
    expected = teacher.sample_actions(cond, torch.Generator().manual_seed(3))
    torch.testing.assert_close(student._teacher_solve(noise, torch.full((5,), 90), cond), expected, atol=1e-5, rtol=0)
    mixed = student._teacher_solve(noise, torch.tensor([90, 45, 45, 90, 5]), cond)
    torch.testing.assert_close(mixed[[0, 3]], expected[[0, 3]], atol=1e-5, rtol=0)
    assert mixed.abs().max() <= 1 and not torch.allclose(mixed[1:3], expected[1:3])


@pytest.mark.parametrize("steps, timesteps", [(1, [90]), (2, [90, 40]), (3, [90, 57, 24]), (4, [90, 65, 40, 15]),
                                             (5, [90, 70, 50, 30, 10]), (10, list(range(90, -1, -10)))])
def test_a_progressive_student_is_a_ddim_chain_from_its_teachers_first_timestep(steps, timesteps):
    student = ConsistencyStudent(tiny_teacher(), skip_steps=10, num_inference_steps=steps, objective="progressive")
    assert student.config.sampler == "ddim" and student.inference_scheduler.timesteps.tolist() == timesteps
    with pytest.raises(ValueError, match="cannot start at the teacher's first timestep 90"):
        ConsistencyStudent(tiny_teacher(), skip_steps=10, num_inference_steps=20, objective="progressive")
    with pytest.raises(ValueError, match="ddim_steps_offset=60 puts DDIM-2's first timestep at 110"):
        DiffusionPolicyConfig(sampler="ddim", num_inference_steps=2, ddim_steps_offset=60)


def test_the_progressive_target_is_the_x0_whose_ddim_step_lands_on_the_teacher():
    """x̃_0 makes one DDIM step t → s land on the teacher's multi-step x_s (eq. 8 of Salimans & Ho); on the
    teacher's own grid (one teacher step per student step, no clipping) the teacher itself has zero loss."""
    teacher = tiny_teacher(clip_sample=False).eval()
    student = ConsistencyStudent(teacher, skip_steps=10, num_inference_steps=2, objective="progressive")
    cond = teacher._global_condition(torch.rand(4, 2, 20) * 512)
    x_t = torch.randn((4, 16, 2), generator=torch.Generator().manual_seed(0))
    t, s = torch.tensor([90, 90, 40, 40]), torch.tensor([40, 40, -1, -1])
    target = student._progressive_target(x_t, t, s, cond)
    landed = student._teacher_solve(x_t, t, cond, until=s)
    eps = (x_t - SCHEDULE.extract("sqrt_alphas_cumprod", t, x_t) * target) / SCHEDULE.extract(
        "sqrt_one_minus_alphas_cumprod", t, x_t)
    torch.testing.assert_close(ddim_jump(SCHEDULE, eps[:2], x_t[:2], t[:2], s[:2], clip_sample=False), landed[:2],
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(target[2:], student._teacher_solve(x_t[2:], t[2:], cond[2:]))  # the final x̂_0
    on_grid = ConsistencyStudent(teacher, skip_steps=10, num_inference_steps=10, objective="progressive")
    batch = {"obs": torch.rand(16, 16, 20) * 512, "action": torch.rand(16, 16, 2) * 512}
    assert on_grid.compute_loss(batch, torch.Generator().manual_seed(0)).item() < 1e-8


def test_the_teacher_solve_shortens_its_last_step_to_land_off_its_grid():
    """90 → 65 is the teacher's DDIM steps 90 → 80 → 70 → 65 (the last one 5 timesteps long)."""
    teacher = tiny_teacher().eval()
    student = ConsistencyStudent(teacher, skip_steps=10, num_inference_steps=4, objective="progressive")
    cond = teacher._global_condition(torch.rand(3, 2, 20) * 512)
    x = x_t = torch.randn((3, 16, 2), generator=torch.Generator().manual_seed(0))
    for t, s in [(90, 80), (80, 70), (70, 65)]:
        t, s = torch.full((3,), t), torch.full((3,), s)
        x = ddim_jump(SCHEDULE, teacher.model(x, t, cond), x, t, s, clip_sample=True)
    landed = student._teacher_solve(x_t, torch.full((3,), 90), cond, until=torch.full((3,), 65))
    torch.testing.assert_close(landed, x, atol=1e-5, rtol=0)


def test_a_block_removed_student_starts_from_its_teachers_first_blocks():
    teacher = tiny_teacher().eval()
    student = ConsistencyStudent(teacher, skip_steps=10, num_inference_steps=4, objective="progressive",
                                 blocks_per_level=1)
    assert student.config.blocks_per_level == 1 and len(student.model.mid) == 1
    assert torch.equal(student.model.down[2][0].first[0].weight, teacher.model.down[2][0].first[0].weight)
    assert torch.equal(student.normalizer["action"].scale, teacher.normalizer["action"].scale)
    n_params = lambda policy: sum(p.numel() for p in policy.model.parameters())  # noqa: E731
    assert n_params(student) < 0.6 * n_params(teacher)
    batch = {"obs": torch.rand(8, 2, 20) * 512, "action": torch.rand(8, 16, 2) * 512}
    assert torch.isfinite(student.compute_loss(batch, torch.Generator().manual_seed(0)))


def loss_before_and_after_training(student, batch, lr: float, steps: int) -> tuple[float, float]:
    """The loss at fixed (t, noise) draws on ``batch``, before and after ``steps`` AdamW steps on it."""
    def held_out_loss():
        with torch.no_grad():
            return float(np.mean([student.compute_loss(batch, torch.Generator().manual_seed(1000 + i))
                                  for i in range(8)]))

    start = held_out_loss()
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        optimizer.zero_grad()
        student.compute_loss(batch, generator).backward()
        optimizer.step()
    return start, held_out_loss()


@pytest.mark.parametrize("objective, steps", [("consistency", 1), ("trajectory", 1), ("progressive", 2)])
def test_distillation_lowers_its_loss(objective, steps):
    """A few hundred steps on a fixed batch: the loss at fixed (t, noise) draws falls well below its start."""
    torch.manual_seed(0)
    student = ConsistencyStudent(tiny_teacher(), skip_steps=10, num_inference_steps=steps, objective=objective)
    batch = {"obs": torch.rand(32, 16, 20) * 512, "action": torch.rand(32, 16, 2) * 512}
    start, end = loss_before_and_after_training(student, batch, lr=1e-3, steps=150)
    assert end < 0.5 * start


def test_imitation_is_zero_for_the_teachers_own_net_and_trains_a_pruned_student_towards_it():
    """objective imitation: L = ‖ε_θ − ε_teacher‖² at the student's DDIM timesteps (90, 65, 40, 15): exactly 0 for the
    teacher's weights; a block-removed student starts above 0 and its loss falls."""
    teacher = tiny_teacher().eval()
    batch = {"obs": torch.rand(32, 16, 20) * 512, "action": torch.rand(32, 16, 2) * 512}
    same = ConsistencyStudent(teacher, skip_steps=10, num_inference_steps=4, objective="imitation")
    assert same.config.sampler == "ddim" and same.inference_scheduler.timesteps.tolist() == [90, 65, 40, 15]
    assert same.compute_loss(batch, torch.Generator().manual_seed(0)).item() == 0.0
    student = ConsistencyStudent(teacher, skip_steps=10, num_inference_steps=4, objective="imitation",
                                 blocks_per_level=[2, 2, 1, 0, 2, 2])
    start, end = loss_before_and_after_training(student, batch, lr=3e-4, steps=100)
    assert 0 < end < 0.5 * start


def test_student_chain_states_are_where_its_own_sampler_calls_the_net():
    """imitation_states student_chain: A^{t_i} = DDIM_θ(ε, t_0 → … → t_i), the very inputs of the sampler's i-th call;
    the teacher's own net still imitates itself exactly, and a pruned student's loss falls."""
    teacher = tiny_teacher(clip_sample=True).eval()
    student = ConsistencyStudent(teacher, skip_steps=10, num_inference_steps=4, objective="imitation",
                                 blocks_per_level=[2, 2, 1, 0, 2, 2], imitation_states="student_chain").eval()
    calls = []
    student.model.register_forward_hook(lambda module, inputs, output: calls.append(inputs))
    with torch.no_grad():
        student.predict_action({"obs": torch.rand(5, 2, 20) * 512}, torch.Generator().manual_seed(0))
    noise, _, cond = calls[0]
    for i, (x_i, t_i, _) in enumerate(list(calls)):
        states = student._student_chain_states(noise, torch.full((5,), i), cond)
        assert int(t_i) == [90, 65, 40, 15][i] and torch.allclose(states, x_i, atol=1e-6)
    mixed = student._student_chain_states(noise, torch.tensor([0, 3, 1, 2, 0]), cond)  # per-sample chain depths
    assert all(torch.allclose(mixed[k], calls[i][0][k], atol=1e-6) for k, i in enumerate([0, 3, 1, 2, 0]))
    batch = {"obs": torch.rand(32, 16, 20) * 512, "action": torch.rand(32, 16, 2) * 512}
    same = ConsistencyStudent(teacher, skip_steps=10, num_inference_steps=4, objective="imitation",
                              imitation_states="student_chain")
    assert same.compute_loss(batch, torch.Generator().manual_seed(0)).item() == 0.0
    student.train()
    start, end = loss_before_and_after_training(student, batch, lr=3e-4, steps=100)
    assert 0 < end < 0.5 * start
    with pytest.raises(ValueError, match="imitation_states must be one of"):
        ConsistencyStudent(teacher, skip_steps=10, num_inference_steps=2, objective="progressive",
                           imitation_states="student_chain")


@pytest.mark.parametrize("objective", ["consistency", "progressive"])
@pytest.mark.parametrize("steps", [1, 2])
def test_a_distilled_chunk_costs_n_network_calls(steps, objective):
    student = ConsistencyStudent(tiny_teacher(), skip_steps=10, num_inference_steps=steps, objective=objective).eval()
    calls = []
    student.model.register_forward_hook(lambda module, inputs, output: calls.append(int(inputs[1])))
    result = student.predict_action({"obs": torch.rand(3, 2, 20) * 512}, torch.Generator().manual_seed(0))
    assert calls == student.inference_scheduler.timesteps.tolist() and len(calls) == steps
    assert result["action"].shape == (3, 8, 2) and torch.isfinite(result["action_pred"]).all()


def distillation_config(teacher, *extra):
    overrides = [f"distillation.teacher_checkpoint={teacher}", "distillation.num_inference_steps=1",
                 "task.dataset.max_train_episodes=4", "training.batch_size=128", "training.lr_warmup_steps=2",
                 "training.rollout_every=2", "training.val_every=0", "training.progress=false", "training.num_threads=1", "eval.n_test=2",
                 "eval.n_train=0", "eval.n_envs=2", "eval.max_steps=16", "eval.n_test_videos=0",
                 "eval.n_train_videos=0", "logging.mode=disabled", *extra]
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base=None):
        cfg = compose(config_name="pusht_lowdim_consistency", overrides=overrides)
    validate_config(cfg)
    return cfg


def test_recipe_distils_resumes_exactly_and_writes_a_policy(tmp_path, checkpoint):
    straight = tmp_path / "straight"
    metrics = TrainingWorkspace(distillation_config(checkpoint, "training.num_epochs=2"), straight).run()
    assert metrics["epoch"] == 2 and "test/mean_score" in metrics
    steps_per_epoch = metrics["global_step"] // 2
    resumed = tmp_path / "resumed"
    TrainingWorkspace(distillation_config(checkpoint, "training.num_epochs=2",
                                          f"training.max_train_steps={steps_per_epoch + 1}"), resumed).run()
    TrainingWorkspace(distillation_config(checkpoint, "training.num_epochs=2"), resumed).run()
    a, b = (load_checkpoint(run / "checkpoints" / "latest.ckpt")["state_dicts"]["model"] for run in (straight, resumed))
    assert all(torch.equal(a[key], b[key]) for key in a)
    policy = load_policy(straight / "checkpoints" / "latest.ckpt")
    teacher = load_policy(checkpoint)
    assert policy.config.sampler == "consistency" and policy.config.num_inference_steps == 1
    assert policy.config.down_dims == teacher.config.down_dims
    assert policy.predict_action({"obs": torch.rand(2, 2, 20) * 512})["action"].shape == (2, 8, 2)


def test_the_recipe_builds_the_configured_objective(checkpoint):
    from dpstack.training.recipes import ConsistencyDistillationRecipe

    student = ConsistencyDistillationRecipe(distillation_config(checkpoint, "distillation.objective=trajectory")).build_model(None)
    assert student.objective == "trajectory" and student.config.num_inference_steps == 1
    student = ConsistencyDistillationRecipe(distillation_config(
        checkpoint, "distillation.objective=progressive", "distillation.num_inference_steps=2")).build_model(None)
    assert student.objective == "progressive" and student.inference_scheduler.timesteps.tolist() == [90, 40]
    student = ConsistencyDistillationRecipe(distillation_config(
        checkpoint, "distillation.objective=progressive", "distillation.num_inference_steps=4",
        "distillation.student_blocks_per_level=1")).build_model(None)
    assert student.config.blocks_per_level == 1 and student.inference_scheduler.timesteps.tolist() == [90, 65, 40, 15]
    student = ConsistencyDistillationRecipe(distillation_config(
        checkpoint, "distillation.objective=progressive", "distillation.num_inference_steps=4",
        "distillation.student_blocks_per_level=[2,2,1,0,2,2]")).build_model(None)
    assert student.config.blocks_per_level == (2, 2, 1, 0, 2, 2) and len(student.model.mid) == 0
    student = ConsistencyDistillationRecipe(distillation_config(
        checkpoint, "distillation.objective=imitation", "distillation.num_inference_steps=4",
        "distillation.imitation_states=student_chain")).build_model(None)
    assert student.objective == "imitation" and student.imitation_states == "student_chain"


def test_bad_distillation_configs_name_the_fix(tmp_path, checkpoint):
    with pytest.raises(ConfigError, match="teacher_checkpoint=.*missing.ckpt is not a file"):
        distillation_config(tmp_path / "missing.ckpt")
    with pytest.raises(ConfigError, match="skip_steps must be an integer"):
        distillation_config(checkpoint, "distillation.skip_steps=0")
    with pytest.raises(ConfigError, match="objective must be one of"):
        distillation_config(checkpoint, "distillation.objective=adversarial")
    with pytest.raises(ConfigError, match="student_blocks_per_level must be null, an integer ≥ 1 or a list"):
        distillation_config(checkpoint, "distillation.student_blocks_per_level=0")
    with pytest.raises(ConfigError, match=r"student_blocks_per_level .* e.g. \[2, 2, 1, 0, 2, 2\]"):
        distillation_config(checkpoint, "distillation.student_blocks_per_level=[2,-1]")
    with pytest.raises(ConfigError, match="imitation_states=student_chain needs distillation.objective=imitation"):
        distillation_config(checkpoint, "distillation.imitation_states=student_chain")
    with pytest.raises(ConfigError, match="imitation_states must be one of"):
        distillation_config(checkpoint, "distillation.objective=imitation", "distillation.imitation_states=teacher")
    with pytest.raises(ConfigError, match="did you mean distillation.skip_steps"):
        distillation_config(checkpoint, "+distillation.skip_step=5")


def test_the_student_learns_on_its_teachers_demonstrations(checkpoint):
    from dpstack.training.recipes import ConsistencyDistillationRecipe

    teacher_data = load_checkpoint(checkpoint)["config"]["task"]["dataset"]
    inherited = ConsistencyDistillationRecipe(distillation_config(checkpoint))
    same, _ = inherited.build_data()
    for flag in ("mirror", "align_to_goal"):  # null in the config: the teacher's value, recorded in the run config
        assert inherited.cfg.task.dataset[flag] == bool(teacher_data.get(flag, False))
    flipped = not inherited.cfg.task.dataset.mirror
    overridden = ConsistencyDistillationRecipe(distillation_config(checkpoint, f"task.dataset.mirror={flipped}"))
    other, _ = overridden.build_data()
    assert overridden.cfg.task.dataset.mirror is flipped
    assert len(other) == (2 * len(same) if flipped else len(same) // 2)  # the mirror doubles the windows
