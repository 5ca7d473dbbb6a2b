"""Seeds for the fuzz targets in fuzz/ (run by tools/fuzz.sh when fuzz/corpus is missing):
small valid inputs of every format each target parses, so the fuzzer starts from the real
structure instead of random bytes. Everything is synthetic (a drawn picture, made-up list rows):
no image or row of a dataset ends up in the committed corpus.

    ~/.cache/visual-search/venv/bin/python tools/make_fuzz_corpus.py fuzz/corpus
"""
import io
import json
import pathlib
import struct
import sys
import zlib

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save as save_safetensors

out = pathlib.Path(sys.argv[1])


def put(target, name, data):
    d = out / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def encoded(img, fmt, **kw):
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


# A drawn "product photo": a gradient background, a box and a disc.
yy, xx = np.mgrid[0:36, 0:48]
pixels = np.stack([xx * 5, yy * 7, (xx + yy) * 3], axis=-1).astype(np.uint8)
small = Image.fromarray(pixels, "RGB")
ImageDraw.Draw(small).rectangle((10, 8, 30, 28), fill=(200, 40, 60))
ImageDraw.Draw(small).ellipse((24, 4, 44, 24), fill=(30, 160, 90))
bordered = Image.new("RGB", (40, 40), (255, 255, 255))
bordered.paste(small.resize((24, 20)), (8, 10))
images = {
    "jpeg420.jpg": encoded(small, "JPEG", quality=80, subsampling=2),
    "jpeg444.jpg": encoded(small, "JPEG", quality=90, subsampling=0),
    "progressive.jpg": encoded(small, "JPEG", progressive=True),
    "gray.jpg": encoded(small.convert("L"), "JPEG"),
    "rgb.png": encoded(small, "PNG"),
    "rgba.png": encoded(small.convert("RGBA"), "PNG"),
    "palette.png": encoded(small.convert("P"), "PNG"),
    "border.png": encoded(bordered, "PNG"),
    "lossless.webp": encoded(small, "WEBP", lossless=True),
}
exif = small.getexif()
exif[0x0112] = 6  # rotated 90°
images["exif_rotated.jpg"] = encoded(small, "JPEG", exif=exif)
for i, (name, data) in enumerate(images.items()):
    head = bytes([i % 3, 24]) + struct.pack("<hhh", 4, 30, 20)
    put("image_pipeline", name, head + data)

put("csv_lists", "gallery.csv",
    b"img_path,product_id\nshop/Fruit/Kiwi/kiwi_1.jpg,7\nshop/Milk/milk_2.jpg,12\n")
put("csv_lists", "queries.csv",
    b"img_path,product_id,bbox_x,bbox_y,bbox_w,bbox_h\nphotos/k_001.jpg,7,,,,\nphotos/m_002.jpg,12,,,,\n")
put("csv_lists", "train.csv", b"name,class,group\ntrain/a/a_001.jpg,0,0\ntrain/b/b_001.jpg,1,0\n")
put("csv_lists", "queries_bbox.csv",
    b"img_path,product_id,bbox_x,bbox_y,bbox_w,bbox_h\na.jpg,1,1.5,2,30,40\nb.jpg,2,,,,\n")
put("csv_lists", "mined.csv", b"image_path,label\nimgs/a.jpg,0\nimgs/b.jpg,1\n")

buf = io.BytesIO()
np.save(buf, np.arange(12, dtype=np.float32).reshape(3, 4))
put("npy", "f32.npy", buf.getvalue())
buf = io.BytesIO()
np.save(buf, np.arange(6, dtype=np.float16).reshape(2, 3))
put("npy", "f16.npy", buf.getvalue())
buf = io.BytesIO()
np.save(buf, np.asfortranarray(np.ones((2, 2), dtype=np.float64)))
put("npy", "f64_fortran.npy", buf.getvalue())

state = {
    "conv.weight": torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2),
    "bn.running_mean": torch.zeros(2, dtype=torch.float16),
    "bn.num_batches_tracked": torch.tensor(3, dtype=torch.int64),
    "head.weight": torch.arange(6, dtype=torch.bfloat16).reshape(3, 2).t(),
}
put("tensor_file", "weights.safetensors",
    save_safetensors({k: v.contiguous() for k, v in state.items()}))
buf = io.BytesIO()
torch.save(state, buf)
put("tensor_file", "zip.pth", buf.getvalue())
buf = io.BytesIO()
torch.save({"state_dict": state}, buf, _use_new_zipfile_serialization=False)
put("tensor_file", "legacy.pth", buf.getvalue())

for cfg in sorted(pathlib.Path("configs").glob("*.yml")):
    put("train_config", cfg.name, cfg.read_bytes())

meta = {
    "format_version": 1, "dtype": "f32", "dim": 2, "rows": 2,
    "embeddings_crc32": 0, "items_crc32": 0,
    "model": {"model": "tiny"},
    "preprocessing": {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
}
items = b"id,label,path\n0,1,/shop/a.jpg\n1,2,\"/shop/b,c.jpg\"\n"
emb = np.array([[1, 0], [0, 1]], dtype=np.float32).tobytes()
mark = b"\0--\0"
put("index_open", "f32", b"\x01" + json.dumps(meta).encode() + mark + items + mark + emb)
meta16 = dict(meta, dtype="f16")
emb16 = np.array([[1, 0], [0, 1]], dtype=np.float16).tobytes()
put("index_open", "f16", b"\x01" + json.dumps(meta16).encode() + mark + items + mark + emb16)

jpeg = images["jpeg420.jpg"]
form = (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"k.jpg\"\r\n"
        b"Content-Type: image/jpeg\r\n\r\n" + jpeg + b"\r\n--XyZ--\r\n")
put("upload", "multipart", b"\x01" + b"\n" + b"XyZ\n" + form)
put("upload", "multipart_bbox", b"\x01" + b"2,3,20,20\n" + b"XyZ\n" + form)
put("upload", "raw", b"\x00" + b"\n" + b"\n" + jpeg)
put("upload", "raw_png", b"\x00" + b"1,1,10,10\n" + b"\n" + images["rgb.png"])
print("wrote", sum(1 for _ in out.rglob("*") if _.is_file()), "seeds under", out)
