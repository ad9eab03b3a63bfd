"""The controller's small parts: sd_notify, metrics, configuration, host lock, watcher filter, HTTP listener."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler import errors
from reconciler.adapters import systemd
from reconciler.adapters.statusserver import StatusServer, parse_address
from reconciler.adapters.watcher import relevant
from reconciler.runtime import configuration, hostlock, metrics

# -- sd_notify ------------------------------------------------------------------------------


class NotifySocket:
    """A service manager's end of ``$NOTIFY_SOCKET``: a real AF_UNIX datagram socket."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(2)

    def receive(self) -> str:
        return self.sock.recv(4096).decode()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Return a directory whose paths fit in a Unix socket address (108 bytes)."""
    directory = tempfile.mkdtemp(prefix="kvn-")
    yield Path(directory)
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def notify_path(short_dir: Path) -> Iterator[tuple[str, NotifySocket]]:
    """Return a filesystem NOTIFY_SOCKET value and the socket listening on it."""
    path = str(short_dir / "notify")
    listener = NotifySocket(path)
    yield path, listener
    listener.sock.close()


def test_notifier_sends_ready_with_status_as_one_datagram(notify_path):
    """ready() sends READY=1 and the status line in one newline-separated message."""
    path, listener = notify_path
    notifier = systemd.Notifier({"NOTIFY_SOCKET": path})

    assert notifier.enabled
    assert notifier.ready("3 VM(s)") is True
    assert listener.receive() == "READY=1\nSTATUS=3 VM(s)"


def test_notifier_sends_status_watchdog_and_stopping_messages(notify_path):
    """status(), watchdog() and stopping() each send their own datagram in the sd_notify format."""
    path, listener = notify_path
    notifier = systemd.Notifier({"NOTIFY_SOCKET": path})

    notifier.status("2 VM(s), 1 failing")
    notifier.watchdog()
    notifier.stopping()

    assert [listener.receive() for _ in range(3)] == [
        "STATUS=2 VM(s), 1 failing",
        "WATCHDOG=1",
        "STOPPING=1\nSTATUS=stopping",
    ]


def test_notifier_keeps_a_multiline_status_on_one_line(notify_path):
    """A newline inside a status cannot start a new sd_notify field: it becomes a space."""
    path, listener = notify_path
    notifier = systemd.Notifier({"NOTIFY_SOCKET": path})

    notifier.status("error: bad\nREADY=1")

    assert listener.receive() == "STATUS=error: bad READY=1"


def test_notifier_reaches_a_socket_in_the_abstract_namespace():
    """A NOTIFY_SOCKET starting with '@' names an abstract socket, as systemd means it."""
    name = f"kvmops-test-{uuid.uuid4().hex}"
    listener = NotifySocket("\0" + name)
    try:
        notifier = systemd.Notifier({"NOTIFY_SOCKET": "@" + name})

        assert notifier.ready("ok") is True
        assert listener.receive() == "READY=1\nSTATUS=ok"
    finally:
        listener.sock.close()


def test_notifier_is_a_no_op_without_notify_socket():
    """Without NOTIFY_SOCKET every call returns False and nothing is sent."""
    notifier = systemd.Notifier({})

    assert not notifier.enabled
    assert notifier.ready("ok") is False
    assert notifier.status("ok") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False
    assert notifier.watchdog_interval is None


def test_notifier_reads_the_process_environment_by_default(notify_path, monkeypatch):
    """A Notifier made without arguments uses $NOTIFY_SOCKET of the process."""
    path, listener = notify_path
    monkeypatch.setenv("NOTIFY_SOCKET", path)

    systemd.Notifier().watchdog()

    assert listener.receive() == "WATCHDOG=1"


def test_notifier_survives_a_socket_nobody_listens_on(short_dir):
    """A NOTIFY_SOCKET that does not exist makes calls return False instead of raising."""
    notifier = systemd.Notifier({"NOTIFY_SOCKET": str(short_dir / "gone")})

    assert notifier.enabled
    assert notifier.ready("ok") is False


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        pytest.param({"WATCHDOG_USEC": "20000000"}, 10.0, id="half-of-watchdog-usec"),
        pytest.param({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(os.getpid())}, 1.5, id="pid-is-ours"),
        pytest.param({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None, id="pid-is-another"),
        pytest.param({"WATCHDOG_USEC": "0"}, None, id="zero-disables"),
        pytest.param({"WATCHDOG_USEC": "soon"}, None, id="not-a-number"),
        pytest.param({}, None, id="absent"),
    ],
)
def test_notifier_computes_the_watchdog_interval_from_the_environment(environ, interval):
    """The watchdog is pinged at half of WATCHDOG_USEC, and only by the process WATCHDOG_PID names."""
    assert systemd.Notifier({"NOTIFY_SOCKET": "@x", **environ}).watchdog_interval == interval


# -- metrics --------------------------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\[\\"n])*"'
_LABELS = rf"\{{(?:{_NAME}={_LABEL_VALUE}(?:,{_NAME}={_LABEL_VALUE})*)?\}}"
_SAMPLE = re.compile(rf"^(?P<name>{_NAME})(?P<labels>{_LABELS})? (?P<value>\S+)$")
_LABEL_PAIR = re.compile(rf"({_NAME})=({_LABEL_VALUE})")


def _unescape(quoted: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), quoted[1:-1])


def parse_prometheus(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, dict[str, str], float]]]:
    """Parse Prometheus text format 0.0.4 strictly; return ({family: (type, help)}, samples).

    Fails the test on any line that the format does not allow, a sample before its
    family's TYPE line, a repeated HELP/TYPE, or a series given twice.
    """
    assert text.endswith("\n"), "the exposition must end with a newline"
    families: dict[str, tuple[str, str]] = {}
    helps: dict[str, str] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    seen: set[tuple[str, tuple]] = set()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP "):].partition(" ")
            assert name not in helps, f"second HELP for {name}"
            helps[name] = help_text
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE "):].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in families, f"second TYPE for {name}"
            families[name] = (kind, helps.get(name, ""))
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a valid sample line: {line!r}"
        name = match["name"]
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in families else name
        assert family in families, f"sample {name} before its # TYPE line"
        labels = {k: _unescape(v) for k, v in _LABEL_PAIR.findall(match["labels"] or "")}
        series = (name, tuple(sorted(labels.items())))
        assert series not in seen, f"series given twice: {line!r}"
        seen.add(series)
        samples.append((name, labels, float(match["value"])))
    return families, samples


def sample(samples, name: str, **labels: str) -> float:
    found = [value for n, l, value in samples if n == name and l == labels]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def test_metrics_render_help_and_type_for_every_family():
    """Even before anything happens, each metric has one HELP and one TYPE line, and the text parses."""
    families, _samples = parse_prometheus(metrics.Metrics().render())

    assert families["kvmops_reconcile_passes_total"][0] == "counter"
    assert families["kvmops_reconcile_duration_seconds"][0] == "histogram"
    assert families["kvmops_managed_vms"][0] == "gauge"
    assert families["kvmops_connected"][0] == "gauge"
    assert all(help_text for _kind, help_text in families.values())


def test_metrics_render_counters_and_gauges_with_their_labels():
    """inc(), set() and replace() show up as labelled series with their values."""
    registry = metrics.Metrics()
    registry.inc("kvmops_reconcile_passes_total", result="ok")
    registry.inc("kvmops_reconcile_passes_total", result="ok")
    registry.inc("kvmops_reconcile_passes_total", result="error")
    registry.set("kvmops_connected", 1)
    registry.replace("kvmops_managed_vms", {"running": 3, "shutoff": 1}, "state")
    registry.replace("kvmops_managed_vms", {"running": 2}, "state")

    _families, samples = parse_prometheus(registry.render())

    assert sample(samples, "kvmops_reconcile_passes_total", result="ok") == 2
    assert sample(samples, "kvmops_reconcile_passes_total", result="error") == 1
    assert sample(samples, "kvmops_connected") == 1
    assert {l["state"]: v for n, l, v in samples if n == "kvmops_managed_vms" and v} == {"running": 2}
    assert registry.value("kvmops_reconcile_passes_total", result="ok") == 2


def test_metrics_expose_every_known_series_at_zero_before_the_first_sample():
    """A fresh registry already has each documented label set at 0, so queries and alerts work before anything happens."""
    _families, samples = parse_prometheus(metrics.Metrics().render())

    for kind in ("execution", "manifests", "libvirt", "git", "internal"):
        assert sample(samples, "kvmops_errors_total", kind=kind) == 0
    for result in ("ok", "problems", "error"):
        assert sample(samples, "kvmops_reconcile_passes_total", result=result) == 0
    assert sample(samples, "kvmops_actions_total", action="start", result="error") == 0
    assert sample(samples, "kvmops_wakeups_total", source="libvirt") == 0
    assert sample(samples, "kvmops_managed_vms", state="shutoff") == 0
    assert sample(samples, "kvmops_drift_repairs_total") == 0
    assert sample(samples, "kvmops_connected") == 0


def test_metrics_escape_backslashes_and_quotes_in_label_values():
    """A label value with a backslash or a double quote is escaped and reads back unchanged."""
    registry = metrics.Metrics()
    registry.inc("kvmops_errors_total", kind='C:\\vms\\"web"')

    _families, samples = parse_prometheus(registry.render())

    assert sample(samples, "kvmops_errors_total", kind='C:\\vms\\"web"') == 1


def test_metrics_keep_label_values_that_differ_only_by_a_newline_apart():
    """Label values 'a\\nb' and 'a b' are two series; the format escapes a newline as \\n."""
    registry = metrics.Metrics()
    registry.inc("kvmops_errors_total", kind="a\nb")
    registry.inc("kvmops_errors_total", kind="a b")

    _families, samples = parse_prometheus(registry.render())

    assert sample(samples, "kvmops_errors_total", kind="a\nb") == 1
    assert sample(samples, "kvmops_errors_total", kind="a b") == 1


def test_metrics_render_large_counters_exactly():
    """A counter past a million renders with every digit, not rounded to 1.23457e+06."""
    registry = metrics.Metrics()
    registry.inc("kvmops_wakeups_total", 1_234_567, source="libvirt")

    _families, samples = parse_prometheus(registry.render())

    assert sample(samples, "kvmops_wakeups_total", source="libvirt") == 1_234_567


def test_metrics_histogram_buckets_are_cumulative_and_inf_equals_count():
    """Each bucket counts every observation at or below its bound; +Inf and _count are the total."""
    registry = metrics.Metrics()
    observations = [0.001, 0.005, 0.07, 0.3, 0.3, 4.0, 120.0]
    for seconds in observations:
        registry.observe("kvmops_reconcile_duration_seconds", seconds)

    _families, samples = parse_prometheus(registry.render())
    buckets = [(l["le"], v) for n, l, v in samples if n == "kvmops_reconcile_duration_seconds_bucket"]

    assert buckets[-1] == ("+Inf", len(observations))
    bounds = [float(le) for le, _count in buckets]
    assert bounds == sorted(bounds)
    for le, count in buckets:
        assert count == sum(1 for o in observations if o <= float(le)), le
    counts = [count for _le, count in buckets]
    assert counts == sorted(counts)
    assert sample(samples, "kvmops_reconcile_duration_seconds_count") == len(observations)
    assert sample(samples, "kvmops_reconcile_duration_seconds_sum") == pytest.approx(sum(observations), abs=1e-5)


# -- configuration --------------------------------------------------------------------------

NO_FLAGS = {
    "path": None, "connect": None, "state_dir": None, "allow_empty": None, "no_prune": None, "virt_type": None,
    "shutdown_timeout": None, "resync_interval": None, "quiet_period": None, "parallel": None,
    "termination_grace": None, "listen": None, "listen_token_file": None, "listen_insecure": None,
}


@pytest.fixture
def no_kvmops_environment(monkeypatch, tmp_path):
    for name in ("KVMOPS_CONNECT", "KVMOPS_VIRT_TYPE", "KVMOPS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KVMOPS_STATE_DIR", str(tmp_path / "default-state"))


def write_config(directory: Path, text: str) -> str:
    path = directory / "kvmops.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def test_configuration_without_a_file_is_the_schemas_defaults(no_kvmops_environment, tmp_path):
    """With no file and only PATH given, every setting is the schema's default."""
    settings = configuration.controller_settings({**NO_FLAGS, "path": "/srv/manifests"}, configuration.read(None))

    assert settings.path == "/srv/manifests"
    assert settings.uri == "qemu:///system"
    assert settings.resync_interval == 60
    assert settings.quiet_period == 0.3
    assert settings.workers == 4
    assert settings.termination_grace == 30
    assert settings.listen == ""
    assert settings.state_dir == tmp_path / "default-state"
    assert settings.planner.prune is True
    assert settings.planner.allow_empty is False
    assert settings.planner.virt_type == "auto"
    assert settings.planner.shutdown_timeout == 60


