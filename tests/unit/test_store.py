"""certman.postfix.install: install / rollback of the files Postfix reads (fake postconf)."""

from __future__ import annotations

import itertools
import json
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from certgen import certificate_config, make_pki
from fake_postconf import Crash, FakePostfix

from certman import fsutil
from certman.config.schema import CertificateConfig, Layout
from certman.errors import CertmanError, ConfigError
from certman.model import KeyType
from certman.postfix import install as store
from certman.postfix.commands import Postfix
from certman.postfix.install import (
    InstallRecord,
    KeyBundle,
    install,
    prepare,
    rollback,
)

EC = KeyType.ECDSA_P256
RSA = KeyType.RSA2048


class Env:
    """A fake Postfix instance, an install directory and a state directory under tmp_path."""

    def __init__(self, tmp_path: Path, main_cf: dict[str, str] | None = None) -> None:
        self.fake = FakePostfix(tmp_path / "etc-postfix", dict(main_cf or {}))
        self.postfix = Postfix(self.fake.config(), run=self.fake)
        self.directory = tmp_path / "certs"
        self.state = tmp_path / "state"
        self.pki = make_pki()
        times = itertools.count(1_750_000_000, 61)
        self.clock: Callable[[], float] = lambda: float(next(times))

    def cert(
        self, layout: Layout, *kinds: KeyType, set_parameters: bool = True
    ) -> CertificateConfig:
        return certificate_config(
            self.directory, layout=layout, key_types=kinds or (EC,), set_parameters=set_parameters
        )

    def bundle(self, kind: KeyType = EC) -> KeyBundle:
        leaf = self.pki.leaf("mx1.dane.test", kind)
        return KeyBundle(kind, leaf.key_pem, self.pki.fullchain_pem(leaf))

    def install(self, cert: CertificateConfig, *bundles: KeyBundle) -> InstallRecord:
        return install(cert, bundles, postfix=self.postfix, state_dir=self.state, clock=self.clock)


def mode(path: Path | str) -> int:
    return stat.S_IMODE(Path(path).stat().st_mode)


# --- chain-files ------------------------------------------------------------------------------


def test_chain_file_holds_key_leaf_chain_with_mode_0600(tmp_path: Path) -> None:
    env = Env(tmp_path)
    bundle = env.bundle()
    env.install(env.cert(Layout.CHAIN_FILES), bundle)
    path = env.directory / "mx-ecdsa-p256.pem"
    assert path.read_bytes() == bundle.key_pem + bundle.fullchain_pem
    assert mode(path) == 0o600
    assert [p.name for p in env.directory.iterdir()] == [path.name]  # no temp file left


def test_first_chain_files_install_points_main_cf_at_the_files_in_one_call(tmp_path: Path) -> None:
    env = Env(tmp_path)
    env.install(env.cert(Layout.CHAIN_FILES, RSA, EC), env.bundle(RSA), env.bundle(EC))
    [call] = env.fake.postconf_calls("-e")
    rsa, ec = env.directory / "mx-rsa2048.pem", env.directory / "mx-ecdsa-p256.pem"
    assert call[4:] == [f"smtpd_tls_chain_files={rsa}, {ec}"]
    assert env.fake.reloads == 0  # install never reloads


def test_reinstall_with_main_cf_already_right_does_not_touch_main_cf(tmp_path: Path) -> None:
    env = Env(tmp_path)
    cert = env.cert(Layout.CHAIN_FILES)
    env.install(cert, env.bundle())
    first = (env.directory / "mx-ecdsa-p256.pem").read_bytes()
    record = env.install(cert, env.bundle())
    assert len(env.fake.postconf_calls("-e")) == 1
    assert record.params_after == {}
    [old] = record.old_files
    assert old.overwritten and Path(old.archived or "").read_bytes() == first
    assert mode(old.archived or "") == 0o600


def test_the_swap_is_a_rename_so_readers_never_see_a_torn_file(tmp_path: Path) -> None:
    env = Env(tmp_path)
    cert = env.cert(Layout.CHAIN_FILES)
    env.install(cert, env.bundle())
    path = env.directory / "mx-ecdsa-p256.pem"
    with path.open("rb") as reader:  # an smtpd that opened the file before the swap
        before = reader.read()
        env.install(cert, env.bundle())
        reader.seek(0)
        assert reader.read() == before  # its open file is the old inode, whole
    assert path.read_bytes() != before


