"""The estimator's math, on an analytic model whose path KL is known in closed form."""

import math

import pytest
import torch

import conjure
import json

from conjure.jeffreys import WEIGHTINGS, kl_weight, reweight, step_weights
from conjure.sampler import ddim_sigma, sampler_timesteps, step_mean
from gaussian_model import GaussianModel, random_means


@pytest.fixture(scope="module")
def gaussian():
    return GaussianModel(random_means(["cat", "dog", "car"]))


def test_kl_weight_is_the_snr_ratio_for_ddpm():
    # eta = 1: w(t, s) = (SNR_s / SNR_t - 1) / 2, the discrete form of 1/2 d(log SNR).
    for abar_t, abar_s in [(0.01, 0.05), (0.3, 0.5), (0.9, 0.99)]:
        snr_t, snr_s = abar_t / (1 - abar_t), abar_s / (1 - abar_s)
        assert kl_weight(abar_t, abar_s, 1.0) == pytest.approx(0.5 * (snr_s / snr_t - 1), rel=1e-12)
    assert kl_weight(0.9, 1.0, 1.0) == 0.0  # the last step outputs x0 with no noise: no KL term


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_step_is_diffusers_ddim_step(eta):
    """Our mean and sigma are those of diffusers' DDIMScheduler.step, so the KL is exact for that sampler."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", set_alpha_to_one=True,
                              timestep_spacing="leading", clip_sample=False)
    scheduler.set_timesteps(10)
    abar = scheduler.alphas_cumprod.double()
    g = torch.Generator().manual_seed(0)
    x, eps_a, eps_b = (torch.randn((1, 3, 4, 4), generator=g, dtype=torch.float64) for _ in range(3))
    ts = scheduler.timesteps.tolist()
    for i, t in enumerate(ts):
        s_abar = float(abar[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        sigma = ddim_sigma(float(abar[t]), s_abar, eta)
        zero = torch.zeros_like(x)
        ref_a = scheduler.step(eps_a, t, x, eta=eta, variance_noise=zero).prev_sample
        ref_b = scheduler.step(eps_b, t, x, eta=eta, variance_noise=zero).prev_sample
        ours_a = step_mean(x, eps_a, float(abar[t]), s_abar, sigma)
        assert torch.allclose(ours_a, ref_a, rtol=1e-5, atol=1e-5)  # diffusers computes in float32
        assert sigma == pytest.approx(eta * math.sqrt(scheduler._get_variance(t, t - 100).item()) if i + 1 < len(ts) else 0.0, abs=1e-7)
        if sigma > 0:  # KL of two Gaussians with equal variance, from diffusers' own means
            kl_ref = (ref_a - ref_b).pow(2).sum() / (2 * sigma**2)
            kl_ours = kl_weight(float(abar[t]), s_abar, eta) * (eps_a - eps_b).pow(2).sum()
            assert float(kl_ours) == pytest.approx(float(kl_ref), rel=1e-6)


def test_converges_to_the_continuous_jeffreys_divergence(gaussian):
    """Discrete path KL -> 1/2 ||m_a - m_b||^2 (abar_end - abar_start) as steps grow.

    Tolerance: the error must shrink at every step count and be under 1.5% at 1000 steps
    (measured: 0.92%; at 10 steps the discrete sampler's KL is 100x the continuous value,
    which is correct for that sampler: its last stochastic jump spans a huge SNR ratio).
    """
    errors = []
    for steps in (30, 100, 300, 1000):
        r = conjure.score(gaussian, "cat", "dog", steps=steps)
        ts = r.per_step["timestep"]
        exact = gaussian.exact_jeffreys("cat", "dog", ts[0], ts[-1])
        errors.append(abs(r.jeffreys / exact - 1))
        assert r.kl_ab == pytest.approx(r.kl_ba, rel=1e-6)  # symmetric here: the gap does not depend on x
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.015


def test_identical_prompts_give_exactly_zero(gaussian):
    r = conjure.score(gaussian, "cat", "cat", samples=3)
    assert r.jeffreys == 0.0 and r.kl_ab == 0.0 and r.kl_ba == 0.0
    assert all(v == 0.0 for v in r.per_step["kl_ab"] + r.per_step["kl_ba"])


def test_swapping_prompts_swaps_the_directions(tiny_sd1):
    ab = conjure.score(tiny_sd1, "snow leopard", "bengal tiger", samples=2)
    ba = conjure.score(tiny_sd1, "bengal tiger", "snow leopard", samples=2)
    assert ab.kl_ab == pytest.approx(ba.kl_ba, rel=1e-5)
    assert ab.kl_ba == pytest.approx(ba.kl_ab, rel=1e-5)
    assert ab.jeffreys == pytest.approx(ba.jeffreys, rel=1e-5)
    # Both trajectories start from the same x_T, so the first gaps agree; then the states, and the gaps, part.
    assert ab.per_step["gap_a"][0] == pytest.approx(ab.per_step["gap_b"][0], rel=1e-6)
    assert ab.per_step["gap_a"][1:] != pytest.approx(ab.per_step["gap_b"][1:], rel=1e-6)


def test_same_seed_same_numbers_other_seed_other_numbers(tiny_sd1):
    first = conjure.score(tiny_sd1, "a red apple", "a green pear", seed=7, samples=2)
    again = conjure.score(tiny_sd1, "a red apple", "a green pear", seed=7, samples=2)
    other = conjure.score(tiny_sd1, "a red apple", "a green pear", seed=8, samples=2)
    assert first.per_sample == again.per_sample and first.per_step == again.per_step
    assert first.per_sample != other.per_sample


def test_batched_pairs_match_single_pairs(tiny_sd1):
    """Common random numbers: a pair's score does not depend on which batch it was scored in."""
    pairs = [("a cat", "a dog"), ("a car", "a bus"), ("tea", "tea"), ("a dog", "a cat")]
    batched = conjure.score_pairs(tiny_sd1, pairs, batch_size=4, samples=2)
    single = [conjure.score(tiny_sd1, a, b, samples=2) for a, b in pairs]
    for x, y in zip(batched, single):
        assert x.jeffreys == pytest.approx(y.jeffreys, rel=1e-4, abs=1e-9)
    assert batched[2].jeffreys == 0.0


