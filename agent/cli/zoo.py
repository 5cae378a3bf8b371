"""`edge-agent zoo ...`: inspect, verify, evaluate, profile and build the model zoo."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from agent.cli.zoo_files import check_writable, console, decode_files, fail, image_folder, in_state_dir, write_state
from agent.cli.zoo_import import import_
from agent.errors import ZooError
from agent.paths import DEVICE_PROFILE_NAME, SITE_ACCURACY_NAME, Located, default_zoo_dir
from agent.values import BUDGETS
from agent.zoo.manifest import MANIFEST_NAME, DeviceProfile, ProfiledVariant, load_manifest
from agent.zoo.stats import format_p

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from agent.zoo.accuracy_tables import SitePoint
    from agent.zoo.sessions import Zoo


app = typer.Typer(help="The model zoo: variants, manifest, build and profile.", no_args_is_help=True)
app.command("import")(import_)

ZooOpt = Annotated[Path, typer.Option("--zoo", help="Zoo folder (with manifest.json).")]
StateDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="The daemon's state directory (default: $EDGE_AGENT_STATE_DIR, $STATE_DIRECTORY, else the "
        "service's /var/lib/edge-agent if it exists, else ./state)",
    ),
]


@app.command()
def info(zoo: ZooOpt = default_zoo_dir()) -> None:
    """A table of the variants: size, tokens, accuracy and latency per budget."""
    try:
        manifest = load_manifest(zoo / MANIFEST_NAME)
    except ZooError as exc:
        fail(exc.message)
    table = Table(title=f"{manifest.name} ({zoo})")
    for col in (
        "variant",
        "file",
        "input",
        "tokens",
        "params",
        "MB",
        "budget",
        "acc test",
        "95% CI",
        "p (paired)",
        "acc shifted",
        "p50 ms (2t)",
        "p95 ms (2t)",
    ):
        table.add_column(col, justify="right" if col not in ("variant", "file") else "left")
    for v in manifest.variants:
        for i, budget in enumerate(v.budgets):
            point = v.latency.lookup(budget, 2) if v.latency else None
            acc = v.accuracy_point(budget)
            test, shifted = (acc.test, acc.shifted) if acc else (None, None)
            table.add_row(
                v.name if i == 0 else "",
                v.file if i == 0 else "",
                f"{v.resolution}px" if i == 0 else "",
                str(v.tokens) if i == 0 else "",
                f"{v.parameters / 1e6:.2f}M" if i == 0 else "",
                f"{v.size_bytes / 1e6:.1f}" if i == 0 else "",
                f"{budget:.2f}",
                f"{test:.1%}" if test is not None else "-",
                f"{acc.test_ci[0]:.1%}-{acc.test_ci[1]:.1%}" if acc and acc.test_ci else "-",
                format_p(acc.p_vs_larger_budget) if acc else "-",
                f"{shifted:.1%}" if shifted is not None else "-",
                f"{point.p50_ms:.2f}" if point else "-",
                f"{point.p95_ms:.2f}" if point else "-",
            )
    console.print(table)
    console.print(f"classes: {', '.join(manifest.classes)}")
    console.print(
        "95% CI: Wilson interval of the test accuracy; p (paired): exact McNemar test on the same test "
        "images against the next larger budget of the variant (below 0.05: unlikely to be noise)"
    )
    if manifest.build:
        console.print(
            f"built {manifest.build.built_at} (seed {manifest.build.seed}, {manifest.build.duration_s:.0f} s) on {manifest.build.data}"
        )


@app.command()
def verify(zoo: ZooOpt = default_zoo_dir()) -> None:
    """Check every variant's SHA-256 and that onnxruntime loads it; exit 1 if any fails."""
    try:
        from agent.zoo.sessions import verify_zoo  # onnxruntime: only for the commands that run models

        results = verify_zoo(zoo)
    except ZooError as exc:
        fail(exc.message)
    for name, error in results.items():
        console.print(f"[green]ok[/green]   {name}" if error is None else f"[red]FAIL[/red] {name}: {error}")
    if any(results.values()):
        raise typer.Exit(1)


