"""Flow-matching models (SD3, Flux) through the same estimator: the conversion, the steps, the adapters, the app.

Tiny SD3 / Flux pipelines with random weights are built from configs (tests/tiny_pipelines.py); nothing
here has seen real SD3 or Flux weights (docs/models.md says what that leaves unverified).
"""

import math

import numpy as np
import pytest
import torch

from diffusers import FluxPipeline

import conjure
from conjure.models import BUILTIN_MODELS
from conjure.models.flow import (GRID, FluxModel, StableDiffusion3Model, epsilon_from_velocity, flow_alpha_bar,
                                 flow_scale, flow_time, grid_timesteps, unpack_latents, velocity_from_epsilon)
from conjure.sampler import SamplerStep, advance, predicted_x0, schedule, with_guidance
from gaussian_model import GaussianFlowModel, random_means
from tiny_pipelines import flux_scheduler, tiny_flux, tiny_sd3

PIPELINES = {"sd3": tiny_sd3, "flux-dev": lambda: tiny_flux(dev=True), "flux-schnell": lambda: tiny_flux(dev=False)}


@pytest.fixture(scope="module", params=list(PIPELINES))
def flow_model(request):
    return conjure.load_model(PIPELINES[request.param]())


# --- the conversion ------------------------------------------------------------------------------


def test_flow_conversion_round_trips_x0_eps_and_v_through_the_epsilon_form():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(5, 3, 4, 4, generator=g,
                                                                                       dtype=torch.float64)
    t = torch.tensor([0.999, 0.9, 0.5, 0.1, 1e-3], dtype=torch.float64).view(-1, 1, 1, 1)
    x_flow = (1 - t) * x0 + t * eps  # the rectified-flow state
    v = eps - x0  # what the network predicts
    assert torch.allclose(epsilon_from_velocity(x_flow, v, t), eps, atol=1e-12)
    assert torch.allclose(velocity_from_epsilon(x_flow, eps, t), v, atol=1e-10)
    # The flow state is the VP state scaled by s(t), with abar(t) = (1 - t)^2 / ((1 - t)^2 + t^2) ...
    abar = flow_alpha_bar(t)
    x_vp = x_flow / flow_scale(t)
    assert torch.allclose(x_vp, abar.sqrt() * x0 + (1 - abar).sqrt() * eps, atol=1e-12)
    # ... so the sampler's x0 from the epsilon form is the flow's x0, and log SNR = 2 log((1 - t) / t).
    for i in range(len(t)):
        assert torch.allclose(predicted_x0(x_vp[i], eps[i], float(abar[i])), x0[i], atol=1e-9)
        snr = float(abar[i] / (1 - abar[i]))
        assert math.log(snr) == pytest.approx(2 * math.log((1 - float(t[i])) / float(t[i])), rel=1e-9)