def naive_jeffreys(model, a: str, b: str, steps: int, samples: int, guidance: float, seed: int = 0) -> float:
    """The estimator as a reader of the paper first writes it: two trajectories, one model call per
    (trajectory, prompt) per step, nothing shared; the same sampler, noise and default weighting."""
    shape = model.latent_shape(model.default_size)
    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((samples, *shape), generator=g)
    noises = torch.randn((steps, samples, *shape), generator=g)
    rows = torch.zeros(samples, dtype=torch.long)
    cond_a, cond_b, null = (model.encode([a]).take(rows), model.encode([b]).take(rows), model.encode_null().take(rows))
    timesteps = sampler_timesteps(model, steps)
    abar = model.alphas_cumprod.tolist()
    weights = step_weights([abar[t] for t in timesteps], 1.0, "girsanov")

    def eps(x, t, cond):
        tt = torch.full((samples,), t, dtype=torch.long)
        e, e_null = model.predict_noise(x, tt, cond).float(), model.predict_noise(x, tt, null).float()
        return e_null + guidance * (e - e_null)

    x_A, x_B, kl_ab, kl_ba = x_T.clone(), x_T.clone(), 0.0, 0.0
    for i, t in enumerate(timesteps):
        abar_t, abar_s = abar[t], (abar[timesteps[i + 1]] if i + 1 < steps else 1.0)
        sigma = ddim_sigma(abar_t, abar_s, 1.0)
        eps_Aa, eps_Ab, eps_Ba, eps_Bb = eps(x_A, t, cond_a), eps(x_A, t, cond_b), eps(x_B, t, cond_a), eps(x_B, t, cond_b)
        kl_ab += weights[i] * float((eps_Aa - eps_Ab).double().pow(2).flatten(1).sum(1).mean())
        kl_ba += weights[i] * float((eps_Ba - eps_Bb).double().pow(2).flatten(1).sum(1).mean())
        x_A = step_mean(x_A, eps_Aa, abar_t, abar_s, sigma) + sigma * noises[i]
        x_B = step_mean(x_B, eps_Bb, abar_t, abar_s, sigma) + sigma * noises[i]
    return (kl_ab + kl_ba) / 2


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_batched_estimator_matches_the_naive_two_trajectory_loop(tiny_sd1, guidance):
    """What the estimator shares (one call per step for a whole batch; at step 0, one evaluation per distinct
    prompt at the common x_T) changes no number."""
    pairs = [("a cat", "a dog"), ("a car", "a dog"), ("tea", "tea")]
    batched = conjure.score_pairs(tiny_sd1, pairs, batch_size=3, samples=2, steps=4, guidance=guidance)
    for (a, b), r in zip(pairs, batched):
        assert r.jeffreys == pytest.approx(naive_jeffreys(tiny_sd1, a, b, 4, 2, guidance), rel=1e-4, abs=1e-9)


