"""SYNTHETIC multispectral imagery of mining sites, for geodistill's built-in demo.

Nothing here is real satellite data. Scenes are drawn procedurally so that the demo runs offline,
in seconds, and still poses the coarse-to-fine problem geodistill is built for:

* six Sentinel-2-like bands (Blue, Green, Red, NIR, SWIR1, SWIR2) as surface reflectance scaled
  to uint16 ``0..10000``; ``0`` is nodata and only appears in the nodata strips that one chip in
  five carries on purpose, so that nodata handling is exercised;
* a background of vegetation and bare soil (smooth random fields), field parcels, rural roads and
  sometimes water, all labelled background;
* one to three mining sites per chip, each an open pit with terraces, a tailings pond, waste dumps
  and haul roads linking them, labelled mining;
* a *fine* label (exact footprint of the mining features) and a *coarse* label (per site, the
  features closed, dilated and simplified into a generous outline, as in global mining inventories
  such as Maus et al.), so the coarse label also covers the ground between the features;
* two neighbouring regions with a moderate spectral shift: ``"A"`` (humid, green, brown soil,
  the coarse-label domain) and ``"B"`` (somewhat drier: less vegetation, redder soil, slightly
  hazier and differently calibrated, the fine-label domain), with the same kinds of mining sites,
  so that a model trained on ``A`` carries over to ``B`` with moderate, not total, loss.

Everything is a function of the seed: the same seed writes byte-identical GeoTIFFs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from scipy import ndimage, special
from scipy.spatial import ConvexHull, QhullError

from geodistill.errors import GeodistillError

BAND_NAMES: tuple[str, ...] = ("Blue", "Green", "Red", "NIR", "SWIR1", "SWIR2")
"""Band descriptions written to every synthetic image, in band order."""

CLASS_NAMES: tuple[str, ...] = ("background", "mining")
"""Label values: 0 = background, 1 = mining."""

IMAGE_NODATA = 0
"""Declared nodata value of the images; valid pixels are never 0 in any band."""

LABEL_NODATA = 255
"""Label value under image nodata, declared as the label rasters' nodata (the ignore index)."""

CRS_EPSG = 32633
"""UTM zone 33N: metric, so the 10 m grid is exact."""

PIXEL_SIZE = 10.0
"""Metres per pixel, as Sentinel-2's 10 m bands."""

REGIONS: tuple[str, ...] = ("A", "B")
"""Spectral domains: ``A`` for the coarse-label chips, ``B`` for the fine-label chips."""

_SCALE = 10000.0


def _spec(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)


# Surface reflectance (0..1) of the materials, per band: Blue, Green, Red, NIR, SWIR1, SWIR2.
_WATER = _spec(0.055, 0.050, 0.030, 0.014, 0.008, 0.005)
_TURBID_WATER = _spec(0.080, 0.090, 0.075, 0.040, 0.015, 0.010)
_CROP = _spec(0.030, 0.070, 0.035, 0.450, 0.200, 0.090)
_PAVED = _spec(0.090, 0.100, 0.110, 0.140, 0.170, 0.150)
# Mining materials: dark mixed pit walls, bright wet tailings (low NIR), bright bare dumps.
_PIT = _spec(0.085, 0.095, 0.110, 0.140, 0.180, 0.160)
_PIT_LAKE = _spec(0.060, 0.085, 0.060, 0.030, 0.012, 0.008)
_TAILINGS_WET = _spec(0.170, 0.200, 0.190, 0.120, 0.070, 0.050)
_TAILINGS_DRY = _spec(0.240, 0.260, 0.270, 0.280, 0.270, 0.230)
_DUMP_SOIL = _spec(0.140, 0.170, 0.210, 0.250, 0.330, 0.300)
_DUMP_ROCK = _spec(0.150, 0.160, 0.170, 0.190, 0.230, 0.210)
_HAUL_ROAD = _spec(0.160, 0.185, 0.215, 0.245, 0.300, 0.270)


@dataclass(frozen=True)
class _Region:
    """What differs between the two domains: land cover, soil colour and the sensor/atmosphere."""

    veg_cover: float  # mean fraction of vegetated ground
    vegetation: np.ndarray  # reflectance of full vegetation cover
    soil: np.ndarray  # reflectance of bare soil
    gain: np.ndarray  # per-band multiplicative calibration difference
    offset: np.ndarray  # per-band additive path radiance (haze), in scaled units
    parcels: float  # mean number of field parcels per 128 x 128 pixels
    water_prob: float  # chance of a lake or river per 128 x 128 pixels


