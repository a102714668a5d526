"""Pretrained weights by name: loaded from the libraries' caches, downloaded only on opt-in.

The caches are pointed at ``tmp_path`` (torch.hub through ``TORCH_HOME``, the Hugging Face hub
through its cache constant) and filled with randomly initialised tiny models under the exact file
names the libraries look up; every socket connection fails the test, and the libraries' download
functions are replaced by copies of local files.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import timm
import torch
from fixtures_small import TINY_MODEL, config_dict, make_dataset, torch_threads, write_config
from harness import assert_refused, run_cli
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file

from geodistill.errors import GeodistillError
from geodistill.models import create_student
from geodistill.models.pretrained import ALLOW_DOWNLOAD_ENV, downloads_allowed
from geodistill.models.teachers import build_teacher

S2_BANDS = ["B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"]
RGB = ["red", "green", "blue"]
S2_ALL = "ResNet18_Weights.SENTINEL2_ALL_MOCO"
RGB_MOCO = "ResNet18_Weights.SENTINEL2_RGB_MOCO"
TIMM_TAG = "test_resnet.r160_in1k"
"""A timm test network (0.5 M parameters) with a pretrained tag on the Hugging Face hub."""
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"a download was attempted: {args}")


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty library caches under ``tmp_path``, no opt-in, and no network: every name lookup
    or socket connection is recorded (and refused at once); the test fails if there was any,
    even when a library swallowed the refusal."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv(ALLOW_DOWNLOAD_ENV, raising=False)
    attempts: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        attempts.append(args)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield tmp_path
    assert attempts == [], f"the network was reached for: {attempts}"


@pytest.fixture
def torchgeo():
    """torchgeo's models module; tests of torchgeo weights skip without the optional extra."""
    return pytest.importorskip("torchgeo.models")


@pytest.fixture(scope="session")
def resnet18_files(tmp_path_factory):
    """Random timm ResNet-18 state dicts as torchgeo releases them (no classifier): 13 and 3
    input bands."""
    folder = tmp_path_factory.mktemp("weights")
    files = {}
    for chans in (13, 3):
        torch.manual_seed(chans)
        model = timm.create_model("resnet18", in_chans=chans, num_classes=0)
        files[chans] = folder / f"resnet18_{chans}.pth"
        torch.save(model.state_dict(), files[chans])
    return files


def torch_hub_cache(name: str) -> Path:
    """Where torch.hub (and torchgeo's ``get_state_dict``) keeps the file of torchgeo weights."""
    url = pytest.importorskip("torchgeo.models").get_weight(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def put_in_torch_hub(name: str, source: Path) -> Path:
    target = torch_hub_cache(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


def hf_snapshot(repo_id: str, filename: str) -> Path:
    """The Hugging Face hub cache layout: refs/main names a snapshot that holds the file."""
    folder = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(COMMIT)
    target = folder / "snapshots" / COMMIT / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def timm_test_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("test_resnet")


# torchgeo weights -------------------------------------------------------------------------------


def test_cached_torchgeo_weights_load_without_opt_in(caches, torchgeo, resnet18_files, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_network)
    cached = put_in_torch_hub(S2_ALL, resnet18_files[13])
    teacher = build_teacher({"kind": "torchgeo", "weights": S2_ALL, "layers": [1, 2]}, S2_BANDS)
    source = torch.load(resnet18_files[13], weights_only=True)
    assert torch.equal(teacher.network.model.conv1.weight, source["conv1.weight"])
    assert teacher.spec.path == str(cached)
    assert teacher.channels() == [64, 128]
    # the older spelling, weights named by `arch` without a path, reads the same cache
    by_arch = build_teacher({"kind": "torchgeo", "arch": S2_ALL, "layers": [1, 2]}, S2_BANDS)
    assert torch.equal(by_arch.network.model.conv1.weight, source["conv1.weight"])


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "torchgeo", "weights": S2_ALL},
        {"kind": "timm", "arch": TIMM_TAG},
        {"kind": "timm", "weights": TIMM_TAG},
    ],
    ids=["torchgeo", "timm-tagged-arch", "timm-weights"],
)
def test_missing_weights_without_opt_in_are_one_line_and_no_request(caches, spec):
    if spec["kind"] == "torchgeo":
        pytest.importorskip("torchgeo")
    bands = S2_BANDS if spec["kind"] == "torchgeo" else RGB
    with pytest.raises(GeodistillError) as error:
        build_teacher(spec, bands)
    message = str(error.value)
    assert "\n" not in message
    name = spec.get("weights") or spec["arch"]
    assert f"teacher weights '{name}' are not in the local cache (" in message
    assert "--allow-download (or teacher.download: true)" in message
    if spec["kind"] == "torchgeo":
        cache = torch_hub_cache(S2_ALL)
        url = pytest.importorskip("torchgeo.models").get_weight(S2_ALL).url
        assert f"({cache})" in message and f"put the file from {url} at {cache}" in message
    else:
        cache = Path(constants.HF_HUB_CACHE) / "models--timm--test_resnet.r160_in1k"
        assert f"({cache})" in message
        assert "https://huggingface.co/timm/test_resnet.r160_in1k/" in message
    assert not list(caches.rglob("*.pth")) and not list(caches.rglob("*.safetensors"))


