"""Render a ``geodistill view`` web map in headless Chromium: docs/images/webmap.png.

Proves the page really draws (overlays, legend, layer switch) in a browser with no network: the
map is written with ``--offline-assets``, Leaflet's dist files coming from the npm registry
(``npm pack leaflet@1.9.4`` into a temporary folder; never committed). Inputs are the demo's
scene maps when ``outputs/demo`` holds them (``geodistill demo``), else a SYNTHETIC scene with
two made-up "methods" (its exact label and its coarse outline). With the demo, both students
map the scene with ``geodistill infer --confidence``; ``geodistill vectorize`` turns the second
map into polygons beside it, which ``geodistill view`` finds.

Needs ``npm`` and Chromium (Debian: ``apt-get install -y chromium``)::

    .venv/bin/python benchmarks/webmap_screenshot.py            # -> docs/images/webmap.png
    .venv/bin/python benchmarks/webmap_screenshot.py --keep out/ # also keep map.html and inputs
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import rasterio

from geodistill.cli.main import main as geodistill
from geodistill.data.synthetic import BAND_NAMES, CLASS_NAMES, generate_chip
from geodistill.inference.writer import class_map_tags

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "outputs" / "demo"
LEAFLET = "leaflet@1.9.4"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1200,800",
    "--virtual-time-budget=5000",
]


def leaflet_dist(folder: Path) -> Path:
    """Leaflet's ``dist`` folder, unpacked from the npm registry's package into ``folder``."""
    subprocess.run(
        ["npm", "pack", LEAFLET, "--silent"], cwd=folder, check=True, capture_output=True
    )
    (tarball,) = folder.glob("leaflet-*.tgz")
    with tarfile.open(tarball) as archive:
        archive.extractall(folder, filter="data")
    return folder / "package" / "dist"


DEMO_MODELS = {
    "fine_only": DEMO / "runs" / "fine_only" / "base" / "seed0" / "checkpoints" / "best.ckpt",
    "attentive": DEMO / "student.ckpt",  # the teacher-free student the demo exports
}
DEMO_SCENE = DEMO / "data" / "scene" / "scene.tif"


def demo_inputs(folder: Path) -> tuple[list[Path], Path] | None:
    """The demo scene mapped by its two students with ``geodistill infer --confidence`` (one
    folder per method), when ``geodistill demo`` has run; else ``None``."""
    if not all(p.is_file() for p in (DEMO_SCENE, *DEMO_MODELS.values())):
        return None
    maps = []
    for method, checkpoint in DEMO_MODELS.items():
        out = folder / method
        run(
            ["infer", str(checkpoint), str(DEMO_SCENE), "-o", str(out), "--confidence"]
            + ["--quiet", "--overwrite"]
        )
        maps.append(out / f"{DEMO_SCENE.stem}_classes.tif")
    return maps, DEMO_SCENE


def synthetic_inputs(folder: Path, size: int = 384) -> tuple[list[Path], Path]:
    """A SYNTHETIC region-B scene and two class maps: its exact label and coarse outline."""
    image, fine, coarse = generate_chip(np.random.default_rng(7), size, "B")
    transform = rasterio.Affine(10.0, 0.0, 610_000.0, 0.0, -10.0, 5_080_000.0)
    common = {"driver": "GTiff", "width": size, "height": size, "crs": "EPSG:32633"}
    scene = folder / "synthetic_scene.tif"
    with rasterio.open(
        scene, "w", count=6, dtype="uint16", transform=transform, nodata=0, **common
    ) as dst:
        dst.write(image)
        dst.descriptions = BAND_NAMES
    maps = []
    for name, label in (("exact_label", fine), ("coarse_outline", coarse)):
        path = folder / f"synthetic_{name}.tif"
        with rasterio.open(
            path, "w", count=1, dtype="uint8", transform=transform, nodata=255, **common
        ) as dst:
            dst.write(label, 1)
            dst.update_tags(**class_map_tags(CLASS_NAMES))
        maps.append(path)
    return maps, scene


def run(command: list[str]) -> None:
    print("$ geodistill " + " ".join(command))
    code = geodistill(command)
    if code:
        sys.exit(f"geodistill {command[0]} failed with exit status {code}")


def screenshot(page: Path, png: Path, work: Path) -> None:
    """Chromium's headless screenshot of ``page`` (a fresh profile; no network needed)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is not installed (Debian: apt-get install -y chromium)")
    profile = Path(tempfile.mkdtemp(dir=work, prefix="chromium-"))
    command = [
        browser,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--screenshot={png}",
        page.resolve().as_uri(),
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    if not png.is_file() or png.stat().st_size == 0:
        sys.exit(f"chromium wrote no screenshot of {page}")


OPEN_POPUP = """
<script>
// Screenshot only: open the popup of the first polygon layer's first (largest) polygon.
window.addEventListener("load", function () {
  for (const key of Object.keys(window)) {
    const layer = window[key];
    if (key.startsWith("geo_json_") && layer && layer.getLayers && layer.getLayers().length) {
      layer.openPopup();
      break;
    }
  }
});
</script>
"""


def with_open_popup(page: Path, folder: Path) -> Path:
    """A copy of ``page`` that opens one polygon's popup once loaded (``page`` is unchanged)."""
    text = page.read_text(encoding="utf-8")
    copy = folder / f"{page.stem}_popup.html"
    copy.write_text(text.replace("</body>", OPEN_POPUP + "</body>", 1), encoding="utf-8")
    return copy


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-o", "--output", default=str(ROOT / "docs" / "images" / "webmap.png"))
    parser.add_argument("--synthetic", action="store_true", help="ignore the demo outputs")
    parser.add_argument("--keep", help="folder to keep map.html and its inputs in")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="webmap-") as temporary:
        work = Path(args.keep) if args.keep else Path(temporary)
        work.mkdir(parents=True, exist_ok=True)
        dist = leaflet_dist(Path(tempfile.mkdtemp(dir=temporary, prefix="leaflet-")))
        found = None if args.synthetic else demo_inputs(work)
        maps, scene = found or synthetic_inputs(work)
        print(f"inputs: {'demo models' if found else 'SYNTHETIC scene'}: {[str(m) for m in maps]}")
        # Polygons of the last map beside it, where 'view' finds them: <stem less _classes>.gpkg
        polygons = maps[-1].with_name(maps[-1].stem.removesuffix("_classes") + ".gpkg")
        run(["vectorize", str(maps[-1]), "-o", str(polygons), "--classes", "1", "--overwrite"])
        page = work / "map.html"
        run(
            ["view", *map(str, maps), "--scene", str(scene), "--offline-assets", str(dist)]
            + ["-o", str(page), "--overwrite"]
        )
        png = Path(args.output)
        png.parent.mkdir(parents=True, exist_ok=True)
        screenshot(with_open_popup(page, Path(temporary)), png, Path(temporary))
        print(f"wrote {png} ({png.stat().st_size} bytes) from {page}")


if __name__ == "__main__":
    main()
