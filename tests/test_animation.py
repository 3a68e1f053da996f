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
    # NaN differences draw as "no difference": the map's coldest colour over the grey image, nothing else
    cold = np.unique(out.reshape(-1, 3), axis=0)
    assert len(cold) == 1 and (out == animation.difference_map(np.zeros((8, 8), np.float32), under)).all()
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
    along_a = ImageColor.getrgb(animation.COLOR_A)
    # The per-step curve along A is drawn further on later frames.
    assert (last == along_a).all(-1).sum() > (first == along_a).all(-1).sum()


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


# --- video ------------------------------------------------------------------------------------


def random_trajectory_frames(steps=4, panel=64):
    rng = np.random.default_rng(0)
    images = [np.kron(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), np.ones((4, 4, 1), np.uint8))
              for _ in range(2 * steps)]  # 32 px blocky pictures, like the embedded model's
    return animation.trajectory_frames(images[:steps], images[steps:], [rng.random((32, 32)) for _ in range(steps)],
                                       per_step(steps), "snow leopard", "bengal tiger", panel=panel)


def gif_frames(path):
    with Image.open(path) as gif:
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append(np.asarray(gif.convert("RGB")))
    return frames


@pytest.mark.parametrize("durations, n, fps, repeats", [
    ([1200, 300, 300, 1200], 4, 10, [12, 3, 3, 12]),  # the morph: period 300 ms, refined to 10 fps
    ([400, 400, 2000], 3, 10, [4, 4, 20]),  # the trajectories
    (100, 3, 10, [1, 1, 1]),
    ([40, 80], 2, 25, [1, 2]),
    ([7, 14], 2, 30, [1, 1]),  # no common period of at least 1/60 s: rounded to 1/30 s, at least a frame
    ([1000], 1, 10, [10]),
])
def test_video_timing_keeps_the_gif_timing(durations, n, fps, repeats):
    rate, counts = animation.video_timing(durations, n)
    assert rate == fps and counts == repeats
    if fps != 30:
        ms = [durations] * n if isinstance(durations, int) else durations
        assert [c / rate * 1000 for c in counts] == pytest.approx(ms)  # exactly the GIF's durations


def test_video_timing_refuses_nonsense():
    with pytest.raises(ValueError, match="3 durations for 2 frames"):
        animation.video_timing([100, 100, 100], 2)
    with pytest.raises(ValueError, match="positive"):
        animation.video_timing([100, 0], 2)


def test_mp4_opens_with_imageio_and_matches_the_gif(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    frames = random_trajectory_frames()
    durations = animation.trajectory_durations(len(frames))  # 400, 400, 400, 2000
    gif = animation.write_gif(frames, tmp_path / "t.gif", durations)
    mp4 = animation.write_video(frames, tmp_path / "t.mp4", durations)
    assert mp4 == tmp_path / "t.mp4" and not list(tmp_path.glob(".*"))  # no partial file left behind

    meta = iio.immeta(mp4, plugin="FFMPEG")
    assert meta["codec"] == "h264" and meta["pix_fmt"].startswith("yuv420p") and meta["fps"] == 10
    assert meta["duration"] == pytest.approx(sum(durations) / 1000)
    video = iio.imread(mp4, plugin="FFMPEG", index=None)
    width, height = frames[0].size
    assert video.shape == (sum(durations) // 100, height, width, 3)  # one frame per 0.1 s, ends held
    shown = gif_frames(gif)

    def error(a, b):
        return np.abs(a.astype(int) - b.astype(int)).mean()

    for i in (0, -1):  # the same pictures as the GIF's, up to the codec's error and the GIF's palette error
        source = np.asarray(frames[i])
        assert error(video[i], source) < 3
        assert error(video[i], shown[i]) < error(shown[i], source) + 3
        assert error(video[i], shown[i]) < error(video[i], shown[-1 - i])  # and not the other end's


def test_webm_and_odd_sides(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    rng = np.random.default_rng(1)
    frames = [Image.fromarray(np.full((33, 51, 3), rng.integers(0, 255, 3), np.uint8)) for _ in range(3)]
    webm = animation.write_animation(frames, tmp_path / "odd.webm", [300, 300, 600])
    meta = iio.immeta(webm, plugin="FFMPEG")
    assert meta["codec"] == "vp9" and meta["duration"] == pytest.approx(1.2)
    video = iio.imread(webm, plugin="FFMPEG", index=None)
    assert video.shape == (12, 34, 52, 3)  # padded to even sides, 10 fps
    assert np.abs(video[0, :33, :51].astype(int) - np.asarray(frames[0])).mean() < 3
    assert np.abs(video[-1, :33, :51].astype(int) - np.asarray(frames[-1])).mean() < 3


def test_write_animation_picks_the_format_by_suffix(tmp_path):
    frames = random_trajectory_frames(steps=2)
    assert Image.open(animation.write_animation(frames, tmp_path / "a.GIF", 100)).format == "GIF"
    with pytest.raises(animation.ConjureError, match="animation formats are .gif, .mp4, .webm"):
        animation.write_animation(frames, tmp_path / "a.png", 100)
    with pytest.raises(animation.ConjureError, match="video formats are .mp4, .webm"):
        animation.write_video(frames, tmp_path / "a.avi", 100)
    with pytest.raises(ValueError, match="one size"):
        animation.write_video([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 10, 3), np.uint8)], tmp_path / "b.mp4")


def test_no_ffmpeg_is_a_clear_error_and_leaves_no_file(tmp_path, monkeypatch):
    frames = random_trajectory_frames(steps=2)
    monkeypatch.setitem(__import__("sys").modules, "imageio_ffmpeg", None)  # the plugin fails to load
    reason = animation.video_unavailable()
    assert reason and "ffmpeg is not available" in reason and "pip install imageio-ffmpeg" in reason
    with pytest.raises(animation.VideoError, match="cannot write t.mp4: ffmpeg is not available"):
        animation.write_video(frames, tmp_path / "t.mp4")
    monkeypatch.undo()

    monkeypatch.setenv("IMAGEIO_FFMPEG_EXE", str(tmp_path / "no-such-ffmpeg"))  # a broken install
    with pytest.raises(animation.VideoError, match="could not write t.mp4"):
        animation.write_video(frames, tmp_path / "t.mp4")
    assert list(tmp_path.iterdir()) == []


def test_pixel_art_videos_are_enlarged_by_nearest_neighbour(tmp_path):
    iio = pytest.importorskip("imageio.v3")
    assert animation.video_scale(32, animation.MORPH_PANEL) == animation.video_scale(64, 160) == 2
    assert animation.video_scale(512, animation.MORPH_PANEL) == animation.video_scale(128, 160) == 1
    frames = random_trajectory_frames(steps=2)
    video = iio.imread(animation.write_video(frames, tmp_path / "t.mp4", 500, scale=2), plugin="FFMPEG", index=None)
    big = np.kron(np.asarray(frames[-1]), np.ones((2, 2, 1), np.uint8))
    assert video.shape == (10, *big.shape)
    # Every frame pixel a 2x2 block: the half-resolution colour of yuv420p no longer smears pixels together.
    small = iio.imread(animation.write_video(frames, tmp_path / "s.mp4", 500), plugin="FFMPEG", index=None)[-1]
    assert np.abs(video[-1].astype(int) - big).mean() < np.abs(small.astype(int) - np.asarray(frames[-1])).mean()
    with pytest.raises(ValueError, match="scale"):
        animation.write_video(frames, tmp_path / "x.mp4", scale=0)