def evaluations_per_call(model, pairs, **settings) -> list[int]:
    calls = []
    inner = model.predict_noise
    model.predict_noise = lambda x, t, cond: calls.append(len(x)) or inner(x, t, cond)
    try:
        conjure.score_pairs(model, pairs, batch_size=len(pairs), **settings)
    finally:
        model.predict_noise = inner
    return calls


def test_each_evaluation_is_made_once_per_step(tiny_sd1):
    # Step 0: the 3 distinct prompts at the shared x_T. Then trajectories cat, dog, car (dog's is shared by both
    # pairs) under the prompts of their pairs: cat|cat, cat|dog, dog|dog, dog|cat, dog|car, car|car, car|dog.
    assert evaluations_per_call(tiny_sd1, [("a cat", "a dog"), ("a car", "a dog")], samples=2, steps=3) == [6, 14, 14]
    # N phrases against each other: N^2 evaluations per step (not 4 per pair), N + 1 at step 0 and under guidance
    # N more (each trajectory under the null prompt).
    phrases = ["a", "b", "c", "d"]
    pairs = [(p, q) for i, p in enumerate(phrases) for q in phrases[i + 1:]]
    assert evaluations_per_call(tiny_sd1, pairs, steps=2) == [4, 16]
    assert evaluations_per_call(tiny_sd1, pairs, steps=2, guidance=3.0) == [5, 20]


def test_stderr_and_per_step_report(gaussian, tiny_sd1):
    r = conjure.score(tiny_sd1, "a cat", "a dog", samples=4, steps=5)
    assert len(r.per_sample) == 4 and r.stderr is not None and r.stderr > 0
    assert r.stderr == pytest.approx(torch.tensor(r.per_sample).std().item() / 2, rel=1e-6)
    assert r.jeffreys == pytest.approx(sum(r.per_sample) / 4)
    assert len(r.per_step["kl_ab"]) == 5
    exact = conjure.score(tiny_sd1, "a cat", "a dog", samples=4, steps=5, weighting="exact")
    assert exact.per_step["kl_ab"][-1] == 0.0  # the chain's noise-free last step has no KL term
    assert r.jeffreys == pytest.approx((sum(r.per_step["kl_ab"]) + sum(r.per_step["kl_ba"])) / 2)
    assert r.seconds > 0
    assert conjure.score(gaussian, "cat", "dog").stderr is None  # k = 1: no standard error


