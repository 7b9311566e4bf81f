"""``reconcile replay`` cursors and ``--follow``, with real processes (docs/operations.md,
"Replay"; docs/architecture.md, "Replay cursors").

The oracle is the history itself: once every writer is done, the ids a follower printed
across all its runs, killed and resumed, are compared with the ids of every record on
disk. No test here waits on a clock: each waits on conditions, with generous deadlines.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import journal
from tests.reconcile_helpers import clean_env, cli, hook_process, reconcile_command, wait_idle

DEAD_URL = "postgresql://x@127.0.0.1:9/d"

WRITER = r"""
import random, sys, time
import journal
home, tag, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
early = journal.new_event_id()  # issued now, written last: a late outcome
with journal.Writer(home, fsync=False) as w:
    for i in range(count):
        w.append(f"executor:{tag}-{i % 3}", {"session_id": f"{tag}-{i}"}, "session.observed")
        time.sleep(random.random() * 0.02)
    if random.random() < 0.5:  # in this journal, after later records
        w.append(f"executor:{tag}-late", {"new_session_id": "late"}, "session.reconciled",
                 event_id=journal.event_id_next_to(early))
        sys.exit(0)
with journal.Writer(home, fsync=False) as late:  # or alone in a journal of its own
    late.append(f"executor:{tag}-late", {"new_session_id": "late"}, "session.reconciled",
                event_id=journal.event_id_next_to(early))
"""


def write(home: Path, tag: str, count: int = 3) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(home), tag, str(count)],
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr


def history_ids(home: Path) -> list[str]:
    history = journal.history(home)
    ids = [record.id for record in history]
    assert history.errors == ()
    return ids


def lines_of(raw: bytes) -> list[dict]:
    """The complete lines of a follower's output (a line cut by SIGKILL is not one)."""
    complete = raw[: raw.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines()]