_REGION_PARAMS: dict[str, _Region] = {
    "A": _Region(
        veg_cover=0.65,
        vegetation=_spec(0.028, 0.058, 0.032, 0.380, 0.190, 0.085),
        soil=_spec(0.075, 0.098, 0.125, 0.185, 0.265, 0.215),
        gain=_spec(1.0, 1.0, 1.0, 1.0, 1.0, 1.0),
        offset=_spec(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        parcels=3.0,
        water_prob=0.45,
    ),
    # A neighbouring region, not another continent: somewhat drier (less and paler vegetation,
    # redder soil), fewer parcels and lakes, and a mild haze/calibration difference. Mining sites
    # and their materials are the same, so a region-A teacher carries over with moderate error.
    "B": _Region(
        veg_cover=0.50,
        vegetation=_spec(0.034, 0.064, 0.042, 0.340, 0.210, 0.105),
        soil=_spec(0.080, 0.110, 0.160, 0.215, 0.295, 0.250),
        gain=_spec(1.04, 1.02, 1.01, 0.96, 0.98, 1.00),
        offset=_spec(150.0, 90.0, 45.0, -50.0, -20.0, 0.0),
        parcels=2.2,
        water_prob=0.35,
    ),
}


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def _noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to roughly unit variance (not per-field normalised).

    The theoretical scaling (not the sample std) keeps chip-to-chip variety: a chip can be mostly
    green or mostly bare, as real chips are. Broad fields are drawn on a coarser grid and
    upsampled, which is much faster than a wide kernel and looks the same.
    """
    step = max(1, int(sigma // 3))
    small = (shape[0] // step + 2, shape[1] // step + 2)
    white = rng.standard_normal(small, dtype=np.float32)
    sig = sigma / step
    field = ndimage.gaussian_filter(white, sig, mode="reflect")
    field *= np.float32(2.0 * np.sqrt(np.pi) * max(sig, 0.5))
    if step > 1:
        field = ndimage.zoom(field, step, order=1)
    return field[: shape[0], : shape[1]]


def _fbm(
    rng: np.random.Generator, shape: tuple[int, int], octaves: tuple[tuple[float, float], ...]
) -> np.ndarray:
    """Sum of smooth noise fields ``(sigma, weight)``, unit variance: natural-looking texture."""
    total = np.zeros(shape, dtype=np.float32)
    for sigma, weight in octaves:
        total += np.float32(weight) * _noise(rng, shape, sigma)
    return total / np.float32(np.sqrt(sum(w * w for _, w in octaves)))


def _blob(
    yy: np.ndarray,
    xx: np.ndarray,
    rng: np.random.Generator,
    centre: tuple[float, float],
    radius: float,
    aspect: float = 1.0,
    roughness: float = 0.25,
) -> np.ndarray:
    """Normalised radius of an irregular ellipse: ``< 1`` inside, ``0`` at the centre.

    The outline is an ellipse whose radius is modulated by a few random harmonics, which gives the
    lobed shapes of dumps, ponds and pits without any polygon rasterisation. Only the bounding box
    is computed (``inf`` elsewhere), which keeps large scenes fast.
    """
    angle = rng.uniform(0.0, np.pi)
    amps = roughness * rng.normal(size=5) / np.arange(2, 7)
    phases = rng.uniform(0.0, 2.0 * np.pi, size=5)
    reach = radius * (1.0 + np.abs(amps).sum()) + 2.0
    h, w = yy.shape
    r0, r1 = max(int(centre[0] - reach), 0), min(int(centre[0] + reach) + 2, h)
    c0, c1 = max(int(centre[1] - reach), 0), min(int(centre[1] + reach) + 2, w)
    rho = np.full(yy.shape, np.inf, dtype=np.float32)
    if r0 >= r1 or c0 >= c1:
        return rho
    dy, dx = yy[r0:r1, c0:c1] - centre[0], xx[r0:r1, c0:c1] - centre[1]
    cos, sin = np.cos(angle), np.sin(angle)
    u = dx * cos + dy * sin
    v = (-dx * sin + dy * cos) / aspect
    theta = np.arctan2(v, u)
    outline = np.ones_like(theta)
    for k, (amp, phase) in enumerate(zip(amps, phases, strict=True), start=2):
        outline += np.float32(amp) * np.cos(k * theta + np.float32(phase))
    outline = np.maximum(outline, 0.45)
    rho[r0:r1, c0:c1] = np.sqrt(u * u + v * v) / (radius * outline)
    return rho


def _bezier_mask(
    shape: tuple[int, int],
    points: list[tuple[float, float]],
    width: int,
) -> np.ndarray:
    """Rasterise the Bezier curve with control ``points`` as a line ``width`` pixels wide."""
    ctrl = np.asarray(points, dtype=np.float64)
    length = float(np.sum(np.hypot(*np.diff(ctrl, axis=0).T)))
    t = np.linspace(0.0, 1.0, max(int(length * 3), 8))[:, None]
    n = len(ctrl) - 1
    curve = sum(special.comb(n, i) * (1 - t) ** (n - i) * t**i * ctrl[i] for i in range(n + 1))
    rows, cols = np.rint(curve).astype(np.int64).T
    keep = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    mask = np.zeros(shape, dtype=bool)
    mask[rows[keep], cols[keep]] = True
    if width > 1:
        mask = ndimage.binary_dilation(mask, structure=np.ones((width, width), dtype=bool))
    return mask


def _curve_between(
    rng: np.random.Generator, start: tuple[float, float], end: tuple[float, float], bend: float
) -> list[tuple[float, float]]:
    """Control points of a gently bent curve from ``start`` to ``end`` (haul roads, rivers)."""
    (y0, x0), (y1, x1) = start, end
    dy, dx = y1 - y0, x1 - x0
    mid = ((y0 + y1) / 2.0, (x0 + x1) / 2.0)
    off = rng.uniform(-bend, bend)
    return [start, (mid[0] - dx * off, mid[1] + dy * off), end]


def _hillshade(height: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Brightness factor of a height field lit from the north-west (flat ground = 1)."""
    gy, gx = np.gradient(height)
    alt = np.deg2rad(40.0)
    horiz = np.cos(alt) / np.sqrt(2.0)
    # Slopes rising away from a north-west sun (toward +x, +y) face it and are brighter.
    dot = (strength * (gx + gy) * horiz + np.sin(alt)) / np.sqrt(
        1.0 + strength**2 * (gx * gx + gy * gy)
    )
    return np.clip(dot / np.sin(alt), 0.25, 1.8).astype(np.float32)


def _hull_fill(mask: np.ndarray) -> np.ndarray:
    """Convex hull of a mask's pixels, filled; the mask itself if it is degenerate."""
    coords = np.argwhere(mask).astype(np.float64)
    if len(coords) < 3:
        return mask
    try:
        hull = ConvexHull(coords)
    except QhullError:
        return mask
    # Test only pixels in the hull's bounding box: ``a*r + b*c + d <= 0`` for every facet.
    lo = np.floor(coords.min(axis=0)).astype(int)
    hi = np.ceil(coords.max(axis=0)).astype(int) + 1
    rr, cc = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]]
    inside = np.ones(rr.shape, dtype=bool)
    for a, b, d in hull.equations:
        inside &= a * rr + b * cc + d <= 1e-6
    out = mask.copy()
    out[lo[0] : hi[0], lo[1] : hi[1]] |= inside
    return out