def test_switching_from_legacy_to_chain_files_empties_the_legacy_settings_in_the_same_call(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path, {"smtpd_tls_cert_file": "$config_directory/old.pem"})
    env.install(env.cert(Layout.CHAIN_FILES), env.bundle())
    [call] = env.fake.postconf_calls("-e")
    assert sorted(call[4:]) == [
        "smtpd_tls_cert_file=",
        f"smtpd_tls_chain_files={env.directory}/mx-ecdsa-p256.pem",
        "smtpd_tls_key_file=",
    ]


def test_rollback_after_switching_layouts_restores_main_cf_exactly(tmp_path: Path) -> None:
    before = {"smtpd_tls_cert_file": "$config_directory/old.pem", "myhostname": "mx1.dane.test"}
    env = Env(tmp_path, before)
    record = env.install(env.cert(Layout.CHAIN_FILES), env.bundle())
    rollback(record, postfix=env.postfix)
    assert env.fake.main_cf == before  # unexpanded, and no leftover explicit defaults
    assert not (env.directory / "mx-ecdsa-p256.pem").exists()  # it did not exist before


def test_rollback_puts_the_previous_chain_file_back(tmp_path: Path) -> None:
    env = Env(tmp_path)
    cert = env.cert(Layout.CHAIN_FILES, RSA, EC)
    env.install(cert, env.bundle(RSA), env.bundle(EC))
    paths = [env.directory / "mx-rsa2048.pem", env.directory / "mx-ecdsa-p256.pem"]
    served = [p.read_bytes() for p in paths]
    main_cf = dict(env.fake.main_cf)
    record = env.install(cert, env.bundle(RSA), env.bundle(EC))
    rollback(record, postfix=env.postfix)
    assert [p.read_bytes() for p in paths] == served
    assert [mode(p) for p in paths] == [0o600, 0o600]
    assert env.fake.main_cf == main_cf


def test_rollback_twice_is_harmless(tmp_path: Path) -> None:
    env = Env(tmp_path, {"smtpd_tls_cert_file": "/etc/ssl/old.pem"})
    record = env.install(env.cert(Layout.CHAIN_FILES), env.bundle())
    rollback(record, postfix=env.postfix)
    rollback(record, postfix=env.postfix)
    assert env.fake.main_cf == {"smtpd_tls_cert_file": "/etc/ssl/old.pem"}


def test_a_crash_between_the_two_chain_files_is_repaired_by_rollback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = Env(tmp_path)
    cert = env.cert(Layout.CHAIN_FILES, RSA, EC)
    env.install(cert, env.bundle(RSA), env.bundle(EC))
    paths = [env.directory / "mx-rsa2048.pem", env.directory / "mx-ecdsa-p256.pem"]
    served = [p.read_bytes() for p in paths]
    record = prepare(
        cert,
        [env.bundle(RSA), env.bundle(EC)],
        postfix=env.postfix,
        state_dir=env.state,
        clock=env.clock,
    )
    real_write = fsutil.atomic_write
    writes: list[Path] = []

    def dying_write(path: Path, data: bytes, mode: int = 0o644) -> None:
        if writes:
            raise Crash(str(path))
        writes.append(path)
        real_write(path, data, mode)

    monkeypatch.setattr(store, "atomic_write", dying_write)
    with pytest.raises(Crash):
        store.apply(record, postfix=env.postfix)
    monkeypatch.undo()
    assert paths[0].read_bytes() != served[0]  # each file is whole: the new RSA pair ...
    assert paths[1].read_bytes() == served[1]  # ... and the old ECDSA pair
    rollback(InstallRecord.from_json(record.to_json()), postfix=env.postfix)
    assert [p.read_bytes() for p in paths] == served


# --- key-cert ---------------------------------------------------------------------------------


