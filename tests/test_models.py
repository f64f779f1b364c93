"""Model shapes, save/load round trips, strict loading, the Hub path (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cxr_nodule_aug.hub as hub
from cxr_nodule_aug import WeightsError, load_model
from cxr_nodule_aug.models import GatedConv2d, LungSegmenter, PatchDiscriminator, ShapeDiscriminator, ShapeGenerator, TextureGenerator


def test_shape_generator_paper_size():
    g = ShapeGenerator()  # paper: z in R^100 -> 4x4x512 -> five stride-2 convs -> 128x128
    assert g.net[0].out_channels == 512
    assert sum(isinstance(m, torch.nn.ConvTranspose2d) and m.stride == (2, 2) for m in g.modules()) == 5
    with torch.no_grad():
        out = g(torch.randn(2, 100))
    assert out.shape == (2, 1, 128, 128) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert ShapeDiscriminator()(out).shape == (2,)


def test_shape_latent_is_reproducible_from_seed():
    g = ShapeGenerator(base_width=16, image_size=32).eval()
    assert torch.equal(g.generate([5, 6]), g.generate([5, 6]))
    assert torch.equal(g.latent_from_seeds([5]), g.latent_from_seeds(torch.tensor([5])))
    assert not torch.equal(g.latent_from_seeds([5]), g.latent_from_seeds([6]))


@pytest.mark.parametrize("size", [7, 100])
def test_shape_generator_bad_size(size):
    with pytest.raises(ValueError, match="image_size"):
        ShapeGenerator(image_size=size)


def test_gated_conv_is_the_paper_formula():
    torch.manual_seed(0)
    layer = GatedConv2d(2, 3)
    x = torch.randn(1, 2, 8, 8)
    f, g = layer.conv(x).chunk(2, 1)
    expected = layer.norm(torch.nn.functional.leaky_relu(f * torch.sigmoid(g), 0.2))
    assert torch.allclose(layer(x), expected)


@pytest.mark.parametrize("stages", [1, 2])
def test_texture_generator_shapes_and_range(stages):
    t = TextureGenerator(base_width=4, num_stages=stages, patch_size=32)
    out = t(torch.rand(3, 1, 32, 32), (torch.rand(3, 1, 32, 32) > 0.7).float())
    assert out.fine.shape == out.coarse.shape == (3, 1, 32, 32)
    assert 0 <= float(out.fine.min()) and float(out.fine.max()) <= 1
    if stages == 1:
        assert torch.equal(out.fine, out.coarse)
    # Four dilated gated convs {2, 4, 8, 16} in each stage's bottleneck.
    dil = sorted(m.conv.dilation[0] for m in t.coarse.bottleneck if m.conv.dilation[0] > 1)
    assert dil == [2, 4, 8, 16]


def test_texture_generator_ignores_content_under_the_hole():
    t = TextureGenerator(base_width=4, patch_size=32).eval()
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 10:20, 10:20] = 1
    a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
    b = a * (1 - mask) + b * mask  # differ only under the hole
    assert torch.allclose(t(a, mask).fine, t(b, mask).fine)


def test_texture_generator_bad_inputs():
    t = TextureGenerator(base_width=4, patch_size=32)
    with pytest.raises(ValueError, match="image must be"):
        t(torch.rand(1, 3, 32, 32), torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="mask must be"):
        t(torch.rand(1, 1, 32, 32), torch.zeros(1, 32, 32))
    with pytest.raises(ValueError, match="mask_type"):
        TextureGenerator(mask_type="circle")


def test_patch_discriminator_is_six_layers_spectral_norm_one_32nd():
    d = PatchDiscriminator(base_width=8)
    convs = [m for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6
    assert all(hasattr(c, "parametrizations") and "weight" in c.parametrizations for c in convs)
    assert d(torch.rand(2, 1, 64, 64), torch.zeros(2, 1, 64, 64)).shape == (2, 1, 2, 2)


def test_lung_segmenter_predict_any_size():
    m = LungSegmenter(base_width=4, depth=2, input_size=32).eval()
    p = m.predict(torch.rand(2, 1, 50, 70))
    assert p.shape == (2, 50, 70) and float(p.min()) >= 0 and float(p.max()) <= 1


MODELS = [
    lambda: ShapeGenerator(base_width=16, image_size=32),
    lambda: ShapeDiscriminator(base_width=16, image_size=32),
    lambda: TextureGenerator(base_width=4, patch_size=32, num_stages=1, mask_type="box"),
    lambda: PatchDiscriminator(base_width=4),
    lambda: LungSegmenter(base_width=4, depth=2, input_size=32),
]


@pytest.mark.parametrize("make", MODELS)
def test_save_load_round_trip(tmp_path, make):
    torch.manual_seed(0)
    model = make().eval()
    model.save_pretrained(tmp_path / "m", model_card="# card\n")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "model.safetensors", "README.md"}
    loaded = type(model).from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    assert type(load_model(str(tmp_path / "m"))) is type(model)


def test_wrong_class_missing_file_and_mismatched_keys(tmp_path):
    ShapeGenerator(base_width=16, image_size=32).save_pretrained(tmp_path / "s")
    with pytest.raises(WeightsError, match="not a 'TextureGenerator'"):
        TextureGenerator.from_pretrained(tmp_path / "s")
    # A config that no longer matches the weights: strict loading refuses.
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    cfg["base_width"] = 32
    (tmp_path / "s" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightsError, match="does not match"):
        ShapeGenerator.from_pretrained(tmp_path / "s")
    (tmp_path / "s" / "model.safetensors").unlink()
    with pytest.raises(WeightsError, match="model.safetensors is missing"):
        ShapeGenerator.from_pretrained(tmp_path / "s")
    with pytest.raises(WeightsError, match="neither an existing local directory"):
        ShapeGenerator.from_pretrained(str(tmp_path / "nope"))


def test_hub_source_forwards_pinned_revision(tmp_path, monkeypatch):
    """The Hub path, mocked where this library imports hf_hub_download."""
    ShapeGenerator(base_width=16, image_size=32).save_pretrained(tmp_path / "w")
    calls = []

    def fake_download(repo_id, filename, *, subfolder, revision, cache_dir, local_files_only, library_name):
        calls.append((repo_id, filename, subfolder, revision, local_files_only))
        return str(tmp_path / "w" / filename)

    monkeypatch.setattr(hub, "hf_hub_download", fake_download)
    m = ShapeGenerator.from_pretrained("someorg/nodule-shape@v1.2", local_files_only=True)
    assert isinstance(m, ShapeGenerator)
    assert calls == [
        ("someorg/nodule-shape", "config.json", None, "v1.2", True),
        ("someorg/nodule-shape", "model.safetensors", None, "v1.2", True),
    ]
    calls.clear()
    ShapeGenerator.from_pretrained("someorg/nodule-shape", revision="abc123")
    assert {c[3] for c in calls} == {"abc123"}
    with pytest.raises(ValueError, match="conflicting revisions"):
        ShapeGenerator.from_pretrained("someorg/nodule-shape@v1", revision="v2")


def test_hub_source_from_a_fake_cache_offline(tmp_path, monkeypatch):
    """Real hf_hub_download against a hand-made cache: no network, revision resolved by ref."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--someorg--nodule-texture"
    snap = repo / "snapshots" / commit / "texture"
    TextureGenerator(base_width=4, patch_size=32).save_pretrained(snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "v1").write_text(commit)
    m = TextureGenerator.from_pretrained("someorg/nodule-texture@v1", subfolder="texture", cache_dir=tmp_path / "cache", local_files_only=True)
    assert m.patch_size == 32
    with pytest.raises(WeightsError, match="could not get config.json"):
        TextureGenerator.from_pretrained("someorg/nodule-texture@v2", cache_dir=tmp_path / "cache", local_files_only=True)