def _coarse_outline(rng: np.random.Generator, features: np.ndarray, scale: float) -> np.ndarray:
    """Inventory-style outline of one site: close, dilate generously, then simplify.

    Global inventories digitise a whole site as one loose polygon, so the outline also covers the
    ground between pit, ponds and dumps. Every step only adds pixels, so it contains ``features``.
    """
    close_r = max(3.0, 0.35 * scale)
    grow_r = rng.uniform(0.2, 0.4) * scale + 2.0
    # Morphology through distance transforms: exact discs and no border erosion.
    dilated = ndimage.distance_transform_edt(~features) <= close_r
    closed = ndimage.distance_transform_edt(dilated) > close_r
    grown = ndimage.distance_transform_edt(~(closed | features)) <= grow_r
    if rng.random() < 0.65:
        return _hull_fill(grown)
    # Otherwise digitised on a coarse grid, as from a lower-resolution basemap.
    cell = int(max(4, round(scale / 3)))
    h, w = grown.shape
    ph, pw = -h % cell, -w % cell
    padded = np.pad(grown, ((0, ph), (0, pw)))
    blocks = padded.reshape(padded.shape[0] // cell, cell, padded.shape[1] // cell, cell)
    coarse = blocks.any(axis=(1, 3))
    return np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)[:h, :w]


# --------------------------------------------------------------------------------------------
# Scene composition
# --------------------------------------------------------------------------------------------


@dataclass
class _Layer:
    """One material patch to paint: where, what spectrum, how much per-pixel brightness factor."""

    mask: np.ndarray
    spectrum: np.ndarray
    factor: np.ndarray | float = 1.0


