"""The embedded model's trainer: loss weighting, resumable checkpoints, export that load_model reads.

A tiny random dataset stands in for OpenMoji so this runs in seconds; the real data path
(rendering the font, encoding captions) is exercised by the shipped model itself.
"""

import json

import pytest
import torch

import conjure
from training import train


def test_loss_weights_move_the_effort_to_the_noisy_steps():
    abar = train.make_scheduler().alphas_cumprod
    snr = abar / (1 - abar)
    w = train.loss_weights(abar, gamma=5.0, floor=0.25, cap=20.0)
    assert torch.isclose(w.mean(), torch.tensor(1.0))
    # in x0 terms the weight is clamp(SNR, 0.25, 5), wherever the cap does not bind
    x0 = w * snr
    free = (w / w.max() < 1 - 1e-6)
    assert torch.allclose(x0[free] / x0[free][snr[free] > 5].max(), snr[free].clamp(0.25, 5) / 5, rtol=1e-4)
    assert w[900] > 10 * w[100] and w[999] == w.max()
    assert torch.allclose(train.loss_weights(abar, gamma=0, floor=0), torch.ones(1000))  # the plain loss


def test_learning_rate_warms_up_holds_and_cools_down_towards_zero():
    rate = [train.learning_rate(s, 1e-3, warmup=10, total=100, cooldown=20) for s in range(100)]
    assert rate[0] == pytest.approx(1e-4) and rate[9] == rate[50] == rate[80] == pytest.approx(1e-3)
    assert rate[90] == pytest.approx(0.5e-3) and rate[99] == pytest.approx(0.05e-3)  # the last step taken is 99
    assert all(a >= b for a, b in zip(rate[80:], rate[81:]))
    assert train.learning_rate(99, 1e-3, warmup=10, total=100, cooldown=0) == 1e-3  # no cool-down: constant


