"""Tests for dualtrack.preferences: the file contract between adapter and routers."""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import stat
import sys
import threading

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from dualtrack.cli import preferences_cmd
from dualtrack.clock import VirtualClock
from dualtrack.errors import PreferencesError
from dualtrack.preferences import (
    MAX_FILE_BYTES,
    PREFERENCES_SCHEMA_PATH,
    READ_ERROR_REASONS,
    SCHEMA_VERSION,
    ConstraintState,
    Preferences,
    PreferencesReader,
    PreferencesReadError,
    PreferencesWriter,
    Reason,
    Routing,
    load_schema,
    read_preferences,
    write_preferences,
)
from dualtrack.preferences import writer as prefmod

T0 = 1_700_000_000.0
LOGGER = "dualtrack.preferences"
_mtime = itertools.count(1)


def make_prefs(now: float = T0, validity: float = 60.0, **changes) -> Preferences:
    fields = dict(
        generated_at=now,
        valid_until=now + validity,
        strategy="adaptive",
        source="embedded",
        mode="latency_focused",
        routing=Routing.DEFAULT.replace(local_bias=0.65, timeout_multiplier=1.2),
        timeouts_seconds={"local": 20.0, "api": 30.0, "parallel": 40.0},
        query_classes={"long": Routing(0.3, 1.01, 1.5, 0.85)},
        constraints={
            "latency": ConstraintState(True, 2.1, 1.5),
            "battery": ConstraintState(False, None, 0.2),
        },
        reasons=[Reason(
            rule="local_too_slow",
            message="local p95 latency above target",
            query_class="long",
            signals={'latency_p95_seconds{path="local"}': 2.1, "battery_ratio": None},
            changes={"local_bias": -0.1},
        )],
    )
    fields.update(changes)
    return Preferences(**fields)


def bump_mtime(path) -> None:
    """Give each write a distinct mtime: two same-sized writes within one
    kernel clock tick on a reused inode would otherwise look unchanged."""
    ns = (1_600_000_000 + next(_mtime)) * 1_000_000_000
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def put(path, content) -> None:
    """Write a document (Preferences) or raw bytes/text for the reader to find."""
    if isinstance(content, Preferences):
        write_preferences(path, content)
    else:
        data = content.encode() if isinstance(content, str) else content
        with open(path, "wb") as fh:
            fh.write(data)
    bump_mtime(path)


def warnings_from(caplog):
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


# ---------------------------------------------------------------- data model


def test_routing_default_is_the_spec_default():
    assert Routing.DEFAULT.as_dict() == {
        "local_bias": 0.5, "parallel_threshold": 0.7, "timeout_multiplier": 1.0, "quality_threshold": 0.8,
    }
    assert Routing() == Routing.DEFAULT


def test_routing_replace_validates():
    r = Routing.DEFAULT.replace(local_bias=0.9, parallel_threshold=1.01)
    assert (r.local_bias, r.parallel_threshold) == (0.9, 1.01)
    assert Routing.DEFAULT.local_bias == 0.5  # the original is untouched
    with pytest.raises(ValueError, match="local_bias"):
        Routing.DEFAULT.replace(local_bias=1.2)
    with pytest.raises(ValueError, match="timeout_multiplier"):
        Routing.DEFAULT.replace(timeout_multiplier=0)
    with pytest.raises(ValueError, match="parallel_threshold"):
        Routing.DEFAULT.replace(parallel_threshold=1.5)
    with pytest.raises(ValueError, match="local_bais: not a routing preference"):
        Routing.DEFAULT.replace(local_bais=0.1)
    with pytest.raises(ValueError, match="quality_threshold: expected a finite number"):
        Routing(quality_threshold=float("nan"))


def test_round_trip_json():
    prefs = make_prefs(sequence=7)
    text = prefs.to_json()
    assert text.endswith("}\n")
    assert Preferences.from_json(text) == prefs
    assert Preferences.from_dict(json.loads(text)) == prefs
    assert prefs.to_json() == text  # stable
    assert list(json.loads(text)) == [
        "schema_version", "sequence", "generated_at", "valid_until", "strategy", "source", "mode",
        "routing", "timeouts_seconds", "query_classes", "constraints", "reasons",
    ]
    assert json.loads(text)["schema_version"] == SCHEMA_VERSION


def test_optional_sections_may_be_absent():
    data = make_prefs().to_dict()
    for key in ("mode", "query_classes", "constraints", "reasons"):
        del data[key]
    prefs = Preferences.from_dict(data)
    assert prefs.mode is None and prefs.query_classes == {} and prefs.reasons == []