@dataclass
class _Site:
    layers: list[_Layer]
    footprint: np.ndarray
    outline: np.ndarray


def _jitter(rng: np.random.Generator, spectrum: np.ndarray, amount: float = 0.05) -> np.ndarray:
    """Site-to-site variation of a material (ore type, moisture)."""
    overall = rng.normal(1.0, amount)
    per_band = rng.normal(1.0, amount / 2.0, size=spectrum.shape)
    return (spectrum * overall * per_band).astype(np.float32)


def _mining_site(
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    centre: tuple[float, float],
    scale: float,
) -> _Site:
    """An open pit with terraces, a tailings pond, waste dumps and the haul roads between them."""
    shape = yy.shape
    layers: list[_Layer] = []
    footprint = np.zeros(shape, dtype=bool)

    # Open pit: stepped benches; hillshading of the steps draws the concentric terrace rings.
    pit_r = scale * rng.uniform(0.45, 0.7)
    rho = _blob(yy, xx, rng, centre, pit_r, aspect=rng.uniform(0.6, 1.0), roughness=0.15)
    pit = rho < 1.0
    n_benches = int(rng.integers(3, 7))
    t = np.clip(1.0 - rho, 0.0, 1.0) * n_benches
    bench = np.floor(t)
    step = bench + np.clip((t - bench) / 0.45, 0.0, 1.0)
    height = -step * np.float32(pit_r * 0.5 / n_benches)
    albedo = 1.0 + 0.12 * np.where(bench % 2 == 0, 1.0, -1.0)
    shade = _hillshade(height, strength=1.5) * albedo.astype(np.float32)
    pit_spec = _jitter(rng, _PIT, 0.08)
    layers.append(_Layer(pit, pit_spec, shade))
    if rng.random() < 0.45:
        layers.append(_Layer(rho < rng.uniform(0.15, 0.3), _jitter(rng, _PIT_LAKE)))
    footprint |= pit

    # Tailings pond: dry bright beach around a wet (bright visible, low NIR) centre.
    direction = rng.uniform(0.0, 2.0 * np.pi)
    dist = pit_r + scale * rng.uniform(0.55, 0.95)
    t_centre = (centre[0] + dist * np.sin(direction), centre[1] + dist * np.cos(direction))
    t_r = scale * rng.uniform(0.35, 0.6)
    rho_t = _blob(yy, xx, rng, t_centre, t_r, aspect=rng.uniform(0.5, 0.9), roughness=0.3)
    tailings = rho_t < 1.0
    wet = np.clip((rng.uniform(0.75, 0.95) - rho_t) / 0.25, 0.0, 1.0)[None]
    t_spec = _jitter(rng, _TAILINGS_WET)[:, None, None] * wet + _jitter(rng, _TAILINGS_DRY)[
        :, None, None
    ] * (1.0 - wet)
    layers.append(_Layer(tailings, t_spec.astype(np.float32)))
    footprint |= tailings
    targets = [t_centre]
    lumps = 1.0 + 0.08 * _noise(rng, shape, 1.2)

    # Waste dumps: flat-topped mounds, away from the pond, with lumpy surface texture.
    for i in range(int(rng.integers(1, 4))):
        d_dir = direction + np.pi + rng.uniform(-1.1, 1.1) + i * 0.4
        d_dist = pit_r + scale * rng.uniform(0.35, 0.85)
        d_centre = (centre[0] + d_dist * np.sin(d_dir), centre[1] + d_dist * np.cos(d_dir))
        d_r = scale * rng.uniform(0.28, 0.55)
        rho_d = _blob(yy, xx, rng, d_centre, d_r, aspect=rng.uniform(0.5, 1.0), roughness=0.22)
        dump = rho_d < 1.0
        mound = np.clip((1.0 - rho_d) / 0.3, 0.0, 1.0) * np.float32(d_r * 0.35)
        base = _DUMP_SOIL if rng.random() < 0.6 else _DUMP_ROCK
        layers.insert(0, _Layer(dump, _jitter(rng, base, 0.07), _hillshade(mound) * lumps))
        footprint |= dump
        targets.append(d_centre)

    # Haul roads from the pit rim to every other part, painted first (under the features).
    road_spec = _jitter(rng, _HAUL_ROAD)
    for target in targets:
        width = int(rng.integers(2, 4))
        road = _bezier_mask(shape, _curve_between(rng, centre, target, 0.35), width)
        layers.insert(0, _Layer(road, road_spec))
        footprint |= road
    if len(targets) > 2 and rng.random() < 0.5:
        road = _bezier_mask(shape, _curve_between(rng, targets[1], targets[2], 0.3), 2)
        layers.insert(0, _Layer(road, road_spec))
        footprint |= road

    return _Site(layers, footprint, _coarse_outline(rng, footprint, scale))


