"""The widened training set: Iconify names read as things, SVGs rendered by resvg, sets joined to the emoji base.

A made-up two-icon set stands in for the npm packages, so this runs offline in a second.
"""

import numpy as np

from training import iconify_data


def test_icon_names_are_things_not_ui_glyphs():
    assert iconify_data.icon_name("car-outline") == "car"
    assert iconify_data.icon_name("fire-truck") == "fire truck"
    assert iconify_data.icon_name("cat-48") == "cat"
    assert iconify_data.icon_name("car-off") is None  # a UI state, not a thing
    assert iconify_data.icon_name("account-plus") is None
    assert iconify_data.icon_name("3d-glasses") is None  # digits name a version or a count, rarely a thing
    assert iconify_data.icon_name("big-red-fire-truck-toy") is None  # too long to be a name people type


def test_code_points_join_however_a_set_spells_them():
    assert iconify_data.code_key("1F468-200D-1F33E") == iconify_data.code_key("1f468-200d-1f33e")
    assert iconify_data.code_key("2764-FE0F") == iconify_data.code_key("2764")
    assert iconify_data.private_use("e000") and not iconify_data.private_use("1f42f")


ICONS = {"width": 24, "height": 24, "icons": {
    "tiger": {"body": '<circle cx="12" cy="12" r="10" fill="currentColor"/>'},
    "lighthouse-outline": {"body": '<rect x="8" y="2" width="8" height="20" fill="#d22"/>'},
    "account-plus": {"body": '<rect x="2" y="2" width="20" height="20" fill="currentColor"/>'},
}, "aliases": {"beacon": {"parent": "lighthouse-outline"}, "tiger-flipped": {"parent": "tiger", "hFlip": True}}}


def test_an_svg_renders_on_white_at_the_training_size():
    picture = np.asarray(iconify_data.rasterise(iconify_data.svg_of(ICONS, "tiger"), 32))
    assert picture.shape == (32, 32, 3)
    assert picture[0, 0].tolist() == [255, 255, 255] and picture[16, 16].max() < 40  # white ground, black disc
    red = np.asarray(iconify_data.rasterise(iconify_data.svg_of(ICONS, "lighthouse-outline"), 32))[16, 16]
    assert red[0] > 150 and red[1] < 80  # colours kept
    assert iconify_data.rasterise("<svg xmlns='http://www.w3.org/2000/svg'/>", 32) is None  # blank: dropped


def test_icons_join_an_emoji_by_name_or_add_a_concept(monkeypatch):
    base = [{"char": "🐅", "unified": "1F405", "base": "1F405", "skin_tone": None, "category": "Animals",
             "names": ["tiger"], "captions": ["tiger", "a tiger"]}]
    concepts = iconify_data.Concepts(base)
    monkeypatch.setitem(iconify_data.ICONIFY_SETS, "test-icons", ("0", "", "icon"))
    picks = dict(iconify_data.pictures_of_set("test-icons", ICONS, {}, concepts))
    assert picks == {"tiger": 0, "lighthouse-outline": 1}  # the UI glyph is left out
    lighthouse = concepts.items[1]
    assert lighthouse["names"] == ["lighthouse", "beacon"]  # the plain alias names it too; the flipped one does not
    assert "an icon of a lighthouse" in lighthouse["captions"] and "a beacon" in lighthouse["captions"]
