"""Any timm backbone with local weights as a frozen teacher: the ``timm`` teacher kind.

ViTs (DINOv2, CLIP, plain ViT), ConvNeXt, ResNet... are built by :func:`timm.create_model` and
loaded through timm's own pretrained path (the model's checkpoint filter for original DINOv2/CLIP
key names, position-embedding resampling, :func:`timm.models.adapt_input_conv` for another band
count), from a file given by the user or from timm's pretrained weights by name
(``vit_small_patch14_dinov2.lvd142m``), found in the Hugging Face hub cache and downloaded only
with the user's opt-in (:mod:`geodistill.models.pretrained`). Features come from timm's
``forward_intermediates`` as ``(B, C, h, w)`` maps.

The torchgeo kind builds its teachers with :func:`build_timm_teacher` too: torchgeo's pretrained
weights are timm state dicts.
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import timm
from timm.models import PretrainedCfg, clean_state_dict, get_pretrained_cfg
from torch import Tensor, nn

from geodistill.errors import GeodistillError
from geodistill.models.checkpoint import freeze
from geodistill.models.pretrained import downloads_allowed, hf_hub_file, torch_hub_file
from geodistill.models.safe_load import check_weights_file, read_weights_file
from geodistill.models.teachers.bands import map_bands
from geodistill.models.teachers.base import (
    InputNormalization,
    Teacher,
    TeacherNetwork,
    TeacherOutput,
    TeacherSpec,
    register_teacher,
    register_teacher_check,
)

RGB_BANDS = ["red", "green", "blue"]
"""What the three input channels of a timm (ImageNet, DINOv2, CLIP) model hold, for mapping by
name onto multispectral data whose bands are so named."""

DYNAMIC_SIZE = {"dynamic_img_size": True, "dynamic_img_pad": True}
"""ViT arguments that let any crop size through (position embeddings resampled, input padded to
whole patches); passed to every model class that accepts them."""

INTERMEDIATE_NORM_OPTION = "intermediate_norm"
"""Teacher option (not a timm argument): apply the model's final norm to the taken features.
Default: on for plain (single-scale) ViTs, as DINOv2's ``get_intermediate_layers``; off for
hierarchical backbones, whose stage outputs are used as they are."""


def _summary(error: BaseException, limit: int = 400) -> str:
    """One line of an error; torch's key lists shortened to their count and first keys."""
    text = " ".join(str(error).split()) or error.__class__.__name__
    text = re.sub(r"^Error\(s\) in loading state_dict for \w+: ", "", text)

    def shorten(match: re.Match[str]) -> str:
        keys = re.findall(r'"([^"]+)"', match.group(2))
        more = f", ... ({len(keys)} keys)" if len(keys) > 3 else ""
        return f"{match.group(1)}: {', '.join(keys[:3])}{more}."

    text = re.sub(
        r'((?:Missing|Unexpected) key\(s\) in state_dict): ((?:"[^"]+"(?:, )?)+)\.', shorten, text
    )
    return text if len(text) <= limit else text[: limit - 3] + "..."


def pretrained_config(arch: str, path: str | Path | None = None) -> PretrainedCfg:
    """timm's pretrained config of ``arch`` (mean/std, input size, classifier name)."""
    try:
        known = timm.is_model(arch)
        config = get_pretrained_cfg(arch) if known else None
    except RuntimeError as error:  # an unknown ``arch.tag``
        raise GeodistillError(f"unknown timm model {arch!r}: {_summary(error)}", path) from None
    if not known:
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise GeodistillError(f"unknown timm model {arch!r}{hint}", path)
    return config or PretrainedCfg()


TEACHER_OPT_IN = "teacher.download: true"
"""The per-teacher way to allow a download, named in the refusal of uncached weights."""


def _model_part(name: str) -> str:
    return name.split(".", 1)[0]


def timm_weights_name(spec: TeacherSpec) -> str | None:
    """The timm pretrained name (``model.tag``) a spec asks for, or ``None`` (a local file, or
    random weights): ``weights`` (a full name, or a bare tag completed by ``arch``), else an
    ``arch`` with a tag when no ``path`` is given."""
    if spec.weights is None:
        if spec.download and spec.path is None:
            raise GeodistillError(
                "teacher.download is set but no weights are named: set teacher.weights "
                "(a timm pretrained name such as vit_small_patch14_dinov2.lvd142m)"
            )
        tagged = spec.arch is not None and "." in spec.arch and spec.path is None
        return spec.arch if tagged else None
    name = spec.weights
    if spec.arch and "." not in name and name != _model_part(spec.arch):
        name = f"{_model_part(spec.arch)}.{name}"  # a bare tag beside its model
    if spec.arch and _model_part(spec.arch) != _model_part(name):
        raise GeodistillError(
            f"teacher.arch {spec.arch!r} and teacher.weights {spec.weights!r} name different "
            "timm models: give one of them",
            spec.path,
        )
    return name


