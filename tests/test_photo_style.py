"""Photo-to-photo transfer (Luan et al. 2017): the matting regulariser, region masks, the
``photo`` preset. Real VGG19, real pymatting, small images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter
from pydantic import ValidationError

from stylebox.errors import BadInput, Cancelled, ConfigError
from stylebox.plugins.api import Runtime
from stylebox.plugins.gatys import GatysParams, GatysPlugin
from stylebox.plugins.gatys.affine_fit import affine_fit
from stylebox.plugins.gatys.color import recolour_regions
from stylebox.plugins.gatys.labels import distinct_colors
from stylebox.plugins.gatys.photoreal import matting_laplacian, matting_loss, to_torch
from stylebox.tensors import to_tensor
from stylebox.testing import RecordingContext

DATA = Path(__file__).parent / "data"
SKY, GROUND, OTHER = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def masked(folder: Path, mask: Path | None) -> RecordingContext:
    """The context a daemon job has when ``<stem>.mask.png`` lies beside its photo."""
    return RecordingContext(folder, companions={"mask": mask} if mask else None)


def kodak(size: int) -> Image.Image:
    with Image.open(DATA / "kodim06-256.png") as opened:
        picture = opened.convert("RGB")
    picture.thumbnail((size, size), Image.Resampling.LANCZOS)
    return picture


def bands(path: Path, size: tuple[int, int], colors: list[tuple[int, int, int]]) -> Path:
    """A label image of horizontal bands, top to bottom."""
    mask = Image.new("RGB", size)
    draw = ImageDraw.Draw(mask)
    for i, color in enumerate(colors):
        top, bottom = i * size[1] // len(colors), (i + 1) * size[1] // len(colors)
        draw.rectangle([0, top, size[0], bottom - 1], fill=color)
    mask.save(path)
    return path


def plugin(tmp_path: Path, **settings: Any) -> GatysPlugin:
    base: dict[str, Any] = {"size": 64, "snapshot_every": 0, "checkpoint_seconds": 0}
    params = GatysParams.model_validate({**base, **settings})
    return GatysPlugin(params, Runtime(device="cpu", state_dir=tmp_path / "state"))


# -- the regulariser ------------------------------------------------------------------------


def test_matting_gradient_matches_finite_differences() -> None:
    photo = to_tensor(kodak(16).crop((0, 0, 9, 7))).double()
    laplacian = to_torch(matting_laplacian(photo), torch.device("cpu"), torch.float64)
    start = photo + 0.05 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(
        lambda x: matting_loss(x, laplacian), (start.requires_grad_(),), eps=1e-6, atol=1e-5
    )


def test_matting_loss_is_zero_for_an_affine_recolouring_and_grows_with_new_edges() -> None:
    photo = to_tensor(kodak(48))
    laplacian = to_torch(matting_laplacian(photo), torch.device("cpu"))
    mix = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.8, 0.2], [0.0, 0.2, 0.7]])
    recoloured = (
        torch.einsum("oc,bchw->bohw", mix, photo)
        + torch.tensor([0.1, -0.05, 0.2])[None, :, None, None]
    )
    striped = photo.clone()
    striped[..., ::4, :] = 1.0
    assert float(matting_loss(recoloured, laplacian)) < 1e-3 * float(
        matting_loss(striped, laplacian)
    )


def test_the_laplacian_becomes_a_torch_tensor_silently_without_touching_others_filters() -> None:
    # It wrapped torch's call in warnings.catch_warnings, which swaps the process's filters
    # for a moment: a warning of a photo in another job's thread could be lost meanwhile.
    # In a process of its own: pytest shows every warning, whatever a module filters.
    script = """
import warnings, torch
from stylebox.plugins.gatys.photoreal import matting_laplacian, to_torch
shown = []
warnings.showwarning = lambda message, *rest: shown.append(str(message))
built = matting_laplacian(torch.rand(1, 3, 16, 16))  # pymatting's imports add filters
before = list(warnings.filters)
warnings.catch_warnings = None  # used, it would raise
laplacian = to_torch(built, torch.device("cpu"))
assert laplacian.layout == torch.sparse_csr
assert warnings.filters == before
print(shown)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr


def edge_error(result: Image.Image, photo: Image.Image) -> float:
    """How far the result's luminance gradients are from the photo's, relative to them."""

    def gradients(picture: Image.Image) -> np.ndarray:
        grey = np.asarray(picture.convert("L"), dtype=np.float64)
        return np.stack([np.diff(grey, axis=0)[:, :-1], np.diff(grey, axis=1)[:-1, :]])

    ours, theirs = gradients(result), gradients(photo)
    return float(np.linalg.norm(ours - theirs) / np.linalg.norm(theirs))


def test_photorealism_keeps_the_photos_edges(tmp_path: Path, style_file: Path) -> None:
    photo = kodak(48)
    errors = {}
    for weight in (0.0, 1e10):
        painter = plugin(
            tmp_path,
            style=[str(style_file)],
            preset="photo",
            style_weight=100.0,
            photorealism=weight,
            affine_fit_radius=0,  # the regulariser alone: the fit would mend either result
            size=48,
            steps=12,
            require_progress=0,
        )
        result = painter.process(photo, RecordingContext(tmp_path / f"job{weight}"))
        errors[weight] = edge_error(result, photo)
    # Without the term the painting's brush strokes replace the photo's edges.
    assert errors[1e10] < 0.8 * errors[0.0], errors  # measured: 0.70


# -- the affine fit ------------------------------------------------------------------------


def recolour(photo: torch.Tensor) -> torch.Tensor:
    """An affine colour change of the photo: what the fit should keep as it is."""
    mix = torch.tensor([[0.5, 0.3, 0.1], [0.1, 0.5, 0.2], [0.0, 0.2, 0.7]])  # stays in 0..1
    shift = torch.tensor([0.1, 0.05, 0.1])[None, :, None, None]
    return torch.einsum("oc,bchw->bohw", mix, photo) + shift