def test_flow_adapter_gives_the_vp_models_epsilon_on_the_same_data():
    """Same data x0 ~ N(m, I): the flow model's exact velocity, converted by the adapter, is the VP model's
    exact epsilon at the same abar."""
    means = random_means(["cat"])
    flow = GaussianFlowModel(means)
    x = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([GRID - 10, GRID // 2, 10])
    cond = flow.encode(["cat"] * 3)
    abar = flow.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    exact = (1 - abar).sqrt() * (x - abar.sqrt() * means["cat"])  # GaussianModel.predict_noise's formula
    assert torch.allclose(flow.predict_noise(x, t, cond), exact, atol=1e-4)  # float32, t up to 0.999
    assert flow.calls == 1


# --- the steps -------------------------------------------------------------------------------------


def diffusers_flow_scheduler(model, steps, size, **config):
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config, **config)
    scheduler.set_timesteps(**model.scheduler_arguments(steps, size))
    return scheduler


@pytest.mark.parametrize("stochastic", [False, True])
def test_flow_sampler_step_is_diffusers_flow_euler_step(flow_model, stochastic):
    """On the same state and velocity, the sampler's step in epsilon form is FlowMatchEulerDiscreteScheduler's:
    at eta = 0 (sigma = 0) its Euler step x + (t_next - t) v, which DDIM is on this path; with the step's noise
    std sigma = sqrt(1 - abar_next) (all of x_next's noise new) its `stochastic_sampling` step
    (1 - t_next) x0 + t_next * noise. The estimator's own eta = 1 step lies between the two, and its
    mean and variance are checked against DDPM's in tests/test_estimator.py."""
    steps, size = 6, flow_model.default_size
    scheduler = diffusers_flow_scheduler(flow_model, steps, size, stochastic_sampling=stochastic)
    g = torch.Generator().manual_seed(0)
    shape = (2, *flow_model.latent_shape(size))
    x_flow = torch.randn(shape, generator=g)
    for i, t in enumerate(scheduler.timesteps):
        sigma, sigma_next = float(scheduler.sigmas[i]), float(scheduler.sigmas[i + 1])
        if sigma == 1.0:  # pure noise: the epsilon form starts one grid step below (see grid_timesteps)
            x_flow = scheduler.step(torch.randn(shape, generator=g), t, x_flow).prev_sample
            continue
        v = torch.randn(shape, generator=g)
        seed = 100 + i
        reference = scheduler.step(v, t, x_flow, generator=torch.Generator().manual_seed(seed)).prev_sample
        abar_t, abar_s = flow_alpha_bar(sigma), flow_alpha_bar(sigma_next)
        noise_std = math.sqrt(1 - abar_s) if stochastic else 0.0
        step = SamplerStep(i, 0, abar_t, abar_s, noise_std)
        eps = epsilon_from_velocity(x_flow, v, sigma)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))  # what diffusers drew
        _, x_next = advance(x_flow / flow_scale(sigma), eps, step, noise)
        assert torch.allclose(x_next * flow_scale(sigma_next), reference, atol=2e-5), (i, sigma, sigma_next)
        x_flow = reference


def test_flow_sampler_visits_the_models_own_shifted_sigmas():
    sd3 = conjure.load_model(tiny_sd3(shift=3.0))
    dev, schnell = conjure.load_model(tiny_flux(dev=True)), conjure.load_model(tiny_flux(dev=False))
    for model, size in ((sd3, 32), (dev, 32), (dev, 64), (schnell, 32)):
        sigmas = diffusers_flow_scheduler(model, 8, size).sigmas[:-1].tolist()
        visited = flow_time(torch.tensor(model.sampler_timesteps(8, size))).tolist()
        assert sigmas[0] == 1.0 and visited[0] == 1 - 1 / GRID  # pure noise: one grid step below it
        assert visited[1:] == pytest.approx(sigmas[1:], abs=0.5 / GRID)
    # SD3's shift 3 spends more steps at high noise than no shift; Flux-dev's shift grows with the image size.
    unshifted = conjure.load_model(tiny_sd3(shift=1.0))
    assert all(a > b for a, b in zip(sd3.sampler_timesteps(8)[1:], unshifted.sampler_timesteps(8)[1:]))
    assert all(a > b for a, b in zip(dev.sampler_timesteps(8, 64)[1:], dev.sampler_timesteps(8, 32)[1:]))
    assert schnell.sampler_timesteps(4) == [GRID - 2, 7499, 4999, 2499]  # 1, 3/4, 1/2, 1/4: schnell's schedule
    with pytest.raises(conjure.ConjureError, match="same time on the flow grid"):
        grid_timesteps([1.0, 0.99995, 0.5])


def pipeline_latents(pipe, prompt, steps, size, **kwargs):
    """The pipeline's own states: the latents after every denoising step (unpacked for Flux)."""
    states = []

    def record(pipeline, i, t, tensors):
        states.append(tensors["latents"].clone())
        return {}

    pipe(prompt, num_inference_steps=steps, height=size, width=size, output_type="latent",
         callback_on_step_end=record, generator=torch.Generator().manual_seed(0), **kwargs)
    if isinstance(pipe, FluxPipeline):  # Flux packs its latents
        side = size // pipe.vae_scale_factor
        states = [unpack_latents(s, side, side) for s in states]
    return states


