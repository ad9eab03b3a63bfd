"""What the controller knows and tells: per-VM status, internal errors, /status, /healthz and /metrics.

:class:`ControllerStatus` is a part of :class:`~reconciler.runtime.controller.Controller`:
it reads and writes the controller's state under ``_status_lock``.
"""

from __future__ import annotations

import datetime
import json

from reconciler import logconfig
from reconciler.core import model, planner, redaction
from reconciler.core import plan as plans

log = logconfig.get_logger("kvmops.controller")


class InternalErrors:
    """Records unexpected exceptions by where they happened, until that part runs cleanly again.

    A part of both controllers: it needs ``_status_lock``, ``_internal_errors`` (a dict)
    and ``metrics``.
    """

    def _survive(self, where: str, exc: Exception, *, reconcile_id: str | None = None,
                 retry_in: float | None = None) -> str:
        """Record an unexpected exception in ``where``: one event, a metric, /status and /healthz; return its message.

        The traceback is logged the first time a message is seen in ``where``; a repeat says how many times.
        """
        message = f"internal error: {type(exc).__name__}: {exc}"
        with self._status_lock:
            previous = self._internal_errors.get(where)
            repeats = previous["count"] + 1 if previous is not None and previous["error"] == message else 1
            self._internal_errors[where] = {"error": message, "since": previous["since"] if repeats > 1 else now(),
                                            "count": repeats, "reconcile_id": reconcile_id}
        self.metrics.inc("kvmops_errors_total", kind="internal")
        log.error("internal_error", where=where, error=message, occurrences=repeats,
                  **({"reconcile_id": reconcile_id} if reconcile_id else {}),
                  **({"retry_in_s": round(retry_in, 2)} if retry_in is not None else {}),
                  **({"exc_info": exc} if repeats == 1 else {}))
        return message

    def _recovered(self, where: str) -> None:
        """Forget the internal error of ``where``: it just ran cleanly."""
        if where not in self._internal_errors:
            return
        with self._status_lock:
            gone = self._internal_errors.pop(where, None)
        if gone is not None:
            log.info("internal_error_cleared", where=where, occurrences=gone["count"])


class StatusRoutes:
    """The HTTP routes of both controllers: /healthz (with and without the token), /status, /metrics.

    A part of both controllers: it needs ``health()``, ``status_document()`` and ``metrics``.
    """

    def _healthz(self) -> tuple[int, str, str]:
        healthy, why = self.health()
        return (200 if healthy else 503), "text/plain; charset=utf-8", redaction.redact_text(why) + "\n"

    def _healthz_public(self) -> tuple[int, str, str]:
        # without the token a probe learns up or down, not why: reasons name hosts, VMs, commits and errors
        healthy, _why = self.health()
        return (200, "text/plain; charset=utf-8", "ok\n") if healthy else (503, "text/plain; charset=utf-8", "unavailable\n")

    def _status_route(self) -> tuple[int, str, str]:
        # errors quoted from git or libvirt may carry a URL: the whole document is redacted, not field by field
        return 200, "application/json", json.dumps(redaction.redact_value(self.status_document()), indent=2) + "\n"

    def _metrics_route(self) -> tuple[int, str, str]:
        return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.render()


