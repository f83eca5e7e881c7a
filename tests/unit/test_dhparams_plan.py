"""The pure plan: what is due by a fake clock, one generation at a time, when main.cf is set."""

from __future__ import annotations

from pathlib import Path

from test_dhparams_support import DAY, dh_config

from certman.config.schema import DhMode
from certman.dh.plan import (
    GENERATED,
    ActionKind,
    DhState,
    FileCondition,
    FileObservation,
    FileRecord,
    Job,
    JobCondition,
    Observed,
    plan,
)

NOW = 1_750_000_000.0
DH2048 = Path("/etc/postfix/dh2048.pem")
DH4096 = Path("/etc/postfix/dh4096.pem")
PARAM = "smtpd_tls_dh1024_param_file"


def ok(
    sha: str = "aa", contents: str = GENERATED, bits: int = 2048, mtime: float = NOW
) -> FileObservation:
    return FileObservation(FileCondition.OK, "", sha, contents, bits, mtime)


MISSING = FileObservation(FileCondition.MISSING, f"{DH2048}: missing")


def record(generated_at: float, sha: str = "aa", contents: str = GENERATED) -> FileRecord:
    return FileRecord(str(DH2048), 2048, "generate", generated_at, sha, contents)


def job(path: Path = DH2048, bits: int = 2048) -> Job:
    return Job(str(path), bits, 4242, NOW - 600, f"{path.parent}/.{path.name}.certman-dhgen-0")


def kinds(actions: list) -> list[tuple[ActionKind, str]]:  # type: ignore[type-arg]
    return [(a.kind, Path(a.path).name) for a in actions]


GEN = dh_config(DhMode.GENERATE, (DH2048, 2048), interval=30)


def test_fresh_file_is_not_due() -> None:
    state = DhState({str(DH2048): record(NOW - 10 * DAY)})
    assert plan(GEN, state, Observed({str(DH2048): ok()}, {}), NOW) == []


def test_due_exactly_when_the_interval_has_passed_by_the_clock() -> None:
    state = DhState({str(DH2048): record(NOW - 30 * DAY)})
    observed = Observed({str(DH2048): ok()}, {})
    assert plan(GEN, state, observed, NOW - 1) == []
    actions = plan(GEN, state, observed, NOW)
    assert kinds(actions) == [(ActionKind.START, "dh2048.pem")]
    assert "generated 30 days ago (interval 30 days)" in actions[0].reason


def test_missing_file_is_due_at_once_and_says_so() -> None:
    actions = plan(GEN, DhState(), Observed({str(DH2048): MISSING}, {}), NOW)
    assert kinds(actions) == [(ActionKind.START, "dh2048.pem")]
    assert actions[0].reason == f"{DH2048}: missing"


def test_wrong_size_and_invalid_files_are_due() -> None:
    for condition in (FileCondition.WRONG_SIZE, FileCondition.INVALID, FileCondition.UNREADABLE):
        seen = FileObservation(condition, f"{DH2048}: {condition.value}", "bb")
        state = DhState({str(DH2048): record(NOW - DAY)})
        assert kinds(plan(GEN, state, Observed({str(DH2048): seen}, {}), NOW)) == [
            (ActionKind.START, "dh2048.pem")
        ]


def test_valid_file_found_in_place_is_adopted_with_its_mtime_as_age() -> None:
    young = Observed({str(DH2048): ok(sha="cc", mtime=NOW - 5 * DAY)}, {})
    assert kinds(plan(GEN, DhState(), young, NOW)) == [(ActionKind.ADOPT, "dh2048.pem")]
    old = Observed({str(DH2048): ok(sha="cc", mtime=NOW - 45 * DAY)}, {})
    assert kinds(plan(GEN, DhState(), old, NOW)) == [
        (ActionKind.ADOPT, "dh2048.pem"),
        (ActionKind.START, "dh2048.pem"),
    ]


def test_file_replaced_behind_certmans_back_is_judged_by_its_own_mtime() -> None:
    state = DhState({str(DH2048): record(NOW - 40 * DAY, sha="old")})
    observed = Observed({str(DH2048): ok(sha="new", mtime=NOW - DAY)}, {})
    assert kinds(plan(GEN, state, observed, NOW)) == [(ActionKind.ADOPT, "dh2048.pem")]


def test_published_group_in_generate_mode_is_replaced_by_fresh_parameters() -> None:
    state = DhState({str(DH2048): record(NOW - DAY, contents="ffdhe2048")})
    observed = Observed({str(DH2048): ok(contents="ffdhe2048")}, {})
    actions = plan(GEN, state, observed, NOW)
    assert kinds(actions) == [(ActionKind.START, "dh2048.pem")]
    assert "ffdhe2048" in actions[0].reason


def test_running_finished_and_dead_generations() -> None:
    state = DhState({}, {str(DH2048): job()})
    files = {str(DH2048): MISSING}
    expected = {
        JobCondition.RUNNING: ActionKind.WAIT,
        JobCondition.FINISHED: ActionKind.INSTALL,
        JobCondition.DEAD: ActionKind.RESTART,
    }
    for condition, kind in expected.items():
        actions = plan(GEN, state, Observed(files, {str(DH2048): condition}), NOW)
        assert kinds(actions) == [(kind, "dh2048.pem")]