def test_key_cert_writes_versioned_files_and_switches_both_parameters_in_one_call(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path)
    bundle = env.bundle()
    record = env.install(env.cert(Layout.KEY_CERT), bundle)
    key = env.directory / f"mx-ecdsa-p256-{record.version}.key"
    crt = env.directory / f"mx-ecdsa-p256-{record.version}.crt"
    assert (key.read_bytes(), mode(key)) == (bundle.key_pem, 0o600)
    assert (crt.read_bytes(), mode(crt)) == (bundle.fullchain_pem, 0o644)
    [call] = env.fake.postconf_calls("-e")
    assert sorted(call[4:]) == [f"smtpd_tls_cert_file={crt}", f"smtpd_tls_key_file={key}"]


def test_key_cert_dual_puts_the_ecdsa_pair_in_the_ec_parameters(tmp_path: Path) -> None:
    env = Env(tmp_path)
    record = env.install(env.cert(Layout.KEY_CERT, EC, RSA), env.bundle(EC), env.bundle(RSA))
    stem = f"{env.directory}/mx-%s-{record.version}"
    assert env.fake.main_cf == {
        "smtpd_tls_cert_file": stem % "rsa2048" + ".crt",
        "smtpd_tls_key_file": stem % "rsa2048" + ".key",
        "smtpd_tls_eccert_file": stem % "ecdsa-p256" + ".crt",
        "smtpd_tls_eckey_file": stem % "ecdsa-p256" + ".key",
    }


def test_key_cert_empties_chain_files_which_would_override_it(tmp_path: Path) -> None:
    env = Env(tmp_path, {"smtpd_tls_chain_files": "/etc/ssl/old.pem"})
    env.install(env.cert(Layout.KEY_CERT), env.bundle())
    assert env.fake.main_cf["smtpd_tls_chain_files"] == ""
    assert len(env.fake.postconf_calls("-e")) == 1


def test_key_cert_single_key_empties_a_stale_ecdsa_pair(tmp_path: Path) -> None:
    env = Env(tmp_path, {"smtpd_tls_eccert_file": "/etc/ssl/old-ec.pem"})
    env.install(env.cert(Layout.KEY_CERT, RSA), env.bundle(RSA))
    assert env.fake.main_cf["smtpd_tls_eccert_file"] == ""


def test_key_cert_keeps_the_previous_version_and_prunes_older_ones(tmp_path: Path) -> None:
    env = Env(tmp_path)
    cert = env.cert(Layout.KEY_CERT)
    first = env.install(cert, env.bundle())
    second = env.install(cert, env.bundle())
    third = env.install(cert, env.bundle())
    names = sorted(p.name for p in env.directory.iterdir())
    assert names == sorted(
        f"mx-ecdsa-p256-{r.version}.{ext}" for r in (second, third) for ext in ("key", "crt")
    )
    assert first.version not in "".join(names)


def test_key_cert_rollback_points_main_cf_back_at_the_previous_version(tmp_path: Path) -> None:
    env = Env(tmp_path)
    cert = env.cert(Layout.KEY_CERT)
    first = env.install(cert, env.bundle())
    main_cf = dict(env.fake.main_cf)
    second = env.install(cert, env.bundle())
    rollback(second, postfix=env.postfix)
    assert env.fake.main_cf == main_cf
    assert sorted(p.name for p in env.directory.iterdir()) == [
        f"mx-ecdsa-p256-{first.version}.crt",
        f"mx-ecdsa-p256-{first.version}.key",
    ]


def test_a_crash_before_the_postconf_call_leaves_the_old_pair_served(tmp_path: Path) -> None:
    env = Env(tmp_path)
    cert = env.cert(Layout.KEY_CERT)
    first = env.install(cert, env.bundle())
    main_cf = dict(env.fake.main_cf)
    env.fake.crash_on = "-e"
    with pytest.raises(Crash):
        env.install(cert, env.bundle())
    assert env.fake.main_cf == main_cf  # both parameters still name the first version
    for path in main_cf.values():
        assert first.version in path and Path(path).exists()


def test_a_refused_postconf_call_raises_and_changes_nothing(tmp_path: Path) -> None:
    env = Env(tmp_path, {"smtpd_tls_cert_file": "/etc/ssl/old.pem"})
    env.fake.fail_on = "-e"
    with pytest.raises(CertmanError, match=r"postconf .* failed"):
        env.install(env.cert(Layout.KEY_CERT), env.bundle())
    assert env.fake.main_cf == {"smtpd_tls_cert_file": "/etc/ssl/old.pem"}


