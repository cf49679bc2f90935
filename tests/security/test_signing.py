"""The signature scheme itself: what verifies, what does not, and where the embedded keys live."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pipelines.signing import (
    DECISION_TAG,
    SIGNING_KEY_ENV,
    VERIFY_KEY_ENV,
    SigningError,
    UnverifiedModel,
    default_key_paths,
    model_digest,
    sign,
    signing_key,
    verify,
    verify_key,
)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    files = tmp_path / "model"
    (files / "code").mkdir(parents=True)
    (files / "MLmodel").write_text("flavors: {}\n")
    (files / "code" / "module.py").write_text("x = 1\n")
    return files


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_signed_version_verifies(model: Path, key: Ed25519PrivateKey) -> None:
    verify("seqops-forecast", "3", sign("seqops-forecast", "3", model_digest(model), key), model, key.public_key())


@pytest.mark.parametrize("change", ["edit", "add", "rename"])
def test_any_change_to_the_files_is_refused(model: Path, key: Ed25519PrivateKey, change: str) -> None:
    tags = sign("seqops-forecast", "3", model_digest(model), key)
    if change == "edit":
        (model / "code" / "module.py").write_text("x = 2\n")
    elif change == "add":
        (model / "code" / "extra.py").write_text("")
    else:
        (model / "code" / "module.py").rename(model / "code" / "other.py")
    with pytest.raises(UnverifiedModel, match="refused seqops-forecast v3: its files hash to"):
        verify("seqops-forecast", "3", tags, model, key.public_key())


def test_tags_copied_to_another_version_or_model_do_not_verify(model: Path, key: Ed25519PrivateKey) -> None:
    tags = sign("seqops-forecast", "3", model_digest(model), key)
    for name, version in (("seqops-forecast", "4"), ("seqops-other", "3")):
        with pytest.raises(UnverifiedModel, match="signature does not verify"):
            verify(name, version, tags, model, key.public_key())


def test_a_rejected_or_unsigned_version_is_refused(model: Path, key: Ed25519PrivateKey) -> None:
    tags = sign("seqops-forecast", "3", model_digest(model), key)
    with pytest.raises(UnverifiedModel, match="tag promotion.decision is 'rejected'"):
        verify("seqops-forecast", "3", {**tags, DECISION_TAG: "rejected"}, model, key.public_key())
    with pytest.raises(UnverifiedModel, match="before model signing existed.*`seqops sign forecast --version 3`"):
        verify("seqops-forecast", "3", {DECISION_TAG: "promoted"}, model, key.public_key(), "forecast")
    with pytest.raises(UnverifiedModel, match="no promotion tags.*`seqops sign forecast --version 3 --champion`"):
        verify("seqops-forecast", "3", {}, model, key.public_key(), "forecast")


def test_a_signature_by_another_key_is_refused(model: Path, key: Ed25519PrivateKey) -> None:
    tags = sign("seqops-forecast", "3", model_digest(model), Ed25519PrivateKey.generate())
    with pytest.raises(UnverifiedModel, match="signature does not verify"):
        verify("seqops-forecast", "3", tags, model, key.public_key())


def test_embedded_defaults_create_one_private_key_readable_by_the_owner_only(tmp_path: Path, monkeypatch) -> None:
    for variable in (SIGNING_KEY_ENV, VERIFY_KEY_ENV, "SEQOPS_HOME"):
        monkeypatch.delenv(variable, raising=False)
    first, again = signing_key(tmp_path), signing_key(tmp_path)
    private, public = default_key_paths(tmp_path)
    assert private.parent == tmp_path / ".seqops" / "keys"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert first.private_bytes_raw() == again.private_bytes_raw()
    assert verify_key(tmp_path).public_bytes_raw() == first.public_key().public_bytes_raw()


def test_configured_keys_are_used_and_never_created(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(SIGNING_KEY_ENV, str(tmp_path / "absent.pem"))
    monkeypatch.setenv(VERIFY_KEY_ENV, str(tmp_path / "absent.pub.pem"))
    with pytest.raises(SigningError, match=f"absent.pem .*{SIGNING_KEY_ENV}"):
        signing_key(tmp_path)
    with pytest.raises(SigningError, match=f"no model verification key at .*absent.pub.pem: set {VERIFY_KEY_ENV}"):
        verify_key(tmp_path)
    assert not default_key_paths(tmp_path)[0].exists()
