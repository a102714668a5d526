"""Pretrained weights by name: read from the libraries' own caches, fetched only on request.

Named weights (a timm pretrained tag, a torchgeo weights enum, an smp encoder weight name) live
where their library caches them — the Hugging Face hub cache (``$HF_HOME/hub``) or torch.hub's
(``$TORCH_HOME/hub/checkpoints``) — and are downloaded by the library's own downloader, with its
progress bar. Nothing touches the network unless the user opts in: for one teacher
(``teacher.download: true``) or for the whole process (``--allow-download``, which sets
``GEODISTILL_ALLOW_DOWNLOAD=1``). Without the opt-in, cached weights load and missing ones are
refused with one line that names the cache, the address and both ways to get them.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from geodistill.errors import GeodistillError

ALLOW_DOWNLOAD_ENV = "GEODISTILL_ALLOW_DOWNLOAD"
"""Environment variable that lets every named weight of the process download (``1``/``true``);
``geodistill --allow-download`` sets it."""

_HASH_IN_NAME = re.compile(r"-([a-f0-9]*)\.")
"""torch.hub's rule: a file named ``name-<sha256 prefix>.ext`` is checked against that prefix."""


def downloads_allowed(requested: bool = False) -> bool:
    """Whether named weights may be fetched: asked for by this spec (``download: true``) or by
    the process (``--allow-download`` / ``GEODISTILL_ALLOW_DOWNLOAD=1``)."""
    flag = os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower()
    return bool(requested) or flag in {"1", "true", "yes", "on"}


def not_cached(what: str, cache: Path, instead: str, opt_in: str = "") -> GeodistillError:
    """The one-line refusal of named weights that are not cached and may not be downloaded."""
    also = f" (or {opt_in})" if opt_in else ""
    return GeodistillError(
        f"{what} are not in the local cache ({cache}); download them with --allow-download"
        f"{also}, or {instead}"
    )


def _download_failed(what: str, source: str, error: BaseException) -> GeodistillError:
    text = " ".join(str(error).split()) or type(error).__name__
    return GeodistillError(f"cannot download {what} from {source}: {text[:300]}")


def torch_hub_file(what: str, url: str, download: bool, opt_in: str = "") -> Path:
    """The file of ``url`` in torch.hub's cache (``<torch.hub.get_dir()>/checkpoints/<name>``, the
    place ``load_state_dict_from_url`` and torchgeo look), fetched by
    :func:`torch.hub.download_url_to_file` when ``download`` and missing.

    A file name carrying a hash prefix (``name-59bfdff9.pth``) is checked against it on download.
    """
    cache = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
    if cache.is_file():
        return cache
    if not download:
        raise not_cached(what, cache, f"put the file from {url} at {cache}", opt_in)
    cache.parent.mkdir(parents=True, exist_ok=True)
    match = _HASH_IN_NAME.search(cache.name)
    try:  # writes a temporary file and moves it into place: never half a file in the cache
        torch.hub.download_url_to_file(
            url, str(cache), match.group(1) if match else None, progress=True
        )
    except Exception as error:  # noqa: BLE001 - network, HTTP and hash errors of any kind
        raise _download_failed(what, url, error) from error
    return cache


@contextmanager
def hub_offline(offline: bool = True) -> Iterator[None]:
    """Hugging Face hub in offline mode for a library call that downloads by itself (smp's
    encoders, timm): cached files load, nothing else is requested."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def hf_cache_folder(repo_id: str) -> Path:
    """Where the Hugging Face hub caches the files of model repository ``repo_id``."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def hf_hub_file(
    what: str,
    repo_id: str,
    filenames: list[str],
    revision: str | None,
    download: bool,
    opt_in: str = "",
) -> Path:
    """The first of ``filenames`` that repository ``repo_id`` holds, from the Hugging Face hub
    cache, fetched by :func:`huggingface_hub.hf_hub_download` when ``download`` (else with
    ``local_files_only``: no request at all)."""
    from huggingface_hub import hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    failure: BaseException | None = None
    for filename in filenames:
        try:  # offline mode too: even a cache lookup would otherwise fetch from the hub
            with hub_offline(not download):  # (its agent registry, for the request headers)
                found = hf_hub_download(
                    repo_id, filename, revision=revision, local_files_only=not download
                )
            return Path(found)
        except LocalEntryNotFoundError as error:  # not cached (and, online, unreachable)
            failure = error
        except EntryNotFoundError:  # online: the repository has no such file, try the next
            continue
        except Exception as error:  # noqa: BLE001 - HTTP errors, unknown repository...
            raise _download_failed(what, f"{repo_id} on the Hugging Face hub", error) from error
    url = hf_hub_url(repo_id, filenames[0], revision=revision)
    if download:
        if failure is not None:
            raise _download_failed(what, url, failure)
        raise GeodistillError(
            f"cannot download {what}: {repo_id} holds none of {', '.join(filenames)}"
        )
    instead = f"download {url} yourself and give the file as the weights path"
    raise not_cached(what, hf_cache_folder(repo_id), instead, opt_in)


def _torchgeo_models(path: str | None) -> Any:
    try:
        import torchgeo.models as models
    except ImportError as error:
        raise GeodistillError(
            f"the torchgeo teacher kind needs torchgeo ({error}): "
            "pip install 'geodistill[torchgeo]'",
            path,
        ) from error
    return models


def _weights_of(models: Any, model: str) -> list[Any]:
    try:
        return list(models.get_model_weights(model))
    except KeyError:  # torchgeo lists some models that have no weights
        return []


def torchgeo_weights(name: str, path: str | None = None) -> Any:
    """The torchgeo ``WeightsEnum`` member called ``name`` (metadata only; nothing is fetched)."""
    models = _torchgeo_models(path)
    try:
        return models.get_weight(name)
    except (ValueError, KeyError):
        known = [str(w) for model in models.list_models() for w in _weights_of(models, model)]
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise GeodistillError(f"unknown torchgeo weights {name!r}{hint}", path) from None


def torchgeo_weights_file(
    weights: Any, download: bool, what: str = "teacher weights", opt_in: str = ""
) -> Path:
    """The cached file of torchgeo ``weights`` (where ``weights.get_state_dict`` looks:
    torch.hub's cache, by the address's file name), downloaded by torch.hub when ``download``."""
    return torch_hub_file(f"{what} {str(weights)!r}", weights.url, download, opt_in)
