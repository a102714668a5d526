"""Teacher kinds beyond geodistill checkpoints: timm (ViT/DINOv2/CLIP, CNNs), torchgeo weights and
ONNX models run by ONNX Runtime — local weights only, band mapping and expansion, the teacher's
own normalisation, named intermediate tensors, and one clear error per bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest
import timm
import torch
from fixtures_small import TINY_MODEL
from safetensors.torch import save_file
from torch import Tensor, nn
from torchvision.transforms import v2

from geodistill.errors import GeodistillError
from geodistill.export import export_student
from geodistill.models.teachers import Teacher, build_teacher
from geodistill.models.teachers.from_timm import default_layers
from geodistill.models.teachers.from_torchgeo import transforms_normalization
from geodistill.tasks import SegmentationTask

RGB = ["red", "green", "blue"]
TINY_VIT = {"depth": 4, "embed_dim": 32, "num_heads": 2, "img_size": 112}
"""A 4-block, 32-wide ViT of any timm ViT architecture; 112 is a whole number of 14- and
16-pixel patches."""


def timm_model(arch: str, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    return timm.create_model(arch, **kwargs).eval()


def save_weights(model: nn.Module, path: Path) -> Path:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def imagenet(x: Tensor, model: nn.Module) -> Tensor:
    """What a timm teacher feeds its network by default: the pretrained config's mean/std."""
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, -1, 1, 1)
    return (x - mean) / std


def assert_error_names_file(error: pytest.ExceptionInfo, path: Path) -> None:
    assert error.value.path == str(path) and str(path) in str(error.value)


# --------------------------------------------------------------------------------------------
# timm