@pytest.mark.parametrize("family", ["sd3", "flux-dev", "flux-schnell"])
def test_flow_adapter_walks_the_pipelines_own_steps(family):
    """The adapter calls the transformer as the pipeline does (timestep scale, token ids, pooled text, Flux-dev's
    guidance input): from the pipeline's own state, the sampler's deterministic step in epsilon form lands on
    the pipeline's next state. Schedules on the grid (no shift) so that both visit the same times."""
    if family == "sd3":
        pipe, pipe_args, guidance = tiny_sd3(shift=1.0), {"guidance_scale": 1.0, "max_sequence_length": 256}, 1.0
    else:
        pipe = tiny_flux(dev=family == "flux-dev")
        pipe.scheduler = flux_scheduler(dev=False)  # unshifted: sigmas 1, 3/4, 1/2, 1/4
        guidance = 3.5 if family == "flux-dev" else 1.0
        pipe_args = {"guidance_scale": guidance, "max_sequence_length": 512 if family == "flux-dev" else 256}
    model = conjure.load_model(pipe)
    states = pipeline_latents(pipe, "a red apple", 4, 32, **pipe_args)
    cond = with_guidance(model, model.encode(["a red apple"]), guidance)
    steps = schedule(model, 4, 0.0, 32)  # eta = 0: the deterministic step, which is the pipeline's Euler step
    for step in steps[1:]:  # step 0 starts at pure noise, one grid step away from the pipeline's t = 1
        t = float(flow_time(torch.tensor(step.timestep)))
        x_vp = states[step.index - 1] / flow_scale(t)
        eps = model.predict_noise(x_vp, torch.tensor([step.timestep]), cond)
        _, x_next = advance(x_vp, eps, step, torch.zeros_like(x_vp))
        t_next = float(flow_time(torch.tensor(steps[step.index + 1].timestep))) if step.index + 1 < 4 else 0.0
        assert torch.allclose(x_next * flow_scale(t_next), states[step.index], atol=1e-4), step


# --- the estimator on flow models ------------------------------------------------------------------


def test_flow_identical_prompts_give_zero_and_swapping_prompts_swaps_the_kls(flow_model):
    same = conjure.score(flow_model, "snow leopard", "snow leopard", steps=3, samples=2)
    assert same.jeffreys == 0.0 and same.kl_ab == 0.0 and same.kl_ba == 0.0
    ab = conjure.score(flow_model, "snow leopard", "bengal tiger", steps=3, samples=2)
    ba = conjure.score(flow_model, "bengal tiger", "snow leopard", steps=3, samples=2)
    assert ab.jeffreys > 0 and ab.kl_ab != pytest.approx(ab.kl_ba, rel=1e-6)
    assert ab.kl_ab == pytest.approx(ba.kl_ba, rel=1e-5) and ab.kl_ba == pytest.approx(ba.kl_ab, rel=1e-5)
    assert ab.per_step["timestep"] == flow_model.sampler_timesteps(3)


def test_explain_leaves_words_out_of_flow_prompts_under_guidance(flow_model):
    """conjure.explain on a flow model: words removed from the text, the empty prompt as a null row, guidance as
    a branch or (Flux-dev) an input of every row; each variant's divergence is the pair's own score."""
    e = conjure.explain(flow_model, "a cat", "dog", steps=2, guidance=3.5, images=False)
    assert e.leave_out == "remove" and [w.without for w in e.words_a] == ["cat", "a"] and e.words_b[0].without == ""
    score = conjure.score(flow_model, "a cat", "dog", steps=2, guidance=3.5).jeffreys
    assert e.jeffreys == pytest.approx(score, rel=1e-4)
    without_a = conjure.score(flow_model, "cat", "dog", steps=2, guidance=3.5).jeffreys
    assert e.words_a[0].contribution == pytest.approx(score - without_a, rel=1e-3, abs=1e-6)


def test_flow_gaussian_cosine_is_the_cosine_of_its_means():
    """Through the flow adapter's conversion the pulls are the VP model's, so the cosine is cos(m_a, m_b)."""
    model = GaussianFlowModel(random_means(["cat", "dog"]))
    m_a, m_b = model.means["cat"].flatten().double(), model.means["dog"].flatten().double()
    r = conjure.score(model, "cat", "dog", steps=20, cosine=True)
    assert r.cosine == pytest.approx(float(m_a @ m_b / (m_a.norm() * m_b.norm())), rel=1e-4)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flow_gaussian_converges_to_the_closed_form(shift):
    """The closed-form check of tests/test_estimator.py through a flow-parameterised analytic model: the
    estimate tends to 1/2 ||m_a - m_b||^2 (abar_end - abar_start) as steps grow, for SD3's shift too."""
    model = GaussianFlowModel(random_means(["cat", "dog"]), shift=shift)
    errors = []
    for steps in (10, 30, 100, 300):
        r = conjure.score(model, "cat", "dog", steps=steps)
        ts = r.per_step["timestep"]
        errors.append(abs(r.jeffreys / model.exact_jeffreys("cat", "dog", ts[0], ts[-1]) - 1))
        assert r.kl_ab == pytest.approx(r.kl_ba, rel=1e-5)  # the gap does not depend on the state
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 0.002  # measured: about 1e-4 (no shift) and 2.4e-4 (shift 3) at 300 steps