def test_routing_for_uses_overrides_then_global():
    prefs = make_prefs()
    assert prefs.routing_for("long") == Routing(0.3, 1.01, 1.5, 0.85)
    assert prefs.routing_for("short") is prefs.routing
    assert prefs.routing_for(None) is prefs.routing


def test_expiry_age_and_defaults():
    prefs = make_prefs()
    assert prefs.age(T0 + 12) == 12
    assert not prefs.is_expired(T0 + 60)
    assert prefs.is_expired(T0 + 60.5)
    assert [prefs.freshness(T0 + a) for a in (0, 60, 89, 91)] == ["fresh", "fresh", "stale", "expired"]
    d = Preferences.defaults(now=T0, validity_seconds=120)
    assert d.routing == Routing.DEFAULT
    assert d.timeouts_seconds == {"local": 30.0, "api": 30.0, "parallel": 30.0}
    assert (d.source, d.strategy, d.generated_at, d.valid_until) == ("defaults", "defaults", T0, T0 + 120)


def test_constructor_rejects_bad_values():
    with pytest.raises(ValueError, match="valid_until"):
        make_prefs(valid_until=T0 - 1)
    with pytest.raises(ValueError, match="source"):
        make_prefs(source="magic")
    with pytest.raises(ValueError, match="timeouts_seconds"):
        make_prefs(timeouts_seconds={"local": 1.0})
    with pytest.raises(ValueError, match=r"timeouts_seconds\.api"):
        make_prefs(timeouts_seconds={"local": 1.0, "api": -1.0, "parallel": 1.0})


def _set(path, value):
    def mutate(d):
        *parents, last = path
        for p in parents:
            d = d[p]
        d[last] = value
    return mutate


def _delete(path):
    def mutate(d):
        *parents, last = path
        for p in parents:
            d = d[p]
        del d[last]
    return mutate


SIG = 'latency_p95_seconds{path="local"}'


@pytest.mark.parametrize("mutate, expected", [
    (_set(["routing", "local_bias"], 1.7), "routing.local_bias: 1.7 is greater than the maximum of 1"),
    (_set(["routing", "local_bias"], -0.1), "routing.local_bias: -0.1 is less than the minimum of 0"),
    (_set(["routing", "parallel_threshold"], 1.2), "routing.parallel_threshold: 1.2 is greater than"),
    (_set(["routing", "timeout_multiplier"], 0), "routing.timeout_multiplier: 0 is less than the minimum of 0.1"),
    (_set(["routing", "timeout_multiplier"], 0.05), "routing.timeout_multiplier: 0.05 is less than the minimum"),
    (_set(["routing", "timeout_multiplier"], 11), "routing.timeout_multiplier: 11 is greater than"),
    (_set(["routing", "quality_threshold"], "high"), "routing.quality_threshold: 'high' is not of type"),
    (_set(["routing", "local_bais"], 0.5), "routing.local_bais: unexpected field"),
    (_delete(["routing", "quality_threshold"]), "routing.quality_threshold: required field is missing"),
    (_set(["query_classes", "long", "local_bias"], 2), "query_classes.long.local_bias: 2 is greater"),
    (_set(["query_classes", "bad name!"], Routing.DEFAULT.as_dict()), "query_classes: 'bad name!' does not match"),
    (_set(["timeouts_seconds", "api"], 0), "timeouts_seconds.api: 0 is less than or equal"),
    (_delete(["timeouts_seconds", "parallel"]), "timeouts_seconds.parallel: required field is missing"),
    (_set(["timeouts_seconds", "gpu"], 3), "timeouts_seconds.gpu: unexpected field"),
    (_set(["timeouts_seconds", "api"], float("inf")), "timeouts_seconds.api: inf is not a finite number"),
    (_set(["routing", "local_bias"], float("nan")), "routing.local_bias: nan is not a finite number"),
    (_set(["sequence"], -1), "sequence: -1 is less than the minimum of 0"),
    (_set(["sequence"], 1.5), "sequence: 1.5 is not of type 'integer'"),
    (_set(["generated_at"], 1.7e12), "generated_at: 1700000000000.0 is greater than the maximum"),
    (_set(["valid_until"], T0 - 1), "valid_until: 1699999999.0 is before generated_at"),
    (_set(["strategy"], ""), "strategy: '' should be non-empty"),
    (_delete(["strategy"]), "strategy: required field is missing"),
    (_set(["source"], "guess"), "source: 'guess' is not one of"),
    (_set(["mode"], 3), "mode: 3 is not of type"),
    (_set(["schema_version"], "1"), "schema_version: 1 was expected"),
    (_set(["extra"], True), "extra: unexpected field"),
    (_set(["constraints", "latency", "violated"], "yes"), "constraints.latency.violated: 'yes' is not of type"),
    (_set(["constraints", "latency", "unit"], "s"), "constraints.latency.unit: unexpected field"),
    (_set(["reasons", 0, "rule"], ""), "reasons[0].rule: '' should be non-empty"),
    (_delete(["reasons", 0, "message"]), "reasons[0].message: required field is missing"),
    (_set(["reasons", 0, "signals", SIG], "slow"), 'reasons[0].signals["latency_p95_seconds{path=\\"local\\"}"]'),
    (_set(["reasons", 0, "changes", "local_bias"], None), "reasons[0].changes.local_bias: None is not of type"),
    (_set(["reasons"], {}), "reasons: {} is not of type 'array'"),
])
def test_validation_failure_names_the_field(mutate, expected):
    data = make_prefs().to_dict()
    mutate(data)
    with pytest.raises(PreferencesError) as info:
        Preferences.from_dict(data, source_name="prefs.json")
    message = str(info.value)
    assert message.startswith("prefs.json: ")
    assert expected in message
    assert info.value.reason == "invalid"
    assert "\n" not in message


