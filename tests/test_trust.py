"""The signature check (`agent.trust`) in process: signatures made by py-minisign (prehashed and
legacy) and by the real `minisign` CLI, refusals worded in one line, and the `zoo sign` /
`policy sign` commands, whose signatures the real `minisign -V` must accept."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import minisign
import pytest
from typer.testing import CliRunner

from agent.cli.main import app
from agent.errors import AgentError
from agent.policy.store import PolicyStore
from agent.trust import SignatureError, key_id, load_trusted_keys, signature_path
from tests.daemon import REPO

MINISIGN = shutil.which("minisign")
NO_MINISIGN = "Debian's minisign is needed: the tests drive the tool operators use (.ci/run installs it)"
DATA = b"version: 1\nslo: {percentile: 95, latency_ms: 40}\n"
POLICY = REPO / "policies" / "default.yaml"


def keypair(folder: Path, name: str) -> tuple[Path, Path, minisign.KeyPair]:
    """A py-minisign key pair written as `minisign -G -W` writes one: NAME.pub, NAME.key."""
    pair = minisign.KeyPair.generate()
    folder.mkdir(parents=True, exist_ok=True)
    pub, key = folder / f"{name}.pub", folder / f"{name}.key"
    pub.write_bytes(bytes(pair.public_key) + b"\n")
    key.write_bytes(bytes(pair.secret_key) + b"\n")
    return pub, key, pair


def minisign_keypair(folder: Path, name: str) -> tuple[Path, Path]:
    """A key pair made by the real minisign, unencrypted (-W)."""
    assert MINISIGN is not None, NO_MINISIGN
    pub, key = folder / f"{name}.pub", folder / f"{name}.key"
    subprocess.run([MINISIGN, "-G", "-W", "-p", str(pub), "-s", str(key)], check=True, capture_output=True, timeout=60)
    return pub, key


def minisign_verifies(path: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    assert MINISIGN is not None, NO_MINISIGN
    return subprocess.run([MINISIGN, "-V", "-m", str(path), "-p", str(pub)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("prehash", [True, False], ids=["prehashed", "legacy"])
def test_a_signature_by_a_trusted_key_passes(tmp_path: Path, prehash: bool) -> None:
    pub, _, pair = keypair(tmp_path, "k")
    trust = load_trusted_keys([pub])
    signature = bytes(pair.secret_key.sign(DATA, prehash=prehash))
    trust.verify("policy.yaml", DATA, signature, "policy.yaml.minisig")  # no exception


@pytest.mark.parametrize("prehash", [True, False], ids=["prehashed", "legacy"])
def test_one_changed_byte_does_not_match(tmp_path: Path, prehash: bool) -> None:
    pub, _, pair = keypair(tmp_path, "k")
    signature = bytes(pair.secret_key.sign(DATA, prehash=prehash))
    with pytest.raises(SignatureError) as caught:
        load_trusted_keys([pub]).verify("policy.yaml", DATA.replace(b"40", b"41"), signature, "policy.yaml.minisig")
    assert caught.value.message == "policy.yaml: signature does not match (edited after signing?)"


def test_a_forged_trusted_comment_does_not_match(tmp_path: Path) -> None:
    pub, _, pair = keypair(tmp_path, "k")
    lines = bytes(pair.secret_key.sign(DATA, trusted_comment="file:policy.yaml")).split(b"\n")
    lines[2] = b"trusted comment: file:other.yaml"
    with pytest.raises(SignatureError, match="signature does not match"):
        load_trusted_keys([pub]).verify("policy.yaml", DATA, b"\n".join(lines), "policy.yaml.minisig")


def test_a_signature_by_another_key_names_that_key_and_the_trusted_ones(tmp_path: Path) -> None:
    pub, _, _ = keypair(tmp_path, "trusted")
    _, _, other = keypair(tmp_path, "other")
    trust = load_trusted_keys([pub])
    with pytest.raises(SignatureError) as caught:
        trust.verify("manifest.json", DATA, bytes(other.secret_key.sign(DATA)), "manifest.json.minisig")
    other_id = key_id(other.public_key._keynum_pk.key_id)
    assert caught.value.message == f"manifest.json: signature by untrusted key {other_id} (trusted: {trust.ids[0]})"
    assert "\n" not in caught.value.message


def test_same_key_id_with_another_key_does_not_match(tmp_path: Path) -> None:
    """A signer that copies a trusted key's id into its own signature gains nothing: the id only
    picks the key, the Ed25519 check decides."""
    pub, _, pair = keypair(tmp_path, "trusted")
    _, _, forger = keypair(tmp_path, "forger")
    forged = forger.secret_key.sign(DATA)
    forged._key_id = pair.public_key._keynum_pk.key_id
    with pytest.raises(SignatureError, match="signature does not match"):
        load_trusted_keys([pub]).verify("policy.yaml", DATA, bytes(forged), "policy.yaml.minisig")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "invalid number of lines"),
        (b"untrusted comment: x\nnot base64!\ntrusted comment: y\nAAAA\n", "invalid"),
        (b"\x00\xff" * 40, "invalid"),
        (b"untrusted comment: x\nRWQ=\ntrusted comment: y\n" + b"A" * 88 + b"\n", "invalid"),
    ],
    ids=["empty", "bad-base64", "binary", "short"],
)
def test_a_malformed_signature_file_is_a_clear_one_line_refusal(tmp_path: Path, content: bytes, why: str) -> None:
    pub, _, _ = keypair(tmp_path, "k")
    with pytest.raises(SignatureError) as caught:
        load_trusted_keys([pub]).verify("policy.yaml", DATA, content, "policy.yaml.minisig")
    message = caught.value.message
    assert message.startswith("policy.yaml: policy.yaml.minisig is not a minisign signature (") and why in message
    assert "\n" not in message and "Traceback" not in message


def test_check_reads_the_signature_beside_the_file(tmp_path: Path) -> None:
    pub, _, pair = keypair(tmp_path / "keys", "k")
    trust = load_trusted_keys([pub])
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(DATA)
    with pytest.raises(SignatureError) as caught:
        trust.check(policy, DATA)
    assert caught.value.message == f"{policy}: no signature (policy.yaml.minisig missing)"
    signature_path(policy).write_bytes(bytes(pair.secret_key.sign(DATA)) + b"\n")
    trust.check(policy, DATA)
    signature_path(policy).unlink()
    signature_path(policy).mkdir()  # not a file: refused with a reason, no traceback
    with pytest.raises(SignatureError, match=r"cannot read policy\.yaml\.minisig \(not a regular file\)"):
        trust.check(policy, DATA)


@pytest.mark.parametrize(
    ("content", "why"),
    [(None, "cannot read public key"), (b"hello\n", "is not a minisign public key"), (b"a\nb\nc\n", "not a minisign")],
    ids=["missing", "one-line", "three-lines"],
)
def test_an_unusable_trusted_key_file_is_refused_by_name(tmp_path: Path, content: bytes | None, why: str) -> None:
    path = tmp_path / "key.pub"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AgentError) as caught:
        load_trusted_keys([path])
    assert why in caught.value.message and str(path) in caught.value.message


def test_keys_and_signatures_of_the_real_minisign_are_read_and_ids_printed_as_it_prints_them(tmp_path: Path) -> None:
    assert MINISIGN is not None, NO_MINISIGN
    pub, key = minisign_keypair(tmp_path, "real")
    trust = load_trusted_keys([pub])
    printed = pub.read_text().splitlines()[0].rsplit(" ", 1)[1]  # "untrusted comment: minisign public key ID"
    assert trust.ids == [printed]
    for legacy in (False, True):
        target = tmp_path / f"manifest-{legacy}.json"
        target.write_bytes(DATA)
        subprocess.run(
            [MINISIGN, "-S", *(["-l"] if legacy else []), "-s", str(key), "-m", str(target)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        trust.check(target, DATA)
        with pytest.raises(SignatureError, match="does not match"):
            trust.check(target, DATA + b" ")


def test_a_policy_store_refuses_an_unsigned_edit_and_notices_a_new_signature(tmp_path: Path) -> None:
    """The file watcher's view: a signature written after the policy is a change, so the signed
    edit is taken without a manual reload; until then the last good policy stays."""
    pub, _, pair = keypair(tmp_path / "keys", "k")
    trust = load_trusted_keys([pub])
    policy = tmp_path / "policy.yaml"
    policy.write_bytes(DATA)
    signature_path(policy).write_bytes(bytes(pair.secret_key.sign(DATA)))
    store = PolicyStore(policy, clock=time.time, check=trust.check, watch_also=[signature_path(policy)])
    assert store.last_error is None and store.policy.slo.latency_ms == 40
    edited = DATA.replace(b"40", b"30")
    policy.write_bytes(edited)
    assert store.changed_on_disk()
    result = store.reload()
    assert not result.ok and result.code == "bad_signature" and "edited after signing" in (result.error or "")
    assert store.policy.slo.latency_ms == 40 and store.last_error_code == "bad_signature"
    assert not store.changed_on_disk()
    signature_path(policy).write_bytes(bytes(pair.secret_key.sign(edited)) + b"\n")
    assert store.changed_on_disk()
    assert store.reload().ok and store.policy.slo.latency_ms == 30 and store.last_error is None


# -- edge-agent zoo sign / policy sign ---------------------------------------------------------


def test_policy_sign_with_a_minisign_key_is_accepted_by_minisign(tmp_path: Path) -> None:
    pub, key = minisign_keypair(tmp_path, "ops")
    policy = tmp_path / "policy.yaml"
    shutil.copy(POLICY, policy)
    result = CliRunner().invoke(app, ["policy", "sign", str(policy), "-s", str(key)])
    assert result.exit_code == 0, result.output
    verified = minisign_verifies(policy, pub)
    assert verified.returncode == 0 and "Signature and comment signature verified" in verified.stdout
    assert "file:policy.yaml" in verified.stdout
    assert signature_path(policy).stat().st_mode & 0o777 == 0o644
    load_trusted_keys([pub]).check(policy, policy.read_bytes())
    policy.write_text(policy.read_text() + "\n# edited\n")
    assert minisign_verifies(policy, pub).returncode != 0


def test_zoo_sign_with_an_encrypted_key_and_password_file_is_accepted_by_minisign(
    tmp_path: Path, zoo_copy: Path
) -> None:
    pub, key, pair = keypair(tmp_path / "keys", "ops")
    pair.secret_key.encrypt("correct horse", opslimit=1 << 14, memlimit=1 << 20)  # cheap scrypt for a test
    key.write_bytes(bytes(pair.secret_key) + b"\n")
    password = tmp_path / "password"
    password.write_text("wrong\n")
    wrong = CliRunner().invoke(
        app, ["zoo", "sign", "--zoo", str(zoo_copy), "-s", str(key), "--password-file", str(password)]
    )
    assert wrong.exit_code == 1 and "wrong password" in wrong.output and "Traceback" not in wrong.output
    assert not signature_path(zoo_copy / "manifest.json").exists()
    password.write_text("correct horse\n")
    result = CliRunner().invoke(
        app, ["zoo", "sign", "--zoo", str(zoo_copy), "-s", str(key), "--password-file", str(password)]
    )
    assert result.exit_code == 0, result.output
    assert minisign_verifies(zoo_copy / "manifest.json", pub).returncode == 0


def test_zoo_sign_refuses_a_zoo_whose_files_do_not_match(tmp_path: Path, zoo_copy: Path) -> None:
    _, key, _ = keypair(tmp_path / "keys", "ops")
    with (zoo_copy / "int8.onnx").open("ab") as f:
        f.write(b"\0")
    result = CliRunner().invoke(app, ["zoo", "sign", "--zoo", str(zoo_copy), "-s", str(key)])
    assert result.exit_code == 1 and "int8" in result.output
    assert not signature_path(zoo_copy / "manifest.json").exists()


def test_policy_sign_refuses_an_invalid_policy(tmp_path: Path) -> None:
    _, key, _ = keypair(tmp_path / "keys", "ops")
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nslo: {latency_ms: -5}\n")
    result = CliRunner().invoke(app, ["policy", "sign", str(policy), "-s", str(key)])
    assert result.exit_code == 1 and "latency_ms" in result.output
    assert not signature_path(policy).exists()


def test_key_ids_are_printed_as_minisign_prints_them_leading_zeros_dropped() -> None:
    assert key_id(bytes.fromhex("ED6D7C18BBEC9D9D")) == "9D9DECBB187C6DED"  # from a `minisign -G` public key
    assert key_id(bytes.fromhex("F6153423B57EFC0A")) == "AFC7EB5233415F6"  # its printf("%" PRIX64) drops the 0