# Relative error against the continuous closed form, measured by bench/closed_form.py
# (docs/method.md#the-closed-form-check):
# at T = 10, girsanov +22.3% (linear schedule) and +7.6% (cosine); exact +11,060% and +2,056%.
@pytest.mark.parametrize("schedule, bound", [("linear", 0.23), ("squaredcos_cap_v2", 0.08)])
def test_default_weighting_is_close_to_the_continuous_divergence_at_10_steps(schedule, bound):
    model = GaussianModel(random_means(["cat", "dog"]), beta_schedule=schedule)
    r = conjure.score(model, "cat", "dog", steps=10)
    assert r.settings["weighting"] == "girsanov"
    ts = r.per_step["timestep"]
    continuous = model.exact_jeffreys("cat", "dog", ts[0], ts[-1])
    assert abs(r.jeffreys / continuous - 1) < bound
    exact = conjure.score(model, "cat", "dog", steps=10, weighting="exact")
    assert abs(exact.jeffreys / continuous - 1) > 10 * bound  # the discrete chain's KL is far off at T = 10


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_exact_and_girsanov_agree_as_steps_grow(gaussian, eta):
    """c(eta) = (1 + eta^2)^2 / (4 eta^2) is the continuous limit of the DDIM-eta chain's KL."""
    exact = conjure.score(gaussian, "cat", "dog", steps=1000, eta=eta, weighting="exact")
    girsanov = conjure.score(gaussian, "cat", "dog", steps=1000, eta=eta)
    assert exact.jeffreys == pytest.approx(girsanov.jeffreys, rel=0.02)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_kept_gaps_recompute_every_weighting_and_subset(tiny_sd1, weighting):
    base = conjure.score(tiny_sd1, "a cat", "a dog", samples=2, steps=4)
    direct = conjure.score(tiny_sd1, "a cat", "a dog", samples=2, steps=4, weighting=weighting)
    again = reweight(base.per_step, weighting)
    assert again.kl_ab == pytest.approx(direct.kl_ab, rel=1e-9)
    assert again.kl_ba == pytest.approx(direct.kl_ba, rel=1e-9)
    assert again.jeffreys == pytest.approx(direct.jeffreys, rel=1e-9)
    late = reweight(base.per_step, weighting, steps=[2, 3])
    assert late.kl_ab == pytest.approx(sum(direct.per_step["kl_ab"][2:]), rel=1e-9)
    json.loads(json.dumps(base.to_dict()))  # the gaps travel through JSON
    c, h, w = tiny_sd1.latent_shape(tiny_sd1.default_size)
    assert base.dims == c * h * w and base.to_dict()["jeffreys_per_dim"] == pytest.approx(base.jeffreys / (c * h * w))


def test_unknown_weighting_and_results_without_gaps_are_clear_errors(gaussian):
    with pytest.raises(conjure.ConjureError, match="weighting must be one of"):
        conjure.score(gaussian, "cat", "dog", weighting="trapezoid")
    with pytest.raises(conjure.ConjureError, match="unknown weighting"):
        step_weights([0.1, 0.5], 1.0, "trapezoid")
    with pytest.raises(conjure.ConjureError, match="no per-step gaps"):
        reweight({"timestep": [1], "kl_ab": [0.0]}, "girsanov")


def test_uniform_weighting_is_the_plain_squared_gap(gaussian):
    r = conjure.score(gaussian, "cat", "dog", steps=10, weighting="uniform")
    abar = gaussian.alphas_cumprod
    gap = (gaussian.means["cat"] - gaussian.means["dog"]).double().pow(2).sum()
    expected = [float(0.5 * abar[t] * (1 - abar[t]) * gap) for t in r.per_step["timestep"][:-1]] + [0.0]
    assert r.per_step["kl_ab"] == pytest.approx(expected, rel=1e-5)


def test_guidance_steers_both_trajectories_and_scales_the_gap(gaussian):
    # In the Gaussian model the gap is state-independent and guidance multiplies it by w: KL scales by w^2.
    plain = conjure.score(gaussian, "cat", "dog", steps=20)
    guided = conjure.score(gaussian, "cat", "dog", steps=20, guidance=3.0)
    assert guided.jeffreys == pytest.approx(9 * plain.jeffreys, rel=1e-5)


def test_stream_yields_every_step_and_ends_with_the_result(tiny_sd1):
    events = list(conjure.stream(tiny_sd1, "a cat", "a dog", steps=4))
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert [e.timestep for e in events] == sampler_timesteps(tiny_sd1, 4)
    assert all(e.result is None for e in events[:-1]) and events[-1].result is not None
    assert events[-1].jeffreys == pytest.approx(events[-1].result.jeffreys)
    running = [e.jeffreys for e in events]
    assert running == sorted(running)  # totals only grow
    for e in events[:-1]:  # cheap latent previews at latent resolution; the last step is VAE-decoded
        assert e.image_a.shape == e.image_b.shape == (16, 16, 3) and e.image_a.dtype.name == "uint8"
    assert all(e.difference.shape == (16, 16) for e in events)
    final_a, final_b = events[-1].result.images
    assert final_a.shape == (32, 32, 3)


# --- the cosine: each prompt's pull away from the null prompt -------------------------------------------