def test_adopted_files_are_archived_and_restored_if_they_vanish(tmp_path: Path) -> None:
    adopted = tmp_path / "ssl" / "snakeoil.pem"
    adopted.parent.mkdir()
    leaf = make_pki().leaf("mx1.dane.test")
    adopted.write_bytes(leaf.key_pem + leaf.cert_pem)
    env = Env(tmp_path, {"smtpd_tls_cert_file": str(adopted)})
    record = env.install(env.cert(Layout.KEY_CERT), env.bundle())
    adopted.unlink()
    rollback(record, postfix=env.postfix)
    assert adopted.read_bytes() == leaf.key_pem + leaf.cert_pem
    assert env.fake.main_cf == {"smtpd_tls_cert_file": str(adopted)}


# --- planning, records, refusals --------------------------------------------------------------


def test_record_round_trips_through_json_and_holds_no_private_key(tmp_path: Path) -> None:
    env = Env(tmp_path)
    bundle = env.bundle()
    record = env.install(env.cert(Layout.KEY_CERT), bundle)
    text = record.to_json()
    assert InstallRecord.from_json(text) == record
    assert b"PRIVATE KEY" not in text.encode()
    assert json.loads(text)["layout"] == "key-cert"


def test_staged_and_archived_copies_are_private(tmp_path: Path) -> None:
    env = Env(tmp_path)
    record = env.install(env.cert(Layout.CHAIN_FILES), env.bundle())
    assert mode(record.archive_dir) == 0o700
    assert all(mode(f.staged) == 0o600 for f in record.new_files)


def test_a_bundle_whose_key_is_not_the_leafs_is_refused_before_anything_changes(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path)
    good, other = env.bundle(), env.bundle()
    wrong = KeyBundle(EC, other.key_pem, good.fullchain_pem)
    with pytest.raises(CertmanError, match=r"mx \(ecdsa-p256\): the private key does not match"):
        env.install(env.cert(Layout.CHAIN_FILES), wrong)
    assert not env.directory.exists() and env.fake.postconf_calls("-e") == []


def test_a_bundle_labelled_with_the_wrong_key_type_is_refused(tmp_path: Path) -> None:
    env = Env(tmp_path)
    bundle = env.bundle(EC)
    with pytest.raises(CertmanError, match="is ecdsa-p256"):
        env.install(
            env.cert(Layout.CHAIN_FILES, RSA), KeyBundle(RSA, bundle.key_pem, bundle.fullchain_pem)
        )


def test_chain_files_layout_is_refused_on_postfix_older_than_3_4(tmp_path: Path) -> None:
    env = Env(tmp_path, {"mail_version": "3.3.2"})
    with pytest.raises(ConfigError, match=r"certificates\.mx\.postfix\.layout: chain-files needs"):
        env.install(env.cert(Layout.CHAIN_FILES), env.bundle())


def test_without_set_parameters_main_cf_is_left_alone_and_a_note_says_so(tmp_path: Path) -> None:
    env = Env(tmp_path)
    record = env.install(env.cert(Layout.CHAIN_FILES, set_parameters=False), env.bundle())
    assert env.fake.postconf_calls("-e") == []
    assert "does not reference" in record.notes[0]


def test_only_the_newest_archives_are_kept(tmp_path: Path) -> None:
    env = Env(tmp_path)
    cert = env.cert(Layout.CHAIN_FILES)
    records = [env.install(cert, env.bundle()) for _ in range(store.KEEP_ARCHIVES + 2)]
    kept = sorted(p.name for p in (env.state / "archive" / "mx").iterdir())
    assert kept == [r.version for r in records[-store.KEEP_ARCHIVES :]]


def test_key_cert_without_set_parameters_writes_fixed_names_and_warns_of_the_race(
    tmp_path: Path,
) -> None:
    env = Env(tmp_path)
    record = env.install(env.cert(Layout.KEY_CERT, set_parameters=False), env.bundle())
    assert sorted(p.name for p in env.directory.iterdir()) == [
        "mx-ecdsa-p256.crt",
        "mx-ecdsa-p256.key",
    ]
    assert "two renames" in record.notes[0]
    assert env.fake.postconf_calls("-e") == []