def test_default_weights_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.WEIGHTS_ENV, str(tmp_path))
    assert hub.default_weights_dir() == Path(tmp_path)


def test_binarize_fills_holes_and_drops_speckle():
    from cxr_nodule_aug.models.shape import binarize_shapes

    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    disc = ((yy - 16) ** 2 + (xx - 16) ** 2) <= 64
    noisy = disc.clone()
    noisy[16, 16] = noisy[14, 18] = False  # holes inside
    noisy[2, 2] = True  # a stray pixel outside
    out = binarize_shapes(noisy[None].float())[0]
    assert not out[2, 2] and out[16, 16] and out[14, 18]
    assert (out ^ disc).sum() <= 8  # edges may move by a pixel, no more


def test_largest_components_keeps_the_two_lungs():
    from cxr_nodule_aug.models.lung import largest_components

    m = torch.zeros(40, 40, dtype=torch.bool)
    m[5:35, 3:15] = True  # right lung
    m[5:35, 22:36] = True  # left lung
    m[0:2, 38:40] = True  # a speck outside the body
    m[20, 18] = True
    out = largest_components(m, keep=2, min_fraction=0.1)
    assert out[10, 5] and out[10, 30] and not out[0, 39] and not out[20, 18]


def test_texture_context_norm_is_invariant_to_the_window(tmp_path):
    """With context_norm the output follows any affine grey-level map of the patch (where no
    clamping bites), so the image's windowing no longer decides what the network sees."""
    torch.manual_seed(0)
    plain = TextureGenerator(base_width=4, patch_size=32)
    normed = TextureGenerator(base_width=4, patch_size=32, context_norm=(0.3, 0.1))
    normed.load_state_dict(plain.state_dict())  # no new parameters: old weights load strictly
    normed.eval()
    x = 0.3 + 0.05 * torch.randn(2, 1, 32, 32)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 10:22, 10:22] = 1
    with torch.no_grad():
        a = normed(x, mask).fine
        b = normed(0.5 * x + 0.2, mask).fine
    inside = (mask > 0) & (a > 0.01) & (a < 0.99)
    torch.testing.assert_close(b[inside], (0.5 * a + 0.2)[inside], atol=1e-5, rtol=0)
    normed.save_pretrained(tmp_path / "t")
    again = TextureGenerator.from_pretrained(tmp_path / "t")
    assert again.context_norm == [0.3, 0.1] and "context_norm" not in plain.config
    for bad in ((0.3,), (1.5, 0.1), (0.3, 0.0)):
        with pytest.raises(ValueError, match="context_norm"):
            TextureGenerator(base_width=4, patch_size=32, context_norm=bad)


