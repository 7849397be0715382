"""Triggers (BadNets arXiv 1708.06733; blended injection arXiv 1712.05526): exact pixels."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from poisonlab.errors import PoisonlabError
from poisonlab.icons import ICONS, render_icon
from poisonlab.triggers import (
    DEFAULT_PATTERN,
    TRIGGERS,
    BlendTrigger,
    ImageTrigger,
    PatchTrigger,
    PatternTrigger,
    SinglePixelTrigger,
    Trigger,
    build_trigger,
    describe,
    stamp_rgba,
)

PATTERN = torch.tensor(DEFAULT_PATTERN)


def changed(x: torch.Tensor, y: torch.Tensor) -> set[tuple[int, int]]:
    """(row, col) of pixels that differ in any image or channel."""
    return {tuple(p) for p in (x != y).any(dim=(0, 1)).nonzero().tolist()}


def block(top: int, left: int, h: int, w: int) -> set[tuple[int, int]]:
    return {(r, c) for r in range(top, top + h) for c in range(left, left + w)}


def write_png(path, rgba: list[list[tuple[int, int, int, int]]]) -> str:
    Image.fromarray(np.array(rgba, dtype=np.uint8), "RGBA").save(path)
    return str(path)


# ----------------------------------------------------------------------------- single pixel

@pytest.mark.parametrize("corner,pixel", [
    ("bottom-right", (4, 4)), ("bottom-left", (4, 1)), ("top-right", (1, 4)), ("top-left", (1, 1)),
])
def test_single_pixel_corners_default_margin_1(corner, pixel):
    x = torch.zeros(2, 1, 6, 6)
    y = build_trigger({"kind": "single-pixel", "corner": corner}).apply(x)
    assert changed(x, y) == {pixel}
    assert torch.equal(y[:, 0, pixel[0], pixel[1]], torch.ones(2))


@pytest.mark.parametrize("corner,pixel", [
    ("bottom-right", (4, 6)), ("bottom-left", (4, 0)), ("top-right", (0, 6)), ("top-left", (0, 0)),
])
def test_single_pixel_corners_margin_0_per_channel_value(corner, pixel):
    x = torch.zeros(1, 3, 5, 7)
    y = build_trigger({"kind": "single-pixel", "corner": corner, "margin": 0, "value": [0.25, 0.5, 0.75]}).apply(x)
    assert changed(x, y) == {pixel}
    assert y[0, :, pixel[0], pixel[1]].tolist() == [0.25, 0.5, 0.75]


def test_single_pixel_default_is_bottom_right():
    assert changed(torch.zeros(1, 3, 5, 7), SinglePixelTrigger().apply(torch.zeros(1, 3, 5, 7))) == {(3, 5)}


def test_single_pixel_position():
    x = torch.full((1, 3, 5, 7), 0.5)
    y = build_trigger({"kind": "single-pixel", "position": [2, 6], "value": 0.0}).apply(x)
    assert changed(x, y) == {(2, 6)}
    assert y[0, :, 2, 6].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("center,pixel", [([0.5, 0.5], (3, 3)), ([0.0, 0.0], (0, 0)), ([1.0, 1.0], (5, 5)),
                                          ([0.0, 1.0], (0, 5)), ([0.25, 0.75], (1, 4))])
def test_single_pixel_center(center, pixel):
    x = torch.zeros(2, 1, 6, 6)
    y = build_trigger({"kind": "single-pixel", "center": center}).apply(x)
    assert changed(x, y) == {pixel}


# ----------------------------------------------------------------------------- pattern

def test_pattern_default_bottom_right_on_zeros_and_ones():
    t = PatternTrigger()
    x = torch.zeros(2, 1, 6, 6)
    y = t.apply(x)
    assert changed(x, y) == {(r, c) for r in range(2, 5) for c in range(2, 5) if PATTERN[r - 2, c - 2] == 1}
    assert torch.equal(y[:, 0, 2:5, 2:5], PATTERN.expand(2, 3, 3))
    ones = torch.ones(2, 1, 6, 6)
    y1 = t.apply(ones)  # 0 cells overwrite with black: the trigger looks the same on every image
    assert torch.equal(y1[:, 0, 2:5, 2:5], PATTERN.expand(2, 3, 3))
    assert changed(ones, y1) == {(r, c) for r in range(2, 5) for c in range(2, 5) if PATTERN[r - 2, c - 2] == 0}
    expected_mask = torch.zeros(6, 6)
    expected_mask[2:5, 2:5] = 1.0
    assert torch.equal(t.mask((1, 6, 6)), expected_mask)


@pytest.mark.parametrize("corner,origin", [
    ("bottom-right", (1, 3)), ("bottom-left", (1, 1)), ("top-right", (1, 3)), ("top-left", (1, 1)),
])
def test_pattern_corners_rgb(corner, origin):
    x = torch.zeros(1, 3, 5, 7)
    y = build_trigger({"kind": "pattern", "corner": corner, "value": [1.0, 0.5, 0.0]}).apply(x)
    top, left = origin
    expected = PATTERN[None] * torch.tensor([1.0, 0.5, 0.0]).view(3, 1, 1)
    assert torch.equal(y[0, :, top:top + 3, left:left + 3], expected)
    assert changed(x, y) <= block(top, left, 3, 3)
    assert changed(x, y) == {(top + r, left + c) for r, c in [(0, 0), (0, 2), (1, 1), (2, 0), (2, 2)]}


def test_pattern_none_cells_leave_pixels_and_custom_shape():
    t = build_trigger({"kind": "pattern", "pattern": [[1, None, 0.5]], "position": [0, 4], "value": [1, 0, 0.5]})
    x = torch.ones(1, 3, 5, 7)
    y = t.apply(x)
    assert changed(x, y) == {(0, 4), (0, 6)}
    assert y[0, :, 0, 4].tolist() == [1.0, 0.0, 0.5]
    assert y[0, :, 0, 6].tolist() == [0.5, 0.0, 0.25]
    assert t.mask((3, 5, 7))[0, 4:].tolist() == [1.0, 0.0, 1.0]
    assert t.mask((3, 5, 7)).sum() == 2


@pytest.mark.parametrize("shape,center,origin", [
    ((5, 7), [0.5, 0.5], (1, 2)), ((32, 32), [0.57, 0.82], (17, 25)), ((5, 7), [1.0, 1.0], (2, 4)),
    ((5, 7), [0.0, 0.0], (0, 0)),
])
def test_pattern_center_placement_clamped_inside(shape, center, origin):
    x = torch.zeros(1, 1, *shape)
    y = build_trigger({"kind": "pattern", "center": center}).apply(x)
    assert torch.equal(y[0, 0, origin[0]:origin[0] + 3, origin[1]:origin[1] + 3], PATTERN)
    assert y.sum() == PATTERN.sum()


# ----------------------------------------------------------------------------- patch

def test_patch_pixels_top_left_yellow():
    x = torch.zeros(1, 3, 5, 7)
    y = build_trigger({"kind": "patch", "color": [1, 1, 0], "size": 2, "corner": "top-left", "margin": 0}).apply(x)
    assert changed(x, y) == block(0, 0, 2, 2)
    assert torch.equal(y[0, :, :2, :2], torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1).expand(3, 2, 2))


@pytest.mark.parametrize("cfg,shape,region", [
    ({"size": 0.1}, (32, 32), block(28, 28, 3, 3)),                      # the BadNets yellow square size
    ({"size": 0.1}, (8, 8), {(6, 6)}),                                   # never below 1 pixel
    ({"size": [2, 3]}, (6, 6), block(3, 2, 2, 3)),                       # rectangle in pixels
    ({"size": [0.5, 0.25], "position": [0, 0]}, (6, 8), block(0, 0, 3, 2)),  # fractions per axis
    ({"size": 1.0, "margin": 0}, (4, 6), block(0, 2, 4, 4)),             # whole shorter side
    ({"size": 2, "center": [0.5, 0.5]}, (6, 6), block(2, 2, 2, 2)),
    ({"size": 2, "corner": "bottom-left"}, (5, 7), block(2, 1, 2, 2)),
    ({"size": 2, "corner": "top-right"}, (5, 7), block(1, 4, 2, 2)),
])
def test_patch_sizes_and_placements(cfg, shape, region):
    x = torch.zeros(2, 1, *shape)
    t = build_trigger({"kind": "patch", **cfg})
    y = t.apply(x)
    assert changed(x, y) == region
    assert set(map(tuple, t.mask((1, *shape)).nonzero().tolist())) == region


def test_patch_rgb_colour_on_grey_and_four_channel_images():
    t = build_trigger({"kind": "patch", "color": [1, 1, 0], "size": 1, "position": [0, 0]})
    grey = t.apply(torch.zeros(1, 1, 3, 3))
    assert grey[0, 0, 0, 0].item() == pytest.approx(0.299 + 0.587, abs=1e-6)
    four = t.apply(torch.zeros(1, 4, 3, 3))
    assert torch.allclose(four[0, :, 0, 0], torch.full((4,), 0.886), atol=1e-6)
    own = build_trigger({"kind": "patch", "color": [0.25, 0.5, 0.75, 1.0], "size": 1, "position": [2, 2]})
    assert own.apply(torch.zeros(1, 4, 3, 3))[0, :, 2, 2].tolist() == [0.25, 0.5, 0.75, 1.0]


def test_patch_colour_channel_mismatch_is_an_error():
    t = build_trigger({"kind": "patch", "color": [1, 0], "size": 1})
    with pytest.raises(PoisonlabError, match="2 values but the image has 3 channels"):
        t.apply(torch.zeros(1, 3, 5, 5))


# ----------------------------------------------------------------------------- image / alpha

HAND_RGB = torch.tensor([[[0.2, 0.4], [0.6, 0.8]], [[1.0, 0.0], [0.5, 0.25]], [[0.0, 1.0], [0.75, 0.125]]])
HAND_ALPHA = torch.tensor([[0.0, 0.5], [1.0, 0.5]])


def test_stamp_rgba_exact_alpha():
    x = torch.rand(2, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    y = stamp_rgba(x, torch.cat([HAND_RGB, HAND_ALPHA[None]]), 1, 2)
    assert changed(x, y) == {(1, 3), (2, 2), (2, 3)}                 # alpha 0 pixel (1, 2) untouched
    assert torch.equal(y[:, :, 1, 2], x[:, :, 1, 2])
    assert torch.equal(y[:, :, 2, 2], HAND_RGB[:, 1, 0].expand(2, 3))  # alpha 1: replaced
    for r, c in [(0, 1), (1, 1)]:                                       # alpha 0.5: exact half blend
        assert torch.equal(y[:, :, 1 + r, 2 + c], x[:, :, 1 + r, 2 + c] * 0.5 + HAND_RGB[:, r, c] * 0.5)


def test_image_trigger_from_png_exact(tmp_path):
    pixels = [[(255, 0, 0, 0), (0, 255, 0, 128)], [(0, 0, 255, 255), (255, 255, 255, 255)]]
    path = write_png(tmp_path / "hand.png", pixels)
    t = build_trigger({"kind": "image", "path": path, "size": 2, "position": [1, 2]})
    y = t.apply(torch.zeros(2, 3, 5, 5))
    rgba = torch.tensor(pixels, dtype=torch.uint8).permute(2, 0, 1).float() / 255
    assert changed(torch.zeros(2, 3, 5, 5), y) == {(1, 3), (2, 2), (2, 3)}
    assert torch.equal(y[0, :, 1:3, 2:4], rgba[:3] * rgba[3])
    assert torch.equal(t.mask((3, 5, 5))[1:3, 2:4], rgba[3])
    assert t.mask((3, 5, 5)).sum() == rgba[3].sum()
    grey = t.apply(torch.zeros(1, 1, 5, 5))[0, 0, 1:3, 2:4]
    luma = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
    assert torch.allclose(grey, luma * rgba[3], atol=1e-6)


def test_image_trigger_file_keeps_aspect_ratio(tmp_path):
    path = write_png(tmp_path / "tall.png", [[(9, 9, 9, 255)] * 2] * 4)     # 4 rows x 2 cols
    t = ImageTrigger(path=path, size=4, corner="top-left", margin=0)
    assert set(map(tuple, t.mask((3, 8, 8)).nonzero().tolist())) == block(0, 0, 4, 2)


def test_image_trigger_builtin_icon_matches_render():
    t = build_trigger({"kind": "image", "icon": "flower", "size": 8, "corner": "top-left", "margin": 0})
    x = torch.zeros(1, 3, 16, 16)
    y = t.apply(x)
    icon = render_icon("flower", 8)
    assert changed(x, y) <= block(0, 0, 8, 8)
    assert torch.equal(t.mask((3, 16, 16))[:8, :8], icon[3])
    assert torch.allclose(y[0, :, :8, :8], icon[:3] * icon[3], atol=1e-6)
    rel = build_trigger({"kind": "image", "icon": "bomb"})               # default size 0.16 -> 5 px on 32
    assert rel.mask((3, 32, 32)).nonzero().min(0).values.tolist() >= [26, 26]
    assert changed(torch.zeros(1, 3, 32, 32), rel.apply(torch.zeros(1, 3, 32, 32))) <= block(26, 26, 5, 5)


def test_unreadable_image_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    t = ImageTrigger(path=str(bad), size=2)
    with pytest.raises(PoisonlabError, match="cannot read trigger image"):
        t.check_fits((3, 8, 8))


# ----------------------------------------------------------------------------- blend

def test_blend_noise_exact_formula_and_determinism():
    t = build_trigger({"kind": "blend", "alpha": 0.25, "seed": 3})
    x = torch.rand(3, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    key = t.apply(torch.zeros(1, 3, 5, 7))[0] / 0.25
    assert 0 <= key.min() and key.max() < 1 and key.std() > 0.1
    assert torch.equal(t.apply(x), (1 - 0.25) * x + 0.25 * key)
    assert torch.equal(BlendTrigger(alpha=0.25, seed=3).apply(x), t.apply(x))
    assert not torch.equal(BlendTrigger(alpha=0.25, seed=4).apply(x), t.apply(x))
    assert torch.equal(t.mask((3, 5, 7)), torch.full((5, 7), 0.25))
    default = BlendTrigger()
    assert (default.alpha, default.seed, default.key) == (0.2, 0, "noise")
    assert torch.allclose(default.apply(x), 0.8 * x + 0.2 * default.apply(torch.zeros(1, 3, 5, 7))[0] / 0.2, atol=1e-6)


def test_blend_icon_key_respects_transparency():
    t = build_trigger({"kind": "blend", "key": "flower", "alpha": 0.5})
    x = torch.rand(2, 3, 16, 16)
    y = t.apply(x)
    a = render_icon("flower", 16)[3]
    assert torch.allclose(t.mask((3, 16, 16)), 0.5 * a)
    untouched = a == 0
    assert untouched[0, 0] and untouched.any() and not untouched.all()
    assert torch.equal(y[:, :, untouched], x[:, :, untouched])
    assert (y[:, :, ~untouched] != x[:, :, ~untouched]).any()


def test_blend_key_from_file(tmp_path):
    path = write_png(tmp_path / "red.png", [[(255, 0, 0, 255)]])
    y = build_trigger({"kind": "blend", "path": path, "alpha": 0.5}).apply(torch.zeros(1, 3, 4, 6))
    assert torch.allclose(y[0, 0], torch.full((4, 6), 0.5)) and torch.equal(y[0, 1:], torch.zeros(2, 4, 6))


# ----------------------------------------------------------------------------- compose

def test_compose_order_and_mask():
    white = {"kind": "patch", "size": 2, "corner": "top-left", "margin": 0}
    black = {"kind": "single-pixel", "value": 0.0, "position": [0, 0]}
    x = torch.full((1, 1, 4, 4), 0.5)
    y = build_trigger({"kind": "compose", "triggers": [white, black]}).apply(x)
    assert y[0, 0, :2, :2].tolist() == [[0.0, 1.0], [1.0, 1.0]]
    y2 = build_trigger({"kind": "compose", "triggers": [black, white]}).apply(x)
    assert y2[0, 0, :2, :2].tolist() == [[1.0, 1.0], [1.0, 1.0]]
    both = build_trigger({"kind": "compose", "triggers": [white, {"kind": "blend", "alpha": 0.25}]})
    expected = torch.full((4, 4), 0.25)
    expected[:2, :2] = 1.0
    assert torch.equal(both.mask((1, 4, 4)), expected)
    steps = build_trigger({"kind": "blend", "alpha": 0.25}).apply(build_trigger(white).apply(x))
    assert torch.equal(both.apply(x), steps)


# ----------------------------------------------------------------------------- all kinds

ALL = [
    {"kind": "single-pixel"},
    {"kind": "pattern"},
    {"kind": "patch", "color": [1, 1, 0], "size": 0.25},
    {"kind": "image", "icon": "bomb", "size": 4},
    {"kind": "blend"},
    {"kind": "blend", "key": "bomb", "alpha": 0.5},
    {"kind": "compose", "triggers": [{"kind": "patch", "size": 2}, {"kind": "blend", "alpha": 0.1}]},
]


@pytest.mark.parametrize("cfg", ALL, ids=lambda c: c["kind"])
def test_input_untouched_new_tensor_and_vectorised(cfg):
    t = build_trigger(cfg)
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    before = x.clone()
    y = t.apply(x)
    assert torch.equal(x, before)
    assert y.data_ptr() != x.data_ptr() and y.shape == x.shape and y.dtype == x.dtype
    assert not torch.equal(y, x)
    assert torch.equal(y, torch.cat([t.apply(x[i:i + 1]) for i in range(4)]))
    assert t.apply(x.double()).dtype == torch.float64
    assert isinstance(t, Trigger)
    m = t.mask((3, 8, 8))
    assert m.shape == (8, 8) and 0 <= m.min() and m.max() <= 1 and m.sum() > 0
    text = describe(t)
    assert cfg["kind"] in text and "\n" not in text


def test_registry_and_frozen_dataclasses():
    assert TRIGGERS.names() == ["blend", "compose", "image", "patch", "pattern", "single-pixel"]
    t = build_trigger({"kind": "patch", "color": [1, 1, 0]})
    assert t == PatchTrigger(color=(1, 1, 0)) and hash(t) == hash(PatchTrigger(color=(1.0, 1.0, 0.0)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.size = 3  # type: ignore[misc]


# ----------------------------------------------------------------------------- errors

def one_line_error(fn, *args) -> str:
    with pytest.raises(PoisonlabError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message and message
    return message


def test_check_fits_too_big_and_bad_position():
    big = build_trigger({"kind": "pattern", "pattern": [[1] * 5] * 5})
    msg = one_line_error(big.check_fits, (1, 4, 4))
    assert "5x5" in msg and "4x4" in msg and "smaller" in msg
    one_line_error(big.apply, torch.zeros(1, 1, 4, 4))                  # apply checks too
    pos = build_trigger({"kind": "pattern", "position": [4, 2]})
    msg = one_line_error(pos.check_fits, (1, 6, 6))
    assert "position [4, 2]" in msg and "6x6" in msg and "row <= 3" in msg
    margin = build_trigger({"kind": "pattern", "margin": 2})
    assert "lower `margin`" in one_line_error(margin.check_fits, (1, 4, 4))
    build_trigger({"kind": "pattern", "margin": 0}).check_fits((1, 3, 3))
    assert "shape" in one_line_error(PatchTrigger().check_fits, (3, 0, 4))


def test_apply_rejects_non_batches():
    assert "unsqueeze" in one_line_error(PatchTrigger().apply, torch.zeros(3, 5, 5))
    assert "x.float()" in one_line_error(PatchTrigger().apply, torch.zeros(1, 3, 5, 5, dtype=torch.uint8))


@pytest.mark.parametrize("cfg,text", [
    ({"kind": "pach"}, "did you mean 'patch'"),
    ({}, "no `kind`"),
    ("patch", "mapping"),
    ({"kind": 3}, "`kind` must be a name"),
    ({"kind": "patch", "sise": 3}, "allowed: kind, color, size, corner, margin, position, center"),
    ({"kind": "blend", "alpha": 0}, "(0, 1]"),
    ({"kind": "blend", "alpha": 1.5}, "(0, 1]"),
    ({"kind": "blend", "alpha": True}, "`alpha`"),
    ({"kind": "blend", "seed": -1}, "`seed`"),
    ({"kind": "blend", "key": "nosie"}, "did you mean 'noise'"),
    ({"kind": "single-pixel", "value": 2}, "[0, 1]"),
    ({"kind": "single-pixel", "value": [1, "a"]}, "`value`"),
    ({"kind": "patch", "size": 0}, "`size`"),
    ({"kind": "patch", "size": 1.5}, "`size`"),
    ({"kind": "patch", "size": True}, "`size`"),
    ({"kind": "patch", "size": [1, 2, 3]}, "`size`"),
    ({"kind": "patch", "corner": "middle"}, "bottom-right"),
    ({"kind": "patch", "margin": -1}, "`margin`"),
    ({"kind": "patch", "position": [-1, 0]}, "`position`"),
    ({"kind": "patch", "position": [1.5, 0]}, "`position`"),
    ({"kind": "patch", "center": [1.2, 0]}, "`center`"),
    ({"kind": "patch", "corner": "top-left", "position": [0, 0]}, "only one of"),
    ({"kind": "patch", "margin": 1, "center": [0.5, 0.5]}, "`margin` only applies"),
    ({"kind": "pattern", "pattern": [[1, 0], [1]]}, "rectangular"),
    ({"kind": "pattern", "pattern": []}, "rectangular"),
    ({"kind": "pattern", "pattern": [[None]]}, "at least one number"),
    ({"kind": "image"}, "give `icon`"),
    ({"kind": "image", "icon": "bom"}, "did you mean 'bomb'"),
    ({"kind": "image", "icon": "bomb", "path": "x.png"}, "not both"),
    ({"kind": "image", "path": "/nonexistent/trigger.png"}, "not found"),
    ({"kind": "compose", "triggers": []}, "non-empty"),
    ({"kind": "compose", "triggers": [{"kind": "patch"}, {"kind": "patch", "size": 0}]}, "item 2"),
])
def test_build_trigger_errors(cfg, text):
    assert text in one_line_error(build_trigger, cfg)


# ----------------------------------------------------------------------------- icons

@pytest.mark.parametrize("name", ICONS)
def test_icons_deterministic_rgba(name):
    a, b = render_icon(name, 12), render_icon(name, 12)
    assert a.shape == (4, 12, 12) and a.dtype == torch.float32
    assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    assert 0 <= a.min() and a.max() <= 1
    alpha = a[3]
    if name == "square":
        assert torch.equal(alpha, torch.ones(12, 12)) and a[:3, 5, 5].tolist() == [1.0, 1.0, 0.0]
    else:  # transparent background, opaque body, antialiased edge
        assert (alpha == 0).any() and (alpha == 1).any() and ((alpha > 0) & (alpha < 1)).any()
    assert render_icon(name, 1).shape == (4, 1, 1) and render_icon(name, 7).shape == (4, 7, 7)


def test_icon_shapes_differ_and_errors():
    bomb, flower = render_icon("bomb", 16), render_icon("flower", 16)
    assert bomb[:3, 10, 6].max() < 0.2                       # black body
    assert not torch.equal(bomb[3], flower[3])
    assert "did you mean 'flower'" in one_line_error(render_icon, "flwer", 8)
    assert "size" in one_line_error(render_icon, "bomb", 0)
