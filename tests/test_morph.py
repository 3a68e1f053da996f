import numpy as np
import pytest
import torch

import conjure
from conjure.errors import ConjureError
from conjure.jeffreys import Settings
from conjure.models.base import Conditioning
from conjure.morph import check_morph, interpolate, morph, morph_steps


@pytest.fixture(scope="module")
def model():
    return conjure.load_model("emoji")


def test_interpolate_lerps_tensors_and_keeps_dtype():
    a = Conditioning({"x": torch.tensor([[0.0, 2.0]], dtype=torch.float16)})
    b = Conditioning({"x": torch.tensor([[4.0, 6.0]], dtype=torch.float16)})
    c = interpolate(a, b, [0.0, 0.25, 1.0])
    assert c.tensors["x"].dtype == torch.float16
    assert c.tensors["x"].tolist() == [[0.0, 2.0], [1.0, 3.0], [4.0, 6.0]]


def test_interpolate_masks_union_inside_own_mask_at_the_ends():
    a = Conditioning({"mask": torch.tensor([[True, True, False, False]])})
    b = Conditioning({"mask": torch.tensor([[True, False, True, False]])})
    m = interpolate(a, b, [0.0, 0.5, 1.0]).tensors["mask"]
    assert m.tolist() == [[True, True, False, False], [True, True, True, False], [True, False, True, False]]


def test_morph_ends_are_the_estimators_trajectories(model):
    # Same seed, steps, guidance and k: stage 0 is trajectory A's final image, the last stage B's.
    settings = dict(steps=3, samples=2, guidance=2.0, seed=7)
    *_, last = conjure.stream(model, "leopard", "tiger", **settings)
    result = morph(model, "leopard", "tiger", stages=4, **settings)
    image_a, image_b = last.result.images
    assert result.images.shape == (4, *image_a.shape) and result.images.dtype == np.uint8
    np.testing.assert_allclose(result.images[0], image_a, atol=1)
    np.testing.assert_allclose(result.images[-1], image_b, atol=1)
    assert np.abs(result.images[0].astype(int) - result.images[-1]).max() > 0
    np.testing.assert_allclose(result.weights, [0, 1 / 3, 2 / 3, 1])


def counted_batches(model, monkeypatch) -> list[int]:
    """The batch size of every model call from now on (a list that fills as the model is called)."""
    batches = []
    predict = model.predict_noise

    def counting(x, t, cond):
        batches.append(len(x))
        return predict(x, t, cond)

    monkeypatch.setattr(model, "predict_noise", counting)
    return batches


def test_morph_batches_all_stages_into_one_model_call_per_step(model, monkeypatch):
    batches = counted_batches(model, monkeypatch)
    run = check_morph(model, "sun", "moon", 5, Settings(steps=3, guidance=3.0))
    steps = list(morph_steps(model, "sun", "moon", 5, run))
    assert batches == [10, 10, 10]  # 5 stages, conditioned and unconditioned, once per step
    assert [s.step for s in steps] == [1, 2, 3]
    assert all(s.images is None for s in steps[:-1]) and steps[-1].images.shape[0] == 5


def test_morph_rejects_bad_input(model):
    with pytest.raises(ConjureError, match="at least 2 stages"):
        morph(model, "a", "b", stages=1, steps=2)
    with pytest.raises(ConjureError, match="empty"):
        morph(model, " ", "b", stages=2, steps=2)
    with pytest.raises(ConjureError, match="multiple of"):
        morph(model, "a", "b", stages=2, steps=2, size=30)
    with pytest.raises(ConjureError, match="1000 morph stages; the limit is 64"):  # the library's limit
        morph(model, "a", "b", stages=1000, steps=2)


@pytest.mark.parametrize("build", ["sd2", "sdxl"])
def test_morph_ends_match_the_trajectories_on_stable_diffusion(build):
    # Latent models: interpolated CLIP states (and SDXL's pooled embedding), VAE-decoded stages.
    from tiny_pipelines import tiny_sd, tiny_sdxl

    model = conjure.load_model(tiny_sd(2) if build == "sd2" else tiny_sdxl(), device="cpu")
    settings = dict(steps=2, guidance=3.0, seed=1)
    *_, last = conjure.stream(model, "a cat", "a dog", **settings)
    result = morph(model, "a cat", "a dog", stages=3, **settings)
    assert result.images.shape == (3, *last.result.images[0].shape)
    np.testing.assert_allclose(result.images[0], last.result.images[0], atol=1)
    np.testing.assert_allclose(result.images[-1], last.result.images[1], atol=1)


def test_morph_and_estimator_share_the_zero_terminal_snr_guard():
    """One sampler: the guard the estimator has, the morph has too (it once lacked it)."""
    from conjure.morph import morph
    from gaussian_model import GaussianModel, random_means

    model = GaussianModel(random_means(["cat", "dog"]))
    from diffusers import DDPMScheduler

    zero_snr = DDPMScheduler(beta_schedule="linear", rescale_betas_zero_snr=True, timestep_spacing="trailing")
    model.scheduler_config, model.alphas_cumprod = dict(zero_snr.config), zero_snr.alphas_cumprod.double()
    for run in (lambda: conjure.score(model, "cat", "dog"), lambda: morph(model, "cat", "dog", stages=2)):
        with pytest.raises(conjure.ConjureError, match="zero signal"):
            run()


@pytest.mark.parametrize("stages", [2, 5])
def test_morph_given_its_ends_samples_only_the_stages_between(model, monkeypatch, stages):
    # The app passes the trajectories' final images: the same morph, two stages fewer in every model call.
    settings = Settings(steps=3, guidance=3.0, seed=4)
    run = check_morph(model, "sun", "moon", stages, settings)
    *_, full = morph_steps(model, "sun", "moon", stages, run)
    batches = counted_batches(model, monkeypatch)
    ends = (full.images[0] + 1, full.images[-1])  # marked, to see that they are used as given
    *_, given = morph_steps(model, "sun", "moon", stages, run, ends=ends)
    assert batches == ([2 * (stages - 2)] * 3 if stages > 2 else [])
    assert given.images.shape == full.images.shape and given.images.dtype == np.uint8
    np.testing.assert_array_equal(given.images[0], ends[0])
    np.testing.assert_array_equal(given.images[-1], ends[1])
    np.testing.assert_allclose(given.images[1:-1], full.images[1:-1], atol=1)
    np.testing.assert_allclose(given.weights, full.weights)