def test_binarize_fills_each_mask_on_its_own_with_8_connected_background():
    from cxr_nodule_aug.models.shape import binarize_shapes

    ring = torch.zeros(16, 16)
    ring[3:13, 3:13] = 1.0
    ring[5:11, 5:11] = 0.0  # a 6x6 hole, closed on every side
    leaky = torch.zeros(16, 16)  # a ring with a notch in one corner
    leaky[3:13, 3:13] = 1.0
    leaky[5:11, 5:11] = 0.0
    leaky[4, 4] = leaky[3, 3] = 0.0
    leaky[4, 3] = leaky[3, 4] = 1.0
    out = binarize_shapes(torch.stack([ring, torch.zeros(16, 16), leaky]))
    assert out[0, 8, 8]  # the hole is filled, although the next mask is all background there
    assert not out[1].any()
    # Reference: the max-pool flood fill (8-connected) this replaced, mask by mask.
    import torch.nn.functional as F

    x = F.avg_pool2d(torch.stack([ring, torch.zeros(16, 16), leaky])[:, None], 3, stride=1, padding=1, count_include_pad=False)[:, 0] > 0.5
    outside = torch.zeros_like(x)
    outside[:, 0, :] = outside[:, -1, :] = outside[:, :, 0] = outside[:, :, -1] = True
    outside &= ~x
    for _ in range(64):
        outside = F.max_pool2d(outside[:, None].float(), 3, stride=1, padding=1)[:, 0].bool() & ~x
    assert torch.equal(out, ~outside)


