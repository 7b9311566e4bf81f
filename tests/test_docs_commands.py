"""Every ``reconcile`` command line that README.md and docs/ show, checked and run.

The command lines are extracted from the documents themselves (code spans and code
blocks), so the docs cannot drift from the program: every command and flag they mention
must exist, every command and flag the program accepts must be mentioned, and every
documented command line, run on a state directory set up by the documented first-run
steps (``db up``, ``install-hooks``), exits 0 (``db remove`` without ``--yes``, which
only lists what it would delete, 0 or 1). Placeholders (``KEY``, ``T``, ``N``,
``PATH``, ...) are filled with values that exist; optional parts in brackets are run both
left out and all given; ``a|b`` alternatives are each run.

What the program knows is read from its own ``--help``, in a real process.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from reconcile_helpers import ROOT, clean_env, reconcile_command, seed, wait_settled

import journal

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*")
GLOBAL_WITH_VALUE = ("--home", "--database-url")
PSQL_OPTIONS = ("--psql", "--unverified-server")  # `db psql`'s own, before psql's


# -- what the documents say -------------------------------------------------------------


def snippets(path: Path) -> Iterator[tuple[str, str]]:
    """(``file:line``, text) of every code span and every line of every code block."""
    text = path.read_text(encoding="utf-8")
    prose: list[str] = []
    in_block = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            prose.append("")
            continue
        if in_block:
            yield f"{path.name}:{number}", re.sub(r"\s#\s.*", "", line)
            prose.append("")
        else:
            prose.append(line)
    joined = "\n".join(prose)  # spans may wrap across lines
    for match in re.finditer(r"`([^`]+)`", joined):
        number = joined.count("\n", 0, match.start()) + 1
        yield f"{path.name}:{number}", match.group(1).replace("\n", " ")


def command_lines(snippet: str) -> Iterator[tuple[str, ...]]:
    """The words after ``reconcile`` in each shell command of ``snippet``, with optional
    ``[...]`` parts left out and all given, and ``a|b`` alternatives expanded."""
    text = snippet.replace("\\|", "|")
    for segment in re.split(r"&&|\|\||;|\s\|\s|<|>|\$\(|\)", text):
        for variant in {
            re.sub(r"\[([^\]]*)\]", "", segment),
            re.sub(r"\[([^\]]*)\]", r"\1", segment),
        }:
            try:
                words = shlex.split(variant)
            except ValueError:
                continue
            starts = [
                i for i, w in enumerate(words) if w == "reconcile" or w.endswith("/reconcile")
            ]
            if not starts or len(words) == starts[0] + 1:
                continue
            rest = words[starts[0] + 1 :]
            if any(w.endswith("...") for w in rest):  # `...`, `ARGS...`: anything at all
                continue
            choices = [w.split("|") if "|" in w and " " not in w else [w] for w in rest]
            yield from itertools.product(*choices)


@cache
def documented() -> dict[tuple[str, ...], str]:
    """Every documented command line (words after ``reconcile``) -> where it is shown."""
    found: dict[tuple[str, ...], str] = {}
    for path in DOCS:
        for where, snippet in snippets(path):
            for words in command_lines(snippet):
                found.setdefault(words, where)
    return found


# -- what the program says --------------------------------------------------------------


@cache
def help_text(*command: str) -> str:
    # A global flag first: `reconcile hook ...` goes straight to the hook, help or not.
    done = subprocess.run(
        [*reconcile_command(), "-v", *command, "--help"], capture_output=True, env=clean_env()
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


@cache
def options(*command: str) -> dict[str, bool]:
    """Option -> whether it takes a value, from the usage line of ``--help``."""
    usage = help_text(*command).split("\n\n", 1)[0]
    found = {m[0]: bool(m[1]) for m in re.findall(r"\[(-[-\w]+)(?: ([A-Z_]+))?\]", usage)}
    found.pop("-h", None)
    return found


@cache
def commands() -> list[str]:
    listing = help_text().split("positional arguments:\n", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in listing.splitlines() if line.startswith("    ")]


@cache
def db_actions() -> list[str]:
    return re.search(r"\{([\w,]+)\}", help_text("db")).group(1).split(",")


def parse(words: tuple[str, ...]) -> tuple[list[str], str | None, list[str]]:
    """(global flags and values, the command, what follows it)."""
    global_flags: list[str] = []
    position = 0
    while position < len(words) and words[position].startswith("-"):
        global_flags.append(words[position])
        position += 1 + (words[position] in GLOBAL_WITH_VALUE)
    command = words[position] if position < len(words) else None
    return global_flags, command, list(words[position + 1 :])


def flags_of(rest: list[str]) -> list[str]:
    """The flags of ``rest``, but psql's after ``db psql`` (they are psql's to check), but
    for the leading ones of ``db psql`` itself."""
    if rest[:1] == ["psql"]:
        leading: list[str] = []
        words = rest[1:]
        while words and words[0] in PSQL_OPTIONS:
            leading.append(words[0])
            words = words[2 if words[0] == "--psql" else 1 :]
        return leading
    return [word for word in rest if word.startswith("-")]


# -- existence, both ways ---------------------------------------------------------------


def test_the_docs_show_command_lines():
    assert len(documented()) > 30  # the extraction works at all
    assert ("db", "up") in documented() and ("install-hooks",) in documented()


def test_every_documented_command_and_flag_exists():
    wrong = []
    for words, where in documented().items():
        global_flags, command, rest = parse(words)
        unknown = [f for f in global_flags if f not in options()]
        if command is None:
            if global_flags != ["--version"]:
                wrong.append((where, words, "no command"))
            continue
        if command not in commands():
            if not PLACEHOLDER.fullmatch(command):  # `reconcile [flags] COMMAND`: any
                unknown.append(command)
        else:
            known = [*options(command), *(PSQL_OPTIONS if rest[:1] == ["psql"] else ())]
            unknown += [f for f in flags_of(rest) if f not in known]
            if command == "db" and (not rest or rest[0] not in db_actions()):
                unknown.append(f"db action {rest[:1]}")
        if unknown:
            wrong.append((where, " ".join(words), unknown))
    assert wrong == []


def test_every_command_and_flag_is_documented():
    shown: dict[str, set[str]] = {}
    shown_globals: set[str] = set()
    for words in documented():
        global_flags, command, rest = parse(words)
        shown_globals.update(global_flags)
        if command is not None:
            shown.setdefault(command, set()).update(flags_of(rest))
            if command == "db" and rest:
                shown[command].add(rest[0])
    missing = [f"reconcile {flag}" for flag in options() if flag not in shown_globals]
    for command in commands():
        if command not in shown:
            missing.append(f"reconcile {command}")
            continue
        wanted = [*options(command), *(db_actions() if command == "db" else [])]
        wanted += list(PSQL_OPTIONS) if command == "db" else []  # in `db --help`'s text
        missing += [f"reconcile {command} {w}" for w in wanted if w not in shown[command]]
    assert missing == []


# -- every documented command line, run ---------------------------------------------------

DEMO_SIZE = {"--agents": "3", "--forks": "12", "--concurrency": "2"}


def phase(words: tuple[str, ...]) -> int:
    """Documented set-up first (db up, install-hooks, a hook), then the commands that
    read, then those that change the set-up; db down, then db remove of this state
    directory's server last."""
    _, command, rest = parse(words)
    if command == "db" and rest[:1] == ["remove"] and "--orphans" not in rest:
        return 6 if "--yes" in rest else 5
    if command == "db" and rest[:1] == ["up"]:
        return 0
    if command == "install-hooks":
        return 1 if not flags_of(rest) else 4
    if command == "hook":
        return 1
    if command == "forget":
        return 3
    if command == "db" and rest[:1] == ["down"]:
        return 5
    return 2