def _safetensors_first(filename: str) -> list[str]:
    """timm's order of files in a hub repository: a ``.bin`` file's safetensors twin first."""
    if not filename.endswith(".bin"):
        return [filename]
    twins = {
        "pytorch_model.bin": "model.safetensors",
        "open_clip_pytorch_model.bin": "open_clip_model.safetensors",
    }
    return [twins.get(filename, filename[: -len(".bin")] + ".safetensors"), filename]


def timm_weights_file(name: str, download: bool) -> Path:
    """The local file of timm's pretrained weights ``name``, where timm would fetch it: its
    Hugging Face hub repository (``timm/<name>``, through the hub cache) or, for the few weights
    with only an address, torch.hub's cache. Downloaded only when ``download``."""
    config = pretrained_config(name)
    what = f"teacher weights {name!r}"
    if config.hf_hub_id:
        repo_id, _, revision = config.hf_hub_id.partition("@")
        files = _safetensors_first(config.hf_hub_filename or "pytorch_model.bin")
        return hf_hub_file(what, repo_id, files, revision or None, download, TEACHER_OPT_IN)
    if config.url:
        return torch_hub_file(what, config.url, download, TEACHER_OPT_IN)
    tags = timm.list_pretrained(f"{_model_part(name)}.*")
    hint = f" (its pretrained names: {', '.join(tags[:8])})" if tags else ""
    raise GeodistillError(f"timm has no pretrained weights named {name!r}{hint}")


def recorded_spec(spec: TeacherSpec, cached: Path | None = None) -> TeacherSpec:
    """The spec a timm/torchgeo teacher records: for named weights, the ``cached`` file they were
    read from (its bytes go into the fingerprint, its path into error messages); never the
    permission to download, which changes nothing about the teacher."""
    return replace(spec, path=str(cached) if cached is not None else spec.path, download=False)


STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model")
"""Where training checkpoints keep their weights, in timm's order of preference (EMA first)."""


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a ``.pt``/``.pth``/``.safetensors`` file, read weights-only (a pickle
    never runs code), with timm's handling of nested ``state_dict``/``model``/EMA entries and
    ``module.`` prefixes."""
    stored = read_weights_file(path)
    if isinstance(stored, dict):
        key = next((k for k in STATE_DICT_KEYS if isinstance(stored.get(k), dict)), None)
        stored = stored[key] if key else stored
    if not isinstance(stored, dict) or not stored:
        raise GeodistillError("the weights file holds no state dict", path)
    return clean_state_dict(stored)


def _classifier_rows(state: dict[str, Tensor], config: PretrainedCfg) -> int:
    names = (
        config.classifier if isinstance(config.classifier, list | tuple) else [config.classifier]
    )
    for name in names:
        weight = state.get(f"{name}.weight") if name else None
        if weight is not None and weight.ndim >= 1:
            return int(weight.shape[0])
    return 0


def _create(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    dynamic = {k: v for k, v in DYNAMIC_SIZE.items() if k not in kwargs}
    try:
        return timm.create_model(arch, **kwargs, **dynamic)
    except TypeError as error:
        if not dynamic or "dynamic_img" not in str(error):
            raise
    return timm.create_model(arch, **kwargs)  # not a ViT: no dynamic-size arguments


def create_backbone(
    arch: str,
    path: str | Path | None,
    in_chans: int,
    file_chans: int,
    options: dict[str, Any],
    label: str | None = None,
) -> nn.Module:
    """A frozen timm model with ``in_chans`` input bands and the weights of ``path``.

    The model is built with the classifier the file holds, so that timm loads the file strictly:
    with a classifier size that differs from the pretrained config, timm drops the classifier
    *and* turns strict loading off, which would let a file of another architecture load nothing
    without an error. The classifier is pruned afterwards. A file without classifier keys is
    tried headless, then with the config's classifier (release formats such as OpenAI/open_clip
    CLIP, whose projection timm's checkpoint filter turns into one).

    ``file_chans`` is the file's input band count; timm adapts the first convolution or patch
    embedding when ``in_chans`` differs (filters cycled, scaled by ``file_chans / in_chans``).
    ``path=None`` builds a randomly initialised model.
    """
    config = pretrained_config(arch, path)
    state = read_weights(path) if path is not None else None
    kwargs = dict(options)
    if "num_classes" in kwargs:
        heads = [int(kwargs.pop("num_classes"))]
    elif state is None or _classifier_rows(state, config):
        heads = [_classifier_rows(state, config) if state else 0]
    else:
        heads = list(dict.fromkeys([0, config.num_classes or 0]))
    kwargs.update(pretrained=state is not None, in_chans=in_chans)
    input_size = (file_chans, *(config.input_size or (3, 224, 224))[1:])
    failure: Exception | None = None
    for num_classes in heads:
        if state is not None:
            kwargs["pretrained_cfg_overlay"] = {
                "state_dict": dict(state),  # checkpoint filters edit the dict they are given
                "num_classes": num_classes,
                "label_offset": 0,
                "source": None,
                "input_size": input_size,
            }
        try:
            model = _create(arch, kwargs | {"num_classes": num_classes})
            break
        except TypeError as error:
            raise GeodistillError(
                f"cannot build timm model {arch!r} with options {options}: {_summary(error)}",
                path,
            ) from error
        except Exception as error:  # noqa: BLE001 - timm filters and torch raise many types
            if state is None:
                raise GeodistillError(
                    f"cannot build timm model {arch!r}: {_summary(error)}", path
                ) from error
            failure = failure or error
    else:
        classifier = f'"{config.classifier}.weight"' if isinstance(config.classifier, str) else ""
        hint = (
            " (the file's classifier has another size: set teacher.options.num_classes, or "
            "name the model tag the file was released for)"
            if classifier and classifier in str(failure)
            else ""
        )
        raise GeodistillError(
            f"the weights do not match {label or arch}: {_summary(failure)}{hint}", path
        ) from failure
    # timm keeps the overlay in the model's config, which would hold a second copy of the weights
    for config_dict in {id(c): c for c in (model.pretrained_cfg, model.default_cfg)}.values():
        config_dict.pop("state_dict", None)
    return freeze(model)


def _layer_index(layer: int | str, count: int, unit: str, path: str | Path | None) -> int:
    text = str(layer).rsplit(".", 1)[-1]
    try:
        index = int(text)
    except ValueError:
        raise GeodistillError(
            f"unknown teacher layer {layer!r}: use a {unit} index (0..{count - 1}, negative "
            f"from the last) or '{unit}.<index>'",
            path,
        ) from None
    if not -count <= index < count:
        raise GeodistillError(
            f"teacher layer {layer!r} is out of range: the model has {count} {unit}s "
            f"(0..{count - 1})",
            path,
        )
    return index % count


def default_layers(count: int, single_scale: bool) -> list[int]:
    """Four evenly spaced blocks of a plain ViT (KTDA's DINOv2 choice: depth 12 → 2, 5, 8, 11),
    else the four deepest stages (or all when there are fewer)."""
    if count <= 4:
        return list(range(count))
    if single_scale:
        return [(i + 1) * count // 4 - 1 for i in range(4)]
    return list(range(count - 4, count))


class TimmTeacherNetwork(TeacherNetwork):
    """A timm backbone's intermediate feature maps at chosen blocks (ViT) or stages (CNN).

    Levels are named ``block.<i>`` (single-scale models: every block has the same stride) or
    ``stage.<i>``; ``i`` indexes timm's ``feature_info``. Features only: no logits.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[int | str] | None,
        in_channels: int,
        band_names: list[str] | None,
        norm: bool | None = None,
        path: str | Path | None = None,
    ) -> None:
        super().__init__()
        if not hasattr(model, "forward_intermediates") or not getattr(model, "feature_info", None):
            raise GeodistillError(
                f"timm model {type(model).__name__} has no forward_intermediates: "
                "its features cannot be taken",
                path,
            )
        count = len(model.feature_info)
        single_scale = len({info["reduction"] for info in model.feature_info}) == 1
        unit = "block" if single_scale else "stage"
        self.indices = (
            [_layer_index(layer, count, unit, path) for layer in layers]
            if layers
            else default_layers(count, single_scale)
        )
        self.take = sorted(set(self.indices))
        self.levels = [f"{unit}.{i}" for i in self.indices]
        self.in_channels = in_channels
        self.band_names = band_names
        accepted = inspect.signature(model.forward_intermediates).parameters
        norm = single_scale if norm is None else bool(norm)
        self.forward_kwargs = {"norm": norm} if "norm" in accepted else {}
        if hasattr(model, "prune_intermediate_layers"):
            # drops the blocks after the deepest taken one and the classifier: less to run
            model.prune_intermediate_layers(self.take, prune_norm=not norm, prune_head=True)
        self.model = model

    def forward(self, x: Tensor) -> TeacherOutput:
        maps = self.model.forward_intermediates(
            x, indices=self.take, intermediates_only=True, **self.forward_kwargs
        )
        by_index = dict(zip(self.take, maps, strict=True))
        return TeacherOutput([by_index[i] for i in self.indices])


