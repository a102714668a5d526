"""Int8 vs float ONNX students: file size, CPU speed and test mIoU on real Sentinel-2 chips.

Data: the 18 hand-labelled Sen1Floods11 chips (``../shared/data/sen1floods11_hand``, 13 bands
int16, nodata 0, 512x512, ``LabelHand`` -1 no data / 0 dry / 1 water). Whole chips per split:
five Bolivia chips are the TEST set (Bolivia is Sen1Floods11's held-out country), three chips the
VALIDATION set (quantization options are chosen on it, never on test), the other ten train.

Per student architecture (default: a ResNet-18 U-Net and a MobileNetV2 U-Net, both smp):

1. ``geodistill fit`` for a fixed number of optimiser steps (small crops, 2 CPU cores);
2. ``geodistill export best.ckpt -o float.onnx --tile-size 256`` and
   ``geodistill export best.ckpt -o int8.onnx --quantize int8 --calibration train/images``
   (the defaults: 16 calibration tiles, per-channel int8 weights, QDQ; refused below 98 %
   agreement), both as a user runs them;
3. option variants (per-tensor weights, 7-bit ``reduce_range``) quantized with the same API and
   scored on VALIDATION only;
4. speed: a pure ONNX Runtime forward over the same 256x256 tiles, float and int8 sessions
   interleaved in ONE process (warm-up excluded, median of repeats), with 1 and 2 intra-op
   threads; megapixels per second;
5. accuracy: mIoU (dry, water) of float and int8 on the test chips (whole 512x512 chips through
   ONNX Runtime, labelled and valid pixels only), and their argmax agreement.

    python benchmarks/quantization.py   # ~45 min on 2 busy CPU cores, mostly training
    python benchmarks/quantization.py --steps 60   # reuses trained students, trains the rest

Writes ``outputs/benchmarks/quantization/results.json`` and ``results.md``; the runs, data links
and models stay under ``outputs/benchmarks/quantization/work``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from onnx_speed import interleaved_throughput, session  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "sen1floods11_hand"
GEODISTILL = Path(sys.executable).with_name("geodistill")
CLASSES = ["dry", "water"]
IGNORE = 255
TEST = ["Bolivia_103757", "Bolivia_195474", "Bolivia_242570", "Bolivia_314919", "Bolivia_432776"]
VAL = ["Bolivia_129334", "Bolivia_360519", "India_900498"]
STUDENTS: dict[str, dict[str, Any]] = {
    "resnet18": {"arch": "unet", "encoder": "resnet18"},
    "mobilenet_v2": {"arch": "unet", "encoder": "mobilenet_v2"},
}


def cpu_model() -> str:
    """The CPU model line of /proc/cpuinfo and the number of cores."""
    text = Path("/proc/cpuinfo").read_text()
    name = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
        "unknown CPU",
    )
    flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    vnni = "avx512_vnni" in flags or "avx_vnni" in flags
    return f"{name}, {os.cpu_count()} cores, VNNI {'yes' if vnni else 'no'}"


def run(*args: Any) -> str:
    """Run the installed ``geodistill`` console script; raise with its last line on failure."""
    argv = [str(GEODISTILL), *map(str, args)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {tail}")
    return done.stdout


def prepare(work: Path) -> dict[str, Path]:
    """train/val/test folders: image links and uint8 labels (-1 -> 255, declared nodata)."""
    splits: dict[str, Path] = {}
    stems = sorted(p.name.removesuffix("_S2Hand.tif") for p in (DATA / "S2Hand").glob("*.tif"))
    for split in ("train", "val", "test"):
        folder = work / "data" / split
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "labels").mkdir(parents=True, exist_ok=True)
        splits[split] = folder
    for stem in stems:
        split = "test" if stem in TEST else "val" if stem in VAL else "train"
        image = splits[split] / "images" / f"{stem}.tif"
        if not image.exists():
            image.symlink_to((DATA / "S2Hand" / f"{stem}_S2Hand.tif").resolve())
        label = splits[split] / "labels" / f"{stem}.tif"
        if not label.exists():
            with rasterio.open(DATA / "LabelHand" / f"{stem}_LabelHand.tif") as src:
                raw, profile = src.read(1), src.profile
            profile.update(dtype="uint8", nodata=IGNORE, count=1)
            with rasterio.open(label, "w", **profile) as dst:
                dst.write(np.where(raw < 0, IGNORE, raw).astype(np.uint8), 1)
    return splits


def fit(work: Path, name: str, splits: dict[str, Path], args: argparse.Namespace) -> Path:
    """Train one student for ``args.steps`` optimiser steps; return its best checkpoint."""
    run_dir = work / name / "run"
    best = sorted((run_dir / "checkpoints").glob("best*.ckpt"))
    if best and not args.retrain:
        return best[-1]
    source = {
        s: {"images": str(splits[s] / "images"), "labels": str(splits[s] / "labels")}
        for s in ("train", "val", "test")
    }
    config = {
        "seed_everything": args.seed,
        "trainer": {
            "max_steps": args.steps,
            "max_epochs": 1000,
            "check_val_every_n_epoch": 5,
            "accelerator": "cpu",
            "devices": 1,
            "default_root_dir": str(run_dir),
            "enable_progress_bar": False,
            "log_every_n_steps": 5,
            "logger": [
                {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"save_dir": str(run_dir), "name": "logs"},
                }
            ],
        },
        "checkpoint": {"dirpath": str(run_dir / "checkpoints")},
        "model": {
            "class_path": "geodistill.tasks.SegmentationTask",
            "init_args": {
                **STUDENTS[name],
                "loss": {"ce": 1.0, "dice": 1.0},
                "lr": 0.002,
                "schedule": "poly",
                "warmup_fraction": 0.05,
            },
        },
        "data": {
            "class_path": "geodistill.data.GeoSegDataModule",
            "init_args": {
                "classes": CLASSES,
                "fine": source,
                "patch_size": args.patch,
                "crops_per_image": 4,
                "batch_size": 8,
                "eval_batch_size": 2,
                "cache": True,
                "manifest": str(run_dir / "splits.json"),
            },
        },
    }
    path = work / name / "fit.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    run("fit", "--config", path)
    print(f"[{name}] fit: {time.perf_counter() - start:.0f} s", flush=True)
    return sorted((run_dir / "checkpoints").glob("best*.ckpt"))[-1]


def fit_steps(config: Path) -> int | None:
    """The step budget the student was trained with (its fit config), if known."""
    return yaml.safe_load(config.read_text())["trainer"]["max_steps"] if config.exists() else None


def read_split(folder: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(raw image float32 with NaN nodata, label uint8) per chip of a split, as infer reads."""
    from geodistill.data.raster import read_image

    pairs = []
    for image in sorted((folder / "images").glob("*.tif")):
        with rasterio.open(folder / "labels" / image.name) as src:
            label = src.read(1)
        pairs.append((read_image(image), label))
    return pairs