def test_configuration_file_settings_apply_when_no_flag_is_given(no_kvmops_environment, tmp_path):
    """Every setting the file gives is used when the matching flag is absent."""
    path = write_config(tmp_path, """\
        manifests: /srv/manifests
        connect: test:///default
        resyncInterval: 15
        quietPeriod: 1
        shutdownTimeout: 5
        terminationGracePeriod: 7
        prune: false
        allowEmpty: true
        virtType: qemu
        parallel: 2
        listen: 127.0.0.1:9474
        stateDir: /run/kvmops
        """)

    settings = configuration.controller_settings(NO_FLAGS, configuration.read(path))

    assert settings.path == "/srv/manifests"
    assert settings.uri == "test:///default"
    assert settings.resync_interval == 15
    assert settings.quiet_period == 1
    assert settings.planner.shutdown_timeout == 5
    assert settings.termination_grace == 7
    assert settings.planner.prune is False
    assert settings.planner.allow_empty is True
    assert settings.planner.virt_type == "qemu"
    assert settings.workers == 2
    assert settings.listen == "127.0.0.1:9474"
    assert settings.state_dir == Path("/run/kvmops")


def test_configuration_flags_override_the_file(no_kvmops_environment, tmp_path):
    """A flag wins over the same setting in the file."""
    path = write_config(tmp_path, """\
        manifests: /srv/manifests
        connect: test:///default
        resyncInterval: 15
        parallel: 2
        listen: 127.0.0.1:9474
        stateDir: /run/kvmops
        virtType: qemu
        """)
    flags = {**NO_FLAGS, "path": "/other", "connect": "qemu:///session", "resync_interval": 3.0, "parallel": 8,
             "listen": "127.0.0.1:0", "state_dir": "/tmp/state", "virt_type": "kvm", "no_prune": True}

    settings = configuration.controller_settings(flags, configuration.read(path))

    assert settings.path == "/other"
    assert settings.uri == "qemu:///session"
    assert settings.resync_interval == 3.0
    assert settings.workers == 8
    assert settings.listen == "127.0.0.1:0"
    assert settings.state_dir == Path("/tmp/state")
    assert settings.planner.virt_type == "kvm"
    assert settings.planner.prune is False


