"""Vectorised renderer of the built-in synthetic faces: identity parameters -> uint8 (N, 3, 112, 112).

Every face is a stack of soft-edged shapes composited in layers (background, hair, ears, head with
sphere-like shading, moles, blush, beard, eyes, brows, nose, mouth, fringe, glasses), evaluated on a
pixel grid for the whole batch at once in torch. Per image, nuisance varies pose (yaw, pitch, roll,
scale, shift), expression (smile, open mouth, blink, raised brows), illumination (ambient, direction,
colour temperature, gain) and noise. ``domain="synthetic"`` renders the "GAN-like" variant: smooth
skin, studio light, near-frontal pose, graded colours, blurred background, faint high-frequency grid.
"""
from __future__ import annotations

import math

import torch

from .params import P

_EDGE = 45.0  # soft-edge sharpness (1/units; 1 unit = 56 px, so an edge is ~1.3 px wide)


def _col(p: torch.Tensor, name: str) -> torch.Tensor:
    return p[:, P[name]].view(-1, 1, 1)


def _ellipse(u: torch.Tensor, v: torch.Tensor, cx, cy, a, b) -> torch.Tensor:
    """Soft mask (N, H, W) of the ellipse centred (cx, cy) with half-axes (a, b)."""
    r = torch.sqrt(((u - cx) / a) ** 2 + ((v - cy) / b) ** 2 + 1e-8)
    return torch.sigmoid((1.0 - r) * torch.minimum(a, b) * _EDGE) if torch.is_tensor(a) else \
        torch.sigmoid((1.0 - r) * min(a, b) * _EDGE)


def _blend(img: torch.Tensor, mask: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """img (N,3,H,W) <- img * (1 - mask) + colour * mask; colour (N,3,1,1) or (N,3,H,W)."""
    m = mask.unsqueeze(1)
    return img + m * (colour - img)


def _rgb(p: torch.Tensor, prefix: str) -> torch.Tensor:
    return torch.stack([p[:, P[f"{prefix}_{c}"]] for c in "rgb"], 1).view(-1, 3, 1, 1)


def _nuisance(n: int, scale: torch.Tensor, gen: torch.Generator, synthetic: bool) -> dict[str, torch.Tensor]:
    """Per-image nuisance draws (each (N, 1, 1)); ``scale`` (N,) multiplies their spread."""
    def draw(sd: float) -> torch.Tensor:
        return (torch.randn(n, generator=gen) * sd * scale).view(-1, 1, 1)

    def unif(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, generator=gen)).view(-1, 1, 1)

    k = 0.45 if synthetic else 1.0  # GAN-like faces are mostly frontal, evenly lit
    return {
        "yaw": draw(0.30 * k).clamp(-0.8, 0.8), "pitch": draw(0.25 * k).clamp(-0.7, 0.7),
        "roll": draw(math.radians(7) * k), "scale": 1 + draw(0.05 * k), "tx": draw(0.04 * k),
        "ty": draw(0.04 * k), "smile": draw(0.45 * k), "open": draw(0.5 * k).clamp(min=0),
        "blink": (1 - draw(0.25 * k).abs()).clamp(0.15, 1), "brow_up": draw(0.02 * k),
        "ambient": unif(0.45, 0.75) if not synthetic else unif(0.62, 0.72),
        "lx": draw(0.55 * k), "ly": draw(0.35 * k) - 0.25, "gain": 1 + draw(0.18 * k),
        "temp": draw(0.06 * k), "bg_hue": unif(0, 1), "bg_val": unif(0.15, 0.85),
        "bg_grad": draw(0.3), "noise": unif(0.005, 0.035) * scale.view(-1, 1, 1) if not synthetic
        else torch.zeros(n, 1, 1),
    }