def rows_per_call(model, run):
    calls = []
    inner = model.transformer.forward

    def counting(*args, **kwargs):
        calls.append((len(kwargs["hidden_states"]), kwargs.get("guidance")))
        return inner(*args, **kwargs)

    model.transformer.forward = counting
    try:
        result = run()
    finally:
        del model.transformer.forward
    return calls, result


def test_flux_dev_takes_guidance_as_an_input_and_schnell_as_a_branch():
    dev, schnell = conjure.load_model(tiny_flux(dev=True)), conjure.load_model(tiny_flux(dev=False))
    assert dev.takes_guidance and not schnell.takes_guidance
    calls, guided = rows_per_call(dev, lambda: conjure.score(dev, "a cat", "a dog", steps=3, guidance=3.5))
    assert [rows for rows, _ in calls] == [2, 4, 4]  # no unconditional branch: as without guidance
    assert all(torch.equal(g, torch.full((rows,), 3.5)) for rows, g in calls)
    plain = conjure.score(dev, "a cat", "a dog", steps=3)  # guidance 1: the input is 1, "no guidance"
    assert plain.jeffreys != pytest.approx(guided.jeffreys, rel=1e-3)
    calls, _ = rows_per_call(schnell, lambda: conjure.score(schnell, "a cat", "a dog", steps=3, guidance=3.5))
    assert [rows for rows, _ in calls] == [3, 6, 6] and all(g is None for _, g in calls)  # the null prompt too
    # the cosine reads each state under the null prompt, which for Flux-dev takes the guidance input too
    calls, r = rows_per_call(dev, lambda: conjure.score(dev, "a cat", "a dog", steps=3, guidance=3.5, cosine=True))
    assert [rows for rows, _ in calls] == [3, 6, 6] and all(torch.equal(g, torch.full((rows,), 3.5))
                                                             for rows, g in calls)
    assert r.jeffreys == pytest.approx(guided.jeffreys, rel=1e-4) and -1 <= r.cosine <= 1
    from conjure.morph import morph

    morph = morph(dev, "a cat", "a dog", stages=3, steps=2, guidance=3.5)  # the morph passes the input too
    assert morph.images.shape == (3, 32, 32, 3)


def test_sd3_runs_without_t5_and_refuses_sizes_past_its_position_embedding():
    model = conjure.load_model(tiny_sd3(t5=False))
    assert not model.uses_t5
    r = conjure.score(model, "a cat", "a dog", steps=2)
    assert r.jeffreys > 0
    with pytest.raises(conjure.ConjureError, match="at most 128"):
        conjure.score(model, "a", "b", size=132)


def test_flow_stream_previews_and_decodes(flow_model):
    events = list(conjure.stream(flow_model, "a cat", "a dog", steps=2))
    assert events[0].image_a.shape == (16, 16, 3) and events[-1].result.images[0].shape == (32, 32, 3)
    similarity = conjure.text_similarity(flow_model, "a cat", "a dog")
    assert -1 <= similarity <= 1 and conjure.text_similarity(flow_model, "a cat", "a cat") == pytest.approx(1.0)
    with pytest.warns(conjure.PromptTruncatedWarning):
        assert conjure.score(flow_model, "a very long prompt " * 10, "short", steps=1).truncated == [True, False]


# --- loading, aliases and the app ------------------------------------------------------------------