def test_wrong_version_has_its_own_reason():
    data = make_prefs().to_dict()
    data["schema_version"] = 2
    with pytest.raises(PreferencesReadError, match="schema_version: 2 is not supported") as info:
        Preferences.from_dict(data)
    assert info.value.reason == "wrong_version"


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("  \n", "empty"),
    (make_prefs().to_json()[:-40], "invalid_json"),  # torn
    ("{'single': 'quotes'}", "invalid_json"),
    ('{"generated_at": NaN}', "invalid_json"),
    (b"\xff\xfe garbage", "invalid_json"),
    ("[" * 200_000, "invalid_json"),
    ("[]", "invalid"),
    (" " * (MAX_FILE_BYTES + 1), "too_large"),
])
def test_from_json_problems_have_reasons(text, reason):
    with pytest.raises(PreferencesReadError) as info:
        Preferences.from_json(text)
    assert info.value.reason == reason


# ---------------------------------------------------------------- schema


def test_schema_is_published_and_documented():
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"]
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["routing"]["additionalProperties"] is False
    assert PREFERENCES_SCHEMA_PATH.is_file()

    undocumented = []

    def walk(node, where):
        for name, sub in node.get("properties", {}).items():
            if not (sub.get("title") and sub.get("description")):
                undocumented.append(f"{where}.{name}")
            walk(sub, f"{where}.{name}")
        for name, sub in node.get("$defs", {}).items():
            if not (sub.get("title") and sub.get("description")):
                undocumented.append(f"$defs.{name}")
            walk(sub, f"$defs.{name}")

    walk(schema, "")
    assert undocumented == []
    # what we write is what the schema describes
    jsonschema.validate(make_prefs().to_dict(), schema)


# ---------------------------------------------------------------- writer


def test_publish_numbers_and_writes(tmp_path):
    path = tmp_path / "prefs.json"
    writer = PreferencesWriter(path)
    first = writer.publish(make_prefs())
    second = writer.publish(make_prefs(now=T0 + 10))
    assert (first.sequence, second.sequence) == (1, 2)
    assert read_preferences(path) == second
    assert writer.path == str(path)
    assert os.listdir(tmp_path) == ["prefs.json"]


def test_sequence_continues_after_restart(tmp_path):
    path = tmp_path / "prefs.json"
    writer = PreferencesWriter(path)
    for _ in range(3):
        writer.publish(make_prefs())
    restarted = PreferencesWriter(path)
    assert restarted.sequence == 3
    assert restarted.publish(make_prefs()).sequence == 4
    assert read_preferences(path).sequence == 4


