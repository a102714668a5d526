"""The Lightning data module: coarse, fine and unlabelled domains, seeded splits, band stats."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning as L
from torch.utils.data import ConcatDataset, DataLoader, Dataset, RandomSampler

from geodistill.data.datasets import ChipDataset, Source, list_images, match_labels, pad_collate
from geodistill.data.labels import count_labelled
from geodistill.data.raster import raster_info, resolve_bands
from geodistill.data.splits import split_items, write_manifest
from geodistill.data.stats import BandStats, band_names, compute_band_stats
from geodistill.data.transforms import train_transforms
from geodistill.errors import GeodistillError

Split = Literal["train", "val", "test"]
TrainingStream = Literal["train", "unlabeled"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")


@dataclass
class Domain:
    """One data domain (e.g. coarse or fine labels) with explicit or seeded splits.

    Give ``train`` and optionally ``val``/``test`` sources; a missing ``val``/``test`` is drawn
    from ``train`` with ``val_fraction``/``test_fraction``. ``train_limit`` keeps only that many
    training chips (the few-label setting), ``train_ratio`` that fraction of them (at least one:
    the 1 %, 5 %, 10 % protocols of semi-supervised segmentation); both are drawn with the seed,
    from one shuffle, so a smaller ratio keeps a subset of a larger one's chips. The chips left
    out can feed the unlabelled stream (``unlabeled_from: rest``).
    """

    train: Source
    val: Source | None = None
    test: Source | None = None
    val_fraction: float = 0.0
    test_fraction: float = 0.0
    train_limit: int | None = None
    train_ratio: float | None = None


class GeoSegDataModule(L.LightningDataModule):
    """Multispectral chip data for segmentation, in up to three domains.

    ``train_on`` picks the labelled domain(s) supervised training uses; validation and test use the
    ``fine`` domain when it exists, else ``coarse``. ``unlabeled_from`` adds a stream of images
    without labels beside each labelled batch (for distillation and semi-supervised tasks): the
    ``unlabeled`` source, the coarse domain's training images with their labels dropped
    (``coarse``), or the training chips of the labelled domain(s) that ``train_limit`` or
    ``train_ratio`` left out, without their labels (``rest``). Unlabelled images must have the
    labelled images' bands (count, and names where both record them). The training loader then
    yields ``{"labeled": batch, "unlabeled": batch}``, one unlabelled batch
    (of ``unlabeled_batch_size``) per labelled batch, so an epoch has as many steps as without.
    Band statistics come from the labelled training images (or ``stats``, a JSON file from
    ``geodistill stats``) and are handed to the model, which stores them. The resolved splits are
    written to ``manifest``.
    """

    def __init__(
        self,
        classes: list[str],
        fine: Domain | None = None,
        coarse: Domain | None = None,
        unlabeled: Source | None = None,
        predict: Source | None = None,
        train_on: Literal["fine", "coarse", "coarse+fine"] = "fine",
        unlabeled_from: Literal["unlabeled", "coarse", "rest"] | None = None,
        unlabeled_batch_size: int | None = None,
        bands: list[int | str] | None = None,
        ignore_index: int = 255,
        patch_size: int = 256,
        crops_per_image: int = 4,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        augment: bool = True,
        photometric: bool = True,
        cache: bool = False,
        stats: str | None = None,
        manifest: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if len(classes) < 2:
            raise GeodistillError(f"data.classes needs at least 2 classes, got {classes}")
        if fine is None and coarse is None and predict is None:
            raise GeodistillError("data needs a 'fine' or 'coarse' domain (or 'predict' images)")
        self.classes = list(classes)
        self.domains = {name: d for name, d in (("fine", fine), ("coarse", coarse)) if d}
        self.unlabeled = unlabeled
        self.predict_source = predict
        self.train_on = train_on
        self.unlabeled_from = unlabeled_from
        self.unlabeled_batch_size = unlabeled_batch_size or batch_size
        self.bands = bands
        self.ignore_index = ignore_index
        self.patch_size = patch_size
        self.crops_per_image = crops_per_image
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.augment = augment
        self.photometric = photometric
        self.cache = cache
        self.stats_path = stats
        self.manifest_path = manifest
        self.seed = seed
        self.sources: dict[tuple[str, str], Source] = {}
        self.rest: dict[str, list[str]] = {}
        """Per domain, the training chips that ``train_limit``/``train_ratio`` left out."""
        self.splits = self._resolve_splits()
        first = self._first_image()
        self.band_names = band_names(first, bands)
        info = raster_info(first)
        self._band_descriptions = [info.descriptions[i] for i in resolve_bands(info, bands)]
        self.num_bands = len(resolve_bands(raster_info(first), bands))
        self.band_stats: BandStats | None = None
        self.datasets: dict[str, ChipDataset] = {}
        self._served: dict[str, Dataset] = {}  # training sets served in another form (serve())
        self._prechecked: str | None = None  # stage check() built, for the setup that follows

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _first_image(self) -> str:
        for domain in self.splits.values():
            for files in domain.values():
                if files:
                    return files[0][0]
        if self.predict_source is not None:
            files = list_images(self.predict_source.images)
            if files:
                return files[0]
        raise GeodistillError("no image files found in any data source")

    def _pairs(self, source: Source, where: str) -> list[tuple[str, str | None]]:
        images = list_images(source.images)
        if not images:
            raise GeodistillError(f"{where}: no image files in {source.images}")
        labels = match_labels(images, source.labels) if source.labels else [None] * len(images)
        return list(zip(images, labels, strict=True))

    def _resolve_splits(self) -> dict[str, dict[str, list[tuple[str, str | None]]]]:
        splits: dict[str, dict[str, list[tuple[str, str | None]]]] = {}
        for name, domain in self.domains.items():
            pool = self._pairs(domain.train, f"data.{name}.train")
            by_image = dict(pool)
            self._check_fractions(name, domain)
            fractions = [
                0.0 if domain.val else domain.val_fraction,
                0.0 if domain.test else domain.test_fraction,
            ]
            val, test, train = split_items(list(by_image), [*fractions, 1.0], self.seed)
            keep = self._kept_count(name, domain, len(train))
            if keep is not None:
                train, self.rest[name] = split_items(train, [keep / len(train), 1], self.seed)
            for split in ("train", "val", "test"):
                self.sources[name, split] = getattr(domain, split) or domain.train
            parts = {"train": [(p, by_image[p]) for p in train]}
            parts["val"] = (
                self._pairs(domain.val, f"data.{name}.val")
                if domain.val
                else [(p, by_image[p]) for p in val]
            )
            parts["test"] = (
                self._pairs(domain.test, f"data.{name}.test")
                if domain.test
                else [(p, by_image[p]) for p in test]
            )
            if not parts["train"]:
                raise GeodistillError(f"data.{name}: the training split is empty")
            splits[name] = parts
        return splits

    @staticmethod
    def _check_fractions(name: str, domain: Domain) -> None:
        """Refuse split fractions outside [0, 1) or leaving no training chips, by config key."""
        used = []
        for split in ("val", "test"):
            fraction = getattr(domain, f"{split}_fraction")
            if not 0 <= fraction < 1:
                raise GeodistillError(
                    f"data.{name}.{split}_fraction must be in [0, 1), got {fraction}"
                )
            if getattr(domain, split) is None:
                used.append(fraction)
        if sum(used) >= 1:
            raise GeodistillError(
                f"data.{name}.val_fraction + test_fraction = {sum(used):g} leaves no training "
                "chips: their sum must be below 1"
            )

    @staticmethod
    def _kept_count(name: str, domain: Domain, available: int) -> int | None:
        """How many training chips ``train_limit``/``train_ratio`` keep (``None``: all)."""
        if domain.train_limit is not None and domain.train_ratio is not None:
            raise GeodistillError(f"data.{name}: set train_limit or train_ratio, not both")
        if domain.train_limit is not None:
            if not 0 < domain.train_limit <= available:
                raise GeodistillError(
                    f"data.{name}.train_limit={domain.train_limit} but the training split "
                    f"has {available} chips"
                )
            return domain.train_limit
        if domain.train_ratio is not None:
            if not 0 < domain.train_ratio <= 1:
                raise GeodistillError(
                    f"data.{name}.train_ratio must be in (0, 1], got {domain.train_ratio}"
                )
            return min(available, max(1, round(domain.train_ratio * available)))
        return None

    def _dataset(self, domain: str, split: Split, train: bool) -> ChipDataset:
        pairs = self.splits[domain][split]
        if not pairs:
            raise GeodistillError(f"data.{domain}: the {split} split is empty")
        source = self.sources[domain, split]
        labels = [lab for _, lab in pairs]
        return ChipDataset(
            images=[img for img, _ in pairs],
            labels=None if any(lab is None for lab in labels) else labels,  # type: ignore[arg-type]
            num_classes=self.num_classes,
            bands=self.bands,
            ignore_index=self.ignore_index,
            color_map=source.color_map,
            ignore_values=source.ignore_values,
            crop_size=self.patch_size if train else None,
            crops_per_image=self.crops_per_image,
            transform=train_transforms(self.photometric) if train and self.augment else None,
            cache=self.cache,
        )

    @property
    def eval_domain(self) -> str:
        return "fine" if "fine" in self.splits else "coarse"

    def train_domains(self) -> list[str]:
        names = ["coarse", "fine"] if self.train_on == "coarse+fine" else [self.train_on]
        missing = [n for n in names if n not in self.splits]
        if missing:
            raise GeodistillError(
                f"data.train_on={self.train_on!r} but data.{missing[0]} is not set"
            )
        return names

    def check(self, stage: str) -> None:
        """Build the datasets ``stage`` reads and check every label raster of them whole.

        The CLI calls it before the trainer starts, so that bad data is refused before any log or
        checkpoint is written; the :meth:`setup` that follows then reuses those datasets instead
        of opening every raster again.
        """
        self._build_and_check(stage)
        self._prechecked = stage

    def training_set(self, stream: TrainingStream) -> Dataset:
        """The ``train`` or ``unlabeled`` set as this data module built it (after ``setup``)."""
        dataset = self.datasets.get(stream)
        if dataset is None:
            what = "unlabelled" if stream == "unlabeled" else "labelled"
            raise GeodistillError(
                f"the data module has no {what} training set: "
                + (
                    "set data.unlabeled_from"
                    if stream == "unlabeled" and self.unlabeled_from is None
                    else "call setup('fit') first"
                )
            )
        return dataset

    def whole_chips(self, domain: str, split: Split) -> Dataset:
        """The chips of ``data.<domain>``'s ``split`` whole and un-augmented, as evaluation reads
        them: how a method looks at labelled data outside the training loop (e.g. to calibrate a
        teacher on the fine training labels) without drawing random crops."""
        if domain not in self.splits:
            raise GeodistillError(f"data.{domain} is not set")
        return self._dataset(domain, split, train=False)

    def serve(self, stream: TrainingStream, dataset: Dataset) -> None:
        """Train on ``dataset`` instead of the ``stream`` set it was made from (a teacher cache's
        windows of it), until the next ``setup``. How a distillation method asks for data in
        another form without reaching into this module."""
        self.training_set(stream)
        self._served[stream] = dataset

    def served(self, stream: TrainingStream) -> Dataset:
        r"""What the ``stream`` loader serves: the :meth:`serve`\ d dataset, else the set."""
        served = self._served.get(stream)
        return self.training_set(stream) if served is None else served

    def _build_and_check(self, stage: str) -> None:
        if stage == "fit":
            self._served.clear()
            train = [self._dataset(name, "train", train=True) for name in self.train_domains()]
            self.datasets["train"] = train[0] if len(train) == 1 else ConcatDataset(train)
            self.datasets["val"] = self._dataset(self.eval_domain, "val", train=False)
            if self.unlabeled_from is not None:
                self.datasets["unlabeled"] = self._unlabeled_dataset()
            used = {(name, "train") for name in self.train_domains()}
            used.add((self.eval_domain, "val"))
            domains = dict.fromkeys([*self.train_domains(), self.eval_domain])
            # every split of the domains fit reads: bad test labels are found before training
            checked = [(name, part, (name, part) in used) for name in domains for part in SPLITS]
        elif stage in ("validate", "test"):
            split: Split = "val" if stage == "validate" else "test"
            self.datasets[split] = self._dataset(self.eval_domain, split, train=False)
            checked = [(self.eval_domain, split, True)]
        elif stage == "predict":
            if self.predict_source is None:
                raise GeodistillError("data.predict is not set: no images to predict")
            images = list_images(self.predict_source.images)
            self.datasets["predict"] = ChipDataset(
                images, None, self.num_classes, self.bands, self.ignore_index
            )
            checked = []
        else:
            checked = []
        for domain, part, needed in checked:
            self._check_labels(domain, part, needed)

    def _check_labels(self, domain: str, split: Split, needed: bool = True) -> None:
        """Every label of a split within the classes, and (where the stage ``needed`` the split)
        at least one labelled pixel in all of them.

        Random crops would see only parts of each label; a split without a labelled pixel trains
        on nothing, or scores NaN and would pick a "best" checkpoint on NaN.
        """
        source = self.sources[domain, split]
        labels = [lab for _, lab in self.splits[domain][split] if lab is not None]
        if not labels:
            return
        labelled = sum(
            count_labelled(
                lab, self.num_classes, self.ignore_index, source.color_map, source.ignore_values
            )
            for lab in labels
        )
        if labelled == 0 and needed:
            folders = ", ".join(_as_list(source.labels or labels[0]))
            raise GeodistillError(
                f"every pixel of the {len(labels)} label raster(s) of the data.{domain} {split} "
                "split is nodata or ignored: there is nothing to "
                f"{'train on' if split == 'train' else 'score'}",
                folders,
            )

    def setup(self, stage: str) -> None:
        if self._prechecked != stage:
            self._build_and_check(stage)
        self._prechecked = None
        if stage == "fit":
            self.band_stats = self._band_stats()
            self._write_manifest()

    def unlabeled_images(self) -> list[str]:
        """The images of the unlabelled stream that ``unlabeled_from`` names."""
        if self.unlabeled_from == "coarse":
            if "coarse" not in self.splits:
                raise GeodistillError("data.unlabeled_from='coarse' but data.coarse is not set")
            images = [img for img, _ in self.splits["coarse"]["train"]]
        elif self.unlabeled_from == "rest":
            images = [img for name in self.train_domains() for img in self.rest.get(name, [])]
            if not images:
                where = " or ".join(f"data.{name}" for name in self.train_domains())
                raise GeodistillError(
                    "data.unlabeled_from='rest' but no training chips are left over: set "
                    f"train_ratio (or train_limit) of {where} to keep only part of the labelled "
                    "chips"
                )
        elif self.unlabeled is None:
            raise GeodistillError("data.unlabeled_from='unlabeled' but data.unlabeled is not set")
        else:
            images = list_images(self.unlabeled.images)
            if not images:
                raise GeodistillError(
                    "data.unlabeled: the unlabelled source holds no image files",
                    ", ".join(_as_list(self.unlabeled.images)),
                )
        return images

    def _unlabeled_dataset(self) -> ChipDataset:
        images = self.unlabeled_images()
        dataset = ChipDataset(
            images=images,
            labels=None,
            num_classes=self.num_classes,
            bands=self.bands,
            ignore_index=self.ignore_index,
            crop_size=self.patch_size,
            crops_per_image=self.crops_per_image,
            transform=train_transforms(self.photometric) if self.augment else None,
            cache=self.cache,
        )
        if dataset.num_bands != self.num_bands:
            raise GeodistillError(
                f"unlabelled images have {dataset.num_bands} bands, the labelled {self.num_bands}",
                images[0],
            )
        self._check_band_names(dataset)
        return dataset

    def _check_band_names(self, dataset: ChipDataset) -> None:
        """Refuse unlabelled images whose bands are named otherwise than the labelled ones (same
        count, other bands or another order); bands a file leaves unnamed are not compared."""
        for info in dataset.infos:
            names = [info.descriptions[i] for i in resolve_bands(info, self.bands)]
            pairs = zip(names, self._band_descriptions, strict=True)
            for position, (name, expected) in enumerate(pairs):
                if name and expected and name.lower() != expected.lower():
                    listed = ", ".join(n or "?" for n in names)
                    raise GeodistillError(
                        f"unlabelled image band {position + 1} is {name!r} where the labelled "
                        f"images have {expected!r} (unlabelled: {listed}; labelled: "
                        f"{', '.join(self.band_names)}): the bands must be the same, in the same "
                        "order (select them with data.bands)",
                        info.path,
                    )

    def _band_stats(self) -> BandStats:
        if self.stats_path:
            stats = BandStats.from_json(self.stats_path)
            if stats.num_bands != self.num_bands:
                raise GeodistillError(
                    f"has statistics for {stats.num_bands} bands, the data has {self.num_bands}",
                    self.stats_path,
                )
            return stats
        images = [img for name in self.train_domains() for img, _ in self.splits[name]["train"]]
        return compute_band_stats(images, self.bands, seed=self.seed)

    def _write_manifest(self) -> None:
        if not self.manifest_path:
            return
        manifest: dict[str, Any] = {
            "seed": self.seed,
            "classes": self.classes,
            "bands": self.band_names,
            "train_on": self.train_on,
            "domains": {
                name: {split: [img for img, _ in pairs] for split, pairs in parts.items()}
                for name, parts in self.splits.items()
            },
        }
        ratios = {
            name: domain.train_ratio
            for name, domain in self.domains.items()
            if domain.train_ratio is not None
        }
        if ratios:
            manifest["train_ratio"] = {
                name: {
                    "ratio": ratio,
                    "kept": len(self.splits[name]["train"]),
                    "of": len(self.splits[name]["train"]) + len(self.rest.get(name, [])),
                    "chips": [img for img, _ in self.splits[name]["train"]],
                }
                for name, ratio in ratios.items()
            }
        if self.unlabeled_from is not None:
            manifest["unlabeled_from"] = self.unlabeled_from
            manifest["unlabeled"] = self.unlabeled_images()
        elif self.unlabeled is not None:
            manifest["unlabeled"] = list_images(self.unlabeled.images)
        write_manifest(Path(self.manifest_path), manifest)

    def _loader(
        self, split: str, batch_size: int, shuffle: bool, num_samples: int | None = None
    ) -> DataLoader:
        served = self._served.get(split)
        dataset: Dataset = self.datasets[split] if served is None else served
        sampler = None
        if num_samples is not None:
            sampler = RandomSampler(dataset, replacement=True, num_samples=num_samples)  # type: ignore[arg-type]
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=partial(pad_collate, ignore_index=self.ignore_index),
            drop_last=shuffle and len(dataset) > batch_size,  # type: ignore[arg-type]
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader | dict[str, DataLoader]:
        labeled = self._loader("train", self.batch_size, shuffle=True)
        if self.unlabeled_from is None:
            return labeled
        steps = len(labeled)
        unlabeled = self._loader(
            "unlabeled",
            self.unlabeled_batch_size,
            shuffle=True,
            num_samples=steps * self.unlabeled_batch_size,
        )
        return {"labeled": labeled, "unlabeled": unlabeled}

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size, shuffle=False)


def _as_list(spec: str | list[str]) -> list[str]:
    return [spec] if isinstance(spec, str) else list(spec)