class ControllerStatus(InternalErrors, StatusRoutes):
    """Records each pass's outcome and internal errors, and serves them."""

    def _record(self, desired: model.DesiredState, actual: model.ActualState, plan: plans.Plan) -> None:
        previous = {str(p) for p in self._problems}
        current = {str(p) for p in plan.problems}
        for problem in plan.problems:
            if str(problem) not in previous:
                log.error("manifest_problem", file=problem.file, line=problem.line, field=problem.path, error=problem.message)
        if previous and not current:
            log.info("manifest_problems_resolved")
        if plan.prune_suspended != self._prune_suspended:
            if plan.prune_suspended:
                log.warning("pruning_suspended", reason=plan.prune_suspended, kept=list(plan.kept))
            else:
                log.info("pruning_resumed")
        scope = self.settings.planner.scope
        mine = {name: d for name, d in actual.domains.items() if d.owned and planner.scope_of(d) == scope}
        self._interesting = frozenset(desired.vms) | frozenset(mine)
        by_key = {r.key: r for r in plan.resources}
        with self._status_lock:
            self._problems = list(plan.problems)
            self._foreign = plan.foreign
            self._prune_suspended = plan.prune_suspended
            vms: dict[str, dict] = {}
            for name in sorted(set(desired.vms) | set(mine)):
                spec = desired.vms.get(name)
                domain = actual.domains.get(name)
                resource = by_key.get(f"VirtualMachine/{name}")
                previous_vm = self._vm_status.get(name, {})
                pending = []
                if domain is not None and domain.live is not None and domain.definition is not None:
                    pending = [f"{f}: {old} -> {new}" for f, old, new in planner.restart_pending(domain.live, domain.definition)]
                if spec is not None:
                    wanted = spec.run_strategy.desired_power
                elif name in plan.kept:
                    wanted = "absent, but kept: pruning is suspended"
                elif resource is None and domain is not None and planner.mark_is_unbound(domain):
                    wanted = f"absent, but kept: {planner.UNBOUND_MARK_KEPT}"
                else:
                    wanted = "absent (to be pruned)"
                owner = domain.definition.owner if domain is not None and domain.definition is not None else None
                vms[name] = {
                    "manifest": spec.manifest if spec else None,
                    "revision": owner.revision if owner is not None else None,
                    "desired": wanted,
                    "actual": domain.power.value if domain else "absent",
                    "uuid": domain.uuid if domain else None,
                    "pending_actions": [a.value for a in resource.actions] if resource else [],
                    "problems": [str(p) for p in resource.problems] if resource else [],
                    "restart_pending": pending,
                    "last_reconcile": previous_vm.get("last_reconcile"),
                    # A VM with nothing left to do is not failing, however its last execution ended
                    # (a start that succeeded while the connection dropped, a step another kvmops finished).
                    "last_error": previous_vm.get("last_error") if resource is not None and resource.changed else None,
                }
            self._vm_status = vms
            states: dict[str, float] = {}
            for domain in mine.values():
                states[domain.power.value] = states.get(domain.power.value, 0) + 1
        self.metrics.replace("kvmops_managed_vms", states, "state")
        self.metrics.set("kvmops_manifest_problems", len(plan.problems))

    def _note_execution(self, resource: plans.ResourcePlan, ok: bool, error: str | None) -> None:
        if resource.kind != "VirtualMachine":
            return
        with self._status_lock:
            entry = self._vm_status.setdefault(resource.name, {})
            entry["last_reconcile"] = now()
            entry["last_error"] = None if ok else error
            if ok:
                entry["pending_actions"] = []

    def status_document(self) -> dict:
        """Return the controller's state, as served on ``/status``."""
        with self._status_lock:
            return {
                "uri": redaction.redact_url(self.settings.uri),
                "manifests": self.settings.path,
                "connected": self._connected,
                "disconnect_reason": None if self._connected else self._disconnect_reason,
                "ready": self._ready,
                "passes": self._passes,
                "last_pass": dict(self._last_pass),
                "prune_suspended": self._prune_suspended,
                "problems": [str(p) for p in self._problems],
                "foreign": list(self._foreign),
                "git": self._source.status() if self._source is not None else None,
                "internal_errors": {where: dict(entry) for where, entry in self._internal_errors.items()},
                "vms": {name: dict(entry) for name, entry in self._vm_status.items()},
            }

    def health(self) -> tuple[bool, str]:
        """Return (healthy, why): connected, no internal error outstanding, the last pass succeeded, no VM failing."""
        if self._source is not None and self._source.last_error and self._source.applied is None:
            return False, f"git: {self._source.last_error}"
        if not self._connected:
            return False, f"not connected to libvirtd: {self._disconnect_reason or 'connecting'}"
        with self._status_lock:
            internal = sorted(self._internal_errors.items())
        if internal:
            where, entry = internal[0]
            return False, f"{where}: {entry['error']} ({entry['count']} time(s) since {entry['since']}; retrying)"
        if not self._ready:
            return False, "first pass not finished"
        if not self._last_pass_ok:
            return False, self._last_pass.get("error") or f"{len(self._problems)} manifest problem(s)"
        with self._status_lock:
            failing = [name for name, vm in self._vm_status.items() if vm.get("last_error")]
        if failing:
            return False, f"failing: {', '.join(failing)}"
        if self._source is not None and self._source.rejected is not None:
            return False, f"git commit {self._source.rejected.commit[:12]} does not validate; {self._source.applied or 'nothing'} stays applied"
        return True, "ok"

    def _summary(self) -> str:
        with self._status_lock:
            total = len(self._vm_status)
            failing = sum(1 for vm in self._vm_status.values() if vm.get("last_error"))
            problems = len(self._problems)
        parts = [f"{total} VM(s)"]
        if failing:
            parts.append(f"{failing} failing")
        if problems:
            parts.append(f"{problems} manifest problem(s), pruning suspended")
        if not self._connected:
            parts.append("libvirtd unreachable")
        return ", ".join(parts)



def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