def _site_centres(
    rng: np.random.Generator, shape: tuple[int, int], n: int, scale: float
) -> list[tuple[float, float]]:
    """Up to ``n`` site centres, spaced so that sites rarely merge."""
    h, w = shape
    centres: list[tuple[float, float]] = []
    for _ in range(50 * n):
        if len(centres) == n:
            break
        c = (rng.uniform(0.12, 0.88) * h, rng.uniform(0.12, 0.88) * w)
        if all(np.hypot(c[0] - p[0], c[1] - p[1]) > 3.6 * scale for p in centres):
            centres.append(c)
    return centres or [(h / 2.0, w / 2.0)]


def _edge_point(rng: np.random.Generator, shape: tuple[int, int], side: int) -> tuple[float, float]:
    h, w = shape
    s = rng.uniform(0.1, 0.9)
    return [(-2.0, s * w), (h + 1.0, s * w), (s * h, -2.0), (s * h, w + 1.0)][side]


def _edge_to_edge(rng: np.random.Generator, shape: tuple[int, int], width: int) -> np.ndarray:
    """A meandering line crossing the image from one side to another (roads, rivers)."""
    sides = rng.permutation(4)[:2]
    start, end = _edge_point(rng, shape, sides[0]), _edge_point(rng, shape, sides[1])
    mid1 = (rng.uniform(0.2, 0.8) * shape[0], rng.uniform(0.2, 0.8) * shape[1])
    mid2 = (rng.uniform(0.2, 0.8) * shape[0], rng.uniform(0.2, 0.8) * shape[1])
    return _bezier_mask(shape, [start, mid1, mid2, end], width)