class Setup:
    """The state a documented command line runs against, and its placeholder values."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.home = scratch / "home"
        self.settings = scratch / "user" / ".claude" / "settings.json"
        self.settings.parent.mkdir(parents=True)
        script = Path(reconcile_command()[0])
        assert script.name == "reconcile", "the docs are checked against the installed script"
        self.script = script
        self.env = clean_env(
            HOME=str(scratch / "user"),
            RECONCILE_HOME=str(self.home),
            PATH=f"{script.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        self.url: str | None = None
        self.executors = 0
        self.dirs = itertools.count()

    def run(
        self, words: list[str], stdin: bytes = b"", **env: str
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(self.script), *words],
            input=stdin,
            capture_output=True,
            env={**self.env, **env},
            timeout=600,
        )

    def seed(self) -> None:
        """After the first ``db up``: executors, and one settled cache entry."""
        if self.url is not None:
            return
        done = self.run(["db", "url"])
        assert done.returncode == 0, done.stderr
        self.url = done.stdout.decode().strip()
        seed(self.url, [], [(f"e-{i}", None, None, "running") for i in range(1, 41)])
        self.executors = 1
        self.hook("e-1", "s-1")

    def hook(self, executor: str, session: str, words: list[str] | None = None) -> None:
        done = self.run(
            words or ["hook"],
            stdin=json.dumps({"session_id": session}).encode(),
            RECONCILE_EXECUTOR_ID=executor,
        )
        assert (done.returncode, done.stdout) == (0, b""), done.stderr
        wait_settled(self.home)  # a detached reconciler settles it after the hook exits
        assert f"executor:{executor}" in journal.load(self.home)

    def cursor(self) -> str:
        """The cursor of the first record of the history."""
        done = self.run(["replay"])
        assert done.returncode == 0, done.stderr
        return str(json.loads(done.stdout.splitlines()[0])["cursor"])

    def follow(self, words: list[str]) -> int:
        """Run a ``replay -f`` until it printed a line, then end it as a user does (^C)."""
        with tempfile.TemporaryFile() as out:
            proc = subprocess.Popen([str(self.script), *words], stdout=out, env=self.env)
            deadline = time.monotonic() + 300
            while proc.poll() is None and out.seek(0, os.SEEK_END) == 0:
                assert time.monotonic() < deadline, f"{words}: printed nothing"
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            return proc.wait(timeout=300)

    def fresh_key(self) -> str:
        """A key the cache holds, for a command that forgets it."""
        self.executors += 1
        self.hook(f"e-{self.executors}", "s-1")
        return f"executor:e-{self.executors}"

    def fill(self, words: tuple[str, ...]) -> list[str]:
        _, command, rest = parse(words)
        command_at = len(words) - len(rest) - 1  # before it: the global flags
        filled: list[str] = []
        previous = ""
        for index, word in enumerate(words):
            if PLACEHOLDER.fullmatch(word):
                filled.append(self.value(word, previous, command, index < command_at))
            else:
                filled.append(word)
            previous = word
        if command == "demo":
            for flag, value in DEMO_SIZE.items():  # its default size: tests/test_demo.py
                if flag not in filled:
                    filled += [flag, value]
        return filled

    def value(self, name: str, flag: str, command: str | None, in_globals: bool) -> str:
        if flag == "--home":
            return str(self.home) if in_globals else str(self.scratch / f"demo-{next(self.dirs)}")
        by_flag = {
            "--database-url": self.url or "",
            "--settings": str(self.settings),
            "--command": f"{self.script} hook",
            "--claude-version": "2.1.332",
            "--since": "1h",
            "--until": "2099-01-01",
            "--at": "2099-01-01",
            "--key": "executor:e-1",
            "--executor": "e-1",
            "--type": "session.reconciled",
            "--max-entries": "50",
            "--session-id": "s-doc",
            "--payload": '{"session_id": "s-doc"}',
            "--psql": str(bundled_psql()),
            "--cursor": self.cursor(),
            "--after-cursor": self.cursor(),
            "--cursor-file": str(self.scratch / f"cursor-{next(self.dirs)}"),  # a new one
            **DEMO_SIZE,
        }
        if flag in by_flag:
            return by_flag[flag]
        if name == "KEY":
            return self.fresh_key() if command == "forget" else "executor:e-1"
        if name == "COMMAND":
            return "status"
        raise AssertionError(f"no value for the placeholder {name} after {flag!r}")


@cache
def bundled_psql() -> Path:
    """The embedded server package's psql (libpq 18): what ``db psql`` runs by default."""
    import reconcile

    return reconcile.server_binaries() / "psql"


