"""Signed model versions: the promotion gate signs what it promotes, model servers load only what verifies.

Registry write access must not be code execution in every model server: a pyfunc is cloudpickle
plus the model's own code, and servers load whatever `champion` points to. So at promotion the
gate computes a digest of the version's files and signs it, together with the model name, the
version and the gate's decision, with an Ed25519 private key the servers never hold; the digest
and the signature become tags of the version. A server downloads the files, recomputes the
digest, checks the tags and the signature with the public key, and only then loads those same
files. A tag edited by hand, a file swapped in the artifact store, a version the gate rejected or
never saw: each fails one of the checks.

Keys (PEM files):
SEQOPS_SIGNING_KEY  the private key; the pipeline (the Prefect worker) only
SEQOPS_VERIFY_KEY   the public key; the model servers
Neither set (the embedded defaults): a pair under <SEQOPS_HOME>/keys/, created on first signing,
so one machine needs no configuration. Neither file is ever created when its variable is set.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipelines.errors import SeqopsError
from pipelines.project import seqops_home

SIGNING_KEY_ENV, VERIFY_KEY_ENV = "SEQOPS_SIGNING_KEY", "SEQOPS_VERIFY_KEY"
KEYS_DIR, PRIVATE_FILE, PUBLIC_FILE = "keys", "model-signing.pem", "model-signing.pub.pem"
DECISION_TAG, PROMOTED = "promotion.decision", "promoted"
DIGEST_TAG, SIGNATURE_TAG, KEY_ID_TAG = "seqops.model_digest", "seqops.signature", "seqops.signing_key"
ADOPTED_TAG = "seqops.signed_on_word"
PAYLOAD_DOMAIN = "seqops-model-signature/v1"
CHAMPION = "champion"


class SigningError(SeqopsError):
    """A key is missing or unreadable; the message names the file and the variable to set."""


class UnverifiedModel(SeqopsError):
    """A model version failed verification; the message names the version and the failed check."""


def model_digest(directory: Path) -> str:
    """sha256 over every file under `directory`: relative path, size and content, in path order."""
    total = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        content = hashlib.sha256(path.read_bytes()).hexdigest()
        total.update(f"{path.relative_to(directory).as_posix()}\0{path.stat().st_size}\0{content}\n".encode())
    return f"sha256:{total.hexdigest()}"


def _payload(name: str, version: str, digest: str, decision: str) -> bytes:
    """What is signed: the files AND whose version they are AND that the gate promoted them."""
    return json.dumps({"domain": PAYLOAD_DOMAIN, "model": name, "version": str(version), "digest": digest,
                       "decision": decision}, sort_keys=True).encode()


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint, so a refusal can say which key signed and which key checked."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def default_key_paths(root: Path | None = None) -> tuple[Path, Path]:
    keys = seqops_home(root) / KEYS_DIR
    return keys / PRIVATE_FILE, keys / PUBLIC_FILE


def _read(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SigningError(f"cannot read the model signing key {path} ({e.strerror}): "
                           f"fix the file or {variable}") from None


def signing_key(root: Path | None = None) -> Ed25519PrivateKey:
    """The gate's private key: $SEQOPS_SIGNING_KEY, else the embedded pair (created on first use)."""
    configured = os.environ.get(SIGNING_KEY_ENV)
    private, public = (Path(configured), None) if configured else default_key_paths(root)
    if configured or private.is_file():
        key = serialization.load_pem_private_key(_read(private, SIGNING_KEY_ENV), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningError(f"{private} ({SIGNING_KEY_ENV}) is not an Ed25519 private key: "
                               "generate one with `openssl genpkey -algorithm ed25519`")
        return key
    key = Ed25519PrivateKey.generate()
    private.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never readable by others
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def verify_key(root: Path | None = None) -> Ed25519PublicKey:
    """The servers' public key: $SEQOPS_VERIFY_KEY, else the embedded pair's public half."""
    path = Path(os.environ[VERIFY_KEY_ENV]) if os.environ.get(VERIFY_KEY_ENV) else default_key_paths(root)[1]
    if not path.is_file():
        raise SigningError(f"no model verification key at {path}: set {VERIFY_KEY_ENV} to the gate's public key "
                           "(on one machine it is created by the first promotion, `seqops run`)")
    key = serialization.load_pem_public_key(_read(path, VERIFY_KEY_ENV))
    if not isinstance(key, Ed25519PublicKey):
        raise SigningError(f"{path} ({VERIFY_KEY_ENV}) is not an Ed25519 public key")
    return key


def download(name: str, version: str, destination: Path) -> Path:
    """The version's files, as the registry hands them to anyone who loads it."""
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}",
                                                    dst_path=str(destination)))


def signature_tags(name: str, version: str, root: Path | None = None) -> dict[str, str]:
    """The tags that mark `version` as promoted by the gate: decision, digest, signature, key id."""
    key = signing_key(root)
    with tempfile.TemporaryDirectory(prefix="seqops-sign-") as tmp:
        return sign(name, version, model_digest(download(name, version, Path(tmp))), key)