def build_timm_teacher(
    spec: TeacherSpec,
    student_bands: list[str],
    arch: str,
    file_bands: list[str] | None,
    file_chans: int,
    default_normalization: tuple[float, list[float], list[float]] | None,
    options: dict[str, Any],
    label: str | None = None,
) -> Teacher:
    """A timm teacher for ``student_bands``: map or expand the bands, build, freeze.

    ``file_bands`` names the file's ``file_chans`` input bands (for mapping by name);
    ``default_normalization`` is ``(scale, mean, std)`` per file band, used where the spec sets
    none; ``options`` are ``create_model`` arguments plus ``intermediate_norm``.
    """
    options = dict(options)
    norm = options.pop(INTERMEDIATE_NORM_OPTION, None)
    if spec.expand_input:
        # every chosen student band feeds the rebuilt first layer, in the student's order
        chosen = spec.bands if spec.bands is not None else list(range(len(student_bands)))
        indices = map_bands(student_bands, len(chosen), None, chosen, spec.path)
        band_names = [student_bands[i] for i in indices]
    else:
        indices = map_bands(student_bands, file_chans, file_bands, spec.bands, spec.path)
        band_names = file_bands
    model = create_backbone(arch, spec.path, len(indices), file_chans, options, label)
    network = TimmTeacherNetwork(model, spec.layers, len(indices), band_names, norm, spec.path)
    normalization = InputNormalization.from_spec(
        spec, len(indices), default_normalization, cycle_from=file_chans
    )
    return Teacher(network, indices, normalization, spec)


@register_teacher_check("timm")
@register_teacher_check("torchgeo")
def check_weights_teacher(spec: TeacherSpec) -> None:
    """A timm/torchgeo teacher's weights file, checked when its task is constructed: a pickle
    that would run code is refused before training writes anything (reads the pickle only)."""
    if spec.path is not None:
        check_weights_file(spec.path)


@register_teacher("timm")
def build_timm_kind(spec: TeacherSpec, student_bands: list[str]) -> Teacher:
    """A teacher from any timm model name (``spec.arch``) and a local weights file or named
    pretrained weights.

    ``spec.path`` is a state dict (``.pt``/``.pth``/``.safetensors``) in timm's or the original
    release's key names. Without it, named weights (``spec.weights``, or ``spec.arch`` with a
    pretrained tag) come from the Hugging Face hub cache — downloaded there by
    ``huggingface_hub`` only with ``spec.download`` or ``--allow-download`` — and an untagged
    ``spec.arch`` alone builds the architecture with random weights, which is useful only to
    time a teacher. ``spec.options`` are :func:`timm.create_model` arguments
    (``in_chans``: the file's band count, 3 by default; ``num_classes``: the file's classifier
    rows, read from the file by default) plus ``intermediate_norm``. Normalisation defaults to
    the model's pretrained ``mean``/``std`` on values in ``[0, 1]`` (set ``teacher.scale`` for
    reflectance stored as integers).
    """
    named = timm_weights_name(spec)
    arch = named or spec.arch
    if not arch:
        raise GeodistillError(
            "a timm teacher needs teacher.arch (a timm model name) or teacher.weights "
            "(a timm pretrained name)",
            spec.path,
        )
    cached = None
    if named is not None and spec.path is None:
        cached = timm_weights_file(named, downloads_allowed(spec.download))
    spec = recorded_spec(spec, cached)
    options = dict(spec.options)
    file_chans = int(options.pop("in_chans", 3))
    config = pretrained_config(arch, spec.path)
    default = None
    if config.mean is not None and config.std is not None:
        default = (1.0, list(config.mean), list(config.std))
    return build_timm_teacher(
        spec,
        student_bands,
        arch,
        RGB_BANDS if file_chans == 3 else None,
        file_chans,
        default,
        options,
    )