def expected_code(words: tuple[str, ...], code: int) -> int:
    """0; for ``db remove`` without ``--yes``, 1 when it listed something (documented)."""
    _, command, rest = parse(words)
    listing = command == "db" and rest[:1] == ["remove"] and "--yes" not in rest
    return code if listing and code in (0, 1) else 0


@pytest.fixture
def setup() -> Iterator[Setup]:
    # Outside pytest's temporary root: as root, the embedded server's user must traverse
    # every parent, and each pytest session resets that root to 0700.
    scratch = Path(tempfile.mkdtemp(prefix="reconcile-test-docs-"))
    made = Setup(scratch)
    yield made
    for home in [made.home, *scratch.glob("demo-*")]:  # as root, their data lives outside
        made.run(["--home", str(home), "db", "remove", "--yes"])
    shutil.rmtree(scratch, ignore_errors=True)


def test_every_documented_command_line_runs_and_exits_0(setup):
    lines = sorted(documented().items(), key=lambda item: phase(item[0]))
    assert phase(lines[0][0]) == 0, "the docs must show `reconcile db up`"
    failed = []
    for words, where in lines:
        if phase(words) > 0:
            setup.seed()
        argv = setup.fill(words)
        if parse(words)[1] == "hook":
            setup.hook("e-1", f"s-doc-{len(failed)}-{time.monotonic_ns()}", argv)
            continue
        if "-f" in words:  # a follow: ends on ^C, with 0
            code = setup.follow(argv)
            if code != 0:
                failed.append((where, shlex.join(argv), code, ""))
            continue
        done = setup.run(argv)
        if done.returncode != expected_code(words, done.returncode):
            failed.append((where, shlex.join(argv), done.returncode, done.stderr.decode()[-300:]))
    assert failed == []