@app.command("eval")
def evaluate(
    zoo: ZooOpt = default_zoo_dir(),
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Your labelled images: a folder with one subfolder per class, named as the zoo's classes "
            "(an ImageFolder); decoded as the daemon decodes request bodies",
        ),
    ] = None,
    save: Annotated[
        bool,
        typer.Option(
            "--save", help="With --data: keep the table as this gateway's site table (policy `accuracy: site`)"
        ),
    ] = False,
    state_dir: StateDirOpt = None,
    split: Annotated[str, typer.Option(help="Without --data: the synthetic split, test or shifted")] = "test",
    count: Annotated[int, typer.Option(help="Without --data: images of the split to use")] = 1000,
    seed: Annotated[int, typer.Option(help="Data seed (the zoo's build seed by default)")] = -1,
) -> None:
    """Accuracy of every variant x budget, run through onnxruntime, on your images (--data) or
    on a synthetic split. With --data --save it becomes the site table a running daemon picks up."""

    from agent.zoo.accuracy_tables import site_table_file
    from agent.zoo.evaluation import batch_inputs
    from agent.zoo.sessions import SessionSettings, open_zoo

    if save and data is None:
        fail("--save needs --data: the site table is measured on your own images")
    site_file = in_state_dir(state_dir, SITE_ACCURACY_NAME) if save else None
    if site_file is not None:
        check_writable(site_file)
    try:
        loaded = open_zoo(zoo, SessionSettings(intra_threads=2))
    except ZooError as exc:
        fail(exc.message)
    for name, reason in loaded.failures.items():
        console.print(f"[red]skipped {name}[/red]: {escape(reason)}")
    classes = list(loaded.manifest.classes)
    if data is not None:
        files, labels = image_folder(data, classes)
        title = f"accuracy on {len(files)} images of {data}"

        def inputs_at(size: int, resize: str) -> np.ndarray:
            return decode_files(files, size, resize)

    else:
        from model_zoo import data as synthetic

        if seed < 0:
            seed = loaded.manifest.build.seed if loaded.manifest.build else 0
        images, labels = synthetic.generate(split, count, seed=seed)
        title = f"accuracy on {count} {split} images (seed {seed})"

        def inputs_at(size: int, resize: str) -> np.ndarray:
            return batch_inputs(images, size, resize)

    table, points = _score(loaded, labels, inputs_at, title)
    console.print(table)
    if site_file is not None and data is not None:
        out = write_state(site_file, site_table_file(str(data.resolve()), classes, points))
        console.print(f"wrote {escape(out)}; a daemon whose policy says `accuracy: site` ranks by it from now on")


def _score(
    loaded: Zoo, labels: np.ndarray, inputs_at: Callable[[int, str], np.ndarray], title: str
) -> tuple[Table, list[SitePoint]]:
    """Every variant x budget scored on the images (decoded once per input size and resize)."""
    from agent.zoo.accuracy_tables import SitePoint
    from agent.zoo.evaluation import correct_mask

    table = Table(title=title)
    table.add_column("variant")
    for budget in BUDGETS:
        table.add_column(f"@{budget}", justify="right")
    points: list[SitePoint] = []
    cache: dict[tuple[int, str], np.ndarray] = {}
    for name, variant in loaded.variants.items():
        key = (variant.spec.resolution, variant.spec.preprocess.resize)
        if key not in cache:
            cache[key] = inputs_at(*key)
        row = []
        for budget in BUDGETS:
            if budget not in variant.spec.budgets:
                row.append("-")
                continue
            hits = correct_mask(variant, cache[key], labels, budget)
            points.append(
                SitePoint(
                    variant=name,
                    sha256=loaded.manifest.variant(name).sha256,
                    budget=budget,
                    correct=int(hits.sum()),
                    images=len(hits),
                )
            )
            row.append(f"{hits.mean():.1%}")
        table.add_row(name, *row)
    return table, points


@app.command()
def profile(
    zoo: ZooOpt = default_zoo_dir(),
    out: Annotated[Path | None, typer.Option(help="Device profile file (default: the state directory's)")] = None,
    state_dir: StateDirOpt = None,
    runs: Annotated[int, typer.Option(help="Timed runs per variant x budget x threads")] = 50,
) -> None:
    """Measure this device's latency table, written to the state directory, where the daemon
    prefers it over the shipped profile."""
    from agent.zoo.evaluation import profile_variants
    from agent.zoo.sessions import SessionSettings, open_zoo

    target = Located(out, "--out") if out is not None else in_state_dir(state_dir, DEVICE_PROFILE_NAME)
    check_writable(target)
    by_threads = {}
    with console.status("loading variants"):
        for threads in (1, 2):
            try:
                loaded = open_zoo(zoo, SessionSettings(intra_threads=threads))
            except ZooError as exc:
                fail(exc.message)
            by_threads[threads] = list(loaded.variants.values())
    if not by_threads[1]:
        fail(f"no variant of {zoo} could be loaded")
    specs = {v.name: v.spec for v in by_threads[1]}
    started = time.monotonic()
    with console.status(f"profiling {len(specs)} variants, {runs} runs each"):
        profiles = profile_variants(by_threads, {n: s.budgets for n, s in specs.items()}, runs)
    first = next(iter(profiles.values()))
    device = DeviceProfile(
        machine=first.machine,
        measured_at=first.measured_at,
        variants={n: ProfiledVariant(sha256=specs[n].sha256, latency=p) for n, p in profiles.items()},
    )
    written = write_state(target, device.model_dump_json(indent=2) + "\n")
    table = Table(title=f"latency on this device ({time.monotonic() - started:.0f} s)")
    for col in ("variant", "budget", "p50 1t", "p95 1t", "p50 2t", "p95 2t"):
        table.add_column(col, justify="right")
    for name, prof in profiles.items():
        for budget in specs[name].budgets:
            one, two = prof.lookup(budget, 1), prof.lookup(budget, 2)
            table.add_row(name, f"{budget}", *(f"{x:.2f}" for p in (one, two) if p for x in (p.p50_ms, p.p95_ms)))
    console.print(table)
    console.print(f"wrote {escape(written)}")