def test_only_one_generation_at_a_time_the_rest_queue() -> None:
    config = dh_config(DhMode.GENERATE, (DH2048, 2048), (DH4096, 4096))
    files = {str(DH2048): MISSING, str(DH4096): MISSING}
    assert kinds(plan(config, DhState(), Observed(files, {}), NOW)) == [
        (ActionKind.START, "dh2048.pem"),
        (ActionKind.QUEUED, "dh4096.pem"),
    ]
    running = DhState({}, {str(DH2048): job()})
    observed = Observed(files, {str(DH2048): JobCondition.RUNNING})
    assert kinds(plan(config, running, observed, NOW)) == [
        (ActionKind.WAIT, "dh2048.pem"),
        (ActionKind.QUEUED, "dh4096.pem"),
    ]


def test_installing_one_result_lets_the_next_file_start_in_the_same_run() -> None:
    config = dh_config(DhMode.GENERATE, (DH2048, 2048), (DH4096, 4096))
    files = {str(DH2048): MISSING, str(DH4096): MISSING}
    finished = Observed(files, {str(DH2048): JobCondition.FINISHED})
    assert kinds(plan(config, DhState({}, {str(DH2048): job()}), finished, NOW)) == [
        (ActionKind.INSTALL, "dh2048.pem"),
        (ActionKind.START, "dh4096.pem"),
    ]


def test_generation_of_a_size_no_longer_configured_is_cancelled_and_restarted() -> None:
    state = DhState({}, {str(DH2048): job(bits=3072)})
    observed = Observed({str(DH2048): MISSING}, {str(DH2048): JobCondition.RUNNING})
    assert kinds(plan(GEN, state, observed, NOW)) == [
        (ActionKind.CANCEL, "dh2048.pem"),
        (ActionKind.START, "dh2048.pem"),
    ]


def test_switching_to_rfc7919_cancels_generation_and_writes_the_group() -> None:
    config = dh_config(DhMode.RFC7919, (DH2048, 2048))
    state = DhState({}, {str(DH2048): job()})
    observed = Observed({str(DH2048): ok()}, {str(DH2048): JobCondition.RUNNING})
    actions = plan(config, state, observed, NOW)
    assert kinds(actions) == [
        (ActionKind.CANCEL, "dh2048.pem"),
        (ActionKind.WRITE_GROUP, "dh2048.pem"),
    ]
    assert actions[1].group == "ffdhe2048"


def test_mode_off_only_cancels_a_leftover_generation() -> None:
    config = dh_config(DhMode.OFF, (DH2048, 2048))
    state = DhState({}, {str(DH2048): job()})
    observed = Observed({str(DH2048): MISSING}, {str(DH2048): JobCondition.RUNNING})
    assert kinds(plan(config, state, observed, NOW)) == [(ActionKind.CANCEL, "dh2048.pem")]
    assert plan(config, DhState(), Observed({str(DH2048): MISSING}, {}), NOW) == []


def test_published_modes_write_once_and_never_expire() -> None:
    for mode, name in ((DhMode.RFC7919, "ffdhe2048"), (DhMode.RFC3526, "modp2048")):
        config = dh_config(mode, (DH2048, 2048), interval=1)
        actions = plan(config, DhState(), Observed({str(DH2048): MISSING}, {}), NOW)
        assert [(a.kind, a.group) for a in actions] == [(ActionKind.WRITE_GROUP, name)]
        state = DhState({str(DH2048): record(NOW - 400 * DAY, contents=name)})
        assert plan(config, state, Observed({str(DH2048): ok(contents=name)}, {}), NOW) == []


def test_main_cf_is_pointed_at_the_first_file_only_once_it_is_valid() -> None:
    config = dh_config(DhMode.GENERATE, (DH2048, 2048), (DH4096, 4096), parameter=PARAM)
    fresh = DhState({str(DH2048): record(NOW - DAY)})
    files = {str(DH2048): ok(), str(DH4096): MISSING}
    actions = plan(config, fresh, Observed(files, {}, postfix_value=""), NOW)
    assert kinds(actions) == [
        (ActionKind.START, "dh4096.pem"),
        (ActionKind.SET_PARAMETER, "dh2048.pem"),
    ]
    assert ActionKind.SET_PARAMETER not in [
        a.kind for a in plan(config, fresh, Observed(files, {}, postfix_value=str(DH2048)), NOW)
    ]
    pending = Observed({str(DH2048): MISSING, str(DH4096): MISSING}, {}, postfix_value="")
    assert ActionKind.SET_PARAMETER not in [a.kind for a in plan(config, DhState(), pending, NOW)]


def test_main_cf_is_set_in_the_run_that_writes_or_installs_the_first_file() -> None:
    config = dh_config(DhMode.RFC7919, (DH2048, 2048), parameter=PARAM)
    observed = Observed({str(DH2048): MISSING}, {}, postfix_value="/etc/postfix/old.pem")
    assert kinds(plan(config, DhState(), observed, NOW)) == [
        (ActionKind.WRITE_GROUP, "dh2048.pem"),
        (ActionKind.SET_PARAMETER, "dh2048.pem"),
    ]
    finished = Observed({str(DH2048): MISSING}, {str(DH2048): JobCondition.FINISHED}, "")
    gen = dh_config(DhMode.GENERATE, (DH2048, 2048), parameter=PARAM)
    assert kinds(plan(gen, DhState({}, {str(DH2048): job()}), finished, NOW)) == [
        (ActionKind.INSTALL, "dh2048.pem"),
        (ActionKind.SET_PARAMETER, "dh2048.pem"),
    ]


def test_mode_auto_touches_nothing() -> None:
    config = dh_config(DhMode.AUTO, (DH2048, 2048), parameter=PARAM)
    observed = Observed({str(DH2048): MISSING}, {}, postfix_value=None)
    assert plan(config, DhState(), observed, NOW) == []
