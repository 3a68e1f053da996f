import numpy as np
import pytest
from PIL import Image, ImageColor

from conjure import animation


def per_step(steps=4):
    return {"kl_ab": [8.0, 4.0, 2.0, 0.0][:steps], "kl_ba": [6.0, 3.0, 1.0, 0.0][:steps]}


def test_difference_map_is_hottest_where_the_difference_is_largest():
    d = np.zeros((8, 8), np.float32)
    d[2, 5] = 3.0
    heat = animation.difference_map(d)
    assert heat.shape == (8, 8, 3) and heat.dtype == np.uint8
    brightness = heat.astype(int).sum(-1)
    assert np.unravel_index(brightness.argmax(), brightness.shape) == (2, 5)
    assert (heat[2, 5] == animation.HEAT_LUT[255]).all() and (heat[0, 0] == animation.HEAT_LUT[0]).all()


def test_difference_map_over_an_image_takes_its_size_and_survives_nan_and_zero():
    under = np.full((32, 32, 3), 200, np.uint8)
    d = np.full((8, 8), np.nan, np.float32)
    out = animation.difference_map(d, under)
    assert out.shape == (32, 32, 3)
    assert np.isfinite(out).all()
    assert animation.difference_map(np.zeros((4, 4))).max() == animation.HEAT_LUT[0].max()


@pytest.mark.parametrize("value, ceiling", [(0.0, 1.0), (0.3, 0.5), (1.0, 1.0), (1.01, 2.0), (2.5, 5.0),
                                            (7.0, 10.0), (1234.0, 2000.0), (float("nan"), 1.0)])
def test_nice_ceiling(value, ceiling):
    assert animation.nice_ceiling(value) == pytest.approx(ceiling)


def test_resize_keeps_small_images_crisp():
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = 255
    big = np.asarray(animation.resize(image, 8))
    assert big.shape == (8, 8, 3)
    assert set(np.unique(big)) == {0, 255}  # nearest neighbour: no blended pixels


def test_trajectory_frames_show_both_images_and_grow_the_curve():
    steps = 4
    red, blue = np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8)
    red[..., 0], blue[..., 2] = 255, 255
    frames = animation.trajectory_frames([red] * steps, [blue] * steps, [np.ones((16, 16))] * steps, per_step(),
                                         "snow leopard", "bengal tiger", panel=64)
    assert len(frames) == steps and len({f.size for f in frames}) == 1
    first, last = np.asarray(frames[0]), np.asarray(frames[-1])
    assert (first == [255, 0, 0]).all(-1).sum() >= 64 * 64 and (first == [0, 0, 255]).all(-1).sum() >= 64 * 64
    total = ImageColor.getrgb(animation.COLOR_TOTAL)
    # The running-total curve is drawn further on later frames.
    assert (last == total).all(-1).sum() > (first == total).all(-1).sum()


def test_morph_frames_one_per_stage():
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    frames = animation.morph_frames(images, np.linspace(0, 1, 5), "a", "b", panel=96)
    assert len(frames) == 5
    assert np.asarray(frames[2])[8:104, 8:104].shape == (96, 96, 3)


def test_write_gif_is_a_small_looping_animation(tmp_path):
    rng = np.random.default_rng(0)
    frames = animation.trajectory_frames([rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(4)],
                                         [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(4)],
                                         [rng.random((32, 32)) for _ in range(4)], per_step(), "a", "b")
    durations = animation.hold_ends(4, 400, 2000, hold_first=False)
    path = animation.write_gif(frames, tmp_path / "t.gif", durations)
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.is_animated and gif.n_frames == 4
        assert gif.info["loop"] == 0
        shown = []
        for i in range(gif.n_frames):
            gif.seek(i)
            shown.append(gif.info["duration"])
        assert shown == [400, 400, 400, 2000]
    assert path.stat().st_size < 300_000


def test_hold_ends():
    assert animation.hold_ends(4, 100, 900) == [900, 100, 100, 900]
    assert animation.hold_ends(3, 100, 900, hold_first=False) == [100, 100, 900]
    assert animation.hold_ends(1, 100, 900) == [900]
