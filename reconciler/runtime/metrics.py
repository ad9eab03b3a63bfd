"""The controller's metrics, rendered in Prometheus' text exposition format.

A handful of counters, gauges and one histogram do not justify ``prometheus_client``;
this module keeps them thread-safe and renders ``/metrics`` (format 0.0.4).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from reconciler.core import model, redaction
from reconciler.core import plan as plans

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


_KNOWN_SERIES: dict[str, list[dict[str, str]]] = {
    "kvmops_reconcile_passes_total": [{"result": r} for r in ("ok", "problems", "error")],
    "kvmops_actions_total": [{"action": a.value, "result": r} for a in plans.Action for r in ("ok", "error")],
    "kvmops_drift_repairs_total": [{}],
    "kvmops_errors_total": [{"kind": k} for k in ("execution", "manifests", "libvirt", "git", "internal")],
    "kvmops_wakeups_total": [{"source": s} for s in ("start", "manifests", "libvirt", "transition", "resync",
                                                     "reconnect", "git", "reload")],
    "kvmops_managed_vms": [{"state": p.value} for p in model.PowerState],
    "kvmops_manifest_problems": [{}],
    "kvmops_connected": [{}],
}


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    items = [f'{k}="{_escape(str(v))}"' for k, v in pairs]
    return "{" + ",".join(items) + "}" if items else ""


def _escape(value: str) -> str:
    value = redaction.redact_text(value)  # a label must never carry a credential, whatever fed it
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Family:
    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name, self.kind, self.help = name, kind, help_text
        self.values: dict[tuple[tuple[str, str], ...], float] = {}

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Metrics:
    """Every metric the controller exports."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._families: dict[str, _Family] = {}
        self._histogram_counts: dict[str, list[int]] = {}
        self._histogram_sums: dict[str, float] = {}
        self._histogram_totals: dict[str, int] = {}
        for name, kind, help_text in (
            ("kvmops_reconcile_passes_total", "counter", "Reconcile passes, by result."),
            ("kvmops_reconcile_duration_seconds", "histogram", "Duration of reconcile passes (planning and dispatch)."),
            ("kvmops_actions_total", "counter", "Resources changed, by action and result."),
            ("kvmops_drift_repairs_total", "counter", "Resources changed because libvirt drifted (not because a manifest changed)."),
            ("kvmops_errors_total", "counter", "Errors, by kind."),
            ("kvmops_wakeups_total", "counter", "Reasons the reconciler woke up, by source."),
            ("kvmops_managed_vms", "gauge", "Domains managed by kvmops, by power state."),
            ("kvmops_manifest_problems", "gauge", "Problems in the manifests at the last pass."),
            ("kvmops_connected", "gauge", "1 while connected to libvirtd."),
        ):
            self._families[name] = _Family(name, kind, help_text)
        # Every series that can appear exists from the start, at 0: a rate() or an alert on
        # kvmops_errors_total{kind="git"} then works before the first error, not only after it.
        for name, labels in _KNOWN_SERIES.items():
            for label_set in labels:
                self._families[name].values[tuple(sorted(label_set.items()))] = 0.0
        self._histogram_counts["kvmops_reconcile_duration_seconds"] = [0] * len(_DURATION_BUCKETS)
        self._histogram_sums["kvmops_reconcile_duration_seconds"] = 0.0
        self._histogram_totals["kvmops_reconcile_duration_seconds"] = 0

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        """Add ``amount`` to counter ``name`` with ``labels``."""
        key = tuple(sorted(labels.items()))
        with self._lock:
            family = self._families[name]
            family.values[key] = family.values.get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        """Set gauge ``name`` with ``labels`` to ``value``."""
        with self._lock:
            self._families[name].values[tuple(sorted(labels.items()))] = value

    def replace(self, name: str, values: dict[str, float], label: str) -> None:
        """Replace every series of gauge ``name``: one per ``label`` value; the known values not given are 0."""
        known = {key[0][1]: 0.0 for label_set in _KNOWN_SERIES.get(name, ()) for key in [tuple(label_set.items())]}
        with self._lock:
            self._families[name].values = {((label, k),): v for k, v in {**known, **values}.items()}

    def observe(self, name: str, seconds: float) -> None:
        """Record one observation of histogram ``name``."""
        with self._lock:
            counts = self._histogram_counts[name]
            for index, bound in enumerate(_DURATION_BUCKETS):
                if seconds <= bound:
                    counts[index] += 1
            self._histogram_sums[name] += seconds
            self._histogram_totals[name] += 1

    def value(self, name: str, **labels: str) -> float:
        """Return the current value of a counter or gauge series (0 if never set)."""
        with self._lock:
            return self._families[name].values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> str:
        """Return every metric in Prometheus' text format."""
        lines: list[str] = []
        with self._lock:
            for family in self._families.values():
                lines.extend(family.header())
                if family.kind == "histogram":
                    counts = self._histogram_counts[family.name]
                    for bound, count in zip(_DURATION_BUCKETS, counts):
                        lines.append(f'{family.name}_bucket{{le="{bound}"}} {count}')
                    lines.append(f'{family.name}_bucket{{le="+Inf"}} {self._histogram_totals[family.name]}')
                    lines.append(f"{family.name}_sum {self._histogram_sums[family.name]:.6f}")
                    lines.append(f"{family.name}_count {self._histogram_totals[family.name]}")
                    continue
                for key, value in sorted(family.values.items()):
                    lines.append(f"{family.name}{_labels(key)} {_number(value)}")
        return "\n".join(lines) + "\n"