def test_kvmops_connect_beats_the_files_connect_but_not_the_flag(no_kvmops_environment, tmp_path, monkeypatch):
    """$KVMOPS_CONNECT overrides the file's connect, and --connect overrides both."""
    path = write_config(tmp_path, "manifests: /srv/manifests\nconnect: test:///from-file\n")
    monkeypatch.setenv("KVMOPS_CONNECT", "test:///from-env")
    config = configuration.read(path)

    assert configuration.controller_settings(NO_FLAGS, config).uri == "test:///from-env"
    assert configuration.controller_settings({**NO_FLAGS, "connect": "test:///from-flag"}, config).uri == "test:///from-flag"


def test_kvmops_connect_beats_the_default_uri(no_kvmops_environment, monkeypatch):
    """With no file and no flag, $KVMOPS_CONNECT is used instead of qemu:///system."""
    monkeypatch.setenv("KVMOPS_CONNECT", "test:///from-env")

    settings = configuration.controller_settings({**NO_FLAGS, "path": "m"}, configuration.read(None))

    assert settings.uri == "test:///from-env"


def test_an_invalid_configuration_file_names_each_field_and_its_line(tmp_path):
    """A file breaking the schema gives a ManifestError with FILE:LINE: field: message for each fault."""
    path = write_config(tmp_path, """\
        manifests: /srv/manifests
        connect: test:///default
        resyncInterval: 0
        listen: nowhere
        parralel: 3
        """)

    with pytest.raises(errors.ManifestError) as raised:
        configuration.read(path)

    message = str(raised.value)
    assert f"{path}:3: resyncInterval: 0 is too small" in message
    assert f"{path}:4: listen: write HOST:PORT, e.g. 127.0.0.1:9474, or a mapping of 'address'" in message
    assert f"{path}:5: parralel: unknown field 'parralel' (did you mean 'parallel'?)" in message
    assert [(p.line, p.path) for p in raised.value.problems] == [(3, "resyncInterval"), (4, "listen"), (5, "parralel")]