def predict(sess: Any, image: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: image[None]})[0][0].argmax(0)


def scores(model: Path, pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """mIoU over the split (confusion summed over chips) and the predictions, for agreement."""
    sess = session(model, 2)
    confusion = np.zeros((len(CLASSES), len(CLASSES)), np.int64)
    predictions = []
    for image, label in pairs:
        pred = predict(sess, image)
        predictions.append(pred)
        scored = (label != IGNORE) & ~np.isnan(image).all(0)
        confusion += np.bincount(
            label[scored].astype(np.int64) * len(CLASSES) + pred[scored],
            minlength=len(CLASSES) ** 2,
        ).reshape(len(CLASSES), len(CLASSES))
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    iou = inter / np.maximum(union, 1)
    return {
        "miou": float(iou.mean()),
        "iou": dict(zip(CLASSES, iou.tolist(), strict=True)),
        "predictions": predictions,
    }


def agreement(a: dict[str, Any], b: dict[str, Any]) -> float:
    same = sum(int((p == q).sum()) for p, q in zip(a["predictions"], b["predictions"], strict=True))
    total = sum(p.size for p in a["predictions"])
    return same / total


def speed(models: dict[str, Path], tiles: np.ndarray, repeats: int) -> dict[str, Any]:
    """Median megapixels/s of each model, 1 and 2 threads, interleaved in this one process, one
    tile per call (as ``geodistill infer`` runs them)."""
    out: dict[str, Any] = {}
    for threads in (1, 2):
        sessions = {label: (session(path, threads), tiles) for label, path in models.items()}
        timing = interleaved_throughput(sessions, repeats)
        for label, values in timing["seconds"].items():
            out[f"{label}_{threads}t"] = {
                "mpix_per_s": timing["mp_per_s_median"][label],
                "median_s": statistics.median(values),
                "spread_s": [min(values), max(values)],
            }
    return out


def speed_tiles(pairs: list[tuple[np.ndarray, np.ndarray]], tile: int, count: int) -> np.ndarray:
    """``count`` tiles cut from the test chips (raw values, NaN kept)."""
    cuts = [
        image[:, r : r + tile, c : c + tile]
        for image, _ in pairs
        for r in range(0, image.shape[1] - tile + 1, tile)
        for c in range(0, image.shape[2] - tile + 1, tile)
    ]
    return np.stack(cuts[:count]).astype(np.float32)


def student_case(
    work: Path, name: str, splits: dict[str, Path], args: argparse.Namespace
) -> dict[str, Any]:
    from geodistill.inference.predictors import OnnxPredictor
    from geodistill.quantize import QuantizeOptions, quantize_checked, read_calibration

    ckpt = fit(work, name, splits, args)
    float_path, int8_path = work / name / "float.onnx", work / name / "int8.onnx"
    run("export", ckpt, "-o", float_path, "--tile-size", args.tile, "--overwrite")
    start = time.perf_counter()
    export_out = run(
        "export",
        ckpt,
        "-o",
        int8_path,
        "--tile-size",
        args.tile,
        "--overwrite",
        "--quantize",
        "int8",
        "--calibration",
        splits["train"] / "images",
    )
    export_s = time.perf_counter() - start
    print(f"[{name}] {export_out.strip()}", flush=True)

    card = OnnxPredictor(float_path).card
    calibration = read_calibration(splits["train"] / "images", card, 16)
    val, test = read_split(splits["val"]), read_split(splits["test"])
    float_val = scores(float_path, val)
    variants: dict[str, Any] = {}
    for label, options in {
        "per_channel": QuantizeOptions(),
        "per_tensor": QuantizeOptions(per_channel=False),
        "per_channel_reduce_range": QuantizeOptions(reduce_range=True),
    }.items():
        path = work / name / f"variant_{label}.onnx"
        try:
            checked = quantize_checked(float_path, path, path, card, calibration, 1.0, options)
        except Exception as err:  # noqa: BLE001 - a failing variant is a finding
            variants[label] = {"error": str(err)}
            continue
        val_scores = scores(path, val)
        variants[label] = {
            "val_miou": val_scores["miou"],
            "val_miou_float": float_val["miou"],
            "val_agreement_with_float": agreement(val_scores, float_val),
            "calibration_check": checked.as_dict(),
            "size_mb": path.stat().st_size / 1e6,
        }
    chosen = max(
        (k for k in variants if "val_miou" in variants[k]), key=lambda k: variants[k]["val_miou"]
    )
    chosen_path = work / name / f"variant_{chosen}.onnx"

    float_test, int8_test = scores(float_path, test), scores(int8_path, test)
    models = {"float": float_path, "int8": int8_path}
    if chosen != "per_channel":
        models["int8_chosen"] = chosen_path
    tiles = speed_tiles(test, args.tile, args.tiles)
    timing = speed(models, tiles, args.repeats)
    result: dict[str, Any] = {
        "model": STUDENTS[name],
        "checkpoint": str(ckpt),
        "train_steps": fit_steps(work / name / "fit.yaml"),
        "size_mb": {k: p.stat().st_size / 1e6 for k, p in models.items()},
        "int8_export_s": export_s,
        "int8_export_message": export_out.strip().splitlines()[0],
        "test_miou": {"float": float_test["miou"], "int8": int8_test["miou"]},
        "test_iou": {"float": float_test["iou"], "int8": int8_test["iou"]},
        "test_agreement": agreement(float_test, int8_test),
        "speed": timing,
        "speedup_1t": timing["int8_1t"]["mpix_per_s"] / timing["float_1t"]["mpix_per_s"],
        "speedup_2t": timing["int8_2t"]["mpix_per_s"] / timing["float_2t"]["mpix_per_s"],
        "variants_on_val": variants,
        "chosen_on_val": chosen,
    }
    if chosen != "per_channel":
        chosen_test = scores(chosen_path, test)
        result["test_miou"]["int8_chosen"] = chosen_test["miou"]
    return result


def table(results: dict[str, Any]) -> str:
    lines = [
        "| student | size float → int8 (MB) | MP/s float → int8, 1 thread | MP/s, 2 threads "
        "| speed-up 1t / 2t | test mIoU float → int8 | test argmax agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        s, t = r["size_mb"], r["speed"]
        lines.append(
            f"| {name} U-Net | {s['float']:.1f} → {s['int8']:.1f} "
            f"| {t['float_1t']['mpix_per_s']:.2f} → {t['int8_1t']['mpix_per_s']:.2f} "
            f"| {t['float_2t']['mpix_per_s']:.2f} → {t['int8_2t']['mpix_per_s']:.2f} "
            f"| {r['speedup_1t']:.2f}× / {r['speedup_2t']:.2f}× "
            f"| {100 * r['test_miou']['float']:.1f} → {100 * r['test_miou']['int8']:.1f} "
            f"| {100 * r['test_agreement']:.2f} % |"
        )
    lines += ["", "Quantization options on VALIDATION (val mIoU, float in brackets):", ""]
    for name, r in results.items():
        parts = []
        for label, v in r["variants_on_val"].items():
            if "error" in v:
                parts.append(f"{label}: failed ({v['error'][:80]})")
            else:
                parts.append(f"{label} {100 * v['val_miou']:.1f} ({100 * v['val_miou_float']:.1f})")
        lines.append(f"- {name}: " + "; ".join(parts) + f"; chosen: {r['chosen_on_val']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "outputs/benchmarks/quantization")
    parser.add_argument("--students", default=",".join(STUDENTS))
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps per student")
    parser.add_argument("--patch", type=int, default=128, help="training crop size")
    parser.add_argument("--tile", type=int, default=256, help="exported tile size")
    parser.add_argument("--tiles", type=int, default=8, help="tiles per timed pass")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true", help="refit even if a run exists")
    args = parser.parse_args()
    started = time.perf_counter()
    work = args.output / "work"
    splits = prepare(work)
    results = {name: student_case(work, name, splits, args) for name in args.students.split(",")}
    import onnxruntime

    report = {
        "command": "python " + " ".join(sys.argv),
        "hardware": cpu_model(),
        "onnxruntime": onnxruntime.__version__,
        "seconds": round(time.perf_counter() - started),
        "data": f"{DATA.resolve()} (test {TEST}, val {VAL}, the other 10 chips train)",
        "note": "timings on a machine shared with other jobs: float and int8 interleaved in one "
        "process, warm-up excluded, median of repeats; spread_s gives min and max",
        "results": results,
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(report, indent=2))
    markdown = (
        f"Command: `{report['command']}`  \nHardware: {report['hardware']}, ONNX Runtime "
        f"{report['onnxruntime']}  \nWall time: {report['seconds']} s\n\n{table(results)}"
    )
    (args.output / "results.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
