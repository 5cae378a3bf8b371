"""`edge-agent zoo import`: a zoo from your own ONNX classifiers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from agent.cli.zoo_files import IMAGE_SUFFIXES, console, decode_files, fail, image_folder
from agent.errors import ZooError
from agent.zoo.manifest import MANIFEST_NAME, Preprocess

if TYPE_CHECKING:
    from agent.zoo.importer import Calibration


def _floats(text: str | None, what: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        fail(f"--{what}: expected three numbers like 0.485,0.456,0.406, got {text!r}")
    if len(values) != 3:
        fail(f"--{what}: expected three numbers (one per channel), got {len(values)}")
    return (values[0], values[1], values[2])


def _class_names(text: str) -> list[str]:
    """`a,b,c`, or `@FILE` with one name per line."""
    if text.startswith("@"):
        try:
            lines = Path(text[1:]).read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            fail(f"--classes {text}: cannot read: {exc.strerror or exc}")
        return [line.strip() for line in lines if line.strip()]
    return [c.strip() for c in text.split(",") if c.strip()]


def import_(
    model: Annotated[Path, typer.Argument(help="Your ONNX image classifier: it becomes the variant `full`")],
    out: Annotated[Path, typer.Option(help="The zoo folder to write (models are copied into it)")],
    classes: Annotated[str, typer.Option(help="Class names in output order: a,b,c, or @FILE with one per line")],
    variant: Annotated[
        list[str] | None,
        typer.Option(help="More variants, NAME=FILE (e.g. pruned=small.onnx, lowres=96px.onnx); repeatable"),
    ] = None,
    size: Annotated[int | None, typer.Option(help="Input size in pixels, if the graph does not fix it")] = None,
    mean: Annotated[
        str | None, typer.Option(help="Per-channel mean subtracted after --scale, e.g. 0.485,0.456,0.406")
    ] = None,
    std: Annotated[str | None, typer.Option(help="Per-channel std divided by, e.g. 0.229,0.224,0.225")] = None,
    scale: Annotated[float, typer.Option(help="Multiplies the 0-255 pixel values first (1/255: values in [0, 1])")] = 1
    / 255,
    channel_order: Annotated[str, typer.Option(help="rgb or bgr, as the model was trained")] = "rgb",
    resize: Annotated[str, typer.Option(help="bilinear, bicubic, lanczos, box or nearest")] = "bilinear",
    output: Annotated[
        str, typer.Option(help="What the first output holds: logits, probabilities, or auto (found by running it)")
    ] = "auto",
    int8: Annotated[
        bool, typer.Option("--int8", help="Also make an int8 variant of full (onnxruntime quantizer)")
    ] = False,
    calibration: Annotated[
        Path | None,
        typer.Option(
            help="Images for static int8 calibration; an ImageFolder (one subfolder per class) also bounds "
            "the accuracy int8 may lose (1 pt)"
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing manifest in --out")] = False,
) -> None:
    """Make a zoo from your own ONNX classifiers, for `edge-agent serve --zoo DIR`.

    The layout (NCHW or NHWC), size, inputs, outputs, hashes and parameter counts are read
    from the files. Variants without a token-budget input (an int64 `token_keep`) serve at
    budget 1. Only int8 can be made here (--int8): pruned and low-resolution variants need
    training, so bring them as --variant NAME=FILE. Then `edge-agent zoo profile --zoo DIR`
    (latency on this gateway) and `edge-agent zoo eval --zoo DIR --data IMAGES --save`
    (accuracy on your images) give the controller what it ranks and predicts by."""
    from agent.zoo.importer import import_models

    if (out / MANIFEST_NAME).exists() and not force:
        fail(f"{out / MANIFEST_NAME} exists; --force to overwrite it")
    if output not in ("auto", "logits", "probabilities"):
        fail(f"--output: expected auto, logits or probabilities, got {output!r}")
    models = _models(model, variant or [])
    pre = _preprocess(channel_order, scale, mean, std, resize)
    names = _class_names(classes)
    calib = None
    if calibration is not None:
        calib = _calibration(calibration, names)
    try:
        manifest = import_models(
            out,
            models,
            names,
            pre,
            output=output,  # type: ignore[arg-type]
            size=size,
            int8=int8,
            calibration=calib,
            log=lambda m: console.print(escape(m)),
        )
    except ZooError as exc:
        fail(exc.message)
    console.print(
        f"wrote {out / MANIFEST_NAME}: {', '.join(v.name for v in manifest.variants)}; next: "
        f"edge-agent zoo profile --zoo {out}"
    )


def _calibration(root: Path, classes: list[str]) -> Calibration:
    """Calibration images: an ImageFolder of the classes (labels kept) or a flat folder."""
    from agent.zoo.importer import Calibration

    if not root.is_dir():
        fail(f"{root}: not a folder")
    if any(p.is_dir() for p in root.iterdir()):
        files, labels = image_folder(root, classes)
        return Calibration(lambda size, resize: decode_files(files, size, resize), labels)
    flat = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not flat:
        fail(f"{root}: no images for calibration")
    return Calibration(lambda size, resize: decode_files(flat, size, resize), None)


def _models(full: Path, variants: list[str]) -> dict[str, Path]:
    """`full` and the --variant NAME=FILE items, by name."""
    models = {"full": full}
    for item in variants:
        name, sep, file = item.partition("=")
        if not sep or not name or not file:
            fail(f"--variant: expected NAME=FILE, got {item!r}")
        models[name] = Path(file)
    return models


def _preprocess(channel_order: str, scale: float, mean: str | None, std: str | None, resize: str) -> Preprocess:
    from pydantic import ValidationError

    from agent.errors import validation_message

    try:
        return Preprocess.model_validate(
            {
                "channel_order": channel_order,
                "scale": scale,
                "mean": _floats(mean, "mean"),
                "std": _floats(std, "std"),
                "resize": resize,
            }
        )
    except ValidationError as exc:
        fail(f"invalid preprocessing: {validation_message(exc)}")
