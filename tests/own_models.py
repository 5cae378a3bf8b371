"""An operator's own classifiers, of another architecture than the shipped zoo's: small torch
CNNs for three classes at 96 px, trained on ImageNet-normalised inputs (mean/std), with the
softmax inside the graph (the first output holds probabilities), exported to ONNX. `small`
takes NHWC input, as some exporters (TensorFlow, Keras) leave it. Plus an ImageFolder of
labelled images the CNNs can tell apart (colour dominates each class)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["good", "dent", "rust"]
SIZE = 96
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TINTS = {"good": (150, 150, 150), "dent": (60, 60, 170), "rust": (170, 80, 40)}


def write_images(root: Path, per_class: int, seed: int = 0) -> Path:
    """root/<class>/<i>.png: a tinted noisy surface per class, of varied sizes (not 96 px)."""
    rng = np.random.default_rng(seed)
    for name, tint in TINTS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(80, 200)), int(rng.integers(80, 200))
            img = np.clip(np.array(tint) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def export_cnns(out: Path, images: Path, train_steps: int = 60) -> dict[str, Path]:
    """Train two CNNs (widths 32 and 8) briefly on `images` and export them; returns name -> file."""
    import torch
    from torch import nn

    class Cnn(nn.Module):
        def __init__(self, width: int, nhwc: bool) -> None:
            super().__init__()
            self.nhwc = nhwc
            self.body = nn.Sequential(
                nn.Conv2d(3, width, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(4 * width, len(CLASSES)),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.nhwc:
                x = x.permute(0, 3, 1, 2)
            return torch.softmax(self.body(x), dim=1)

    xs, ys = [], []
    for label, name in enumerate(CLASSES):
        for path in sorted((images / name).glob("*.png")):
            arr = np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR))
            xs.append((arr / 255.0 - np.array(MEAN)) / np.array(STD))
            ys.append(label)
    x = torch.tensor(np.stack(xs).transpose(0, 3, 1, 2), dtype=torch.float32)
    y = torch.tensor(ys)
    torch.manual_seed(0)
    files = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, width, nhwc in (("model", 32, False), ("small", 8, True)):
        model = Cnn(width, nhwc)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(train_steps):
            batch = x.permute(0, 2, 3, 1) if nhwc else x
            loss = nn.functional.nll_loss(torch.log(model(batch) + 1e-9), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        example = torch.rand(1, SIZE, SIZE, 3) if nhwc else torch.rand(1, 3, SIZE, SIZE)
        files[name] = out / f"{name}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (example,),
                str(files[name]),
                input_names=["input"],
                output_names=["probabilities"],
                dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    return files


def reference_probabilities(model: Path, image: Image.Image, nhwc: bool = False) -> np.ndarray:
    """onnxruntime run directly, with the preprocessing written out by hand: RGB, bilinear
    resize to 96 px, /255, ImageNet mean/std, NCHW (or NHWC)."""
    import onnxruntime as ort

    arr = np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
    arr = (arr - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    x = arr[None] if nhwc else arr.transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0][0])