def test_a_configuration_file_with_broken_yaml_names_its_line(tmp_path):
    """A YAML syntax error in the file is a ManifestError located at its line."""
    path = write_config(tmp_path, "manifests: /srv\nlisten: a: b\nparallel: 2\n")

    with pytest.raises(errors.ManifestError, match=re.escape(f"{path}:2: YAML syntax error")):
        configuration.read(path)


def test_a_missing_configuration_file_is_an_error(tmp_path):
    """Naming a configuration file that does not exist is a ManifestError saying so."""
    with pytest.raises(errors.ManifestError, match="configuration file not found"):
        configuration.read(str(tmp_path / "absent.yaml"))


def test_neither_path_nor_manifests_key_is_an_error(no_kvmops_environment, tmp_path):
    """Without PATH and without 'manifests:' in the file there is nothing to converge: an error that says how to fix it."""
    path = write_config(tmp_path, "connect: test:///default\n")

    with pytest.raises(errors.KvmopsError, match="no manifests: give PATH or --git URL, or 'manifests:' or 'git:'"):
        configuration.controller_settings(NO_FLAGS, configuration.read(path))


# -- host lock ------------------------------------------------------------------------------

HOLDER = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from reconciler.runtime import hostlock
    with hostlock.hold(Path(sys.argv[1]), sys.argv[2]):
        print("held", flush=True)
        sys.stdin.readline()
    print("released", flush=True)
    """)


class OtherProcess:
    """Another process holding the host lock until told to let go."""

    def __init__(self, state_dir: Path, uri: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(state_dir), uri],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
        )
        assert self.process.stdout.readline().strip() == "held"

    @property
    def pid(self) -> int:
        return self.process.pid

    def release(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("\n")
            self.process.stdin.flush()
            assert self.process.stdout.readline().strip() == "released"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.process.stdin.close()
        self.process.stdout.close()


@pytest.fixture
def other_process() -> Iterator:
    started: list[OtherProcess] = []

    def start(state_dir: Path, uri: str) -> OtherProcess:
        started.append(OtherProcess(state_dir, uri))
        return started[-1]

    yield start
    for process in started:
        process.close()


def test_a_second_holder_gets_lock_held_naming_the_first_holders_pid(tmp_path, other_process):
    """While another process holds the lock, hold() fails at once with LockHeld naming that process."""
    first = other_process(tmp_path, "test:///default")

    with pytest.raises(errors.LockHeld) as raised, hostlock.hold(tmp_path, "test:///default"):
        pass

    message = str(raised.value)
    assert f"pid {first.pid} (-c " in message
    assert "test:///default" in message
    assert str(hostlock.lock_path(tmp_path, "test:///default")) in message


def test_a_second_holder_with_a_timeout_waits_for_the_first(tmp_path, other_process):
    """hold(wait=...) reports who it waits for, then gets the lock once the other process lets go."""
    first = other_process(tmp_path, "test:///default")
    waited_for: list[str] = []

    def on_wait(holder: str) -> None:
        waited_for.append(holder)
        first.release()

    with hostlock.hold(tmp_path, "test:///default", wait=10, on_wait=on_wait):
        content = hostlock.lock_path(tmp_path, "test:///default").read_text()

    assert len(waited_for) == 1
    assert waited_for[0].startswith(f"pid {first.pid} ")
    assert content.startswith(f"pid {os.getpid()} ")


def test_a_second_holder_gives_up_when_its_timeout_runs_out(tmp_path, other_process):
    """hold(wait=...) against a holder that never lets go raises LockHeld after about that long."""
    first = other_process(tmp_path, "test:///default")

    began = time.monotonic()
    with pytest.raises(errors.LockHeld, match=f"pid {first.pid} "), hostlock.hold(tmp_path, "test:///default", wait=0.3):
        pass

    assert 0.3 <= time.monotonic() - began < 2


def test_the_lock_is_free_once_its_holder_dies(tmp_path, other_process):
    """The kernel drops the lock of a killed holder, so no stale lock is left behind."""
    first = other_process(tmp_path, "test:///default")
    first.process.kill()
    first.process.wait(10)

    with hostlock.hold(tmp_path, "test:///default"):
        content = hostlock.lock_path(tmp_path, "test:///default").read_text()

    assert content.startswith(f"pid {os.getpid()} ")


def test_the_lock_is_per_uri(tmp_path, other_process):
    """Holding the lock for one libvirt URI does not keep anyone from acting on another."""
    other_process(tmp_path, "qemu:///system")

    assert hostlock.lock_path(tmp_path, "qemu:///system") != hostlock.lock_path(tmp_path, "qemu:///session")
    with hostlock.hold(tmp_path, "qemu:///session"):
        held = hostlock.lock_path(tmp_path, "qemu:///session").read_text()

    assert held.startswith(f"pid {os.getpid()} ")


def test_the_lock_file_is_emptied_on_release(tmp_path):
    """After the block, the lock file names nobody, and the state directory was created as needed."""
    state_dir = tmp_path / "new" / "state"

    with hostlock.hold(state_dir, "test:///default"):
        assert hostlock.lock_path(state_dir, "test:///default").read_text().startswith(f"pid {os.getpid()} ")

    assert hostlock.lock_path(state_dir, "test:///default").read_text() == ""


# -- watcher filter -------------------------------------------------------------------------


@pytest.fixture(params=["plain", "under-hidden"])
def watched_root(request, tmp_path) -> Path:
    """Return a manifest root, once at a plain path and once under a hidden directory (~/.config/...)."""
    if request.param == "plain":
        return tmp_path / "manifests"
    return tmp_path / ".config" / "kvmops" / "manifests"


@pytest.mark.parametrize(
    ("relpath", "directory"),
    [
        pytest.param("web.yaml", False, id="yaml"),
        pytest.param("web.yml", False, id="yml"),
        pytest.param("vms/prod/web.yaml", False, id="nested-yaml"),
        pytest.param("vms", True, id="directory"),
        pytest.param("vms/prod", True, id="nested-directory"),
        pytest.param(".", True, id="the-root-itself"),
    ],
)
def test_watcher_accepts_yaml_files_and_directories(watched_root, relpath, directory):
    """A change to a .yaml/.yml file or a directory under the root could change the manifests."""
    assert relevant(str(watched_root / relpath), str(watched_root), directory=directory)


@pytest.mark.parametrize(
    ("relpath", "directory"),
    [
        pytest.param(".web.yaml", False, id="hidden-file"),
        pytest.param(".web.yaml.swp", False, id="vim-swap"),
        pytest.param(".git/HEAD", False, id="in-git-dir"),
        pytest.param(".git/refs/heads/main.yaml", False, id="yaml-in-hidden-dir"),
        pytest.param(".git", True, id="hidden-directory"),
        pytest.param("vms/.cache", True, id="nested-hidden-directory"),
        pytest.param("vms/.tmp/web.yaml", False, id="yaml-in-nested-hidden-dir"),
        pytest.param("README.md", False, id="markdown"),
        pytest.param("web.yaml~", False, id="editor-backup"),
        pytest.param("web.yaml.orig", False, id="merge-leftover"),
        pytest.param("#web.yaml#", False, id="emacs-autosave"),
        pytest.param("vms/notes.txt", False, id="nested-text"),
    ],
)
def test_watcher_ignores_hidden_and_non_yaml_paths(watched_root, relpath, directory):
    """Hidden files and directories (judged below the root) and other suffixes never trigger a pass."""
    assert not relevant(str(watched_root / relpath), str(watched_root), directory=directory)


# -- HTTP listener --------------------------------------------------------------------------


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture
def status_server() -> Iterator[StatusServer]:
    server = StatusServer("127.0.0.1:0", {
        "/status": lambda: (200, "application/json", json.dumps({"ok": True})),
        "/healthz": lambda: (503, "text/plain; charset=utf-8", "first pass not finished\n"),
    })
    server.start()
    yield server
    server.stop()


def test_status_server_serves_its_routes_on_the_bound_port(status_server):
    """A route's status, content type and body reach the client; the query string is ignored."""
    assert not status_server.address.endswith(":0")

    assert get(f"http://{status_server.address}/status?pretty=1") == (200, "application/json", '{"ok": true}')
    assert get(f"http://{status_server.address}/healthz") == (503, "text/plain; charset=utf-8", "first pass not finished\n")