@pytest.mark.parametrize("arch", ["vit_small_patch14_dinov2", "vit_base_patch16_clip_224"])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_timm_vit_teacher_gives_the_features_of_the_saved_model(tmp_path, arch, suffix):
    source = timm_model(arch, **TINY_VIT)
    path = save_weights(source, tmp_path / f"vit{suffix}")
    teacher = build_teacher(
        {"kind": "timm", "arch": arch, "path": str(path), "options": TINY_VIT}, RGB
    )
    assert teacher.levels == ["block.0", "block.1", "block.2", "block.3"]
    assert teacher.class_names is None and teacher.channels() == [32] * 4
    x = torch.rand(2, 3, 112, 112)
    output = teacher(x)
    with torch.no_grad():
        expected = source.forward_intermediates(
            imagenet(x, source), indices=[0, 1, 2, 3], norm=True, intermediates_only=True
        )
    assert output.logits is None
    for got, want in zip(output.features, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # dynamic image size: any crop, padded to whole patches
    patch = source.patch_embed.patch_size[0]
    side = -(-64 // patch)
    assert teacher(torch.rand(1, 3, 64, 64)).features[0].shape == (1, 32, side, side)


def open_clip_format(model: nn.Module) -> dict[str, Tensor]:
    """A timm CLIP ViT's weights under OpenAI/open_clip key names (the inverse of timm's filter)."""
    swaps = [("patch_embed.proj", "conv1"), ("pos_embed", "positional_embedding"),
             ("blocks.", "transformer.resblocks."), ("norm_pre", "ln_pre"), ("norm1", "ln_1"),
             ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"),
             ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]  # fmt: skip
    state = {}
    for key, value in model.state_dict().items():
        for timm_name, clip_name in swaps:
            key = key.replace(timm_name, clip_name)
        key = {"norm.weight": "ln_post.weight", "norm.bias": "ln_post.bias"}.get(key, key)
        if key == "cls_token":
            key, value = "class_embedding", value.flatten()
        elif key == "positional_embedding":
            value = value[0]
        elif key == "head.weight":
            key, value = "proj", value.t()
        elif key == "head.bias":
            continue
        state[f"visual.{key}"] = value.contiguous()
    return state


@pytest.mark.parametrize("release", ["dinov2", "open_clip"])
def test_timm_teacher_reads_original_release_key_names(tmp_path, release):
    if release == "dinov2":  # the DINOv2 repository's files also hold the iBOT mask token
        arch = "vit_small_patch14_dinov2"
        source = timm_model(arch, **TINY_VIT)
        state = source.state_dict() | {"mask_token": torch.zeros(1, 32)}
    else:  # open_clip's OpenAI-style names; the projection becomes timm's classifier
        arch = "vit_base_patch16_clip_224.openai"
        source = timm_model(arch, **TINY_VIT)
        state = open_clip_format(source)
    path = tmp_path / "release.pth"
    torch.save(state, path)
    teacher = build_teacher(
        {"kind": "timm", "arch": arch, "path": str(path), "options": TINY_VIT}, RGB
    )
    x = torch.rand(1, 3, 112, 112)
    with torch.no_grad():
        expected = source.forward_intermediates(
            imagenet(x, source), indices=[0, 1, 2, 3], norm=True, intermediates_only=True
        )
    for got, want in zip(teacher(x).features, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_default_vit_blocks_are_ktdas_and_cnn_stages_the_deepest():
    assert default_layers(12, single_scale=True) == [2, 5, 8, 11]
    assert default_layers(24, single_scale=True) == [5, 11, 17, 23]
    assert default_layers(5, single_scale=False) == [1, 2, 3, 4]
    assert default_layers(3, single_scale=False) == [0, 1, 2]


def test_timm_cnn_teacher_takes_chosen_stages_in_the_given_order(tmp_path):
    source = timm_model("resnet18")
    path = save_weights(source, tmp_path / "resnet18.pth")
    spec = {"kind": "timm", "arch": "resnet18", "path": str(path)}
    teacher = build_teacher(spec, RGB)
    assert teacher.levels == ["stage.1", "stage.2", "stage.3", "stage.4"]
    chosen = build_teacher({**spec, "layers": ["stage.4", 2]}, RGB)
    assert chosen.levels == ["stage.4", "stage.2"] and chosen.channels() == [512, 128]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = source.forward_intermediates(
            imagenet(x, source), indices=[2, 4], intermediates_only=True
        )
    deep, mid = chosen(x).features
    torch.testing.assert_close(deep, expected[1], rtol=0, atol=1e-5)
    torch.testing.assert_close(mid, expected[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(teacher(x).features[3], deep, rtol=0, atol=0)


def test_expand_input_adapts_the_patch_embedding_by_timms_rule(tmp_path):
    source = timm_model("vit_small_patch14_dinov2", **TINY_VIT)
    path = save_weights(source, tmp_path / "dinov2.pth")
    bands = ["b1", "b2", "b3", "b4", "b5"]
    spec = {"kind": "timm", "arch": "vit_small_patch14_dinov2", "path": str(path)}
    teacher = build_teacher({**spec, "options": TINY_VIT, "expand_input": True}, bands)
    assert teacher.band_indices.tolist() == [0, 1, 2, 3, 4]
    file_weight = source.patch_embed.proj.weight
    weight = teacher.network.model.patch_embed.proj.weight
    # timm's adapt_input_conv: RGB filters cycled over the 5 bands, scaled by 3/5
    torch.testing.assert_close(weight, file_weight[:, [0, 1, 2, 0, 1]] * 3 / 5)
    torch.testing.assert_close(teacher.network.model.blocks[1].attn.qkv.weight,
                               source.blocks[1].attn.qkv.weight)  # fmt: skip
    mean = teacher.normalization.mean.flatten().tolist()  # cycled like the filters
    assert mean == pytest.approx([0.485, 0.456, 0.406, 0.485, 0.456])
    assert teacher.channels(56) == [32] * 4
    # on six bands that repeat R, G, B the expanded teacher sees what the RGB teacher sees
    six = build_teacher({**spec, "options": TINY_VIT, "expand_input": True}, bands + ["b6"])
    rgb_teacher = build_teacher({**spec, "options": TINY_VIT}, RGB)
    rgb = torch.rand(2, 3, 56, 56)
    repeated = six(rgb[:, [0, 1, 2, 0, 1, 2]]).features
    for got, want in zip(repeated, rgb_teacher(rgb).features, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_rgb_teacher_finds_its_bands_by_name_in_multispectral_data(tmp_path):
    source = timm_model("vit_small_patch14_dinov2", **TINY_VIT)
    path = save_weights(source, tmp_path / "dinov2.safetensors")
    spec = {
        "kind": "timm",
        "arch": "vit_small_patch14_dinov2",
        "path": str(path),
        "options": TINY_VIT,
    }
    students = ["nir", "Blue", "swir16", "RED", "green"]
    teacher = build_teacher(spec, students)
    assert teacher.band_indices.tolist() == [3, 4, 1]
    rgb = torch.rand(2, 3, 56, 56)
    multispectral = torch.rand(2, 5, 56, 56)
    multispectral[:, [3, 4, 1]] = rgb
    on_rgb = build_teacher(spec, RGB)(rgb).features
    for got, want in zip(teacher(multispectral).features, on_rgb, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with pytest.raises(GeodistillError, match="set teacher.bands") as error:
        build_teacher(spec, ["b1", "b2", "b3", "b4"])
    assert_error_names_file(error, path)
    chosen = build_teacher({**spec, "bands": ["b3", 0, "b2"]}, ["b1", "b2", "b3", "b4"])
    assert chosen.band_indices.tolist() == [2, 0, 1]


@pytest.mark.parametrize(
    "arch,file_arch,file_kwargs",
    [
        # same family, other keys: DINOv2's layer scale where CLIP has a pre-norm
        ("vit_base_patch16_clip_224", "vit_small_patch14_dinov2", TINY_VIT),
        # nothing in common: timm alone (num_classes=0) would load nothing and say nothing
        ("resnet18", "convnext_atto", {}),
        ("resnet18", "resnet34", {}),
    ],
)
def test_weights_of_another_architecture_are_refused(tmp_path, arch, file_arch, file_kwargs):
    path = save_weights(timm_model(file_arch, **file_kwargs), tmp_path / f"{file_arch}.pth")
    options = TINY_VIT if "vit" in arch else {}
    with pytest.raises(GeodistillError, match=f"the weights do not match {arch}") as error:
        build_teacher({"kind": "timm", "arch": arch, "path": str(path), "options": options}, RGB)
    assert_error_names_file(error, path)


def test_bad_layers_unknown_models_and_unreadable_files_are_refused(tmp_path):
    path = save_weights(timm_model("vit_small_patch14_dinov2", **TINY_VIT), tmp_path / "v.pth")
    spec = {"kind": "timm", "arch": "vit_small_patch14_dinov2", "path": str(path)}
    with pytest.raises(GeodistillError, match=r"out of range: the model has 4 blocks") as error:
        build_teacher({**spec, "options": TINY_VIT, "layers": [2, 4]}, RGB)
    assert_error_names_file(error, path)
    with pytest.raises(GeodistillError, match="close: vit_small_patch14_dinov2") as error:
        build_teacher({**spec, "arch": "vit_smal_patch14_dinov2"}, RGB)
    assert_error_names_file(error, path)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not weights")
    with pytest.raises(GeodistillError, match="cannot read the weights file") as error:
        build_teacher({**spec, "path": str(broken)}, RGB)
    assert_error_names_file(error, broken)


# --------------------------------------------------------------------------------------------
# torchgeo


S2_BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8a", "B9", "B10", "B11", "B12"]


def test_torchgeo_weights_map_sentinel2_bands_by_name_with_their_normalisation(tmp_path):
    pytest.importorskip("torchgeo")
    # SSL4EO weights: a 13-band timm ResNet-18 without classifier
    source = timm_model("resnet18", in_chans=13, num_classes=0)
    path = save_weights(source, tmp_path / "resnet18_sentinel2_all_moco.pth")
    # zero-padded, upper-case names in another order, and one band more
    student = ["B02", "B03", "B04", "B08", "B05", "B06", "B07", "B8A", "B11", "B12", "B01",
               "B09", "B10", "SCL"]  # fmt: skip
    spec = {"kind": "torchgeo", "arch": "ResNet18_Weights.SENTINEL2_ALL_MOCO", "path": str(path)}
    teacher = build_teacher(spec, student)
    order = [10, 0, 1, 2, 4, 5, 6, 3, 7, 11, 12, 8, 9]  # B1, B2, ... B12 among the student's
    assert [student[i] for i in order] == [f"B{b[1:].upper():0>2}" for b in S2_BANDS]
    assert teacher.band_indices.tolist() == order
    assert teacher.levels == ["stage.1", "stage.2", "stage.3", "stage.4"]
    x = torch.rand(2, 14, 64, 64) * 10000  # reflectance as stored: torchgeo divides by 10000
    with torch.no_grad():
        expected = source.forward_intermediates(
            x[:, order] / 10000, indices=[1, 2, 3, 4], intermediates_only=True
        )
    for got, want in zip(teacher(x).features, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    rgb_file = save_weights(timm_model("resnet18"), tmp_path / "rgb.pth")
    with pytest.raises(GeodistillError, match=r"do not match resnet18 \(ResNet18_Weights") as error:
        build_teacher({**spec, "path": str(rgb_file)}, student)
    assert_error_names_file(error, rgb_file)
    with pytest.raises(
        GeodistillError, match="close: ResNet18_Weights.SENTINEL2_ALL_MOCO"
    ) as error:
        build_teacher({**spec, "arch": "ResNet18_Weights.SENTINEL2_ALL_MOC"}, student)
    assert_error_names_file(error, path)


def test_a_chain_of_normalize_transforms_becomes_one_mean_and_std():
    chain = nn.Sequential(
        v2.CenterCrop(8),
        v2.Normalize(mean=[3.0, 2.0, 0.0], std=[85.0, 101.0, 129.0]),
        v2.Normalize(mean=[0.0], std=[1 / 255]),
        v2.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    )
    scale, mean, std = transforms_normalization(chain)
    x = torch.rand(1, 3, 8, 8) * 300
    expected = chain(x.clone())
    got = (x * scale - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(got, expected)
    assert transforms_normalization(nn.Sequential(v2.ColorJitter(0.5))) is None


# --------------------------------------------------------------------------------------------
# onnx


class TinyNet(nn.Module):
    """conv → relu → 1×1 conv: logits and one named intermediate tensor."""

    def __init__(self, bands: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(bands, 8, 3, padding=1)
        self.head = nn.Conv2d(8, classes, 1)

    def hidden(self, x: Tensor) -> Tensor:
        return torch.relu(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.hidden(x))


def export(model: nn.Module, path: Path, sample: Tensor, dynamic: bool = True) -> Path:
    axes = {"image": {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    torch.onnx.export(model.eval(), (sample,), str(path), input_names=["image"],
                      output_names=["logits"], dynamic_axes=axes, dynamo=False)  # fmt: skip
    return path


def relu_output(path: Path) -> str:
    (name,) = [n.output[0] for n in onnx.load(str(path)).graph.node if n.op_type == "Relu"]
    return name


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> tuple[TinyNet, Path]:
    torch.manual_seed(0)
    net = TinyNet()
    return net, export(net, tmp_path_factory.mktemp("onnx") / "tiny.onnx", torch.rand(1, 4, 16, 16))


def test_onnx_teacher_gives_torchs_logits_and_a_named_intermediate(tiny_onnx):
    net, path = tiny_onnx
    hidden = relu_output(path)
    spec = {"kind": "onnx", "path": str(path), "layers": [hidden],
            "scale": 0.5, "mean": [0.1], "std": [2.0]}  # fmt: skip
    teacher = build_teacher(spec, ["b0", "b1", "b2", "b3"])
    assert teacher.levels == [hidden] and teacher.class_names == ["class_0", "class_1", "class_2"]
    assert not teacher.network.normalizes_input
    x = torch.rand(2, 4, 24, 40)
    x[0, :, :3, :5] = float("nan")  # nodata: 0 after the teacher's normalisation
    output = teacher(x)
    normalised = torch.nan_to_num((x * 0.5 - 0.1) / 2.0, nan=0.0)
    with torch.no_grad():
        torch.testing.assert_close(output.logits, net(normalised), rtol=0, atol=1e-4)
        torch.testing.assert_close(output.features[0], net.hidden(normalised), rtol=0, atol=1e-4)
    # no layers: the graph's 4-D outputs are the features
    plain = build_teacher({"kind": "onnx", "path": str(path)}, ["b0", "b1", "b2", "b3"])
    assert plain.levels == ["logits"] and plain.channels() == [3]
    headless = build_teacher({**spec, "options": {"logits": None}}, ["b0", "b1", "b2", "b3"])
    assert headless(x).logits is None and headless.class_names is None


def test_onnx_model_of_fixed_size_refuses_other_sizes(tmp_path):
    torch.manual_seed(1)
    net = TinyNet()
    path = export(net, tmp_path / "fixed.onnx", torch.rand(1, 4, 32, 32), dynamic=False)
    teacher = build_teacher({"kind": "onnx", "path": str(path)}, ["b0", "b1", "b2", "b3"])
    x = torch.rand(3, 4, 32, 32)  # a graph fixed to one image runs a batch one by one
    with torch.no_grad():
        torch.testing.assert_close(teacher(x).logits, net(x), rtol=0, atol=1e-4)
    with pytest.raises(GeodistillError, match="takes 32×32 tiles, got 48×48") as error:
        teacher(torch.rand(1, 4, 48, 48))
    assert_error_names_file(error, path)


class SequenceNet(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * 2


class IndexNet(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.float() * 2


@pytest.mark.parametrize(
    "net,sample",
    [
        (nn.Conv1d(4, 2, 3), torch.rand(1, 4, 16)),  # rank 3
        (IndexNet(), torch.zeros(1, 4, 8, 8, dtype=torch.int64)),  # not float
    ],
)
def test_onnx_model_with_an_unexpected_input_is_refused(tmp_path, net, sample):
    path = export(net, tmp_path / "odd.onnx", sample, dynamic=False)
    with pytest.raises(GeodistillError, match="unexpected input shape") as error:
        build_teacher({"kind": "onnx", "path": str(path)}, ["b0", "b1", "b2", "b3"])
    assert_error_names_file(error, path)


def test_onnx_unknown_tensor_name_is_refused_with_close_names(tiny_onnx):
    _, path = tiny_onnx
    hidden = relu_output(path)
    with pytest.raises(
        GeodistillError, match=f"no tensor named '{hidden}x'.*close names: {hidden}"
    ) as error:
        build_teacher({"kind": "onnx", "path": str(path), "layers": [hidden + "x"]}, ["a"] * 4)
    assert_error_names_file(error, path)


def save_checkpoint(path: Path) -> Path:
    """A tiny random geodistill student checkpoint (as ``test_inference`` writes one)."""
    torch.manual_seed(0)
    task = SegmentationTask(in_channels=4, num_classes=2, class_names=["land", "water"],
                            **TINY_MODEL)  # fmt: skip
    task.model.normalizer.mean.copy_(torch.full((4,), 0.5))
    task.model.normalizer.std.copy_(torch.full((4,), 0.3))
    meta = {"band_names": ["b0", "b1", "b2", "b3"], "class_names": ["land", "water"]}
    torch.save(
        {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
         "geodistill": meta},
        path,
    )  # fmt: skip
    return path


def test_a_geodistill_onnx_export_teaches_like_its_checkpoint(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "student.ckpt")
    onnx_path = export_student(checkpoint, tmp_path / "student.onnx")
    student = ["extra", "b2", "b0", "b3", "b1"]
    from_onnx = build_teacher({"kind": "onnx", "path": str(onnx_path)}, student)
    from_ckpt = build_teacher({"kind": "geodistill", "path": str(checkpoint)}, student)
    assert from_onnx.network.normalizes_input and from_onnx.normalization is None
    assert from_onnx.band_indices.tolist() == [2, 4, 1, 3]  # by the recorded band names
    assert from_onnx.class_names == ["land", "water"]
    x = torch.rand(2, 5, 32, 48)
    x[:, :, :4, :4] = float("nan")
    torch.testing.assert_close(from_onnx(x).logits, from_ckpt(x).logits, rtol=0, atol=1e-4)
    with pytest.raises(GeodistillError, match="normalises its own input") as error:
        build_teacher({"kind": "onnx", "path": str(onnx_path), "scale": 1e-4}, student)
    assert_error_names_file(error, onnx_path)


def test_fingerprint_follows_the_weights_file(tmp_path):
    torch.manual_seed(0)
    path = export(TinyNet(), tmp_path / "teacher.onnx", torch.rand(1, 4, 16, 16))
    bands = ["b0", "b1", "b2", "b3"]

    def fingerprint(file: Path) -> str:
        teacher: Teacher = build_teacher({"kind": "onnx", "path": str(file)}, bands)
        return teacher.fingerprint()

    first = fingerprint(path)
    assert fingerprint(path) == first
    assert fingerprint(Path(shutil.copy(path, tmp_path / "copy.onnx"))) == first  # bytes, not path
    torch.manual_seed(1)
    export(TinyNet(), path, torch.rand(1, 4, 16, 16))
    assert fingerprint(path) != first
    timm_file = save_weights(timm_model("resnet18"), tmp_path / "r.pth")
    spec = {"kind": "timm", "arch": "resnet18", "path": str(timm_file)}
    before = build_teacher(spec, RGB).fingerprint()
    assert build_teacher(spec, RGB).fingerprint() == before
    assert build_teacher({**spec, "layers": [-1]}, RGB).fingerprint() != before
    save_weights(timm_model("resnet18", seed=1), timm_file)
    assert build_teacher(spec, RGB).fingerprint() != before