def _render(
    rng: np.random.Generator, height: int, width: int, region: str, n_sites: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one scene: reflectance ``(6, H, W)`` float32, fine and coarse ``(H, W)`` bool."""
    params = _REGION_PARAMS[region]
    shape = (height, width)
    area = height * width / 128.0**2
    size_factor = float(np.clip(min(height, width) / 128.0, 0.4, 1.0))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)

    # Mining geometry first, so water can be kept out of the sites.
    scale = 19.0 * size_factor
    centres = _site_centres(rng, shape, n_sites, scale)
    sites = [_mining_site(rng, yy, xx, c, scale * rng.uniform(0.75, 1.25)) for c in centres]
    fine = np.zeros(shape, dtype=bool)
    coarse = np.zeros(shape, dtype=bool)
    for site in sites:
        fine |= site.footprint
        coarse |= site.outline

    # Background: a smooth vegetation/soil mixture with brightness and greenness texture.
    veg_field = _fbm(rng, shape, ((22.0 * size_factor, 0.65), (6.0, 0.3), (1.5, 0.12)))
    threshold = special.ndtri(1.0 - params.veg_cover)
    veg = special.expit((veg_field - threshold) / 0.3).astype(np.float32)
    soil_bright = 1.0 + 0.12 * _fbm(rng, shape, ((12.0, 0.7), (2.0, 0.3)))
    veg_vigour = 1.0 + 0.10 * _fbm(rng, shape, ((8.0, 0.6), (1.0, 0.4)))
    refl = (
        veg[None] * params.vegetation[:, None, None] * veg_vigour[None]
        + (1.0 - veg[None]) * params.soil[:, None, None] * soil_bright[None]
    )

    def paint(mask: np.ndarray, spectrum: np.ndarray, factor: np.ndarray | float = 1.0) -> None:
        spec = spectrum if spectrum.ndim == 3 else spectrum[:, None, None]
        np.copyto(refl, np.broadcast_to(spec * factor, refl.shape), where=mask[None])

    # Field parcels: aligned rotated rectangles of crops, ploughed soil or fallow.
    base_angle = rng.uniform(0.0, np.pi)
    for _ in range(int(rng.poisson(params.parcels * area))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        a = base_angle + rng.normal(0.0, 0.05)
        u = (xx - cx) * np.cos(a) + (yy - cy) * np.sin(a)
        v = -(xx - cx) * np.sin(a) + (yy - cy) * np.cos(a)
        half = rng.uniform(5.0, 18.0, size=2) * size_factor
        parcel = (np.abs(u) < half[0]) & (np.abs(v) < half[1])
        kind = rng.random()
        if kind < 0.4:
            paint(parcel, _jitter(rng, _CROP, 0.08), veg_vigour)
        elif kind < 0.75:
            furrows = 1.0 + 0.06 * np.sin(v * rng.uniform(1.5, 2.5)).astype(np.float32)
            paint(parcel, _jitter(rng, params.soil * 0.92, 0.06), furrows * soil_bright)
        else:
            mix = 0.5 * params.vegetation + 0.5 * params.soil
            paint(parcel, _jitter(rng, mix, 0.06), soil_bright)

    # Rural roads (background, a look-alike of haul roads).
    for _ in range(int(rng.poisson(0.8 * np.sqrt(area)))):
        paint(_edge_to_edge(rng, shape, int(rng.integers(1, 3))), _jitter(rng, _PAVED, 0.05))

    # Water: a lake or a river, kept out of the mining sites.
    keep_out = ndimage.binary_dilation(coarse, iterations=3)
    for _ in range(int(rng.poisson(params.water_prob * area))):
        for _attempt in range(6):
            if rng.random() < 0.5:
                centre = (rng.uniform(0, height), rng.uniform(0, width))
                radius = rng.uniform(6.0, 18.0) * size_factor
                water = _blob(yy, xx, rng, centre, radius, rng.uniform(0.5, 1.0), 0.35) < 1.0
            else:
                water = _edge_to_edge(rng, shape, int(rng.integers(3, 7)))
            if not (water & keep_out).any():
                turbid = np.clip(rng.uniform(-0.2, 0.8) + 0.3 * _noise(rng, shape, 4.0), 0, 1)
                spec = _WATER[:, None, None] * (1 - turbid) + _TURBID_WATER[:, None, None] * turbid
                paint(water, spec.astype(np.float32))
                break

    # Mining features on top.
    for site in sites:
        for layer in site.layers:
            paint(layer.mask, layer.spectrum, layer.factor)

    # Fine texture, sensor blur (point spread) and noise.
    texture = 1.0 + 0.04 * _noise(rng, shape, 0.7)
    refl *= texture[None]
    refl = ndimage.gaussian_filter(refl, sigma=(0.0, 0.6, 0.6))
    refl += rng.normal(0.0, 1.0, size=refl.shape).astype(np.float32) * (0.003 + 0.015 * refl)
    return refl.astype(np.float32), fine, coarse


def _to_dn(refl: np.ndarray, region: str) -> np.ndarray:
    """Scale reflectance to uint16 with the region's sensor gain/offset; keep 0 for nodata."""
    params = _REGION_PARAMS[region]
    dn = refl * _SCALE * params.gain[:, None, None] + params.offset[:, None, None]
    return np.clip(np.rint(dn), 1, _SCALE).astype(np.uint16)


def _nodata_strip(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A slanted strip along one edge, as where a chip overlaps a swath or tile border."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    side = int(rng.integers(4))
    along, across, n = [(yy, xx, w), (yy, w - 1 - xx, w), (xx, yy, h), (xx, h - 1 - yy, h)][side]
    depth = rng.uniform(0.06, 0.2) * n
    slope = rng.uniform(-0.1, 0.1)
    return across < depth + slope * (along - along.mean())


def _check_region(region: str) -> None:
    if region not in _REGION_PARAMS:
        raise GeodistillError(f"unknown synthetic region {region!r} (regions: A, B)")


def generate_chip(
    rng: np.random.Generator, size: int, region: str, *, nodata_strip: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One SYNTHETIC ``size`` x ``size`` chip with one to three mining sites.

    Returns ``image`` ``(6, H, W)`` uint16 (reflectance x 10000, 0 = nodata), ``fine`` and
    ``coarse`` ``(H, W)`` uint8 labels (0 background, 1 mining, 255 under image nodata). With
    ``nodata_strip`` a slanted nodata strip is cut along one edge.
    """
    _check_region(region)
    if size < 16:
        raise GeodistillError(f"synthetic chip size must be at least 16 pixels, got {size}")
    n_sites = int(rng.integers(1, 4))
    return _generate(rng, size, size, region, n_sites, nodata_strip)


def _generate(
    rng: np.random.Generator, height: int, width: int, region: str, n_sites: int, strip: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    refl, fine, coarse = _render(rng, height, width, region, n_sites)
    image = _to_dn(refl, region)
    fine_u8 = fine.astype(np.uint8)
    coarse_u8 = coarse.astype(np.uint8)
    if strip:
        nodata = _nodata_strip(rng, (height, width))
        image[:, nodata] = IMAGE_NODATA
        fine_u8[nodata] = LABEL_NODATA
        coarse_u8[nodata] = LABEL_NODATA
    return image, fine_u8, coarse_u8


# --------------------------------------------------------------------------------------------
# Writing the demo dataset
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoDataset:
    """Where :func:`write_demo_dataset` put each part of the SYNTHETIC demo dataset."""

    root: Path
    coarse_images: Path
    coarse_labels: Path
    coarse_fine_labels: Path
    fine_images: Path
    fine_labels: Path
    test_images: Path
    test_labels: Path
    scene_image: Path
    scene_label: Path
    readme: Path
    band_names: tuple[str, ...] = BAND_NAMES
    class_names: tuple[str, ...] = CLASS_NAMES


_TAGS = {
    "SYNTHETIC": "yes",
    "GENERATOR": "geodistill.data.synthetic",
    "NOTE": "procedurally generated demo data, not real satellite imagery",
}


def _write_image(path: Path, image: np.ndarray, transform: Affine) -> None:
    profile = {
        "driver": "GTiff",
        "height": image.shape[1],
        "width": image.shape[2],
        "count": image.shape[0],
        "dtype": "uint16",
        "crs": CRS.from_epsg(CRS_EPSG),
        "transform": transform,
        "nodata": IMAGE_NODATA,
        "compress": "lzw",
        "predictor": 2,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
        dst.descriptions = BAND_NAMES
        dst.update_tags(**_TAGS, UNITS="surface reflectance x 10000")


def _write_label(path: Path, label: np.ndarray, transform: Affine, kind: str) -> None:
    profile = {
        "driver": "GTiff",
        "height": label.shape[0],
        "width": label.shape[1],
        "count": 1,
        "dtype": "uint8",
        "crs": CRS.from_epsg(CRS_EPSG),
        "transform": transform,
        "nodata": LABEL_NODATA,
        "compress": "lzw",
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(label, 1)
        dst.set_band_description(1, f"{kind} label: 0 background, 1 mining")
        dst.update_tags(**_TAGS, LABEL_KIND=kind, CLASSES=",".join(CLASS_NAMES))


# Origins of the two regions in UTM 33N, far apart; chips sit on a grid with gaps between them.
_ORIGINS = {"A": (420_000.0, 5_210_000.0), "B": (610_000.0, 5_090_000.0)}
_GRID_COLUMNS = 8


def _origin(west: float, north: float) -> Affine:
    """North-up 10 m grid whose top-left corner is at ``(west, north)``."""
    return Affine(PIXEL_SIZE, 0.0, west, 0.0, -PIXEL_SIZE, north)


def _chip_transform(region: str, index: int, stride_px: int) -> Affine:
    """A distinct, non-overlapping 10 m grid position for chip ``index`` of ``region``."""
    west, north = _ORIGINS[region]
    stride = stride_px * PIXEL_SIZE
    row, col = divmod(index, _GRID_COLUMNS)
    return _origin(west + col * stride, north - row * stride)


_README = """\
geodistill demo dataset -- SYNTHETIC DATA
=========================================

Everything in this folder is SYNTHETIC: procedurally generated by geodistill.data.synthetic
(seed {seed}) to demonstrate coarse-to-fine distillation offline. It is not satellite imagery
and must not be used to draw conclusions about real mines or real sensors.

How it was made
---------------
* Images: 6 bands (Blue, Green, Red, NIR, SWIR1, SWIR2), Sentinel-2-like surface reflectance
  scaled to uint16 0..10000, nodata 0. GeoTIFF, LZW, EPSG:{epsg} (UTM 33N), {pixel:g} m pixels,
  every chip at its own non-overlapping location. About one chip in five has a slanted nodata
  strip along one edge; labels are 255 there.
* Background: smooth random vegetation/soil mixtures, field parcels, rural roads, lakes and
  rivers (all class 0).
* Mining sites (class 1): one to three per chip, each an open pit with terraces, a tailings pond
  (bright visible, low NIR), waste dumps and haul roads between them.
* Fine labels: the exact footprint of the mining features.
* Coarse labels: per site the features closed, dilated by several pixels and simplified (convex
  hull or a coarse grid), like the loose polygons of global mining inventories (e.g. Maus et al.);
  they include the ground between the features.
* Region A (coarse/ and its exact labels in coarse/fine_labels/ for an oracle): humid, dense
  vegetation, brown soil. Region B (fine/, test/, scene/), a neighbouring region: somewhat drier
  (less vegetation, redder soil), fewer fields and lakes, plus a mild per-band gain/offset (haze,
  calibration); the same kinds of mining sites. Models trained on A carry over to B with moderate
  loss, which is the domain shift the few fine labels help with.

Layout
------
coarse/images, coarse/labels       {n_coarse} region-A chips ({chip}x{chip}) with coarse labels
coarse/fine_labels                 exact labels of the same region-A chips (oracle only)
fine/images, fine/labels           {n_fine} region-B chips with exact labels
test/images, test/labels           {n_test} held-out region-B chips with exact labels
scene/scene.tif, scene_label.tif   one {scene}x{scene} region-B scene with exact labels

Image and label files share the file stem. Labels: 0 = background, 1 = mining, 255 = nodata.
"""


def _check_count(name: str, value: int, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or value < minimum:
        raise GeodistillError(f"{name} must be an integer >= {minimum}, got {value!r}")


def write_demo_dataset(
    out_dir: str | Path,
    seed: int = 0,
    chip_size: int = 128,
    n_coarse: int = 48,
    n_fine: int = 8,
    n_fine_test: int = 16,
    scene_size: int = 384,
) -> DemoDataset:
    """Write the SYNTHETIC demo dataset under ``out_dir`` and return where each part is.

    Each chip draws from its own generator seeded by ``(seed, split, index)``, so the output is
    byte-identical for a seed and one split's size does not change another split's chips.
    """
    _check_count("chip_size", chip_size, 16)
    _check_count("scene_size", scene_size, 16)
    _check_count("n_coarse", n_coarse, 0)
    _check_count("n_fine", n_fine, 0)
    _check_count("n_fine_test", n_fine_test, 0)
    root = Path(out_dir)
    ds = DemoDataset(
        root=root,
        coarse_images=root / "coarse" / "images",
        coarse_labels=root / "coarse" / "labels",
        coarse_fine_labels=root / "coarse" / "fine_labels",
        fine_images=root / "fine" / "images",
        fine_labels=root / "fine" / "labels",
        test_images=root / "test" / "images",
        test_labels=root / "test" / "labels",
        scene_image=root / "scene" / "scene.tif",
        scene_label=root / "scene" / "scene_label.tif",
        readme=root / "README.txt",
    )
    try:
        for folder in (
            ds.coarse_images,
            ds.coarse_labels,
            ds.coarse_fine_labels,
            ds.fine_images,
            ds.fine_labels,
            ds.test_images,
            ds.test_labels,
            ds.scene_image.parent,
        ):
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GeodistillError(f"cannot create the demo dataset folders ({err})", root) from err

    stride = chip_size + 64
    for i in range(n_coarse):
        rng = np.random.default_rng([seed, 0, i])
        image, fine, coarse = generate_chip(rng, chip_size, "A", nodata_strip=i % 5 == 4)
        transform = _chip_transform("A", i, stride)
        name = f"coarse_{i:04d}.tif"
        _write_image(ds.coarse_images / name, image, transform)
        _write_label(ds.coarse_labels / name, coarse, transform, "coarse")
        _write_label(ds.coarse_fine_labels / name, fine, transform, "fine")

    b_index = 0
    for split, count, images, labels in (
        (1, n_fine, ds.fine_images, ds.fine_labels),
        (2, n_fine_test, ds.test_images, ds.test_labels),
    ):
        prefix = "fine" if split == 1 else "test"
        for i in range(count):
            rng = np.random.default_rng([seed, split, i])
            image, fine, _ = generate_chip(rng, chip_size, "B", nodata_strip=i % 5 == 4)
            transform = _chip_transform("B", b_index, stride)
            b_index += 1
            name = f"{prefix}_{i:04d}.tif"
            _write_image(images / name, image, transform)
            _write_label(labels / name, fine, transform, "fine")

    # The scene sits south of the region-B chip grid, clear of every chip.
    rng = np.random.default_rng([seed, 3, 0])
    n_sites = max(1, int(round(0.9 * scene_size * scene_size / 128.0**2 * rng.uniform(0.7, 1.0))))
    image, fine, _ = _generate(rng, scene_size, scene_size, "B", n_sites, strip=False)
    rows = -(-b_index // _GRID_COLUMNS) + 1
    west, north = _ORIGINS["B"]
    transform = _origin(west, north - rows * stride * PIXEL_SIZE)
    _write_image(ds.scene_image, image, transform)
    _write_label(ds.scene_label, fine, transform, "fine")

    ds.readme.write_text(
        _README.format(
            seed=seed,
            epsg=CRS_EPSG,
            pixel=PIXEL_SIZE,
            n_coarse=n_coarse,
            n_fine=n_fine,
            n_test=n_fine_test,
            chip=chip_size,
            scene=scene_size,
        ),
        encoding="utf-8",
    )
    return ds