def test_rescaling_the_pooled_input_keeps_the_function():
    torch.manual_seed(0)
    unet = train.make_unet(width=32)
    with torch.no_grad():  # a trained-looking projection, not the zero-ish init
        unet.class_embedding.linear_1.weight.normal_()
    from diffusers.training_utils import EMAModel

    ema = EMAModel(unet.parameters(), decay=0.9)
    optimizer = torch.optim.AdamW(unet.parameters())
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 700])
    tokens, pooled = torch.randn(2, 4, 384), torch.nn.functional.normalize(torch.randn(2, 384), dim=-1)
    with torch.no_grad():
        before = unet(x, t, encoder_hidden_states=tokens, class_labels=pooled).sample
        train.rescale_pooled_input(unet, ema, optimizer, 1 / 20)
        after = unet(x, t, encoder_hidden_states=tokens, class_labels=pooled * 20).sample
    assert torch.allclose(before, after, atol=1e-5)
    weight = unet.class_embedding.linear_1.weight
    index = [i for i, q in enumerate(unet.parameters()) if q is weight][0]
    assert torch.equal(ema.shadow_params[index], weight)  # the EMA copy is rescaled alike


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """train.main sets torch's thread count for the whole process (--threads); give it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_run(tmp_path):
    """A run folder whose dataset cache holds 6 random 32x32 images with real MiniLM captions."""
    from conjure.minilm import MiniLM

    captions = ["", "a tiger", "tiger", "an apple", "a red apple", "a car", "a red car", "a sun", "the sun",
                "a moon", "the moon", "a cat", "a cat face"]
    out = MiniLM(max_tokens=train.CAPTION_TOKENS)(captions)
    torch.save({
        "images": torch.rand(6, 3, 32, 32) * 2 - 1,
        "caption_range": torch.tensor([[1 + 2 * i, 3 + 2 * i] for i in range(6)]),
        "weights": torch.full((6,), 1 / 6, dtype=torch.float64),
        "captions": captions, "chars": list("abcdef"),
        "tokens": out.tokens.half(), "masks": out.mask.bool(), "pooled": out.pooled,
    }, tmp_path / "dataset.pt")
    return tmp_path


def test_training_checkpoints_resumes_and_exports_a_loadable_model(tiny_run):
    args = ["--run", str(tiny_run), "--export", str(tiny_run / "model"), "--width", "32", "--batch-size", "4",
            "--threads", "1", "--checkpoint-every", "1"]
    train.main(args + ["--steps", "2"])
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 2 and len(state["log"]) == 2

    train.main(args + ["--steps", "3"])  # picks up at step 2, not from scratch
    state = torch.load(tiny_run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 3 and [s for s, _ in state["log"]] == [1, 2, 3]
    assert (tiny_run / "loss.csv").read_text().splitlines()[1:] == [f"{s},{l:.5f}" for s, l in state["log"]]

    meta = json.loads((tiny_run / "model" / "conjure.json").read_text())
    assert meta["training"]["steps"] == 3 and meta["pooled_scale"] == train.POOLED_SCALE
    assert meta["training"]["command"].endswith("--checkpoint-every 1 --steps 3")  # the whole command, to rerun
    card = (tiny_run / "model" / "README.md").read_text()
    assert "CC BY-SA 4.0" in card and "Twemoji" in card and "| 0–3 |" in card  # one history row: this run
    assert meta["training"]["history"] == [{**meta["training"]["history"][0], "from_step": 0, "to_step": 3}]

    # hand-written notes below the marker survive the next export
    (tiny_run / "model" / "README.md").write_text(card + "Looked at by a person: fine.\n")
    train.main(args + ["--steps", "4"])
    assert (tiny_run / "model" / "README.md").read_text().endswith("Looked at by a person: fine.\n")
    model = conjure.load_model(str(tiny_run / "model"))
    assert model.pooled_scale == train.POOLED_SCALE
    assert conjure.score(model, "a tiger", "a red car", steps=2).jeffreys > 0


def test_every_base_emoji_weighs_the_same_whatever_its_skin_tones():
    import numpy as np

    concepts = [{"base": "A", "skin_tone": None}, {"base": "B", "skin_tone": None},
                *[{"base": "B", "skin_tone": t} for t in "12345"]]
    concept_of = np.repeat(np.arange(len(concepts)), 3)  # three styles each
    w = train.image_weights(concepts, concept_of)
    assert float(w.sum()) == pytest.approx(1.0)
    per_base = {b: float(w[[i for i, c in enumerate(concept_of) if concepts[c]["base"] == b]].sum()) for b in "AB"}
    assert per_base["A"] == pytest.approx(per_base["B"])
    assert float(w[3:6].sum()) == pytest.approx(per_base["B"] / 2)  # B's default form keeps half of B


def test_captions_from_cldr_and_datasource_names():
    from training import emoji_data

    assert emoji_data.unified_to_char("1F385-1F3FB") == "🎅🏻"
    assert emoji_data.datasource_names({"name": "FATHER CHRISTMAS", "short_names": ["santa", "flag-eg", "+1"]}) == [
        "father christmas", "santa"]
    assert emoji_data.captions_for(["owl"])[:3] == ["owl", "an owl", "an emoji of an owl"]


def test_reweighing_styles_gives_the_chosen_styles_their_share_and_keeps_proportions():
    weights = torch.tensor([0.1, 0.3, 0.2, 0.4])
    style_of = torch.tensor([0, 1, 2, 2])
    out = train.reweigh_styles(weights, style_of, ["openmoji", "mdi", "game-icons"], ("mdi", "game-icons"), 0.25)
    assert torch.isclose(out.sum(), torch.tensor(1.0, dtype=out.dtype))
    assert torch.isclose(out[1:].sum(), torch.tensor(0.25, dtype=out.dtype))  # mdi and game-icons together
    assert torch.isclose(out[3] / out[2], torch.tensor(2.0, dtype=out.dtype))  # proportions within the group
    with pytest.raises(SystemExit):  # no image of the chosen styles to give a share to
        train.reweigh_styles(weights, torch.zeros(4, dtype=torch.long), ["openmoji"], ("mdi",), 0.25)


def test_monochrome_tag_names_the_style_in_one_colour_captions_and_reuses_cached_encodings(tmp_path, monkeypatch):
    import numpy as np

    folder = tmp_path / "data"
    folder.mkdir()
    # two concepts; the tiger drawn in a colour style and a one-colour style, the anchor only in one colour
    np.savez(folder / "images.npz", images=np.zeros((3, 32, 32, 3), np.uint8), concept=np.array([0, 0, 1]),
             style=np.array([0, 1, 1]))
    concepts = [{"char": "🐅", "base": "1F405", "skin_tone": None, "captions": ["tiger", "a tiger"]},
                {"char": "", "base": "icon:anchor", "skin_tone": None, "captions": ["anchor"]}]
    (folder / "concepts.json").write_text(json.dumps(concepts))
    (folder / "manifest.json").write_text(json.dumps({"styles": ["twitter", "game-icons"]}))
    encoded = []
    real_encode = train.encode_captions
    monkeypatch.setattr(train, "encode_captions", lambda captions: encoded.append(captions) or real_encode(captions))

    cache = tmp_path / "dataset.pt"
    plain = train.load_dataset(cache, folder)
    assert [plain["captions"][slice(*r)] for r in plain["caption_range"].tolist()] == [
        ["tiger", "a tiger"], ["tiger", "a tiger"], ["anchor"]]

    tagged = train.load_dataset(cache, folder, "black and white")
    assert [tagged["captions"][slice(*r)] for r in tagged["caption_range"].tolist()] == [
        ["tiger", "a tiger"], ["tiger, black and white", "a tiger, black and white"], ["anchor, black and white"]]
    assert encoded[1] == ["a tiger, black and white", "anchor, black and white", "tiger, black and white"]
    row = tagged["captions"].index("a tiger")  # taken from the first cache, not encoded again
    assert torch.equal(tagged["tokens"][row], plain["tokens"][plain["captions"].index("a tiger")])
    assert train.load_dataset(cache, folder, "black and white")["monochrome_tag"] == "black and white"
    assert len(encoded) == 2  # the third call read the cache as it was

    # scoped to concepts that also have colour pictures: the anchor, drawn only in one colour, keeps its name
    scoped = train.load_dataset(cache, folder, "black and white", "with-colour")
    assert [scoped["captions"][slice(*r)] for r in scoped["caption_range"].tolist()] == [
        ["tiger", "a tiger"], ["tiger, black and white", "a tiger, black and white"], ["anchor"]]
    assert len(encoded) == 2  # every caption it needs was in the cache


def test_cldr_keywords_become_keyword_captions_shared_by_skin_tones(tmp_path):
    import io
    import tarfile

    from training import emoji_data

    entries = [{"hexcode": "1F405", "tags": ["animal", "big", "tiger", "zoo"]},
               {"hexcode": "1F44B", "tags": ["hand", "g2g", "hello", "hand"]},
               {"hexcode": "2764", "tags": ["love"]}, {"hexcode": "1F1E6"}]  # none: left out
    raw = json.dumps(entries).encode()
    with tarfile.open(tmp_path / "emojibase.tgz", "w:gz") as tar:
        info = tarfile.TarInfo("package/en/data.json")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    keywords = emoji_data.read_keywords(tmp_path / "emojibase.tgz")
    assert keywords == {"1F405": ["animal", "big", "tiger", "zoo"], "1F44B": ["hand", "g2g", "hello", "hand"],
                        "2764": ["love"]}

    concepts = [{"base": "1F405", "names": ["tiger"]},
                {"base": "1F44B", "names": ["waving hand"]},
                {"base": "1F44B", "names": ["waving hand: dark skin tone"]},  # a skin-tone variant: the base's keywords
                {"base": "2764-FE0F", "names": ["red heart"]},  # the variation selector does not hide it
                {"base": "1F600", "names": ["grinning face"]}]
    emoji_data.add_keywords(concepts, keywords)
    assert [c["keywords"] for c in concepts] == [["animal", "big", "zoo"], ["hand", "hello"], ["hand", "hello"],
                                            ["love"], []]  # no name again, no repeat, no chat shorthand
    assert concepts[0]["keyword_captions"][:3] == ["animal", "an animal", "an emoji of an animal"]
    assert concepts[4]["keyword_captions"] == []


def test_keyword_share_captions_that_share_of_the_batch_by_keywords(tmp_path):
    import numpy as np

    folder = tmp_path / "data"
    folder.mkdir()
    # a base-style folder (training.emoji_data: no "styles" in the manifest); the tiger has keywords, the apple none
    np.savez(folder / "images.npz", images=np.zeros((2, 32, 32, 3), np.uint8), concept=np.array([0, 1]),
             style=np.array([0, 1]))
    concepts = [{"char": "🐅", "base": "1F405", "skin_tone": None, "captions": ["tiger", "a tiger"],
                 "keyword_captions": ["animal", "an animal", "predator"]},
                {"char": "🍎", "base": "1F34E", "skin_tone": None, "captions": ["apple"]}]
    (folder / "concepts.json").write_text(json.dumps(concepts))
    (folder / "manifest.json").write_text(json.dumps({"images_per_style": {"openmoji": 1, "twitter": 1}}))
    data = train.load_dataset(tmp_path / "dataset.pt", folder, keywords=True)
    assert [data["captions"][slice(*r)] for r in data["keyword_range"].tolist()] == [
        ["animal", "an animal", "predator"], []]

    # tell captions apart by their rows: token state k is filled with k
    rows = torch.arange(len(data["captions"]), dtype=torch.float32)
    data["tokens"] = rows[:, None, None].expand(-1, 2, 3).clone()

    def captions(keyword_share):
        generator = torch.Generator().manual_seed(0)
        _, tokens, _, _ = train.sample_batch(data, 400, 0.0, generator, keyword_share)
        return [data["captions"][int(k)] for k in tokens[:, 0, 0]]

    names_only = captions(0.0)
    assert set(names_only) == {"tiger", "a tiger", "apple"}
    all_keywords = captions(1.0)
    assert set(all_keywords) == {"animal", "an animal", "predator", "apple"}  # the apple has no keywords: its name
    some = captions(0.3)
    tiger = [c for c in some if c != "apple"]
    share = sum(c in ("animal", "an animal", "predator") for c in tiger) / len(tiger)
    assert 0.2 < share < 0.4


def test_condition_noise_perturbs_captions_but_not_the_null_caption_and_keeps_pooled_on_the_sphere():
    n, length, dim = 3, 4, 8
    captions = ["", "tiger", "apple"]
    data = {"weights": torch.tensor([0.0, 1.0]), "caption_range": torch.tensor([[1, 2], [2, 3]]),
            "images": torch.zeros(2, 3, 32, 32), "captions": captions,
            "tokens": torch.randn(n, length, dim).half(), "masks": torch.tensor([[1, 1, 0, 0]] * n).bool(),
            "pooled": torch.nn.functional.normalize(torch.randn(n, dim), dim=-1)}

    def batch(noise, dropout=0.0):
        return train.sample_batch(data, 200, dropout, torch.Generator().manual_seed(0), condition_noise=noise)

    _, tokens, mask, pooled = batch(0.0)
    assert torch.equal(tokens, data["tokens"][2].float().expand_as(tokens))  # only the apple is drawn
    _, noisy, mask, noisy_pooled = batch(0.5)
    exact = data["tokens"][2].float()
    moved = (noisy - exact).norm(dim=-1)
    assert (moved[:, :2] > 0).all() and (moved[:, 2:] == 0).all()  # the caption's tokens move, the padding does not
    relative = moved[:, :2] / exact[:2].pow(2).mean(-1).sqrt()
    assert relative.max() < 0.5 * dim**0.5 * 2  # sigma <= 0.5 of the RMS per coordinate (with room for chance)
    assert torch.allclose(noisy_pooled.norm(dim=-1), torch.full((200,), train.POOLED_SCALE))
    assert not torch.allclose(noisy_pooled, pooled)

    _, tokens, _, pooled = batch(0.5, dropout=1.0)  # every caption dropped: the null caption, exactly
    assert torch.equal(tokens, data["tokens"][0].float().expand_as(tokens))
    assert torch.allclose(pooled, data["pooled"][0].expand_as(pooled) * train.POOLED_SCALE)