def replay(home: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return cli("replay", *args, home=home)


def follower(home: Path, *args: str, out: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as sink, out.with_name(out.name + ".err").open("wb") as errors:
        return subprocess.Popen(
            [*reconcile_command(), "replay", "--follow", *args],
            stdout=sink,
            stderr=errors,
            env=clean_env(RECONCILE_HOME=str(home)),
        )


def wait_for(condition, deadline_s: float = 120.0) -> None:
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "state"


def test_every_record_carries_its_cursor_and_resumes_exactly(home: Path):
    for n in range(4):
        write(home, f"w{n}")
    journal.compact(home)  # some in archive/, some written after
    write(home, "w4")
    done = replay(home)
    assert done.returncode == 0, done.stderr
    records = lines_of(done.stdout)
    assert [r["id"] for r in records] == history_ids(home)
    for i, record in enumerate(records):
        assert 0 < len(record["cursor"]) <= journal_max_cursor()
        after = lines_of(replay(home, "--after-cursor", record["cursor"]).stdout)
        assert [r["id"] for r in after] == [r["id"] for r in records[i + 1 :]]
        at = lines_of(replay(home, "--cursor", record["cursor"]).stdout)
        assert [r["id"] for r in at] == [r["id"] for r in records[i:]]


def test_one_position_is_one_text_whatever_order_the_journals_were_read_in(home: Path):
    """A cursor names its journals in the order of their names, not in the order the
    reader opened them: the same position reads the same, however it was reached."""
    first, second = journal.Writer(home, fsync=False), journal.Writer(home, fsync=False)
    with first, second:  # both still being written: a cursor names them
        # A journal's name is random; these make the journal read first sort last. A
        # writer appends through its descriptor: it goes on writing to the renamed file.
        for writer, name in ((first, "9-first"), (second, "1-second")):
            writer.append(f"executor:{name}", {"new_session_id": "s-1"}, "session.observed")
            [path] = [p for p in (home / "journal").glob("*.jnl") if p.stem[2:] != "first"]
            path.rename(path.with_name(f"{name}.jnl"))
        first.append("executor:9-first", {"new_session_id": "s-2"}, "session.observed")
        done = replay(home, "-o", "json")
        assert done.returncode == 0, done.stderr
        records = lines_of(done.stdout)
        keys = [r["key"] for r in records]
        assert keys == ["executor:9-first", "executor:1-second", "executor:9-first"]
        assert ".1-second_" in records[1]["cursor"] and ".9-first_" in records[1]["cursor"]
        for record in records:
            assert journal.Cursor.parse(record["cursor"]).text() == record["cursor"]
        resumed = replay(home, "-o", "json", "--after-cursor", records[0]["cursor"])
        assert lines_of(resumed.stdout) == records[1:]


def reached(proc: subprocess.Popen[bytes], out: Path, count: int) -> bool:
    return proc.poll() is not None or len(lines_of(out.read_bytes())) >= count


def journal_max_cursor() -> int:
    from journal._follow import MAX_CURSOR

    return MAX_CURSOR


def test_cursor_moves_past_filtered_records_and_an_empty_result_writes_the_file(
    home: Path, tmp_path: Path
):
    write(home, "a")
    write(home, "b")
    cursor_file = tmp_path / "cursor"
    only_a = replay(home, "--key", "executor:a-0", "--cursor-file", str(cursor_file))
    assert only_a.returncode == 0, only_a.stderr
    assert {r["key"] for r in lines_of(only_a.stdout)} == {"executor:a-0"}
    # Everything was consumed, the filtered records too: nothing left after the cursor.
    assert replay(home, "--cursor-file", str(cursor_file)).stdout == b""
    cursor_file.unlink()
    nothing = replay(home, "--key", "executor:nobody", "--cursor-file", str(cursor_file))
    assert nothing.returncode == 0 and nothing.stdout == b""
    assert cursor_file.read_text().strip()  # written though nothing matched
    write(home, "c")
    rest = lines_of(replay(home, "--cursor-file", str(cursor_file)).stdout)
    assert {r["key"].split(":")[1].split("-")[0] for r in rest} == {"c"}


def test_a_late_outcome_is_delivered_once_across_a_resume(home: Path, tmp_path: Path):
    early = journal.new_event_id()
    write(home, "before")
    cursor_file = tmp_path / "cursor"
    first = lines_of(replay(home, "--cursor-file", str(cursor_file)).stdout)
    journal.compact(home)  # the journals read move to archive/ meanwhile
    with journal.Writer(home) as late:
        late_id = late.append(
            "executor:x",
            {"new_session_id": "s"},
            "session.reconciled",
            event_id=journal.event_id_next_to(early),
        )
    assert late_id < first[0]["id"]  # it sorts before everything delivered already
    second = lines_of(replay(home, "--cursor-file", str(cursor_file)).stdout)
    assert [r["id"] for r in second] == [late_id]
    assert replay(home, "--cursor-file", str(cursor_file)).stdout == b""


def test_bad_and_pruned_cursors(home: Path, tmp_path: Path):
    write(home, "a")
    bad = replay(home, "--after-cursor", "not-a-cursor")
    assert bad.returncode == 2 and b"not a cursor" in bad.stderr
    both = replay(home, "--cursor", "x", "--after-cursor", "y")
    assert both.returncode == 2
    # A cursor part-way through a journal still being written (so the cursor names it),
    # which retention pruned once it was finished and archived: said, exit 3.
    with journal.Writer(home) as writer:
        for n in range(3):
            writer.append(f"executor:live-{n}", {"session_id": "s"}, "session.observed")
        records = lines_of(replay(home).stdout)
    middle = next(r for r in records if r["key"] == "executor:live-0")["cursor"]
    journal.compact(home, retention=journal.Retention(max_files=0))
    pruned = replay(home, "--after-cursor", middle)
    assert pruned.returncode == 3
    assert b"pruned" in pruned.stderr and b"oldest retained" in pruned.stderr


@pytest.mark.parametrize("signo", [signal.SIGINT, signal.SIGTERM])
def test_follow_ends_cleanly_on_a_signal_and_saves_its_cursor(
    home: Path, tmp_path: Path, signo: int
):
    write(home, "a")
    cursor_file, out = tmp_path / "cursor", tmp_path / "out"
    proc = follower(home, "--cursor-file", str(cursor_file), out=out)
    wait_for(lambda: len(lines_of(out.read_bytes())) == 4)
    proc.send_signal(signo)
    assert proc.wait(timeout=120) == 0, (tmp_path / "out.err").read_bytes()
    assert replay(home, "--cursor-file", str(cursor_file)).stdout == b""


def test_follow_into_a_closed_pipe_ends(home: Path, tmp_path: Path):
    write(home, "a")
    cursor_file = tmp_path / "cursor"
    command = " ".join(reconcile_command())
    done = subprocess.run(
        f"set -o pipefail; {command} replay --follow --cursor-file {cursor_file} | head -1",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        env=clean_env(RECONCILE_HOME=str(home)),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr  # a closed pipe: the command's own code
    assert len(done.stdout.splitlines()) == 1 and done.stderr == b""
    # The pipe took what it took; the cursor file never runs ahead of what was written.
    rest = lines_of(replay(home, "--cursor-file", str(cursor_file)).stdout)
    assert {r["id"] for r in rest} <= set(history_ids(home))


@pytest.fixture
def busy(home: Path) -> Iterator[Callable[[], None]]:
    """Writers (journals with late outcomes, real hooks) and compactions, until the end."""
    stop = threading.Event()
    failures: list[BaseException] = []

    def writers() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                write(home, f"w{n}", count=random.randint(1, 6))
                if n % 4 == 0:
                    proc = hook_process(
                        home,
                        DEAD_URL,
                        {"session_id": f"s-{n}"},
                        RECONCILE_EXECUTOR_ID=f"h-{n}",
                        RECONCILE_RETRY_HORIZON="0",
                    )
                    _, err = proc.communicate(timeout=120)
                    assert proc.returncode == 0, err
            except BaseException as exc:
                failures.append(exc)
                return

    def compactor() -> None:
        while not stop.is_set():
            done = cli("compact", home=home)
            if done.returncode != 0:
                failures.append(AssertionError(done.stderr))
                return
            stop.wait(0.2)

    write(home, "w0")
    threads = [threading.Thread(target=writers), threading.Thread(target=compactor)]
    for thread in threads:
        thread.start()

    def stop_all() -> None:
        stop.set()
        for thread in threads:
            thread.join(timeout=600)
        wait_idle(home)  # the hooks' reconcilers, which may journal too, are done
        assert failures == []

    try:
        yield stop_all
    finally:
        stop_all()


def test_a_follower_killed_and_resumed_50_times_loses_and_repeats_nothing(
    home: Path, tmp_path: Path, busy: Callable[[], None]
):
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    cursor_file = tmp_path / "cursor"
    position: str | None = None
    # Printed before the position a cursor holds: never printed again.
    acknowledged: set[str] = set()
    # Printed by a follower SIGKILLed in cursor-file mode, after the position its last
    # save holds, as far as can be told from outside: these may come again.
    tentative: set[str] = set()
    modes = ["after-cursor", "file-term", "file-kill"]
    for run in range(51):
        mode = modes[run % 3]
        out = tmp_path / f"out-{run}"
        if mode == "after-cursor":
            args = ["--after-cursor", position] if position else []
        else:
            if position:
                journal.write_atomically(cursor_file, position.encode() + b"\n")
            elif cursor_file.exists():
                cursor_file.unlink()
            args = ["--cursor-file", str(cursor_file)]
        proc = follower(home, *args, out=out)
        count = rng.randint(0, 8)
        wait_for(lambda o=out, n=count, p=proc: reached(p, o, n))
        proc.send_signal(signal.SIGTERM if mode == "file-term" else signal.SIGKILL)
        code = proc.wait(timeout=120)
        stderr = (tmp_path / f"out-{run}.err").read_bytes()
        printed = lines_of(out.read_bytes())
        ids = [r["id"] for r in printed]
        assert all(len(r["cursor"]) <= journal_max_cursor() for r in printed)
        assert len(set(ids)) == len(ids), (run, mode)
        assert not acknowledged & set(ids), (run, mode, acknowledged & set(ids))
        if mode == "file-term":
            assert code in (0, -signal.SIGTERM), stderr
            if code != 0:  # killed before its handler was in place: it printed nothing
                assert printed == []
        if mode == "file-kill":
            tentative |= set(ids)
            position = cursor_file.read_text().strip() if cursor_file.exists() else position
        elif printed:
            acknowledged |= set(ids)
            tentative -= acknowledged
            position = printed[-1]["cursor"] if mode == "after-cursor" else position
            if mode == "file-term":
                position = cursor_file.read_text().strip()
    # The writers and compactions stop; a last follower reads the rest.
    tail = tmp_path / "tail"
    proc = follower(home, *(["--after-cursor", position] if position else []), out=tail)
    busy()
    expected = set(history_ids(home))
    wait_for(lambda: acknowledged | {r["id"] for r in lines_of(tail.read_bytes())} >= expected, 300)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0
    last = [r["id"] for r in lines_of(tail.read_bytes())]
    assert len(set(last)) == len(last) and not acknowledged & set(last)
    assert acknowledged | set(last) == expected


def test_header_says_what_history_is_retained(home: Path):
    write(home, "a")
    journal.compact(home)
    write(home, "b")
    header = json.loads(replay(home, "--header").stdout)
    ids = history_ids(home)
    assert header["records"] == len(ids) and sum(header["by_type"].values()) == len(ids)
    assert header["oldest"] <= header["newest"] and header["archive_files"] >= 1
    words = replay(home, "--header", "-o", "short")
    assert words.returncode == 0 and b"oldest record:" in words.stdout


def test_a_journal_finished_between_listing_and_reading_is_not_read_twice(home: Path):
    """Its mtime at the listing is older than the one it ends with: the cursor's rules
    need the last (taken when the journal is opened, finished), or a resume reads it
    whole again. The writer appends and closes exactly between the two."""
    writer = journal.Writer(home)
    first = writer.append("executor:a", {"session_id": "s-1"}, "session.observed")
    path = writer.path
    assert path is not None
    old = time.time() - 60  # listed as written a minute ago
    os.utime(path, (old, old))

    class Between(journal.HistoryReader):
        def _list(self) -> dict[str, int]:
            listed = super()._list()
            writer.append("executor:a", {"session_id": "s-2"}, "session.observed")
            writer.close()  # finished now, written after the listing
            return listed

    reader = Between(home)
    ids = [r["id"] for r in reader.read()]
    assert len(ids) == 2 and ids[0] == first
    cursor = reader.cursor_text()
    again = replay(home, "--after-cursor", cursor)
    assert again.returncode == 0 and again.stdout == b"", again.stdout


def test_until_leaves_what_follows_for_the_cursor(home: Path, tmp_path: Path):
    write(home, "a")
    records = lines_of(replay(home).stdout)
    cut = records[1]["ts"]
    cursor_file = tmp_path / "cursor"
    before = lines_of(replay(home, "--until", cut, "--cursor-file", str(cursor_file)).stdout)
    after = lines_of(replay(home, "--cursor-file", str(cursor_file)).stdout)
    assert [r["id"] for r in before + after] == [r["id"] for r in records]


@pytest.mark.parametrize("when", ["9999-12-31T23:00:00-05:00", "99999999999d"])
def test_a_time_out_of_range_is_a_usage_error(home: Path, when: str):
    done = replay(home, "--since", when)
    assert done.returncode == 2 and b"invalid time" in done.stderr
    assert b"Traceback" not in done.stderr