def test_sequence_starts_at_one_after_an_invalid_file(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_text('{"sequence": 99')
    assert PreferencesWriter(path).publish(make_prefs()).sequence == 1


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_explicit_permissions_ignore_the_umask(tmp_path, umask):
    path = tmp_path / "prefs.json"
    old = os.umask(umask)
    try:
        PreferencesWriter(path, mode=0o640).publish(make_prefs())
        write_preferences(tmp_path / "other.json", make_prefs(), mode=0o604)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert stat.S_IMODE(os.stat(tmp_path / "other.json").st_mode) == 0o604


def test_failed_replace_leaves_no_temp_and_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "prefs.json"
    writer = PreferencesWriter(path)
    old = writer.publish(make_prefs())

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(PreferencesError, match="could not write preferences") as info:
        writer.publish(make_prefs(now=T0 + 5))
    assert isinstance(info.value.__cause__, OSError)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["prefs.json"]
    assert read_preferences(path) == old
    assert writer.publish(make_prefs()).sequence == 2  # the failed number is reused


def test_failed_write_midway_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "prefs.json"

    def broken_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(PreferencesError) as info:
        write_preferences(path, make_prefs())
    assert isinstance(info.value.__cause__, OSError)
    assert os.listdir(tmp_path) == []


def test_parent_is_a_file(tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    with pytest.raises(PreferencesError) as info:
        PreferencesWriter(blocker / "prefs.json").publish(make_prefs())
    assert isinstance(info.value.__cause__, OSError)
    assert os.listdir(tmp_path) == ["not_a_folder"]


def test_invalid_preferences_are_refused_before_touching_disk(tmp_path):
    prefs = make_prefs()
    object.__setattr__(prefs, "strategy", "")  # bypass the constructor's checks
    with pytest.raises(PreferencesError, match="strategy"):
        write_preferences(tmp_path / "prefs.json", prefs)
    assert os.listdir(tmp_path) == []


def test_planted_symlink_at_temp_path_is_not_followed(tmp_path, monkeypatch):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    folder = tmp_path / "run"
    folder.mkdir()
    path = folder / "prefs.json"
    planted = folder / ".prefs.json.0123456789abcdef.tmp"
    planted.symlink_to(victim)
    writer = PreferencesWriter(path)

    # Every name is the planted one: the writer must give up cleanly.
    monkeypatch.setattr(prefmod, "_random_token", lambda: "0123456789abcdef")
    with pytest.raises(PreferencesError) as info:
        writer.publish(make_prefs())
    assert isinstance(info.value.__cause__, OSError)
    assert victim.read_text() == "precious"
    assert planted.is_symlink()  # not ours to delete
    assert not path.exists()

    # The first name is the planted one: the writer picks another.
    names = iter(["0123456789abcdef", "fedcba9876543210"])
    monkeypatch.setattr(prefmod, "_random_token", lambda: next(names))
    writer.publish(make_prefs())
    assert victim.read_text() == "precious"
    assert read_preferences(path).sequence == 1
    assert sorted(os.listdir(folder)) == [".prefs.json.0123456789abcdef.tmp", "prefs.json"]


def test_symlink_at_target_is_replaced_not_written_through(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    path = folder / "prefs.json"
    writer = PreferencesWriter(path)
    writer.publish(make_prefs())
    path.unlink()
    path.symlink_to(victim)
    writer.publish(make_prefs())
    assert not path.is_symlink()
    assert stat.S_ISREG(os.lstat(path).st_mode)
    assert victim.read_text() == "precious"
    assert read_preferences(path).sequence == 2


def test_writer_resolves_its_folder_once(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    writer = PreferencesWriter(link / "prefs.json")
    assert writer.path == os.path.join(os.path.realpath(real), "prefs.json")
    writer.publish(make_prefs())
    assert (real / "prefs.json").is_file()


def test_stale_temp_files_are_cleaned_at_construction(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    old = [tmp_path / ".prefs.json.00112233aabbccdd.tmp", tmp_path / ".prefs.json.ffeeddccbbaa9988.tmp"]
    old[0].write_text('{"torn": ')
    old[1].symlink_to(victim)
    fresh = tmp_path / ".prefs.json.1234567890abcdef.tmp"
    fresh.write_text("in flight")
    unrelated = [tmp_path / ".other.json.00112233aabbccdd.tmp", tmp_path / ".prefs.json.notrandom.tmp",
                 tmp_path / "prefs.json.00112233aabbccdd.tmp"]
    for p in unrelated:
        p.write_text("keep")
    long_ago = (T0, T0)
    for p in old + unrelated:
        os.utime(p, long_ago, follow_symlinks=False)

    writer = PreferencesWriter(tmp_path / "prefs.json")
    assert all(not os.path.lexists(p) for p in old)
    assert fresh.exists() and all(p.exists() for p in unrelated)
    assert victim.read_text() == "precious"

    assert writer.cleanup_stale_temp_files(max_age_seconds=0) == [str(fresh)]


def test_writes_are_atomic_for_concurrent_readers(tmp_path):
    path = tmp_path / "prefs.json"
    clock = VirtualClock(T0)
    writer = PreferencesWriter(path, clock=clock)
    writer.publish(make_prefs())
    reader = PreferencesReader(path, clock=clock, check_interval_seconds=0)
    stop = threading.Event()
    problems: list = []
    seen: list = []

    def read_raw():  # what any reader sees: the whole old or the whole new document
        last = 0
        while not stop.is_set():
            try:
                with open(path, "rb") as fh:
                    sequence = Preferences.from_json(fh.read()).sequence
                if sequence < last:
                    problems.append(f"sequence went back from {last} to {sequence}")
                last = sequence
                seen.append(sequence)
            except Exception as err:  # noqa: BLE001 - any failure is the finding
                problems.append(repr(err))

    def read_current():  # PreferencesReader.current() from several threads at once
        while not stop.is_set():
            try:
                if reader.current().source == "defaults":
                    problems.append("reader fell back to defaults")
            except Exception as err:  # noqa: BLE001
                problems.append(repr(err))

    threads = [threading.Thread(target=f) for f in (read_raw, read_current, read_current)]
    # The readers spin; a short switch interval lets the writer get the GIL
    # back quickly after each system call (otherwise up to 5 ms each time).
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    for t in threads:
        t.start()
    try:
        for i in range(500):
            # vary the size so that a torn read could not look whole
            reasons = [Reason(rule=f"r{j}", message="x" * (i % 97)) for j in range(i % 7)]
            writer.publish(make_prefs(now=T0 + i, reasons=reasons))
    finally:
        stop.set()
        for t in threads:
            t.join()
        sys.setswitchinterval(old_interval)
    assert problems == []
    assert len(set(seen)) > 1, "the readers never saw an update"
    assert reader.reload_count > 1
    assert reader.error_counts == {r: 0 for r in READ_ERROR_REASONS}
    assert os.listdir(tmp_path) == ["prefs.json"]
    assert read_preferences(path).sequence == 501


# ---------------------------------------------------------------- reader


def test_reader_stats_at_most_once_per_interval_and_parses_only_changes(tmp_path, monkeypatch):
    path = tmp_path / "prefs.json"
    put(path, make_prefs(sequence=1))
    clock = VirtualClock(T0)
    reader = PreferencesReader(path, clock=clock, check_interval_seconds=1.0)
    stats = []
    real_stat = os.stat

    def counting_stat(p, *args, **kwargs):
        if os.fspath(p) == str(path):
            stats.append(p)
        return real_stat(p, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting_stat)
    assert reader.current().sequence == 1
    assert (len(stats), reader.parse_count) == (1, 1)
    for _ in range(1000):
        reader.current()
    assert (len(stats), reader.parse_count) == (1, 1)
    clock.advance(1.0)
    reader.current()
    assert (len(stats), reader.parse_count) == (2, 1)  # unchanged: stat only
    put(path, make_prefs(sequence=2))
    reader.current()
    assert reader.current().sequence == 1  # the interval has not passed
    clock.advance(1.0)
    assert reader.current().sequence == 2
    assert reader.parse_count == 2
    assert reader.reload_count == 2
    put(path, make_prefs(sequence=3))
    assert reader.current(force=True).sequence == 3  # no need to wait for the interval
    put(path, make_prefs(sequence=4))
    assert reader.refresh().sequence == 4


def _reader(path, clock=None, **kwargs):
    registry = CollectorRegistry()
    reader = PreferencesReader(path, clock=clock or VirtualClock(T0), check_interval_seconds=0,
                               registry=registry, **kwargs)
    return reader, registry


def _errors(registry, reason):
    return registry.get_sample_value("dualtrack_preferences_read_errors_total", {"reason": reason})


@pytest.mark.parametrize("reason, spoil", [
    ("missing", lambda p: os.unlink(p)),
    ("empty", lambda p: put(p, b"")),
    ("invalid_json", lambda p: put(p, make_prefs().to_json()[:100])),  # torn
    ("invalid_json", lambda p: put(p, os.urandom(64) + b"\xff")),
    ("invalid", lambda p: put(p, json.dumps({**make_prefs().to_dict(), "source": "guess"}))),
    ("wrong_version", lambda p: put(p, json.dumps({**make_prefs().to_dict(), "schema_version": 2}))),
    ("too_large", lambda p: put(p, b" " * (MAX_FILE_BYTES + 1))),
    ("unreadable", lambda p: (os.unlink(p), os.mkdir(p))),
])
def test_reader_keeps_last_good_on_bad_file(tmp_path, caplog, reason, spoil):
    path = tmp_path / "prefs.json"
    good = make_prefs(sequence=5)
    put(path, good)
    reader, registry = _reader(path)
    assert reader.current() == good
    caplog.set_level(logging.WARNING, logger=LOGGER)

    spoil(str(path))
    for _ in range(5):
        assert reader.current() == good
    assert reader.error_counts[reason] == 1
    assert _errors(registry, reason) == 1.0
    assert sum(reader.error_counts.values()) == 1
    records = warnings_from(caplog)
    assert len(records) == 1
    assert reason in records[0].getMessage() and "keeping the last good preferences (sequence 5)" \
        in records[0].getMessage()
    status = reader.status()
    assert status["state"] == "fresh" and status["sequence"] == 5
    assert status["last_error"]["reason"] == reason


def test_each_distinct_problem_is_logged_once_until_a_good_file(tmp_path, caplog):
    path = tmp_path / "prefs.json"
    put(path, make_prefs(sequence=1))
    reader, registry = _reader(path)
    reader.current()
    caplog.set_level(logging.INFO, logger=LOGGER)

    for _ in range(3):  # three new versions of the same problem: counted 3x, logged once
        put(path, b"")
        reader.current()
    put(path, b"{not json")
    reader.current()
    put(path, b"")  # the same problem as before: still not logged again
    reader.current()
    assert reader.error_counts["empty"] == 4 and reader.error_counts["invalid_json"] == 1
    assert len(warnings_from(caplog)) == 2

    put(path, make_prefs(sequence=2))
    assert reader.current().sequence == 2
    assert reader.status()["last_error"] is None
    put(path, b"")
    reader.current()
    assert len(warnings_from(caplog)) == 3  # a good file in between: logged again
    assert _errors(registry, "empty") == 5.0


def test_reader_before_any_good_file_returns_defaults(tmp_path):
    path = tmp_path / "prefs.json"
    reader, registry = _reader(path)
    current = reader.current()
    assert current.source == "defaults" and current.routing == Routing.DEFAULT
    assert current.reasons[0].rule == "no_preferences"
    assert reader.status()["state"] == "no_file"
    assert reader.status()["age_seconds"] is None and reader.status()["sequence"] is None
    assert registry.get_sample_value("dualtrack_preferences_expired") == 1.0
    assert registry.get_sample_value("dualtrack_preferences_sequence") is None  # absent, not 0

    put(path, b"garbage")
    reader.current()
    assert reader.status()["state"] == "defaults"
    assert "invalid_json" in reader.current().reasons[0].message

    put(path, make_prefs(sequence=3))
    assert reader.current().sequence == 3
    assert registry.get_sample_value("dualtrack_preferences_expired") == 0.0
    assert registry.get_sample_value("dualtrack_preferences_sequence") == 3.0


def test_expiry_goes_fresh_stale_then_defaults(tmp_path, caplog):
    path = tmp_path / "prefs.json"
    clock = VirtualClock(T0)
    good = make_prefs(now=T0, validity=60, sequence=9)
    put(path, good)
    reader, registry = _reader(path, clock)
    caplog.set_level(logging.WARNING, logger=LOGGER)

    assert reader.current() == good and reader.status()["state"] == "fresh"
    clock.advance(60)
    assert reader.current() == good and reader.status()["state"] == "fresh"
    clock.advance(1)
    assert reader.current() == good and reader.status()["state"] == "stale"
    clock.advance(29)  # grace = half the 60 s window
    assert reader.current() == good and reader.status()["state"] == "stale"
    assert registry.get_sample_value("dualtrack_preferences_expired") == 0.0
    clock.advance(1)
    fallback = reader.current()
    assert fallback.source == "defaults"
    assert fallback.routing == Routing.DEFAULT
    assert fallback.reasons[0].rule == "preferences_expired"
    assert "expired at" in fallback.reasons[0].message
    assert "sequence 9" in fallback.reasons[0].message
    status = reader.status()
    assert status["state"] == "expired" and status["sequence"] == 9
    assert status["age_seconds"] == pytest.approx(91)
    assert registry.get_sample_value("dualtrack_preferences_expired") == 1.0
    assert registry.get_sample_value("dualtrack_preferences_valid_until_timestamp_seconds") == T0 + 60
    assert reader.current() is fallback  # cached, not rebuilt per call
    assert len(warnings_from(caplog)) == 1

    newer = make_prefs(now=clock.time(), sequence=10)
    put(path, newer)
    assert reader.current() == newer and reader.status()["state"] == "fresh"


def test_explicit_grace_and_custom_defaults(tmp_path):
    path = tmp_path / "prefs.json"
    clock = VirtualClock(T0)
    put(path, make_prefs(now=T0, validity=60))
    safe = Preferences(
        generated_at=T0, valid_until=T0 + 600, strategy="balanced", source="static",
        routing=Routing(local_bias=0.1))
    reader, _ = _reader(path, clock, expiry_grace_seconds=5, defaults=safe)
    clock.advance(65)
    assert reader.status()["state"] == "stale"
    clock.advance(1)
    fallback = reader.current()
    assert fallback.routing.local_bias == 0.1
    assert fallback.strategy == "balanced" and fallback.source == "defaults"
    assert fallback.reasons[0].rule == "preferences_expired"


def test_wall_clock_jumping_backwards_does_not_expire(tmp_path):
    path = tmp_path / "prefs.json"
    clock = VirtualClock(T0)
    good = make_prefs(now=T0, validity=60)
    put(path, good)
    reader, _ = _reader(path, clock)
    clock.advance(10)
    assert reader.current() == good
    clock.set_wall(T0 - 3600)  # NTP steps the clock back an hour
    assert reader.current() == good
    assert reader.status()["state"] == "fresh"
    # ...but a dead adapter still cannot pin routing forever: monotonic time runs on.
    clock.advance(80)  # 10 + 80 s of monotonic age: the end of the grace period
    assert reader.current() == good and reader.status()["state"] == "stale"
    clock.advance(1)
    assert reader.current().source == "defaults"
    assert reader.status()["state"] == "expired"


def test_wall_clock_jumping_forward_expires(tmp_path):
    path = tmp_path / "prefs.json"
    clock = VirtualClock(T0)
    put(path, make_prefs(now=T0, validity=60))
    reader, _ = _reader(path, clock)
    reader.current()
    clock.set_wall(T0 + 3600)
    assert reader.current().source == "defaults"


def test_reader_follows_a_symlink_to_a_valid_file(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    a, b = elsewhere / "a.json", elsewhere / "b.json"
    put(a, make_prefs(sequence=1))
    put(b, make_prefs(sequence=2))
    path = tmp_path / "prefs.json"
    put(path, make_prefs(sequence=0))
    reader, _ = _reader(path)
    assert reader.current().sequence == 0
    path.unlink()
    path.symlink_to(a)
    assert reader.current().sequence == 1
    path.unlink()
    path.symlink_to(b)
    assert reader.current().sequence == 2


def test_reader_metrics(tmp_path):
    path = tmp_path / "prefs.json"
    put(path, make_prefs(sequence=4))
    reader, registry = _reader(path)
    reader.current()
    assert registry.get_sample_value("dualtrack_preferences_sequence") == 4.0
    assert registry.get_sample_value("dualtrack_preferences_generated_timestamp_seconds") == T0
    assert registry.get_sample_value("dualtrack_preferences_valid_until_timestamp_seconds") == T0 + 60
    assert registry.get_sample_value("dualtrack_preferences_reloads_total") == 1.0
    for reason in READ_ERROR_REASONS:
        assert _errors(registry, reason) == 0.0  # present from the start, so rate() works


def test_status_shape(tmp_path):
    path = tmp_path / "prefs.json"
    clock = VirtualClock(T0)
    put(path, make_prefs(now=T0, sequence=2))
    reader, _ = _reader(path, clock)
    clock.advance(12)
    status = reader.status()
    assert status["path"] == str(path)
    assert status["state"] == "fresh"
    assert status["age_seconds"] == pytest.approx(12)
    assert status["sequence"] == 2
    assert status["last_error"] is None


# ---------------------------------------------------------------- property


def _documents():
    good = make_prefs(sequence=1).to_json().encode()
    raw = st.binary(max_size=512)
    truncated = st.integers(min_value=0, max_value=len(good)).map(lambda n: good[:n])
    flipped = st.tuples(st.integers(0, len(good) - 1), st.integers(0, 255)).map(
        lambda t: good[:t[0]] + bytes([t[1]]) + good[t[0] + 1:])
    json_values = st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=12,
    ).map(lambda v: json.dumps(v).encode())
    patched = st.dictionaries(
        st.sampled_from(list(json.loads(good))),
        st.none() | st.floats() | st.integers() | st.text(max_size=4) | st.just({}),
        max_size=3,
    ).map(lambda d: json.dumps({**json.loads(good), **d}).encode())
    return st.one_of(raw, truncated, flipped, json_values, patched)


def test_any_bytes_never_break_the_reader(tmp_path):
    path = tmp_path / "prefs.json"
    good = make_prefs(sequence=1)
    clock = VirtualClock(T0)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=_documents(), have_good=st.booleans())
    def check(data, have_good):
        if have_good:
            put(path, good)
        elif os.path.lexists(path):
            os.unlink(path)
        reader = PreferencesReader(path, clock=clock, check_interval_seconds=0)
        before = reader.current()
        put(path, data)
        after = reader.current()
        status = reader.status()
        try:
            parsed = Preferences.from_json(data)
        except PreferencesError:
            parsed = None
        if parsed is not None and parsed.freshness(clock.time()) != "expired":
            assert after == parsed
        elif parsed is not None:  # valid but already past its grace period
            assert after.source == "defaults" and after.reasons[0].rule == "preferences_expired"
        elif have_good:
            assert after == good == before
            assert status["last_error"] is not None
        else:
            assert after.source == "defaults" and after.routing == Routing.DEFAULT
            assert status["state"] == "defaults"

    check()


# ---------------------------------------------------------------- CLI


def _cli(argv, capsys, **kwargs):
    parser = argparse.ArgumentParser(prog="dualtrack")
    preferences_cmd.add_parser(parser.add_subparsers(dest="command"))
    code = preferences_cmd.run(parser.parse_args(argv), **kwargs)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_show(tmp_path, capsys):
    path = tmp_path / "prefs.json"
    put(path, make_prefs(now=T0, sequence=42))
    code, out, err = _cli(["preferences", "show", str(path)], capsys, clock=VirtualClock(T0 + 12))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert len(lines) <= 30
    for expected in ("adaptive", "mode latency_focused", "source embedded", "sequence 42", "12.0 s ago",
                     "FRESH", "local_bias=0.65", "long: local_bias=0.3", "parallel_threshold=1.01",
                     "local 20 s", "api 30 s", "parallel 40 s", "latency (2.1 > 1.5)",
                     "local_too_slow [long]", 'latency_p95_seconds{path="local"}=2.1', "battery_ratio=no data",
                     "local_bias -0.1"):
        assert expected in out, expected
    assert "battery (" not in out  # not violated


def test_cli_show_stale_and_expired(tmp_path, capsys):
    path = tmp_path / "prefs.json"
    put(path, make_prefs(now=T0, validity=60))
    assert "STALE" in _cli(["preferences", "show", str(path)], capsys, clock=VirtualClock(T0 + 70))[1]
    assert "EXPIRED" in _cli(["preferences", "show", str(path)], capsys, clock=VirtualClock(T0 + 95))[1]


def test_cli_show_json(tmp_path, capsys):
    path = tmp_path / "prefs.json"
    prefs = make_prefs(sequence=3)
    put(path, prefs)
    code, out, _ = _cli(["preferences", "show", "--json", str(path)], capsys)
    assert code == 0
    assert out == prefs.to_json()


def test_cli_show_missing_and_invalid(tmp_path, capsys):
    missing = tmp_path / "nope.json"
    code, out, err = _cli(["preferences", "show", str(missing)], capsys)
    assert (code, out) == (1, "")
    assert err == f"dualtrack: {missing}: no such file\n"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**make_prefs().to_dict(), "routing": {**Routing.DEFAULT.as_dict(),
                                                                     "local_bias": 1.7}}))
    code, out, err = _cli(["preferences", "show", str(bad)], capsys)
    assert code == 1
    assert err == f"dualtrack: {bad}: routing.local_bias: 1.7 is greater than the maximum of 1\n"

    torn = tmp_path / "torn.json"
    torn.write_text(make_prefs().to_json()[:50])
    code, _, err = _cli(["preferences", "show", str(torn)], capsys)
    assert code == 1 and err.startswith(f"dualtrack: {torn}: not valid JSON") and err.count("\n") == 1


def test_cli_requires_a_subcommand(capsys):
    parser = argparse.ArgumentParser(prog="dualtrack")
    preferences_cmd.add_parser(parser.add_subparsers(dest="command"))
    with pytest.raises(SystemExit):
        parser.parse_args(["preferences"])
    args = parser.parse_args(["preferences", "show", "x.json"])
    assert args.func is preferences_cmd.run