@app.command()
def build(
    config: Annotated[Path | None, typer.Option(help="Build config (YAML); defaults build the shipped zoo")] = None,
    seed: Annotated[int | None, typer.Option(help="Override the config's seed")] = None,
    out: Annotated[Path, typer.Option(help="Output folder")] = Path("build/zoo"),
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Train on your labelled images: DIR/<class>/*.png (split 80/10/10 by default, see val_share and "
            "test_share), or DIR/train|val|test/<class>/; DIR/shifted/<class>/ adds a robustness figure",
        ),
    ] = None,
) -> None:
    """Train, prune, quantize, fine-tune lowres, evaluate, profile and write the manifest (needs torch)."""
    try:
        from model_zoo.build import build as run_build
        from model_zoo.build import load_config
    except ImportError as exc:
        fail(f"zoo build needs the train extra ({exc.name or exc}): pip install -e '.[train]'")
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    try:
        cfg = load_config(config)
    except (OSError, ValueError) as exc:
        fail(f"{config}: {exc}")
    if seed is not None:
        cfg = cfg.model_copy(update={"seed": seed})
    if data is not None:
        cfg = cfg.model_copy(update={"data_dir": data})
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        tasks: dict[str, TaskID] = {}

        def step(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = progress.add_task(name, total=total)
            progress.update(tasks[name], completed=done, total=total)

        try:
            manifest = run_build(cfg, out, progress.console.print, step)
        except ValueError as exc:  # the data: missing folders, a split too small
            fail(str(exc))
    summary = {
        v.name: {"test@1.0": v.accuracy_at(1.0), "shifted@1.0": v.accuracy_at(1.0, "shifted")}
        for v in manifest.variants
    }
    console.print_json(json.dumps(summary))
    console.print(f"built {len(manifest.variants)} variants into {out} in {time.monotonic() - started:.0f} s")


@app.command()
def run(
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, ...)")],
    zoo: ZooOpt = default_zoo_dir(),
    variant: Annotated[list[str] | None, typer.Option(help="Variant(s) to run (default: all)")] = None,
    budget: Annotated[float, typer.Option(min=0.01, max=1.0, help="Token budget")] = 1.0,
) -> None:
    """Classify images in process with each variant (no daemon, no torch needed)."""
    from PIL import Image

    from agent.zoo.preprocess import image_to_input
    from agent.zoo.sessions import SessionSettings, open_zoo

    try:
        loaded = open_zoo(zoo, SessionSettings(intra_threads=2), names=variant)
    except ZooError as exc:
        fail(exc.message)
    for name, reason in loaded.failures.items():
        console.print(f"[red]skipped {name}[/red]: {escape(reason)}")
    if not loaded.variants:
        fail("no variant could be loaded")
    table = Table()
    for col in ("image", "variant", "budget", "label", "score", "ms"):
        table.add_column(col)
    for path in images:
        try:
            with Image.open(path) as image:
                image.load()
        except OSError as exc:
            fail(f"{path}: cannot read image: {exc}")
        for name, v in loaded.variants.items():
            x = image_to_input(image, v.spec.resolution, v.spec.preprocess.resize)
            start = time.perf_counter()
            pred = v.run(x, budget)
            ms = (time.perf_counter() - start) * 1000
            top = int(pred.probs[0].argmax())
            table.add_row(
                path.name, name, f"{pred.budget:.2f}", loaded.classes[top], f"{pred.probs[0, top]:.3f}", f"{ms:.2f}"
            )
    console.print(table)
