"""Identity: nkeys round trips, JWT sign/verify, .creds parse/write, file modes."""

from __future__ import annotations

import stat
from pathlib import Path

import nkeys
import pytest

from agent.errors import CredsError, IdentityError, JWTError, KeyFileError
from agent.identity import jwt
from agent.identity.host import ensure_host_keys, load_host_keys
from agent.identity.keys import (
    KeyKind,
    KeyPair,
    decode_public_key,
    generate,
    load_seed_file,
    verify_signature,
    write_seed_file,
)


@pytest.mark.parametrize("kind", list(KeyKind))
def test_keys_round_trip_through_their_seed(kind: KeyKind) -> None:
    key = generate(kind)
    assert key.public_key.startswith(kind.letter)
    assert len(key.public_key) == 56
    assert key.seed.startswith("S" + kind.letter)
    again = KeyPair.from_seed(key.seed)
    assert again.kind is kind
    assert again.public_key == key.public_key
    signature = key.sign(b"payload")
    assert verify_signature(key.public_key, b"payload", signature)
    assert not verify_signature(key.public_key, b"payloaD", signature)


def test_standard_kinds_agree_with_the_nkeys_library() -> None:
    key = generate(KeyKind.USER)
    reference = nkeys.from_seed(key.seed.encode())
    assert reference.public_key.decode() == key.public_key
    assert reference.sign(b"x") == key.sign(b"x")


def test_module_keys_use_prefix_12() -> None:
    key = generate(KeyKind.MODULE)
    kind, raw = decode_public_key(key.public_key)
    assert kind is KeyKind.MODULE and len(raw) == 32
    assert key.public_key[0] == "M" and key.seed[:2] == "SM"


def test_damaged_keys_are_rejected() -> None:
    key = generate(KeyKind.ACCOUNT).public_key
    damaged = key[:10] + ("A" if key[10] != "A" else "B") + key[11:]
    with pytest.raises(IdentityError, match="checksum"):
        decode_public_key(damaged)
    with pytest.raises(IdentityError, match="expected cluster"):
        decode_public_key(key, KeyKind.CLUSTER)
    with pytest.raises(IdentityError):
        KeyPair.from_seed(key)  # a public key is not a seed


def test_seed_files_are_0600_and_atomic(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "host.nk"
    key = generate(KeyKind.SERVER)
    write_seed_file(path, key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_seed_file(path, KeyKind.SERVER).public_key == key.public_key
    assert [p.name for p in path.parent.iterdir()] == ["host.nk"]  # no temp files left
    with pytest.raises(KeyFileError, match="expected cluster"):
        load_seed_file(path, KeyKind.CLUSTER)
    path.write_text("garbage")
    with pytest.raises(KeyFileError, match="valid nkey seed"):
        load_seed_file(path)
    with pytest.raises(KeyFileError, match="does not exist"):
        load_seed_file(tmp_path / "missing.nk")


def test_seeds_never_show_in_repr() -> None:
    key = generate(KeyKind.ACCOUNT)
    assert key.seed not in repr(key)


def test_host_keys_are_created_once(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="lattice-edge init"):
        load_host_keys(tmp_path)
    first, created = ensure_host_keys(tmp_path)
    again, created_again = ensure_host_keys(tmp_path)
    assert created and not created_again
    assert first.host_id == again.host_id
    assert first.host_id.startswith("N")
    assert first.cluster.public_key.startswith("C")


def test_jwt_sign_and_verify() -> None:
    operator = generate(KeyKind.OPERATOR)
    account = generate(KeyKind.ACCOUNT)
    token = jwt.encode(jwt.account_claims(account.public_key, "APP"), operator)
    decoded = jwt.verify(token, issuer_kind=KeyKind.OPERATOR)
    assert decoded.issuer == operator.public_key
    assert decoded.subject == account.public_key
    assert decoded.header == {"typ": "JWT", "alg": "ed25519-nkey"}
    limits = decoded.claims["nats"]["limits"]
    assert limits["mem_storage"] == -1 and "memory_storage" not in limits
    assert decoded.claims["jti"]


def test_jwt_rejections() -> None:
    operator = generate(KeyKind.OPERATOR)
    token = jwt.encode(jwt.operator_claims(operator, "OP"), operator)
    head, _, sig = token.split(".")
    other = jwt.encode(jwt.operator_claims(operator, "OTHER"), operator).split(".")[1]
    with pytest.raises(JWTError, match="signature"):
        jwt.verify(f"{head}.{other}.{sig}")
    with pytest.raises(JWTError, match="3 dot-separated"):
        jwt.verify("abc.def")
    with pytest.raises(JWTError, match="expected account"):
        jwt.verify(token, issuer_kind=KeyKind.ACCOUNT)
    expired = jwt.encode({**jwt.operator_claims(operator, "OP"), "exp": 1000}, operator)
    with pytest.raises(JWTError, match="expired"):
        jwt.verify(expired)
    future = jwt.encode({**jwt.operator_claims(operator, "OP"), "nbf": 2**40}, operator)
    with pytest.raises(JWTError, match="not valid yet"):
        jwt.verify(future)


def make_creds() -> jwt.Creds:
    account = generate(KeyKind.ACCOUNT)
    user = generate(KeyKind.USER)
    token = jwt.encode(jwt.user_claims(user.public_key, "device"), account)
    return jwt.Creds(jwt=token, seed=user.seed)


def test_creds_write_and_read(tmp_path: Path) -> None:
    creds = make_creds()
    path = tmp_path / "leaf.creds"
    jwt.write_creds(path, creds)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    back = jwt.read_creds(path)
    assert back == creds
    assert creds.seed not in repr(back)
    text = path.read_text()
    assert "-----BEGIN NATS USER JWT-----" in text and "------END USER NKEY SEED------" in text


@pytest.mark.parametrize(
    ("mangle", "fragment"),
    [
        (lambda t: t.replace("BEGIN NATS USER JWT", "BEGIN SOMETHING"), "no 'BEGIN NATS USER JWT'"),
        (lambda t: t.split("************************* IMPORTANT")[0], "no 'BEGIN USER NKEY SEED'"),
        (lambda t: t.replace("eyJ", "!!!", 1), "malformed"),
    ],
)
def test_corrupt_creds_are_named(tmp_path: Path, mangle: object, fragment: str) -> None:
    path = tmp_path / "bad.creds"
    path.write_text(mangle(jwt.format_creds(make_creds().jwt, make_creds().seed)))  # type: ignore[operator]
    with pytest.raises(CredsError, match=fragment) as caught:
        jwt.read_creds(path)
    assert str(path) in str(caught.value)


def test_creds_seed_must_match_the_jwt(tmp_path: Path) -> None:
    a, b = make_creds(), make_creds()
    with pytest.raises(CredsError, match="does not belong"):
        jwt.parse_creds(jwt.format_creds(a.jwt, b.seed))
    with pytest.raises(CredsError, match="does not exist"):
        jwt.read_creds(tmp_path / "none.creds")