def test_the_affine_fit_keeps_a_recolouring_and_drops_what_the_photo_lacks() -> None:
    photo = to_tensor(kodak(96))
    recoloured = recolour(photo)
    assert (affine_fit(photo, recoloured, 4, 1e-7) - recoloured).abs().max() < 1e-3
    # Texture the photo does not have (a painting's grain) goes; its own edges stay.
    grain = 0.08 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))
    fitted = affine_fit(photo, recoloured + grain, 4, 1e-3)
    before = float((recoloured + grain - recoloured).abs().mean())
    after = float((fitted - recoloured).abs().mean())
    assert after < 0.3 * before, (before, after)  # measured: 0.13
    fitted_picture = Image.fromarray(
        (fitted[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    )
    plain = Image.fromarray(
        (recoloured[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    )
    # measured: 0.12 (1.43 with the grain)
    assert edge_error(fitted_picture, plain) < 0.3, edge_error(fitted_picture, plain)


def test_the_affine_fit_refuses_images_of_other_sizes() -> None:
    with pytest.raises(ValueError, match="differ in size"):
        affine_fit(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9), 2, 1e-3)


def test_gatys_ends_with_the_affine_fit_of_its_result(tmp_path: Path, style_file: Path) -> None:
    """The job's result is its last step refitted to the photo; the snapshots are not."""
    photo = kodak(48)
    results = {}
    for radius in (0, 3):
        painter = plugin(
            tmp_path,
            style=[str(style_file)],
            size=48,
            steps=10,
            snapshot_every=10,
            affine_fit_radius=radius,
            affine_fit_epsilon=1e-2,
            require_progress=0,
        )
        context = RecordingContext(tmp_path / f"job{radius}")
        results[radius] = painter.process(photo, context)
        assert context.snapshots[-1][0] == 10
        assert np.array_equal(np.asarray(context.snapshots[-1][1]), np.asarray(results[0]))
    expected = affine_fit(to_tensor(photo), to_tensor(results[0]), 3, 1e-2)
    got = to_tensor(results[3])
    assert (got - expected).abs().max() <= 1 / 255 + 1e-6
    assert (to_tensor(results[0]) - got).abs().mean() > 0.01


# -- region masks --------------------------------------------------------------------------


def test_each_region_takes_the_style_of_its_own_region(tmp_path: Path) -> None:
    """The reference is red above and blue below; the photo's mask puts its "sky" in the
    middle band and its "ground" on top, and has a third region the reference lacks."""
    rng = np.random.default_rng(0)
    grey = 0.5 + 0.08 * rng.standard_normal((48, 64, 1))
    photo = Image.fromarray((np.repeat(grey, 3, 2).clip(0, 1) * 255).astype(np.uint8))
    texture = 0.1 * rng.standard_normal((48, 64))
    reference = np.zeros((48, 64, 3))
    reference[:24, :, 0] = 0.8 + texture[:24]
    reference[24:, :, 2] = 0.8 + texture[24:]
    style = tmp_path / "reference.png"
    Image.fromarray((reference.clip(0, 1) * 255).astype(np.uint8)).save(style)
    # Twice the size of its style image, the photo's mask half the photo's: both resized
    # (nearest), and the manifest says so.
    style_mask = bands(tmp_path / "reference.mask.png", (128, 96), [SKY, GROUND])
    photo_mask = bands(tmp_path / "photo.mask.png", (32, 24), [GROUND, SKY, OTHER])
    painter = plugin(
        tmp_path,
        style=[str(style)],
        style_mask=[str(style_mask)],
        style_layers={"relu1_1": 1.0, "relu2_1": 1.0},
        content_weight=0.01,
        style_weight=1e4,
        steps=30,
    )
    context = masked(tmp_path / "job", photo_mask)
    result = np.asarray(painter.process(photo, context), dtype=np.float64)
    top, middle, bottom = result[:16], result[16:32], result[32:]
    assert middle[..., 0].mean() > middle[..., 2].mean() + 20, middle.mean((0, 1))  # sky: red
    assert top[..., 2].mean() > top[..., 0].mean() + 20, top.mean((0, 1))  # ground: blue
    own = np.asarray(photo, dtype=np.float64)[32:]
    assert np.abs(bottom - own).mean() < 0.5 * np.abs(middle - np.asarray(photo)[16:32]).mean()
    assert context.facts["mask_resized"] == "32x24 to the photo's 64x48 (nearest)"
    assert context.facts["style_mask_resized"] == [
        "reference.mask.png: 128x96 to its style image's 64x48 (nearest)"
    ]
    assert context.facts["mask_regions"] == ["#0000ff", "#00ff00", "#ff0000"]
    assert context.facts["mask_regions_unstyled"] == ["#00ff00"]
    assert context.facts["style_cache"] == {"computed": 1}  # region targets: made, never cached


def tinted(photo: Image.Image, top: tuple[float, ...], bottom: tuple[float, ...]) -> Image.Image:
    """``photo`` darkened and tinted one way above its middle and another below: a
    reference whose regions' colours differ from the photo's and from each other's."""
    pixels = np.asarray(photo, dtype=np.float64) / 255
    half = pixels.shape[0] // 2
    pixels[:half] = 0.6 * pixels[:half] * np.array(top)
    pixels[half:] = 0.6 * pixels[half:] * np.array(bottom)
    return Image.fromarray((pixels.clip(0, 1) * 255).round().astype(np.uint8))


def region_means(picture: Image.Image, rows: slice) -> np.ndarray:
    return np.asarray(picture, dtype=np.float64)[rows].reshape(-1, 3).mean(0)


def test_matched_start_gives_each_region_the_references_colours(tmp_path: Path) -> None:
    """Region by region, the start image takes the mean and spread of the reference's same
    region; the third region, which the reference lacks, keeps the photo's colours."""
    photo = kodak(96)  # 96 x 64
    reference = tinted(kodak(96).transpose(Image.Transpose.FLIP_LEFT_RIGHT), (0.5, 0.8, 1.2),
                       (1.3, 0.9, 0.4))  # fmt: skip
    style = tmp_path / "reference.png"
    reference.save(style)
    style_mask = bands(tmp_path / "reference.mask.png", reference.size, [SKY, GROUND])
    photo_mask = bands(tmp_path / "photo.mask.png", photo.size, [GROUND, SKY, OTHER])
    painter = plugin(tmp_path, style=[str(style)], style_mask=[str(style_mask)], init="matched",
                     size=96)  # fmt: skip
    lane = painter.engine._lane(photo, masked(tmp_path / "job", photo_mask))
    start = Image.fromarray(
        (lane.start_image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    )
    # The photo's ground is its top third, its sky the middle one (the reference's sky is
    # its top half); only a band of a few pixels where two regions' recolourings blend
    # differs from one region's map.
    for ours, theirs in ((slice(0, 21), slice(32, 64)), (slice(21, 42), slice(0, 32))):
        wanted = region_means(reference, theirs)
        assert np.abs(region_means(start, ours) - wanted).max() < 6, (ours, wanted)
    own = np.asarray(photo, dtype=np.float64)[48:]
    assert np.abs(np.asarray(start, dtype=np.float64)[48:] - own).mean() < 1


def test_matched_start_without_masks_has_the_styles_colour_statistics(tmp_path: Path) -> None:
    photo = kodak(96)
    style = tmp_path / "reference.png"
    tinted(kodak(96).rotate(180), (0.5, 0.8, 1.2), (1.3, 0.9, 0.4)).save(style)
    painter = plugin(tmp_path, style=[str(style)], init="matched", size=96)
    lane = painter.engine._lane(photo, RecordingContext(tmp_path / "job"))
    start = lane.start_image[0].reshape(3, -1).double() * 255
    with Image.open(style) as opened:
        theirs = torch.from_numpy(np.asarray(opened, dtype=np.float64)).reshape(-1, 3).T
    assert (start.mean(1) - theirs.mean(1)).abs().max() < 1
    assert (torch.cov(start) - torch.cov(theirs)).abs().max() < 0.05 * torch.cov(theirs).max()


def test_matched_regions_too_small_to_fit_change_nothing_around_them() -> None:
    """A 3 x 3 region of the photo (stretched 14 times toward a textured reference region,
    with a halo of 70 grey levels around it) is recoloured as its surroundings; a reference
    region of two
    stray pixels (which flattened the photo's whole region to their colour) is absent."""
    size = 128
    ramp = torch.linspace(0, 1, size)[:, None].expand(size, size)
    photo = torch.stack([0.3 + 0.4 * ramp, 0.5 + 0.2 * ramp, 0.8 - 0.3 * ramp])[None].clone()
    photo[0, :, 60:63, 60:63] = 0.5
    tiny = torch.zeros(2, size, size)
    tiny[0], tiny[1, 60:63, 60:63], tiny[0, 60:63, 60:63] = 1, 1, 0
    rng = torch.Generator().manual_seed(0)
    reference = 0.4 + 0.2 * torch.rand(1, 3, size, size, generator=rng)
    reference[0, :, 64:] = 0.25 + 0.5 * torch.rand(3, 64, size, generator=rng)
    halves = torch.zeros(2, size, size)
    halves[0, :64], halves[1, 64:] = 1, 1
    with_tiny = recolour_regions(photo, tiny, [(reference, halves, 1.0)])
    without = recolour_regions(photo, torch.ones(1, size, size), [(reference, halves[:1], 1.0)])
    assert float((with_tiny - without).abs().max()) * 255 < 1

    textured = 0.3 + 0.3 * torch.rand(1, 3, size, size, generator=rng)
    stray = torch.zeros(2, size, size)
    stray[0], stray[0, 5, 5:7], stray[1, 5, 5:7] = 1, 0, 1
    matched = recolour_regions(textured, halves, [(reference, stray, 1.0)])
    own = textured[0, :, 80:].std()
    assert abs(float(matched[0, :, 80:].std()) - float(own)) < 0.1 * float(own)


def test_a_matched_region_is_stretched_at_most_four_times() -> None:
    """A flat region (a clear sky) matched to a textured one keeps its grain within four
    times what it was, rather than taking the texture's spread from noise."""
    rng = torch.Generator().manual_seed(0)
    flat = 0.6 + 0.004 * torch.randn(1, 3, 64, 64, generator=rng)
    busy = torch.rand(1, 3, 64, 64, generator=rng)
    one = torch.ones(1, 64, 64)
    matched = recolour_regions(flat, one, [(busy, one, 1.0)])
    stretch = matched[0].reshape(3, -1).std(1) / flat[0].reshape(3, -1).std(1)
    assert float(stretch.max()) <= 4.05, stretch
    assert float((matched.mean((2, 3)) - busy.mean((2, 3))).abs().max()) < 0.01  # means move


def test_the_photo_preset_moves_a_regions_colours_most_of_the_way(tmp_path: Path) -> None:
    """From the photo as it is, the style loss moved a region's mean colour a fifth of the
    way to the reference's in 100 steps (kodim06 as kodim16, 256 px); the preset's matched
    start puts it there and the optimisation keeps it."""
    photo = kodak(64)
    reference = tinted(kodak(64).transpose(Image.Transpose.FLIP_LEFT_RIGHT), (0.5, 0.8, 1.2),
                       (1.3, 0.9, 0.4))  # fmt: skip
    style = tmp_path / "reference.png"
    reference.save(style)
    style_mask = bands(tmp_path / "reference.mask.png", reference.size, [SKY, GROUND])
    photo_mask = bands(tmp_path / "photo.mask.png", photo.size, [SKY, GROUND])
    painter = plugin(tmp_path, style=[str(style)], style_mask=[str(style_mask)], preset="photo",
                     steps=10)  # fmt: skip
    result = painter.process(photo, masked(tmp_path / "job", photo_mask))
    for rows in (slice(0, 12), slice(30, 43)):
        before, wanted = region_means(photo, rows), region_means(reference, rows)
        way = wanted - before
        moved = float((region_means(result, rows) - before) @ way / (way @ way))
        assert moved > 0.8, (rows, moved)


def test_matched_start_and_a_colour_mode_that_keeps_the_photos_are_refused(
    style_file: Path,
) -> None:
    with pytest.raises(ValidationError, match=r"init = 'matched' .* color = 'luminance'"):
        GatysParams(style=[style_file], init="matched", color="luminance")
    # The photo preset with a colour mode starts from the photo (it was refused, naming an
    # init the config never set).
    for mode in ("luminance", "histogram"):
        assert GatysParams(style=[style_file], preset="photo", color=mode).init == "content"


def test_a_mask_with_few_colours_that_is_no_label_image_is_refused(tmp_path: Path) -> None:
    """Under the colour limit still: a JPEG's near-twin of a colour along an edge, or a
    smooth resize's blend along the edge between two regions. Thin regions of their own
    (a dot of a blend colour inside one region, a road that touches one side) and class
    numbers as colours are label images, and are accepted."""
    mask = Image.open(bands(tmp_path / "m.png", (64, 48), [SKY, GROUND]))
    twins = mask.copy()
    twins.putpixel((5, 40), (0, 0, 254))
    message = r"^m\.png has colour #0000fe only along edges, a few levels from #0000ff"
    with pytest.raises(BadInput, match=message):
        distinct_colors(twins, "m.png")
    smooth = mask.resize((32, 24), Image.Resampling.NEAREST).resize((64, 48), Image.BILINEAR)
    assert 3 <= len(np.unique(np.asarray(smooth).reshape(-1, 3), axis=0)) <= 16
    with pytest.raises(BadInput, match=r"only along the edges between #0000ff and #ff0000"):
        distinct_colors(smooth, "m.png")
    dots = mask.copy()
    for x in (10, 30, 50):
        ImageDraw.Draw(dots).rectangle([x, 4, x + 2, 6], fill=(128, 0, 128))
    road = Image.new("RGB", (64, 48))
    ImageDraw.Draw(road).rectangle([0, 32, 63, 47], fill=(255, 255, 255))
    ImageDraw.Draw(road).rectangle([0, 10, 63, 11], fill=(128, 128, 128))
    classes = Image.fromarray(np.repeat(np.arange(3, dtype=np.uint8), 16)[None].repeat(48, 0))
    for accepted, count in ((dots, 3), (road, 3), (classes, 3)):
        assert len(distinct_colors(accepted, "m.png")) == count


def test_an_antialiased_mask_is_refused_saying_how_to_fix_it(tmp_path: Path) -> None:
    mask = Image.open(bands(tmp_path / "m.png", (64, 48), [SKY, GROUND]))
    blurred = mask.filter(ImageFilter.GaussianBlur(3))
    assert len(distinct_colors(mask, "m.png")) == 2
    with pytest.raises(BadInput, match=r"m\.png has \d+ colours.*antialiased.*mask_colors"):
        distinct_colors(blurred, "m.png")
    blurred.save(tmp_path / "blurred.png")
    with pytest.raises(ConfigError, match="antialiased"):
        plugin(
            tmp_path, style=[str(tmp_path / "m.png")], style_mask=[str(tmp_path / "blurred.png")]
        )
    # Listing the regions snaps each pixel to the nearest: accepted.
    plugin(
        tmp_path,
        style=[str(tmp_path / "m.png")],
        style_mask=[str(tmp_path / "blurred.png")],
        mask_colors=["#ff0000", "#0000ff"],
    )
    # A region no listed colour is near would join another without a word (one colour for
    # a red and blue mask made sea and sky one region; two colours in neither likewise).
    for listed in (["#ff0000"], ["#00ff00", "#ffff00"]):
        with pytest.raises(ConfigError, match=r"blurred\.png has a region of #[0-9a-f]{6} \(\d+%"):
            plugin(
                tmp_path,
                style=[str(tmp_path / "m.png")],
                style_mask=[str(tmp_path / "blurred.png")],
                mask_colors=listed,
            )


def test_a_photo_without_its_mask_fails_saying_where_to_put_it(tmp_path: Path) -> None:
    mask = bands(tmp_path / "s.mask.png", (64, 48), [SKY, GROUND])
    painter = plugin(tmp_path, style=[str(mask)], style_mask=[str(mask)], steps=2)
    with pytest.raises(BadInput, match=r"no mask: put .*<photo stem>\.mask\.png"):
        painter.process(kodak(64), RecordingContext(tmp_path / "job"))


@pytest.mark.parametrize("name", ["content_mask", "mask_colors"])
def test_a_region_setting_without_style_mask_is_refused(tmp_path: Path, name: str) -> None:
    mask = bands(tmp_path / "m.png", (64, 48), [SKY, GROUND])
    value: object = str(mask) if name == "content_mask" else ["#ff0000"]
    with pytest.raises(ValidationError, match=f"{name} is set but style_mask is not"):
        GatysParams(style=[mask], **{name: value})


def test_a_photos_mask_that_is_no_image_is_a_bad_input_not_a_fault(tmp_path: Path) -> None:
    # A fault is retried; this photo's mask would be as unreadable at every try.
    mask = bands(tmp_path / "s.mask.png", (64, 48), [SKY, GROUND])
    painter = plugin(tmp_path, style=[str(mask)], style_mask=[str(mask)], steps=2)
    notes = tmp_path / "photo.mask.png"
    notes.write_text("not a mask")
    with pytest.raises(BadInput) as refused:
        painter.process(kodak(64), masked(tmp_path / "job", notes))
    assert str(refused.value) == (  # the mask named once, what is wrong in words
        "the photo's mask photo.mask.png cannot be read as an image: not a format Pillow reads"
    )


def test_a_mask_with_transparent_pixels_is_refused(tmp_path: Path) -> None:
    # The transparency was dropped unsaid: what the transparent rows became depended on
    # a colour no one can see (red under them: sky; black: a region of its own, unstyled).
    mask = bands(tmp_path / "s.mask.png", (64, 48), [SKY, GROUND])
    erased = Image.open(mask).convert("RGBA")
    erased.putalpha(Image.new("L", erased.size, 255))
    erased.save(tmp_path / "opaque.mask.png")  # an alpha channel, all opaque: a mask
    plugin(tmp_path, style=[str(mask)], style_mask=[str(tmp_path / "opaque.mask.png")], steps=1)
    erased.paste((0, 0, 0, 0), (0, 0, 64, 8))
    erased.save(tmp_path / "holes.mask.png")
    with pytest.raises(ConfigError, match=r"holes.mask.png has transparent pixels: a mask's"):
        plugin(tmp_path, style=[str(mask)], style_mask=[str(tmp_path / "holes.mask.png")])
    painter = plugin(tmp_path, style=[str(mask)], style_mask=[str(mask)], steps=1)
    own = tmp_path / "photo.mask.png"
    erased.resize((64, 43)).save(own)
    with pytest.raises(BadInput, match=r"^the photo's mask photo.mask.png has transparent"):
        painter.process(kodak(64), masked(tmp_path / "job", own))


def test_a_mask_of_another_shape_than_its_image_is_refused_not_stretched(
    tmp_path: Path,
) -> None:
    # Stretched to fit (as it was, with only a note in the manifest), a mask drawn on the
    # photo before it was turned puts the sky on the ground. Another scale is fine.
    style = bands(tmp_path / "s.png", (64, 48), [SKY, GROUND])
    turned = bands(tmp_path / "turned.mask.png", (48, 64), [SKY, GROUND])
    with pytest.raises(ConfigError) as refused:
        plugin(tmp_path, style=[str(style)], style_mask=[str(turned)], steps=2)
    assert str(refused.value) == (
        f"gatys style_mask {turned} is 48x64 but its style image is 64x48: stretched to "
        "fit, its regions would land on other parts; draw it on the image as shown (at any "
        "scale)"
    )
    painter = plugin(tmp_path, style=[str(style)], style_mask=[str(style)], steps=2)
    photo = kodak(64)
    assert photo.size == (64, 43)
    own = bands(tmp_path / "photo.mask.png", (43, 64), [SKY, GROUND])
    with pytest.raises(BadInput, match=r"^the photo's mask photo.mask.png is 43x64 but the photo"):
        painter.process(photo, masked(tmp_path / "job", own))
    bands(own, (129, 86), [SKY, GROUND])  # twice the photo, a pixel off: taken
    painter.process(photo, masked(tmp_path / "job2", own))


def test_a_photos_mask_sharing_no_region_with_the_style_masks_is_refused(tmp_path: Path) -> None:
    # Every region kept the photo's own look: the photo came out as it went in, done.
    style = bands(tmp_path / "s.png", (64, 48), [SKY, GROUND])
    painter = plugin(tmp_path, style=[str(style)], style_mask=[str(style)], steps=2)
    own = bands(tmp_path / "photo.mask.png", (64, 43), [(254, 0, 0), OTHER])
    with pytest.raises(BadInput) as refused:
        painter.process(kodak(64), masked(tmp_path / "job", own))
    assert str(refused.value) == (
        "the photo's mask photo.mask.png has no region the style masks have (its colours "
        "#00ff00, #fe0000; theirs #0000ff, #ff0000): the photo would come out unstyled; "
        "paint each region in the colour the style mask gives it"
    )
    # The config's content_mask, every photo's without one of its own: refused at start.
    with pytest.raises(ConfigError, match=r"^gatys content_mask .*photo\.mask\.png has no region"):
        plugin(tmp_path, style=[str(style)], style_mask=[str(style)], content_mask=str(own))
    # With the regions listed, a near colour is its region: styled.
    listed = plugin(tmp_path, style=[str(style)], style_mask=[str(style)], steps=2,
                    mask_colors=["#ff0000", "#0000ff", "#00ff00"])  # fmt: skip
    context = masked(tmp_path / "job2", own)
    listed.process(kodak(64), context)
    assert context.facts["mask_regions_unstyled"] == ["#00ff00"]


def test_what_becomes_of_a_photos_mask_is_said_in_the_log_not_only_the_manifest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Regions left unstyled (a whole beach), a mask beside the photo left unused, and one
    # taking the place of the config's content_mask were in the manifest alone.
    style = bands(tmp_path / "s.png", (64, 48), [SKY, GROUND])
    own = bands(tmp_path / "photo.mask.png", (64, 43), [SKY, OTHER])
    other = bands(tmp_path / "other.mask.png", (64, 43), [GROUND, SKY])
    with caplog.at_level("WARNING", logger="stylebox.gatys"):
        plugin(tmp_path, style=[str(style)], steps=1).process(
            kodak(64), masked(tmp_path / "a", own)
        )
        masks = {"style_mask": [str(style)], "content_mask": str(other), "steps": 1}
        context = masked(tmp_path / "b", own)
        plugin(tmp_path, style=[str(style)], **masks).process(kodak(64), context)
    said = [record.getMessage() for record in caplog.records]
    assert said[0] == (
        "photo.mask.png beside the photo is not used: style_mask is not set (the regions "
        "need the style image's label image too)"
    )
    assert said[1] == f"the photo's own mask photo.mask.png is used, not content_mask {other}"
    assert said[2] == (
        "the photo's mask photo.mask.png: its regions #00ff00 are in no style mask, and keep "
        "the photo's look"
    )
    assert context.facts["content_mask_not_used"] == "the photo's own mask photo.mask.png is used"


def test_the_photo_preset_sets_the_papers_layers_and_the_config_wins(style_file: Path) -> None:
    params = GatysParams(style=[style_file], preset="photo", style_weight=7)
    assert params.content_layers == {"conv4_2": 1.0}
    assert list(params.style_layers) == ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
    assert params.photorealism > 0 and params.init == "matched"
    assert params.affine_fit_radius == 4
    assert params.require_progress == 0.9  # a photo's loss, all style at first, rarely halves
    assert params.style_weight == 7
    assert GatysParams(style=[style_file], preset="photo", require_progress=0).require_progress == 0
    with pytest.raises(ValueError, match=r"style_mask has 2 mask\(s\) for 1 style"):
        GatysParams(style=[style_file], style_mask=[style_file, style_file])
    with pytest.raises(ValueError, match="preset"):
        GatysParams(style=[style_file], preset="painting")


@pytest.mark.parametrize("stop_first_at", [0, 3])
def test_masked_photos_batched_end_as_each_would_alone(
    tmp_path: Path, stop_first_at: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same-size photos, each with its own mask and matting Laplacian, optimised as one
    batch (as on a GPU): each ends as it would alone, also once the first is stopped and
    the others step on as a part of the batch."""
    reference = bands(tmp_path / "reference.mask.png", (48, 32), [SKY, GROUND])
    painter = plugin(
        tmp_path,
        style=[str(DATA / "kodim06-256.png")],
        style_mask=[str(reference)],
        preset="photo",
        size=48,
        steps=6,
        snapshot_every=0,
        require_progress=0,
    )
    photos = [kodak(48).rotate(angle) for angle in (0, 90 * 2, 0)]
    orders = ([SKY, GROUND], [GROUND, SKY], [GROUND, SKY, SKY])
    masks = [bands(tmp_path / f"p{i}.mask.png", (48, 32), order) for i, order in enumerate(orders)]
    together = [masked(tmp_path / f"b{i}", mask) for i, mask in enumerate(masks)]
    if stop_first_at:
        together[0].cancel_at_step = stop_first_at
    groups: list[int] = []
    run_lanes = painter.engine._run_lanes
    monkeypatch.setattr(
        painter.engine, "_run_lanes", lambda lanes: groups.append(len(lanes)) or run_lanes(lanes)
    )
    results = painter.process_batch(photos, together)
    assert groups == [3]  # one batch
    assert isinstance(results[0], Cancelled) == bool(stop_first_at)
    for i in range(int(bool(stop_first_at)), 3):
        alone = masked(tmp_path / f"s{i}", masks[i])
        single = painter.process(photos[i], alone)
        difference = np.abs(np.asarray(results[i], int) - np.asarray(single, int))
        assert difference.max() <= 2, (i, difference.max())
        assert np.allclose(together[i].metric("loss"), alone.metric("loss"), rtol=1e-3)
        assert together[i].facts["mask_regions"] == alone.facts["mask_regions"]
    assert len({tuple(context.metric("loss")) for context in together[1:]}) == 2