def test_flux_and_sd3_folders_load_with_their_adapters(tmp_path):
    import warnings

    for build, adapter in ((lambda: tiny_flux(dev=True), FluxModel), (tiny_sd3, StableDiffusion3Model)):
        pipe = build()
        folder = tmp_path / adapter.__name__
        pipe.save_pretrained(folder, safe_serialization=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = conjure.load_model(str(folder), device="cpu")
        assert type(model) is adapter
        reference = conjure.score(conjure.load_model(pipe), "a", "b", steps=2, size=32)
        assert conjure.score(model, "a", "b", steps=2, size=32).jeffreys == pytest.approx(reference.jeffreys, rel=1e-5)


def test_flow_pipelines_default_to_bfloat16_on_a_gpu_that_computes_it(monkeypatch, tmp_path):
    from conjure import models

    tiny_flux(dev=False).save_pretrained(tmp_path / "flux", safe_serialization=True)
    for bf16 in (True, False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
        half = torch.bfloat16 if bf16 else torch.float16
        assert [models.default_half_dtype(c) for c in ("FluxPipeline", "StableDiffusion3Pipeline")] == [half, half]
        assert models.default_half_dtype("StableDiffusionPipeline") == torch.float16
        pipe = models._from_pretrained(str(tmp_path / "flux"), torch.float16, default_half=True)
        assert pipe.transformer.dtype == half
    assert models._from_pretrained(str(tmp_path / "flux"), torch.float16).transformer.dtype == torch.float16  # asked


def test_sd3_and_flux_aliases_are_in_the_table_and_the_apps_menu():
    from conjure import app_handlers as h

    expected = {"sd3-medium": "stabilityai/stable-diffusion-3-medium-diffusers",
                "sd3.5-large": "stabilityai/stable-diffusion-3.5-large",
                "flux-schnell": "black-forest-labs/FLUX.1-schnell", "flux-dev": "black-forest-labs/FLUX.1-dev"}
    for alias, source in expected.items():
        assert conjure.MODEL_ALIASES[alias] == source and alias in h.allowed_models()
        assert [value for _, value in h.size_choices(alias)] == [0, 512, 768, 1024]
        assert BUILTIN_MODELS[alias].label in h.allowed_models().values()


@pytest.fixture
def app_with_tiny_flux(monkeypatch):
    """The app's handlers, with "tiny-flux" on the allow-list loading a tiny Flux-dev pipeline."""
    from conjure import app_handlers as h

    model = conjure.load_model(tiny_flux(dev=True))
    monkeypatch.setenv("CONJURE_EXTRA_MODELS", "tiny-flux")
    monkeypatch.setattr(h, "MODELS", h.ModelCache(1))
    load = conjure.load_model  # the API loads (passes through) the model object it is given, too
    monkeypatch.setattr(h.conjure, "load_model", lambda name, *args, **kwargs:
                        model if name == "tiny-flux" else load(name, *args, **kwargs))
    return h


def test_app_streams_a_whole_flux_run(app_with_tiny_flux):
    h = app_with_tiny_flux
    out = {name: i for i, name in enumerate(h.OUTPUTS)}
    updates = []
    for update in h.run_conjure("snow leopard", "bengal tiger", "tiny-flux", 3, 1, 3.0, 0, 0, 2):
        updates.append(update)
        if isinstance(update[out["trajectory_gif"]], str):
            break  # the final update
    statuses = [u[out["status"]] for u in updates if isinstance(u[out["status"]], str)]
    steps = [status for status in statuses if status.startswith("**Step")]
    assert len(steps) == 3
    details = updates[-1][out["details"]]
    assert details["model"] == "FluxPipeline" and details["settings"]["guidance"] == 3.0
    assert details["jeffreys"] > 0 and "CLIP" in details["text_encoder"]
    assert updates[-1][out["image_a"]].shape == (32, 32, 3)


def test_app_runs_a_flux_matrix(app_with_tiny_flux):
    h = app_with_tiny_flux
    out = {name: i for i, name in enumerate(h.MATRIX_OUTPUTS)}
    updates = list(h.run_matrix("leopard\ncheetah\nzebra", "tiny-flux", 2, 1, 1.0, 0, 0))
    final = updates[-1]
    assert final[out["matrix_status"]].startswith("**Done: 3 phrases, 3 pairs")
    jeffreys = np.array(final[out["matrix_details"]]["jeffreys"])
    assert np.array_equal(jeffreys, jeffreys.T) and np.all(np.diag(jeffreys) == 0) and np.all(jeffreys + np.eye(3) > 0)