def test_status_server_answers_404_for_unknown_paths(status_server):
    """A path without a route gets 404 and a hint at the ones that exist."""
    status, _content_type, body = get(f"http://{status_server.address}/nope")

    assert status == 404
    assert "/healthz" in body


@pytest.mark.parametrize(
    ("address", "expected"),
    [("127.0.0.1:9474", ("127.0.0.1", 9474)), ("[::1]:9474", ("::1", 9474)), ("localhost:0", ("localhost", 0))],
)
def test_listen_addresses_are_parsed_as_host_and_port(address, expected):
    """HOST:PORT, with brackets around an IPv6 host, gives (host, port)."""
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9474", ":9474", "127.0.0.1:", "127.0.0.1:http", "127.0.0.1:70000"])
def test_bad_listen_addresses_are_refused_with_an_example(address):
    """A listen address that is not HOST:PORT is a KvmopsError showing the expected form."""
    with pytest.raises(errors.KvmopsError, match=r"is not HOST:PORT \(e\.g\. 127\.0\.0\.1:9474\)"):
        parse_address(address)


def _ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback_available(), reason="no IPv6 loopback on this machine")
def test_status_server_listens_on_an_ipv6_address():
    """The documented [::1]:PORT form gives a listener on the IPv6 loopback."""
    server = StatusServer("[::1]:0", {"/healthz": lambda: (200, "text/plain", "ok\n")})
    server.start()
    try:
        host, _, port = server.address.rpartition(":")
        assert get(f"http://[::1]:{port}/healthz")[0] == 200
        assert host in ("[::1]", "::1")
    finally:
        server.stop()