@pytest.mark.parametrize("opt_in", ["spec", "environment"])
def test_opt_in_downloads_torchgeo_weights_through_torch_hub(
    caches, torchgeo, resnet18_files, monkeypatch, opt_in
):
    calls = []

    def download(url, dst, hash_prefix=None, progress=True):  # torch.hub's signature
        calls.append((url, Path(dst), hash_prefix, progress))
        shutil.copyfile(resnet18_files[13], dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    spec = {"kind": "torchgeo", "weights": S2_ALL, "layers": [1]}
    if opt_in == "spec":
        spec["download"] = True
    else:
        monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "1")
    teacher = build_teacher(spec, S2_BANDS)
    url = torchgeo.get_weight(S2_ALL).url
    assert calls == [(url, torch_hub_cache(S2_ALL), "59bfdff9", True)]  # hash-checked, progress
    assert teacher.spec.path == str(torch_hub_cache(S2_ALL))
    assert teacher.spec.download is False  # the permission is not part of the teacher
    build_teacher(spec, S2_BANDS)
    assert len(calls) == 1  # cached now: no second download


def test_a_failed_download_is_one_line(caches, torchgeo, monkeypatch):
    def offline(url, dst, hash_prefix=None, progress=True):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(GeodistillError, match="cannot download teacher weights .* unreachable"):
        build_teacher({"kind": "torchgeo", "weights": S2_ALL, "download": True}, S2_BANDS)
    assert not torch_hub_cache(S2_ALL).exists()


def test_fingerprint_records_the_weights_name_and_file(caches, torchgeo, resnet18_files):
    rgb_moco, rgb_seco = RGB_MOCO, "ResNet18_Weights.SENTINEL2_RGB_SECO"
    moco_file = put_in_torch_hub(rgb_moco, resnet18_files[3])
    seco_file = put_in_torch_hub(rgb_seco, resnet18_files[3])  # the same bytes, another name
    bands = ["B4", "B3", "B2"]

    def fingerprint(name: str, **extra: object) -> str:
        return build_teacher({"kind": "torchgeo", "weights": name, **extra}, bands).fingerprint()

    moco = fingerprint(rgb_moco)
    assert fingerprint(rgb_seco) != moco
    assert fingerprint(rgb_moco, download=True) == moco  # the permission changes nothing
    # the same weights given as a local file: the same teacher
    assert fingerprint(rgb_moco, path=str(moco_file), download=True) == moco
    before = fingerprint(rgb_seco)
    torch.manual_seed(7)  # other bytes under the same name: the file's hash is recorded too
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), seco_file)
    assert fingerprint(rgb_seco) != before


# timm pretrained names --------------------------------------------------------------------------


def test_timm_weights_in_the_hub_cache_load_without_opt_in(caches):
    source = timm_test_model()
    save_file(source.state_dict(), hf_snapshot("timm/" + TIMM_TAG, "model.safetensors"))
    for spec in (
        {"kind": "timm", "arch": TIMM_TAG, "layers": [1, 3]},
        {"kind": "timm", "weights": TIMM_TAG, "layers": [1, 3]},
        {"kind": "timm", "arch": "test_resnet", "weights": "r160_in1k", "layers": [1, 3]},
    ):
        teacher = build_teacher(spec, RGB)
        assert torch.equal(teacher.network.model.conv1[0].weight, source.conv1[0].weight)
        assert teacher.channels() == [32, 192]
        # timm's pretrained config of the tag gives the input normalisation
        assert teacher.normalization.mean.flatten().tolist() == [0.5, 0.5, 0.5]


@pytest.mark.parametrize("opt_in", [None, "spec", "environment"])
def test_timm_weights_download_only_with_opt_in(caches, monkeypatch, opt_in):
    import huggingface_hub

    calls = []

    def hf_hub_download(repo_id, filename, *, revision=None, local_files_only=False, **kwargs):
        calls.append((repo_id, filename, local_files_only))
        if local_files_only:
            raise LocalEntryNotFoundError("not cached")
        target = hf_snapshot(repo_id, filename)
        save_file(timm_test_model(seed=3).state_dict(), target)
        return str(target)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    spec = {"kind": "timm", "weights": TIMM_TAG, "layers": [1]}
    if opt_in == "spec":
        spec["download"] = True
    elif opt_in == "environment":
        monkeypatch.setenv(ALLOW_DOWNLOAD_ENV, "1")
    if opt_in is None:
        with pytest.raises(GeodistillError, match="not in the local cache"):
            build_teacher(spec, RGB)
        # safetensors first, then the .bin, as timm looks them up: both only in the cache
        assert calls == [
            ("timm/" + TIMM_TAG, "model.safetensors", True),
            ("timm/" + TIMM_TAG, "pytorch_model.bin", True),
        ]
        return
    teacher = build_teacher(spec, RGB)
    assert calls == [("timm/" + TIMM_TAG, "model.safetensors", False)]
    expected = timm_test_model(seed=3).conv1[0].weight
    assert torch.equal(teacher.network.model.conv1[0].weight, expected)