# -- the seed examples of docs/database.md, run as written ---------------------------------

SEEDED_AGENT = "7f0c1a52-5d1e-4c59-9f0e-2b6a7c3d9e11"


def sql_blocks(path: Path) -> list[str]:
    """The ```sql blocks of ``path``, in order."""
    return re.findall(r"^```sql\n(.*?)^```", path.read_text(encoding="utf-8"), re.M | re.S)


def test_the_seed_examples_work_on_the_embedded_database_and_beside_an_orchestrator(
    setup, database_url
):
    """The first seed through `reconcile db psql` on the embedded server, the second on
    a database shaped like genie's through `reconcile --database-url URL db psql`; then a
    hook of that agent, identified as the docs show, and the row holds its session id."""
    from orchestrator_helpers import orchestrator_migrate, rows

    embedded, beside = sql_blocks(ROOT / "docs" / "database.md")
    assert "reconcile db psql -v ON_ERROR_STOP=1 < seed.sql" in documented_text()
    assert setup.run(["db", "up"]).returncode == 0
    done = setup.run(["db", "psql", "-v", "ON_ERROR_STOP=1"], stdin=embedded.encode())
    assert done.returncode == 0, done.stderr
    done = setup.run(
        ["hook"], stdin=b'{"session_id": "s-1"}', GENIE_AGENT_NAME="alice", GENIE_TEAM="core"
    )
    assert (done.returncode, done.stdout) == (0, b"")
    wait_settled(setup.home)
    query = "SELECT id, state, claude_session_id FROM executors"
    done = setup.run(["db", "psql", "-X", "-tA", "-c", query])
    assert (done.returncode, done.stdout) == (0, b"e-alice-1|running|s-1\n"), done.stderr

    orchestrator_migrate(database_url)
    other = setup.scratch / "beside"
    migrated = setup.run(
        ["--home", str(other), "db", "migrate"], RECONCILE_DATABASE_URL=database_url
    )
    assert migrated.returncode == 0, migrated.stderr
    psql = ["--home", str(other), "--database-url", database_url, "db", "psql"]
    done = setup.run([*psql, "-v", "ON_ERROR_STOP=1"], stdin=beside.encode())
    assert done.returncode == 0, done.stderr
    done = setup.run(
        ["--home", str(other), "hook"],
        stdin=b'{"session_id": "s-2"}',
        GENIE_AGENT_ID=SEEDED_AGENT,
        RECONCILE_DATABASE_URL=database_url,
    )
    assert (done.returncode, done.stdout) == (0, b"")
    wait_settled(other)
    assert rows(database_url, query) == [("e-alice-1", "running", "s-2")]


def documented_text() -> str:
    return " ".join(" ".join(path.read_text(encoding="utf-8").split()) for path in DOCS)


def readme() -> str:
    return (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_says_the_row_changes_after_the_hook_exits():
    then = " ".join(readme().split("\n- Then: ", 1)[1].split("\n\n", 1)[0].split())
    assert "The row changes shortly after the hook exits" in then
    assert "background reconciler settles it, within a second or so" in then
    assert "`reconcile status`" in then and "`reconcile explain`" in then
    assert "[docs/database.md](docs/database.md)" in then


def test_readme_says_what_the_first_db_up_creates_under_root():
    first_run = " ".join(readme().split("## First run", 1)[1].split("\n## ", 1)[0].split())
    assert "the first `db up` creates a system user, `reconcile-pg`" in first_run
    assert "`/var/lib/reconcile-pg`" in first_run and "`reconcile doctor` says where" in first_run
    assert "`reconcile db remove --orphans`" in first_run