def test_default_weights_dir_ignores_a_stray_site_packages_weights(tmp_path, monkeypatch):
    monkeypatch.delenv(hub.WEIGHTS_ENV, raising=False)
    site = tmp_path / "site-packages"
    (site / "cxr_nodule_aug" / "_weights").mkdir(parents=True)
    (site / "weights").mkdir()  # another distribution's top-level folder
    monkeypatch.setattr(hub, "__file__", str(site / "cxr_nodule_aug" / "hub.py"))
    assert hub.default_weights_dir() == site / "cxr_nodule_aug" / "_weights"
    (site / "pyproject.toml").write_text("[project]\n")  # now it looks like a source checkout
    assert hub.default_weights_dir() == site / "weights"


def test_binarize_keeps_only_the_largest_region_of_each_mask():
    """A generated nodule is one lesion: islands beyond the 3 x 3 speckle filter are dropped,
    per mask (a small region in one mask survives when it is that mask's largest)."""
    from cxr_nodule_aug.models.shape import binarize_shapes
    from skimage.measure import label

    big_and_island = torch.zeros(32, 32)
    big_and_island[4:20, 4:20] = 1.0  # the nodule
    big_and_island[24:29, 24:29] = 1.0  # a 5 x 5 island: survives the 3 x 3 mean, not this
    diagonal = torch.zeros(32, 32)  # two blocks touching at a corner: one 8-connected region
    diagonal[4:10, 4:10] = 1.0
    diagonal[10:16, 10:16] = 1.0
    small = torch.zeros(32, 32)
    small[10:15, 10:15] = 1.0
    out = binarize_shapes(torch.stack([big_and_island, diagonal, small, torch.zeros(32, 32)]))
    assert out[0, 10, 10] and not out[0, 26, 26]
    assert [label(m.numpy()).max() for m in out] == [1, 1, 1, 0]
    assert out[1, 6, 6] and out[1, 13, 13]
    assert out[2, 12, 12]


def test_shape_discriminator_spectral_norm():
    d = ShapeDiscriminator(base_width=16, image_size=32, norm="spectral")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.modules())
    assert sum(hasattr(m, "parametrizations") for m in d.modules()) == 4  # every convolution
    assert d(torch.rand(3, 1, 32, 32)).shape == (3,)
    assert d.config["norm"] == "spectral"
    with pytest.raises(ValueError, match="norm='layer'"):
        ShapeDiscriminator(base_width=16, image_size=32, norm="layer")


def test_shape_generator_smooth_is_part_of_its_definition(tmp_path):
    """``smooth`` (the mean filter before the threshold) is saved with the model; a config
    without it (the models trained before it existed) loads with the old 3 x 3."""
    import json

    from cxr_nodule_aug.models.shape import binarize_shapes

    jagged = torch.zeros(1, 16, 16)
    jagged[0, 4:12, 4:12] = 1.0
    jagged[0, 4, 5] = jagged[0, 4, 7] = jagged[0, 4, 9] = 0.0  # notches one pixel deep
    assert torch.equal(binarize_shapes(jagged, smooth=1), jagged.bool())
    assert not torch.equal(binarize_shapes(jagged, smooth=3), jagged.bool())
    g = ShapeGenerator(latent_dim=8, base_width=16, image_size=16, smooth=1).eval()
    g.save_pretrained(tmp_path / "g")
    assert ShapeGenerator.from_pretrained(tmp_path / "g").smooth == 1
    cfg = json.loads((tmp_path / "g" / "config.json").read_text())
    del cfg["smooth"]
    (tmp_path / "g" / "config.json").write_text(json.dumps(cfg))
    assert ShapeGenerator.from_pretrained(tmp_path / "g").smooth == 3
    with pytest.raises(ValueError, match="smooth"):
        ShapeGenerator(latent_dim=8, base_width=16, image_size=16, smooth=2)
