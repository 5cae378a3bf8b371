"""`edge-agent zoo sign` and `edge-agent policy sign`: minisign signatures the daemon checks
when `trusted_keys` is set (`agent.trust`). The plain `minisign -Sm FILE` makes the same files;
these commands add a check that what is signed is worth signing (the zoo's files match its
manifest, the policy is valid), so a broken bundle is not shipped with a good signature."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from agent.errors import AgentError
from agent.paths import default_zoo_dir

#: minisign's own default secret key.
DEFAULT_SECRET_KEY = Path("~/.minisign/minisign.key")

SecretKeyOpt = Annotated[
    Path,
    typer.Option(
        "--secret-key",
        "-s",
        help="minisign secret key file (`minisign -G` writes one; default: minisign's ~/.minisign/minisign.key)",
    ),
]
PasswordFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--password-file",
        help="Read the secret key's password from this file (first line) instead of asking; "
        "not needed for a key made with `minisign -G -W`",
    ),
]


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _password(key: Path, password_file: Path | None) -> str:
    if password_file is not None:
        try:
            lines = password_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise AgentError(f"cannot read password file {password_file} ({exc.strerror or exc})") from None
        return lines[0] if lines else ""
    return str(typer.prompt(f"Password for {key}", hide_input=True))


def _sign(files: list[Path], secret_key: Path, password_file: Path | None) -> None:
    """Sign each file with the key (asking for its password once, when it has one)."""
    from agent.trust import load_secret_key, sign_file, unlock

    key_path = secret_key.expanduser()
    secret = load_secret_key(key_path)
    if secret.is_encrypted():
        unlock(secret, key_path, _password(key_path, password_file))
    for path in files:
        try:
            out = sign_file(path, secret)
        except OSError as exc:
            raise AgentError(f"cannot sign {path} ({exc.strerror or exc})") from None
        typer.echo(f"signed {path} -> {out}")


def sign_zoo(
    zoo: Annotated[Path, typer.Option("--zoo", help="Zoo folder (with manifest.json).")] = default_zoo_dir(),
    secret_key: SecretKeyOpt = DEFAULT_SECRET_KEY,
    password_file: PasswordFileOpt = None,
) -> None:
    """Sign the zoo's manifest.json (it holds every model file's SHA-256, so it covers the zoo):
    writes manifest.json.minisig. Refused if a model file does not match the manifest."""
    from agent.zoo.manifest import MANIFEST_NAME, load_manifest
    from agent.zoo.sessions import check_file

    try:
        manifest = load_manifest(zoo / MANIFEST_NAME)
        for spec in manifest.variants:
            check_file(zoo, spec)
        _sign([zoo / MANIFEST_NAME], secret_key, password_file)
    except AgentError as exc:
        _fail(exc.message)


def sign_policy(
    files: Annotated[list[Path], typer.Argument(help="Policy files (YAML)")],
    secret_key: SecretKeyOpt = DEFAULT_SECRET_KEY,
    password_file: PasswordFileOpt = None,
) -> None:
    """Sign policy files: writes FILE.minisig beside each. Refused if a file is not a valid policy."""
    from agent.policy.loader import load_policy

    try:
        for path in files:
            load_policy(path)
        _sign(files, secret_key, password_file)
    except AgentError as exc:
        _fail(exc.message)


def register(zoo_app: typer.Typer, policy_app: typer.Typer) -> None:
    zoo_app.command("sign")(sign_zoo)
    policy_app.command("sign")(sign_policy)