def test_bad_names_are_refused_before_any_lookup(caches):
    with pytest.raises(GeodistillError, match="no weights are named: set teacher.weights"):
        build_teacher({"kind": "timm", "arch": "resnet18", "download": True}, RGB)
    with pytest.raises(GeodistillError, match="name different timm models"):
        build_teacher({"kind": "timm", "arch": "resnet18", "weights": TIMM_TAG}, RGB)
    with pytest.raises(GeodistillError, match="unknown timm model 'test_resnet.nope'"):
        build_teacher({"kind": "timm", "weights": "test_resnet.nope"}, RGB)
    pytest.importorskip("torchgeo")
    with pytest.raises(GeodistillError, match="unknown torchgeo weights"):
        build_teacher({"kind": "torchgeo", "weights": "ResNet18_Weights.SENTINEL2_AL"}, S2_BANDS)


# students ---------------------------------------------------------------------------------------


def test_student_smp_weights_come_from_the_hub_cache_without_opt_in(caches):
    import segmentation_models_pytorch as smp

    settings = smp.encoders.encoders["mobilenet_v2"]["pretrained_settings"]["imagenet"]
    offline = constants.HF_HUB_OFFLINE
    with pytest.raises(GeodistillError) as error:
        create_student("unet", "mobilenet_v2", 3, 2, weights="imagenet")
    cache = Path(constants.HF_HUB_CACHE) / "models--smp-hub--mobilenet_v2.imagenet"
    assert f"not in the local cache ({cache}); download them with --allow-download," in str(
        error.value
    )
    # smp pins a revision: its snapshot, as the hub would have stored it
    snapshot = cache / "snapshots" / settings["revision"]
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    torch.manual_seed(5)
    source = smp.encoders.get_encoder("mobilenet_v2", in_channels=3)
    save_file(source.state_dict(), snapshot / "model.safetensors")
    student = create_student("unet", "mobilenet_v2", 3, 2, weights="imagenet")
    encoder = student.network.encoder
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in encoder.state_dict().items())
    assert offline == constants.HF_HUB_OFFLINE  # the hub's offline mode only lasted the call


def test_student_torchgeo_weights_need_the_weights_bands(caches, torchgeo, resnet18_files):
    put_in_torch_hub(S2_ALL, resnet18_files[13])
    student = create_student("unet", "resnet18", 13, 2, weights=S2_ALL)
    source = torch.load(resnet18_files[13], weights_only=True)
    assert torch.equal(student.network.encoder.conv1.weight, source["conv1.weight"])
    with pytest.raises(GeodistillError, match=r"take 13 bands \(B1, .*B12\), the student has 4"):
        create_student("unet", "resnet18", 4, 2, weights=S2_ALL)
    # a timm-universal encoder takes the same (timm) state dict
    tu = create_student("unet", "tu-resnet18", 13, 2, weights=S2_ALL, **TINY_MODEL["arch_kwargs"])
    assert torch.equal(tu.network.encoder.model.conv1.weight, source["conv1.weight"])


# the command line -------------------------------------------------------------------------------


def test_fit_with_uncached_teacher_weights_stops_with_one_line(caches, torchgeo, capsys):
    make_dataset(caches / "train", n=4, seed=1)
    config = config_dict(caches / "train", caches / "out", max_epochs=1)
    teacher = {"kind": "torchgeo", "weights": RGB_MOCO, "layers": [1, 2, 3], "bands": [0, 1, 2]}
    config["model"] = {
        "class_path": "geodistill.tasks.SegmentationTask",
        "init_args": {
            **TINY_MODEL,
            "distillation": {
                "class_path": "geodistill.methods.KnowledgeTransfer",
                "init_args": {
                    "teacher": teacher,
                    "student_levels": ["encoder.-3", "encoder.-2", "encoder.-1"],
                    "modulation": None,
                },
            },
        },
    }
    path = write_config(caches / "ktda.yaml", config)
    with torch_threads(1):
        outcome = run_cli(capsys, "fit", "--config", path)
    cache = torch_hub_cache(RGB_MOCO)
    assert_refused(outcome, f"teacher weights '{RGB_MOCO}' are not in the local cache ({cache})")
    assert not cache.exists()


def test_allow_download_flag_opts_in_for_the_command_only(caches, monkeypatch):
    from geodistill.cli import main as cli

    seen = []
    monkeypatch.setattr(cli, "run", lambda args: seen.append((list(args), downloads_allowed())))
    assert cli.main(["--allow-download", "fit", "--config", "x.yaml"]) == 0
    assert cli.main(["fit", "--config", "x.yaml"]) == 0
    assert seen == [(["fit", "--config", "x.yaml"], True), (["fit", "--config", "x.yaml"], False)]
    assert not downloads_allowed()
