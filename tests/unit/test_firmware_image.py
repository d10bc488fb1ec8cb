"""MCUboot image checks against images and keys made by imgtool: what is refused, and why."""

from __future__ import annotations

from pathlib import Path

import pytest
from firmware_testing import SigningKey, make_key, sign_image
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ConfigError, ImageRejected
from firmware_bridge.image import inspect_image, load_trusted_keys, verify_image


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SigningKey]:
    directory = tmp_path_factory.mktemp("keys")
    return {
        "ed25519": make_key(directory, "ed", "ed25519"),
        "ecdsa-p256": make_key(directory, "ec", "ecdsa-p256"),
        "other": make_key(directory, "other", "ed25519"),
    }


@pytest.fixture(scope="module")
def images(
    tmp_path_factory: pytest.TempPathFactory, keys: dict[str, SigningKey]
) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("images")
    return {
        "ed25519": sign_image(directory, keys["ed25519"], "1.2.3+7"),
        "ecdsa-p256": sign_image(directory, keys["ecdsa-p256"], "2.0.1"),
        "unsigned": sign_image(directory, None, "1.2.3"),
    }


def refusal(path: Path, data: bytes, trusted: list[SigningKey]) -> str:
    with pytest.raises(ImageRejected) as caught:
        verify_image(path, data, load_trusted_keys(tuple(k.public for k in trusted)))
    return caught.value.reason


@pytest.mark.parametrize("kind", ["ed25519", "ecdsa-p256"])
def test_signed_images_verify_with_their_public_key(
    kind: str, keys: dict[str, SigningKey], images: dict[str, Path]
) -> None:
    path = images[kind]
    trusted = load_trusted_keys((keys["other"].public, keys[kind].public))
    info, key = verify_image(path, path.read_bytes(), trusted)
    assert key == keys[kind].public
    assert info.version == ("1.2.3+7" if kind == "ed25519" else "2.0.1")
    assert info.size == path.stat().st_size and len(info.image_hash) == 32
    assert info.signatures == (("ed25519",) if kind == "ed25519" else ("ecdsa",))


def test_unsigned_tampered_untrusted_truncated_are_refused(
    keys: dict[str, SigningKey], images: dict[str, Path], tmp_path: Path
) -> None:
    signed = images["ed25519"]
    data = signed.read_bytes()
    assert refusal(images["unsigned"], images["unsigned"].read_bytes(), [keys["ed25519"]]) == (
        "unsigned"
    )
    tampered = bytearray(data)
    tampered[0x300] ^= 0x40  # a payload byte
    (tmp_path / "t.bin").write_bytes(tampered)
    assert refusal(tmp_path / "t.bin", bytes(tampered), [keys["ed25519"]]) == "tampered"
    assert refusal(signed, data, [keys["other"], keys["ecdsa-p256"]]) == "untrusted"
    assert refusal(signed, data[: len(data) - 30], [keys["ed25519"]]) == "truncated"
    assert refusal(signed, data[:100], [keys["ed25519"]]) == "truncated"
    assert refusal(signed, b"\x7fELF" + data[4:], [keys["ed25519"]]) == "malformed"
    assert refusal(signed, data, []) == "no_trusted_keys"


def test_a_bad_key_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConfigError, match=r"firmware\.trusted_keys") as caught:
        load_trusted_keys((bad,))
    assert str(bad) in str(caught.value)
    with pytest.raises(ConfigError, match=r"missing\.pem"):
        load_trusted_keys((tmp_path / "missing.pem",))


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_mutated_images_are_refused_or_still_intact(
    images: dict[str, Path], data: st.DataObject
) -> None:
    original = images["ed25519"].read_bytes()
    spot = data.draw(st.integers(0, len(original) - 1))
    flip = data.draw(st.integers(1, 255))
    cut = data.draw(st.integers(0, len(original)))
    mutated = bytearray(original[:cut] if data.draw(st.booleans()) else original)
    if spot < len(mutated):
        mutated[spot] ^= flip
    try:
        info = inspect_image(bytes(mutated))
    except ImageRejected as exc:
        assert exc.reason in {"truncated", "malformed", "tampered"}
        return
    # Only a change past the hashed region (the signature TLV) keeps the layout and hash.
    assert len(mutated) == len(original) and spot >= len(original) - 100
    assert info.size == len(mutated)