def test_cosine_is_the_law_of_cosines_with_the_divergence_as_squared_distance():
    from conjure.jeffreys import cosine_from_pulls

    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        u, v = torch.randn(7, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
        cos = float(u @ v / (u.norm() * v.norm()))
        assert cosine_from_pulls(float((u - v).pow(2).sum()), float(u @ u), float(v @ v)) == pytest.approx(cos)
    assert cosine_from_pulls(0.0, 2.0, 2.0) == 1.0  # identical texts
    assert cosine_from_pulls(1.0, 0.0, 2.0) is None  # a text that does not move the model has no direction


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cosine_of_the_gaussian_model_is_the_cosine_of_its_means(gaussian, guidance):
    """Its null prompt has mean 0 and every pull eps(x|y) - eps(x|null) = -sqrt(abar (1 - abar)) m_y is the same
    at every state, so the pulls are one constant times ||m_a||^2 and ||m_b||^2 and the cosine is cos(m_a, m_b),
    whatever the guidance scale (which scales both pulls alike)."""
    for a, b in [("cat", "dog"), ("cat", "car"), ("dog", "car")]:
        m_a, m_b = gaussian.means[a].flatten().double(), gaussian.means[b].flatten().double()
        r = conjure.score(gaussian, a, b, cosine=True, steps=20, guidance=guidance)
        assert r.cosine == pytest.approx(float(m_a @ m_b / (m_a.norm() * m_b.norm())), rel=1e-5)
        assert r.pulls[0] / r.jeffreys == pytest.approx(float(m_a @ m_a / (m_a - m_b).pow(2).sum()), rel=1e-5)
    assert conjure.score(gaussian, "cat", "cat", cosine=True).cosine == pytest.approx(1.0)


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_cosine_leaves_the_divergence_unchanged_and_is_symmetric(tiny_sd1, guidance):
    plain = conjure.score(tiny_sd1, "snow leopard", "bengal tiger", samples=2, guidance=guidance)
    ab = conjure.score(tiny_sd1, "snow leopard", "bengal tiger", samples=2, guidance=guidance, cosine=True)
    ba = conjure.score(tiny_sd1, "bengal tiger", "snow leopard", samples=2, guidance=guidance, cosine=True)
    # the same trajectories (batched with more rows without guidance: float rounding only)
    assert ab.jeffreys == pytest.approx(plain.jeffreys, rel=1e-5)
    assert ab.per_step["gap_a"] == pytest.approx(plain.per_step["gap_a"], rel=1e-4, abs=1e-7)
    assert plain.cosine is None and plain.pulls is None and "pull_a" not in plain.per_step
    assert -1 <= ab.cosine <= 1 and ab.cosine == pytest.approx(ba.cosine, rel=1e-5)
    assert ab.pulls == pytest.approx(ba.pulls[::-1], rel=1e-5) and min(ab.pulls) > 0
    # the identity the cosine rests on: D_J = P_a + P_b - 2 U, so U / sqrt(P_a P_b) is a true cosine
    w = ab.per_step["weight"]
    assert sum(x * p for x, p in zip(w, ab.per_step["pull_a"])) == pytest.approx(ab.pulls[0], rel=1e-9)
    assert reweight(ab.per_step, "girsanov").cosine == pytest.approx(ab.cosine, rel=1e-9)
    assert reweight(ab.per_step, "exact").cosine != pytest.approx(ab.cosine, rel=1e-6)


def test_cosine_reads_each_state_under_the_null_prompt_once(tiny_sd1):
    # As under guidance: step 0, the 3 prompts and the null prompt at x_T; then the 7 evaluations of the pairs and
    # each of the 3 trajectories under the null prompt. Under guidance they are the evaluations guidance makes.
    pairs = [("a cat", "a dog"), ("a car", "a dog")]
    assert evaluations_per_call(tiny_sd1, pairs, samples=2, steps=3, cosine=True) == [8, 20, 20]
    assert evaluations_per_call(tiny_sd1, pairs, samples=2, steps=3, cosine=True, guidance=3.0) == [8, 20, 20]


def test_cosine_setting_must_be_a_bool(gaussian):
    with pytest.raises(conjure.ConjureError, match="cosine must be True or False"):
        conjure.score(gaussian, "cat", "dog", cosine="yes")