def sign(name: str, version: str, digest: str, key: Ed25519PrivateKey) -> dict[str, str]:
    signature = key.sign(_payload(name, version, digest, PROMOTED))
    return {DECISION_TAG: PROMOTED, DIGEST_TAG: digest, SIGNATURE_TAG: base64.b64encode(signature).decode(),
            KEY_ID_TAG: key_id(key.public_key())}


@dataclass(frozen=True)
class Signed:
    """What `seqops sign` did to one version: `signed` False when it already carried a valid signature."""

    version: str
    signed: bool
    adopted: bool  # signed on the operator's word (--champion), not on the gate's tags
    key_id: str


def sign_registered(client: MlflowClient, task: str, name: str, version: str | None, adopt_champion: bool = False,
                    root: Path | None = None) -> Signed:
    """Sign a version registered before model signing existed (the upgrade path; README: Upgrading).

    The rule, so signing never launders what the gate would have refused:
    - tags say the gate promoted it (`promotion.decision=promoted`, as every gate since the tags
      existed wrote): signed over its files as they are now;
    - no promotion tags at all: signed only when it is the current champion AND `adopt_champion`
      (`--champion`): the operator vouches for what is already being served, and a tag says so;
    - rejected by the gate, or a signature that no longer verifies (files or tags changed since, or
      another key): refused; such a version goes through `seqops run` again;
    - a valid signature already: nothing to do.
    """
    champion = _champion(client, name)
    version = str(version or champion or "")
    if not version:
        raise SigningError(f"{name} has no `{CHAMPION}` alias: name the version to sign, "
                           f"`seqops sign {task} --version V`")
    tags = client.get_model_version(name, version).tags
    what, key = f"{name} v{version}", signing_key(root)
    with tempfile.TemporaryDirectory(prefix="seqops-sign-") as tmp:
        files = download(name, version, Path(tmp))
        if tags.get(SIGNATURE_TAG):
            try:
                verify(name, version, tags, files, key.public_key(), task)
            except UnverifiedModel as e:
                raise SigningError(f"{e}; it will not be signed again: register and promote it with `seqops run`") \
                    from None
            return Signed(version, False, False, key_id(key.public_key()))
        decision = tags.get(DECISION_TAG)
        adopted = decision is None
        if adopted and not (adopt_champion and version == champion):
            where = "it is the champion" if version == champion else f"it is not the champion (v{champion})"
            raise SigningError(f"{what} carries no promotion tags, so no gate ever judged it, and {where}; "
                               f"only the current champion can be signed on your word: `seqops sign {task} --champion`")
        if decision is not None and decision != PROMOTED:
            raise SigningError(f"{what} was not promoted by the gate ({DECISION_TAG}={decision!r}): it will not be "
                               "signed; retrain and promote with `seqops run`")
        tags_to_set = sign(name, version, model_digest(files), key)
    if adopted:
        tags_to_set[ADOPTED_TAG] = "champion before model signing, signed with `seqops sign --champion`"
    for tag, value in tags_to_set.items():
        client.set_model_version_tag(name, version, tag, value)
    return Signed(version, True, adopted, tags_to_set[KEY_ID_TAG])


def _champion(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def check_promoted(name: str, version: str, tags: dict[str, str], task: str = "TASK") -> None:
    """Raise UnverifiedModel unless the tags claim a signed gate promotion; nothing is downloaded or keyed yet.

    `task` only completes the `seqops sign` command a refusal suggests for versions older than signing.
    """
    what, decision = f"{name} v{version}", tags.get(DECISION_TAG)
    signed = bool(tags.get(SIGNATURE_TAG) and tags.get(DIGEST_TAG))
    if decision is None and not signed:
        raise UnverifiedModel(f"refused {what}: it carries no promotion tags, so the gate never judged or signed it; "
                              f"if it is a champion from before model signing, sign it with `seqops sign {task} "
                              f"--version {version} --champion` (README: Upgrading), else promote with `seqops run`")
    if decision != PROMOTED:
        raise UnverifiedModel(f"refused {what}: tag {DECISION_TAG} is {decision!r}, not {PROMOTED!r}; "
                              "only versions the promotion gate promoted are served (`seqops run`)")
    if not signed:
        raise UnverifiedModel(f"refused {what}: the gate promoted it before model signing existed, so it carries no "
                              f"{SIGNATURE_TAG} tag; sign it with `seqops sign {task} --version {version}` "
                              "(README: Upgrading)")


def verify(name: str, version: str, tags: dict[str, str], files: Path, public_key: Ed25519PublicKey,
           task: str = "TASK") -> None:
    """Raise UnverifiedModel unless the gate promoted `version` and `files` are what it signed."""
    check_promoted(name, version, tags, task)
    what = f"{name} v{version}"
    digest = model_digest(files)
    if digest != tags[DIGEST_TAG]:
        raise UnverifiedModel(f"refused {what}: its files hash to {digest}, not the signed {tags[DIGEST_TAG]}; "
                              "the artifacts changed after promotion")
    try:
        public_key.verify(base64.b64decode(tags[SIGNATURE_TAG], validate=True),
                          _payload(name, version, digest, PROMOTED))
    except (InvalidSignature, ValueError):
        raise UnverifiedModel(f"refused {what}: its signature does not verify with key {key_id(public_key)} "
                              f"(signed by {tags.get(KEY_ID_TAG, 'unknown')}); check {VERIFY_KEY_ENV}") from None