def _hsv_bg(hue: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    """Muted background colour (N, 3, 1, 1) from a hue and a value in [0, 1]."""
    ang = hue * 2 * math.pi
    rgb = torch.cat([torch.cos(ang), torch.cos(ang - 2.094), torch.cos(ang + 2.094)], 1) * 0.18
    return (val.unsqueeze(1) + rgb.unsqueeze(2).unsqueeze(3).reshape(-1, 3, 1, 1)).clamp(0, 1)


def render_faces(params: torch.Tensor, *, gen: torch.Generator, nuisance_scale: torch.Tensor | None = None,
                 extra_noise: torch.Tensor | None = None, domain: str = "real", size: int = 112) -> torch.Tensor:
    """Render ``params`` (N, N_PARAMS) float32 -> uint8 (N, 3, size, size), one nuisance draw per image."""
    n = params.shape[0]
    p = params.float()
    synthetic = domain == "synthetic"
    scale = torch.ones(n) if nuisance_scale is None else nuisance_scale.float()
    nz = _nuisance(n, scale, gen, synthetic)
    lin = (torch.arange(size, dtype=torch.float32) + 0.5) / size * 2 - 1
    y, x = torch.meshgrid(lin, lin, indexing="ij")
    x, y = x.unsqueeze(0), y.unsqueeze(0)  # (1, H, W)
    # inverse similarity transform: image coords -> canonical face coords (u, v)
    c, s = torch.cos(nz["roll"]), torch.sin(nz["roll"])
    xs, ys = x - nz["tx"], y - nz["ty"]
    u = (c * xs + s * ys) / nz["scale"]
    v = (-s * xs + c * ys) / nz["scale"] - 0.02
    yaw, pitch = nz["yaw"], nz["pitch"]
    # inner features sit in front of the head's centre: they move more with yaw / pitch (depth cue)
    fu, fv = u - yaw * 0.16, v - pitch * 0.10
    nu = u - yaw * 0.26  # nose tip is furthest forward

    # background: muted colour with a vertical gradient, hair/head drawn over it
    img = _hsv_bg(nz["bg_hue"], nz["bg_val"]).expand(n, 3, size, size) * (1 + nz["bg_grad"].unsqueeze(1) * y.unsqueeze(1))
    hair = _rgb(p, "hair")
    head_w, head_h, jaw = _col(p, "head_w"), _col(p, "head_h"), _col(p, "jaw")
    hv = _col(p, "hair_vol").clamp(min=0.0)
    hair_len = _col(p, "hair_len")
    back = _ellipse(u - yaw * 0.04, v, 0.0, -0.08, head_w + hv + 0.03, head_h * 0.95 + hv)
    back = back * torch.sigmoid((0.15 + hair_len * 0.6 - v) * 12)
    img = _blend(img, back, hair * 0.85)
    skin = _rgb(p, "skin")
    ear = _col(p, "ear")
    for side in (-1.0, 1.0):
        ex = side * (head_w - 0.02) - yaw * 0.05
        img = _blend(img, _ellipse(u, v, ex, _col(p, "eye_y") + 0.10, ear * 0.7, ear * 1.3), skin * 0.85)

    # head: ellipse narrowing towards the chin (jaw), with sphere-like shading
    a_v = head_w * (1 - jaw * (v / head_h).clamp(0, 1) ** 2)
    r2 = (u / a_v) ** 2 + (v / head_h) ** 2
    head = torch.sigmoid((1 - torch.sqrt(r2 + 1e-8)) * head_w * _EDGE)
    face = skin.expand(n, 3, size, size).clone()
    for i in (1, 2):  # moles: identity-specific marks
        mx, my = _col(p, f"mole{i}_x").clamp(-0.4, 0.4), _col(p, f"mole{i}_y").clamp(-0.3, 0.5)
        face = _blend(face, _ellipse(fu, fv, mx, my, _col(p, "mole_size"), _col(p, "mole_size")), skin * 0.45)
    blush = _col(p, "blush").clamp(0, 0.35)
    for side in (-1.0, 1.0):
        m = _ellipse(fu, fv, side * 0.27, 0.18, 0.11, 0.07) * blush
        face = _blend(face, m * 0.8, skin * torch.tensor([1.08, 0.82, 0.82]).view(1, 3, 1, 1))
    beard = torch.sigmoid(_col(p, "beard") * 3)
    mouth_y = _col(p, "mouth_y")
    beard_m = beard * torch.sigmoid((fv - (_col(p, "nose_len") + 0.06)) * 25) * 0.55
    face = _blend(face, beard_m, hair * 0.9)

    # eyes: sclera, iris, pupil; blink squashes the eye; gaze follows yaw slightly
    eye_y, eye_dx = _col(p, "eye_y"), _col(p, "eye_dx")
    eye_w, eye_h = _col(p, "eye_w"), _col(p, "eye_h") * nz["blink"]
    iris = _rgb(p, "iris")
    brow_col = hair * 0.7
    for side in (-1.0, 1.0):
        cx = side * eye_dx
        sclera = _ellipse(fu, fv, cx, eye_y, eye_w, eye_h)
        face = _blend(face, sclera, torch.full_like(iris, 0.92))
        face = _blend(face, _ellipse(fu, fv, cx - yaw * 0.03, eye_y, eye_h * 0.95, eye_h * 0.95) * sclera, iris)
        face = _blend(face, _ellipse(fu, fv, cx - yaw * 0.03, eye_y, eye_h * 0.4, eye_h * 0.4) * sclera,
                      torch.full_like(iris, 0.05))
        # brow: a thick tilted bar above the eye
        by = eye_y - _col(p, "brow_dy") - nz["brow_up"] + side * _col(p, "brow_tilt") * (fu - cx) * 0.5
        brow = _ellipse(fu, fv - by + eye_y, cx, eye_y, eye_w * 1.35, _col(p, "brow_thick"))
        face = _blend(face, brow, brow_col)

    # nose: bridge highlight, side shadow, nostrils
    nose_len, nose_w = _col(p, "nose_len"), _col(p, "nose_w")
    face = _blend(face, _ellipse(nu, fv, 0.035, nose_len * 0.5, 0.018, nose_len * 0.45) * 0.35, skin * 0.72)
    for side in (-1.0, 1.0):
        face = _blend(face, _ellipse(nu, fv, side * nose_w * 0.55, nose_len, nose_w * 0.35, 0.018) * 0.8, skin * 0.35)
    face = _blend(face, _ellipse(nu, fv, 0.0, nose_len - 0.02, nose_w * 0.7, 0.04) * 0.25, skin * 1.12)

    # mouth: curved lips (smile raises the corners), dark opening
    mouth_w, lip = _col(p, "mouth_w"), _col(p, "lip_thick")
    curve = fv - (mouth_y - nz["smile"] * 0.06 * ((fu / mouth_w) ** 2 - 0.3))
    lips_col = (skin * torch.tensor([0.92, 0.62, 0.62]).view(1, 3, 1, 1) + _rgb(p, "lip")).clamp(0, 1)
    open_h = nz["open"] * 0.03
    face = _blend(face, _ellipse(fu, curve, 0.0, 0.0, mouth_w, lip + open_h), lips_col)
    face = _blend(face, _ellipse(fu, curve, 0.0, 0.0, mouth_w * 0.8, open_h + 0.004) *
                  (open_h > 0.004).float(), torch.full_like(skin, 0.12))

    # fringe: hair over the forehead above an identity-specific, parted hairline
    wave = 0.02 * torch.sin(u * 9 + _col(p, "hair_part") * 5)
    hl = _col(p, "hairline") + _col(p, "hair_part") * u * 0.25 + wave
    fringe = torch.sigmoid((hl - v) * _EDGE) * head
    # glasses (identity accessory): dark rims around both eyes and a bridge
    gl = (_col(p, "glasses") > 0).float()
    rims = 0
    for side in (-1.0, 1.0):
        r = torch.sqrt(((fu - side * eye_dx) / (eye_w * 1.6)) ** 2 + ((fv - eye_y) / (eye_w * 1.2)) ** 2 + 1e-8)
        rims = rims + torch.sigmoid((0.12 - (r - 1).abs()) * 60)
    rims = (rims.clamp(0, 1) * gl).clamp(0, 1)

    # lighting: Lambert on the pseudo sphere normal of the head ellipse
    nzn = torch.sqrt((1 - r2).clamp(min=0.02))
    nx, ny = u / a_v, v / head_h
    lz = torch.sqrt((1 - nz["lx"] ** 2 - nz["ly"] ** 2).clamp(min=0.2))
    shade = nz["ambient"] + (1 - nz["ambient"]) * ((nx * nz["lx"] + ny * nz["ly"] + nzn * lz) / 1.2).clamp(min=0)
    if synthetic:  # smooth studio skin with a soft specular sheen
        shade = shade + 0.12 * ((nx * nz["lx"] + ny * nz["ly"] + nzn * lz).clamp(min=0) ** 8)
    face = face * shade.unsqueeze(1)
    img = _blend(img, head, face)
    img = _blend(img, fringe, hair * (0.9 + 0.1 * torch.sin(u * 40 + v * 6)).unsqueeze(1) * shade.unsqueeze(1))
    img = _blend(img, rims * head, torch.full_like(skin, 0.06))

    # camera: colour temperature, gain, noise; synthetic domain: graded colours and a faint grid artefact
    temp = nz["temp"].unsqueeze(1)
    img = img * torch.cat([1 + temp, torch.ones_like(temp), 1 - temp], 1) * nz["gain"].unsqueeze(1)
    if synthetic:
        grey = img.mean(1, keepdim=True)
        img = grey + 1.25 * (img - grey)  # more saturated
        img = img * torch.tensor([1.05, 1.0, 0.9]).view(1, 3, 1, 1) + 0.02
        img = img + 0.012 * torch.sign(torch.sin(x * size * math.pi / 2) * torch.sin(y * size * math.pi / 2)).unsqueeze(1)
    noise = nz["noise"].unsqueeze(1)
    if extra_noise is not None:
        noise = noise + extra_noise.view(-1, 1, 1, 1)
    img = img + torch.randn(img.shape, generator=gen) * noise
    return (img.clamp(0, 1) ** (1 / 1.1) * 255 + 0.5).to(torch.uint8)
