"""The ``kvmops`` command: ``validate``, ``plan``, ``apply``, ``run``, ``adopt`` and ``demo``.

``main(argv)`` returns the exit status and never lets a traceback out: every expected
failure is a :class:`~reconciler.errors.KvmopsError` printed as one line on stderr.
Output meant for people or programs (plans, reports, JSON) goes to stdout; logs go to
stderr.  Exit status: 0 success, 1 error or problems; ``plan --detailed-exitcode`` adds
2 for "there are changes".

Start-up is most of a one-shot command's time, and the test suites start hundreds of
them: so this module imports only what builds the parser, and each command imports
the runtime modules it uses (libvirt, jsonschema, the executor, the controller's
threads and watchdog) when it runs.  tests/unit/test_cli_startup.py keeps it so.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import reconciler
from reconciler import defaults, errors, logconfig
from reconciler.core import memo, redaction, validation

if TYPE_CHECKING:
    from reconciler.adapters import hypervisor as hv
    from reconciler.core import fleet, model, planner

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CHANGES = 2
DEMO_URI = "test:///default"
DEFAULT_SCOPE = defaults.DEFAULT_SCOPE
LOG_LEVELS = ("debug", "info", "warning", "error")


class _Parser(argparse.ArgumentParser):
    """argparse with exit status 1 for usage errors (2 means "changes" for plan)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _positive_seconds(text: str) -> float:
    """Return ``text`` as a number of seconds above 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 (excluded) and 3600 seconds")
    return value


def _step_seconds(text: str) -> float:
    """Return ``text`` as the seconds a step may take: 0 (no limit) up to a week (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= defaults.MAX_STEP_TIMEOUT:
        raise argparse.ArgumentTypeError(
            f"{text} is not between 0 (no limit) and {defaults.MAX_STEP_TIMEOUT:g} seconds (a week)")
    return value


def _host_timeout(args: argparse.Namespace) -> float:
    """Return the seconds a host gets to answer: ``--host-timeout`` over the configuration file's hostTimeout."""
    from reconciler.runtime import command_settings

    return command_settings.host_timeout(getattr(args, "config", None), getattr(args, "host_timeout", None))


def _step_timeout(args: argparse.Namespace) -> float | None:
    """Return the seconds a step may take (None: no limit): ``--step-timeout`` over the configuration file's stepTimeout."""
    from reconciler.runtime import command_settings

    return command_settings.step_timeout(getattr(args, "config", None), getattr(args, "step_timeout", None))


def default_uri() -> str:
    """Return the libvirt URI used without ``--connect``: ``$KVMOPS_CONNECT`` or qemu:///system."""
    return os.environ.get("KVMOPS_CONNECT") or defaults.DEFAULT_URI


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every subcommand."""
    parser = _Parser(prog="kvmops", description="Declarative GitOps reconciler for KVM virtual machines.")
    parser.add_argument("--version", action="version",
                        version=f"kvmops {reconciler.__version__} (Python {sys.version.split()[0]})")
    _global_options(parser, default_format=os.environ.get("KVMOPS_LOG_FORMAT"), default_level=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    def connect_option(command: argparse.ArgumentParser, *, required_default: bool = True) -> None:
        command.add_argument("--connect", "-c", metavar="URI", default=default_uri() if required_default else None,
                             help="libvirt URI (default: $KVMOPS_CONNECT or qemu:///system)")

    def host_timeout_option(command: argparse.ArgumentParser) -> None:
        command.add_argument("--host-timeout", type=_positive_seconds, default=None, metavar="SECONDS",
                             help="seconds a host gets to be connected to before it counts as unreachable, and to "
                                  "stay silent in the middle of a call before its connection is given up; in a fleet, "
                                  "a look at a Host that answers gets a minute, or six times this (default: "
                                  f"hostTimeout of --config, else {defaults.DEFAULT_HOST_TIMEOUT:g})")

    def step_timeout_option(command: argparse.ArgumentParser) -> None:
        command.add_argument("--step-timeout", type=_step_seconds, default=None, metavar="SECONDS",
                             help="seconds one step may take (a stop: plus the guest's shutdown timeout) before it is "
                                  "abandoned and reported failed; 0: no limit (default: stepTimeout of --config, else "
                                  f"{defaults.DEFAULT_STEP_TIMEOUT:g})")

    def fleet_options(command: argparse.ArgumentParser, *, host: bool = True, host_help: str | None = None) -> None:
        if host:
            command.add_argument("--host", metavar="NAME", default=None,
                                 help=host_help or "in a fleet (manifests with kind: Host), only this Host")
        command.add_argument("--parallel-hosts", type=int, default=defaults.DEFAULT_HOST_WORKERS, metavar="N",
                             help=f"in a fleet, hosts worked on at once (default: {defaults.DEFAULT_HOST_WORKERS})")
        host_timeout_option(command)

    def planning_options(command: argparse.ArgumentParser, *, connect_default: bool = True, host: bool = True,
                         path_optional: bool = False) -> None:
        if path_optional:
            command.add_argument("path", metavar="PATH", nargs="?", default=os.environ.get("KVMOPS_MANIFESTS") or "manifests",
                                 help="manifest directory (default: $KVMOPS_MANIFESTS or manifests)")
        else:
            command.add_argument("path", metavar="PATH", help="manifest directory (searched recursively) or file")
        connect_option(command, required_default=connect_default)
        fleet_options(command, host=host)
        command.add_argument("--no-prune", action="store_true", help="never remove domains whose manifest is gone")
        command.add_argument("--allow-empty", action="store_true",
                             help="allow pruning every managed domain when the manifests declare no VM")
        command.add_argument("--virt-type", choices=("auto", "kvm", "qemu"),
                             default=os.environ.get("KVMOPS_VIRT_TYPE", "auto"),
                             help="domain type for VMs that do not set virtType (default: $KVMOPS_VIRT_TYPE or auto)")
        command.add_argument("--shutdown-timeout", type=float, default=60.0, metavar="SECONDS",
                             help="seconds a guest gets to power off before it is destroyed (default: 60)")
        command.add_argument("--no-color", action="store_true", help="no colours in text output")
        scope_option(command, default=None)  # None: the configuration file's scope, else 'default'
        policy_options(command)

    def policy_options(command: argparse.ArgumentParser, *, mass_prune: bool = True) -> None:
        command.add_argument("--config", metavar="FILE", default=os.environ.get("KVMOPS_CONFIG"),
                             help="the host's configuration file, whose policy: the plan obeys, and whose scope: is the "
                                  "default (default: $KVMOPS_CONFIG)")
        if mass_prune:
            command.add_argument("--allow-mass-prune", action="store_true",
                                 help="remove more VMs in one pass than the policy's maxPrunePerPass allows")

    def plan_then_apply_options(command: argparse.ArgumentParser, apply_help: str) -> None:
        """The options of a fleet command that prints its plan and carries it out with --apply."""
        command.add_argument("--apply", action="store_true", help=apply_help)
        command.add_argument("--output", "-o", choices=("text", "json", "markdown"), default="text")
        command.add_argument("--parallel", type=int, default=defaults.DEFAULT_WORKERS, metavar="N",
                             help=f"steps run at once on each host (default: {defaults.DEFAULT_WORKERS})")
        command.add_argument("--lock-timeout", type=float, default=300.0, metavar="SECONDS")
        command.add_argument("--state-dir", default=None, help="directory of the host locks")
        step_timeout_option(command)

    def scope_option(command: argparse.ArgumentParser, default: str | None = DEFAULT_SCOPE) -> None:
        command.add_argument("--scope", default=os.environ.get("KVMOPS_SCOPE") or default, metavar="NAME",
                             help="name of this manifest set: only domains it created are pruned, and domains "
                                  "another set owns are never touched (default: $KVMOPS_SCOPE or 'default')")

    validate = commands.add_parser("validate", help="check manifests against the schemas and each other")
    validate.add_argument("path", metavar="PATH")
    validate.add_argument("--connect", "-c", metavar="URI",
                          help="also check that the storage pools and networks the manifests use exist on this host")
    validate.add_argument("--live", action="store_true",
                          help="also check the hosts: with Hosts in the manifests, each Host (at its spec.uri) against "
                               "its share of them; else the --connect host ($KVMOPS_CONNECT or qemu:///system)")
    validate.add_argument("--output", "-o", choices=("text", "json"), default="text")
    fleet_options(validate, host_help="in a fleet, check only this Host (implies --live)")
    validate.add_argument("--config", metavar="FILE", default=os.environ.get("KVMOPS_CONFIG"),
                          help="in a fleet, the configuration file whose scope: and hostTimeout: --live uses "
                               "(default: $KVMOPS_CONFIG)")
    scope_option(validate, default=None)
    validate.set_defaults(handler=cmd_validate)

    plan = commands.add_parser("plan", help="show what apply would change (a dry run)")
    planning_options(plan, connect_default=False)  # None tells an explicit --connect, which --state contradicts
    plan.add_argument("--output", "-o", choices=("text", "json", "markdown"), default="text")
    plan.add_argument("--detailed-exitcode", action="store_true",
                      help="exit 0 when there are no changes, 2 when there are, 1 on error")
    plan.add_argument("--state", metavar="FILE", default=None,
                      help="plan against a snapshot from `kvmops state export` instead of the live host")
    plan.set_defaults(handler=cmd_plan)

    diff = commands.add_parser("diff", help="compare the manifests at two git revisions, with no hypervisor")
    diff.add_argument("path", metavar="PATH", nargs="?", default="manifests",
                      help="manifest directory inside a git working tree (default: manifests)")
    diff.add_argument("--base", required=True, metavar="REF", help="the revision to compare from (e.g. origin/main)")
    diff.add_argument("--head", default=None, metavar="REF", help="the revision to compare to (default: the working tree)")
    diff.add_argument("--output", "-o", choices=("text", "json", "markdown"), default="text")
    diff.add_argument("--detailed-exitcode", action="store_true",
                      help="exit 0 when there are no changes, 2 when there are, 1 on error")
    diff.add_argument("--no-prune", action="store_true", help="do not report removed VMs as deletions")
    diff.add_argument("--allow-empty", action="store_true")
    diff.add_argument("--virt-type", choices=("auto", "kvm", "qemu"), default=os.environ.get("KVMOPS_VIRT_TYPE", "auto"))
    diff.add_argument("--shutdown-timeout", type=float, default=60.0, metavar="SECONDS")
    diff.add_argument("--no-color", action="store_true")
    diff.add_argument("--host", metavar="NAME", default=None, help="in a fleet, only this Host's changes")
    scope_option(diff, default=None)
    policy_options(diff)
    diff.set_defaults(handler=cmd_diff)

    state = commands.add_parser("state", help="snapshots of a host, for planning where libvirt is out of reach")
    state_commands = state.add_subparsers(dest="state_command", required=True, metavar="ACTION", parser_class=_Parser)
    export = state_commands.add_parser("export", help="print a JSON snapshot of the host (for plan --state)")
    connect_option(export, required_default=False)
    export.add_argument("--manifests", metavar="PATH", default=os.environ.get("KVMOPS_MANIFESTS"),
                        help="manifests declaring Hosts: export every Host into one fleet snapshot")
    fleet_options(export)
    export.add_argument("--output", "-o", metavar="FILE", default=None, help="write to FILE instead of stdout")
    export.set_defaults(handler=cmd_state_export)

    bin_ = commands.add_parser("trash", help="volumes deleted by a pass, kept for policy.trashRetention: list, restore")
    bin_commands = bin_.add_subparsers(dest="trash_command", required=True, metavar="ACTION", parser_class=_Parser)
    listed = bin_commands.add_parser("list", help="list what the pools' trash holds and until when")
    connect_option(listed)
    host_timeout_option(listed)
    listed.add_argument("--output", "-o", choices=("table", "json"), default="table")
    listed.add_argument("--config", metavar="FILE", default=os.environ.get("KVMOPS_CONFIG"),
                        help="the host's configuration file, for policy.trashRetention (default: $KVMOPS_CONFIG; 24h)")
    listed.set_defaults(handler=cmd_trash_list)
    restore = bin_commands.add_parser("restore", help="move a deleted volume back into its pool")
    restore.add_argument("volume", metavar="VOLUME")
    restore.add_argument("--pool", default=None, help="the pool whose trash holds it (needed when several do)")
    restore.add_argument("--lock-timeout", type=float, default=60.0, metavar="SECONDS",
                         help="wait this long for another kvmops acting on the host (default: 60)")
    restore.add_argument("--state-dir", default=None, help="directory of the host lock")
    connect_option(restore)
    host_timeout_option(restore)
    restore.set_defaults(handler=cmd_trash_restore)

    schema = commands.add_parser("schema", help="print the JSON Schema of a manifest kind (for editors)")
    schema.add_argument("kind", metavar="KIND", nargs="?", default=None,
                        help=f"one of {', '.join(validation.SCHEMA_FILES)} or config; all when omitted")
    schema.set_defaults(handler=cmd_schema)

    status = commands.add_parser("status", help="show each managed VM: power, conditions, addresses, revision")
    status.add_argument("name", metavar="NAME", nargs="?", default=None)
    connect_option(status)
    status.add_argument("--output", "-o", choices=("table", "json"), default="table")
    status.add_argument("--manifests", metavar="PATH", default=os.environ.get("KVMOPS_MANIFESTS"),
                        help="also compare with these manifests (conditions Drifted and Error); with Hosts in them, "
                             "every Host of the fleet")
    fleet_options(status)
    scope_option(status, default=None)
    status.set_defaults(handler=cmd_status)

    wait = commands.add_parser("wait", help="wait until a VM has an IP address, runs, or is stopped")
    wait.add_argument("name", metavar="NAME")
    wait.add_argument("--for", dest="condition", choices=defaults.WAIT_CONDITIONS, required=True)
    wait.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS")
    connect_option(wait, required_default=False)
    wait.add_argument("--manifests", metavar="PATH", default=os.environ.get("KVMOPS_MANIFESTS"),
                      help="manifests declaring Hosts: wait for the VM on whichever Host has it")
    fleet_options(wait)
    wait.set_defaults(handler=cmd_wait)

    ssh = commands.add_parser("ssh", help="ssh to a VM at the address kvmops finds for it")
    ssh.add_argument("name", metavar="NAME")
    ssh.add_argument("--user", "-l", default=None, help="remote user")
    ssh.add_argument("ssh_args", nargs="*", metavar="SSH_ARGS",
                     help="options for ssh, then a remote command")
    connect_option(ssh, required_default=False)
    ssh.add_argument("--manifests", metavar="PATH", default=os.environ.get("KVMOPS_MANIFESTS"),
                     help="manifests declaring Hosts: ssh to the VM on whichever Host has it")
    fleet_options(ssh, host_help="in a fleet, the Host the VM runs on (default: the one Host that has it)")
    ssh.set_defaults(handler=cmd_ssh)

    doctor = commands.add_parser("doctor", help="check the host: KVM, libvirtd, qemu-img, pools, networks, space")
    doctor.add_argument("path", metavar="PATH", nargs="?", default=None,
                        help="manifests to check the host against (with Hosts in them: every Host of the fleet)")
    connect_option(doctor, required_default=False)
    fleet_options(doctor)
    scope_option(doctor, default=None)
    policy_options(doctor, mass_prune=False)
    doctor.set_defaults(handler=cmd_doctor)

    importer = commands.add_parser("import", help="write a manifest for an existing (foreign) domain")
    importer.add_argument("name", metavar="NAME")
    connect_option(importer, required_default=False)
    importer.add_argument("--manifests", metavar="PATH", default=os.environ.get("KVMOPS_MANIFESTS"),
                          help="manifests declaring Hosts: read the domain from the Host that has it (--host NAME), "
                               "and pin the manifest there (placement.host)")
    fleet_options(importer, host_help="in a fleet, the Host to read the domain from (default: the one Host that has it)")
    importer.add_argument("--output", "-o", metavar="FILE", default=None, help="write to FILE instead of stdout")
    importer.set_defaults(handler=cmd_import)

    apply = commands.add_parser("apply", help="converge the host (or every Host of a fleet) on the manifests")
    planning_options(apply, connect_default=False)
    apply.add_argument("--parallel", type=int, default=defaults.DEFAULT_WORKERS, metavar="N",
                       help=f"VMs worked on at once (default: {defaults.DEFAULT_WORKERS})")
    apply.set_defaults(handler=cmd_apply)

    apply.add_argument("--lock-timeout", type=float, default=300.0, metavar="SECONDS",
                       help="wait this long for another kvmops acting on the host (default: 300)")
    apply.add_argument("--state-dir", default=None, help="directory of the host lock (default: $KVMOPS_STATE_DIR, "
                       "/var/lib/kvmops for root, ~/.local/state/kvmops otherwise)")
    step_timeout_option(apply)

    drain = commands.add_parser("drain", help="in a fleet: plan a Host cordoned and its VMs moved off (--apply to do it)")
    drain.add_argument("host_name", metavar="HOST")
    planning_options(drain, connect_default=False, host=False, path_optional=True)
    plan_then_apply_options(drain, "carry the plan out (migrate the VMs off the host)")
    drain.set_defaults(handler=cmd_drain)

    evacuate = commands.add_parser("evacuate", help="in a fleet: plan moving a dead Host's VMs elsewhere "
                                                    "(only VMs whose disks are on shared pools)")
    evacuate.add_argument("host_name", metavar="HOST")
    planning_options(evacuate, connect_default=False, host=False, path_optional=True)
    evacuate.add_argument("--host-is-dead", action="store_true",
                          help="confirm the host is down for good (powered off or fenced): its VMs are defined "
                               "anew elsewhere, so if it still ran them they would run twice")
    plan_then_apply_options(evacuate, "carry the plan out")
    evacuate.set_defaults(handler=cmd_evacuate)

    forget = commands.add_parser("forget-host", help="in a fleet: remove a Host whose manifest is gone from the "
                                                     "fleet's marks, for good (--apply to do it)")
    forget.add_argument("host_name", metavar="HOST")
    planning_options(forget, connect_default=False, host=False, path_optional=True)
    plan_then_apply_options(forget, "rewrite the marks (nothing else changes)")
    forget.set_defaults(handler=cmd_forget_host)

    run = commands.add_parser("run", help="keep the host converged: watch manifests and libvirt, repair drift")
    run.add_argument("path", metavar="PATH", nargs="?", default=None,
                     help="manifest directory (default: 'manifests' in the configuration file)")
    run.add_argument("--connect", "-c", metavar="URI", default=None,
                     help="libvirt URI (default: $KVMOPS_CONNECT, the configuration file, qemu:///system)")
    run.add_argument("--host", metavar="NAME", default=None,
                     help="in a fleet, run as this Host's agent: observe the fleet, change only this Host")
    run.add_argument("--git", metavar="URL", default=None,
                     help="follow a git repository instead of PATH (https, ssh, file://)")
    run.add_argument("--branch", default=None, help="branch to follow with --git (default: main)")
    run.add_argument("--path", dest="git_path", default=None, metavar="SUBDIR",
                     help="subdirectory of the repository holding the manifests (with --git)")
    run.add_argument("--interval", type=float, default=None, metavar="SECONDS",
                     help="seconds between fetches with --git (default: 60)")
    run.add_argument("--config", metavar="FILE", default=os.environ.get("KVMOPS_CONFIG"),
                     help="YAML configuration file (schemas/config.schema.json); re-read on SIGHUP")
    run.add_argument("--resync-interval", type=float, default=None, metavar="SECONDS",
                     help="seconds between full resyncs (default: 60)")
    run.add_argument("--quiet-period", type=float, default=None, metavar="SECONDS",
                     help="calm needed after a manifest change before a pass (default: 0.3)")
    run.add_argument("--listen", default=None, metavar="HOST:PORT",
                     help="serve /healthz, /status and /metrics here (e.g. 127.0.0.1:9474)")
    run.add_argument("--listen-token-file", default=None, metavar="FILE",
                     help="/status and /metrics require 'Authorization: Bearer' with the token in FILE")
    run.add_argument("--listen-insecure", action="store_true", default=None,
                     help="allow a --listen address beyond loopback without a token")
    run.add_argument("--state-dir", default=None, help="directory of the host lock")
    run.add_argument("--no-prune", action="store_true", default=None, help="never remove domains whose manifest is gone")
    run.add_argument("--allow-mass-prune", action="store_true", default=None,
                     help="remove more VMs in one pass than the policy's maxPrunePerPass allows, for as long as it runs")
    run.add_argument("--allow-empty", action="store_true", default=None,
                     help="allow pruning every managed domain when the manifests declare no VM")
    run.add_argument("--virt-type", choices=("auto", "kvm", "qemu"), default=os.environ.get("KVMOPS_VIRT_TYPE"))
    run.add_argument("--shutdown-timeout", type=float, default=None, metavar="SECONDS",
                     help="seconds a guest gets to power off before it is destroyed (default: 60)")
    run.add_argument("--parallel", type=int, default=None, metavar="N", help="VMs worked on at once (default: 4)")
    scope_option(run, default=None)
    run.add_argument("--termination-grace", type=float, default=None, metavar="SECONDS",
                     help="on SIGTERM, wait this long for the steps in progress (default: 30)")
    run.add_argument("--host-timeout", type=_positive_seconds, default=None, metavar="SECONDS",
                     help="in a fleet, seconds a Host gets to be connected to, and to stay silent, before it "
                          "counts as unreachable for that pass; a look at a Host that answers gets a minute, or six "
                          f"times this (default: {defaults.DEFAULT_HOST_TIMEOUT:g})")
    run.set_defaults(handler=cmd_run)

    adopt = commands.add_parser("adopt", help="mark an existing domain as managed by kvmops")
    adopt.add_argument("name", metavar="NAME")
    adopt.add_argument("--lock-timeout", type=float, default=60.0, metavar="SECONDS",
                       help="wait this long for another kvmops acting on the host (default: 60)")
    adopt.add_argument("--state-dir", default=None, help="directory of the host lock")
    adopt.add_argument("--manifests", metavar="PATH", default=None,
                       help="the manifests declaring it (as `kvmops import` wrote): the mark then matches them "
                            "exactly, so the next plan is empty; with Hosts in them, give --host")
    connect_option(adopt, required_default=False)
    fleet_options(adopt, host_help="in a fleet (--manifests declaring Hosts), the Host whose domain NAME is adopted")
    scope_option(adopt)
    adopt.set_defaults(handler=cmd_adopt)

    demo = commands.add_parser("demo", help=f"validate, plan, apply and plan again on {DEMO_URI}, in one process")
    demo.add_argument("path", metavar="PATH", nargs="?", default="manifests")
    demo.add_argument("--connect", "-c", metavar="URI", default=DEMO_URI, help=argparse.SUPPRESS)
    demo.set_defaults(handler=cmd_demo)
    _accept_global_options_after_commands(parser)
    return parser


def _global_options(parser: argparse.ArgumentParser, *, default_format, default_level) -> None:
    parser.add_argument("--log-format", choices=logconfig.FORMATS, default=default_format,
                        help="log format on stderr (default: console on a terminal, JSON otherwise)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=default_level,
                        help="least severe log events shown on stderr (default: warning; info for run)")


def _accept_global_options_after_commands(parser: argparse.ArgumentParser) -> None:
    """Let ``--log-format`` and ``--log-level`` follow the command too: ``kvmops plan DIR --log-level debug``.

    Given after the command they win; absent there, they leave what was given before it
    (argparse.SUPPRESS keeps a subcommand's default from overwriting it).
    """
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command in set(action.choices.values()):
                _global_options(command, default_format=argparse.SUPPRESS, default_level=argparse.SUPPRESS)
                _accept_global_options_after_commands(command)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the kvmops command line; return the exit status."""
    parser = build_parser()
    args = _parse(parser, list(sys.argv[1:] if argv is None else argv))
    # One-shot commands print their report on stdout; their log events would repeat it on
    # stderr, so only warnings and errors show unless asked. The controller's log is its output.
    logconfig.configure(format=args.log_format or "auto",
                        level=args.log_level or ("info" if args.command == "run" else "warning"))
    try:
        return args.handler(args)
    except errors.ManifestError as exc:
        for line in [str(problem) for problem in exc.problems] or [str(exc)]:  # one located line per problem
            _error(line)
        return EXIT_ERROR
    except errors.KvmopsError as exc:
        _error(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_ERROR
    except Exception as exc:  # the promise is one line, never a traceback
        if os.environ.get("KVMOPS_DEBUG"):
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (set KVMOPS_DEBUG=1 for a traceback, and please report it)")
        return EXIT_ERROR
    finally:
        memo.forget_all()


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv``; for ``ssh``, everything after the first ``--`` is ssh's, whatever came before it.

    argparse alone gives ``ssh NAME --user U -- ARGS`` (the README's order) to no argument
    at all, as the NAME/SSH_ARGS pair is matched once, at NAME.
    """
    index = 0
    while index < len(argv) and argv[index].startswith("-") and argv[index] != "--":
        index += 2 if argv[index] in ("--log-format", "--log-level") else 1
    if argv[index:index + 1] == ["ssh"] and "--" in argv[index:]:
        split = argv.index("--", index)
        args = parser.parse_args(argv[:split])
        args.ssh_args = [*args.ssh_args, *argv[split + 1:]]
        return args
    return parser.parse_args(argv)


def _error(message: str) -> None:
    print(f"kvmops: error: {redaction.redact_text(message)}", file=sys.stderr)


def _note(message: str) -> None:
    print(f"kvmops: note: {message}", file=sys.stderr)


def _settings(args: argparse.Namespace) -> planner.Settings:
    from reconciler.runtime import command_settings

    return command_settings.planning(
        args.path, no_prune=args.no_prune, allow_empty=args.allow_empty, virt_type=args.virt_type,
        shutdown_timeout=args.shutdown_timeout, scope=getattr(args, "scope", None), config=getattr(args, "config", None),
        allow_mass_prune=bool(getattr(args, "allow_mass_prune", False)))


def _colour(args: argparse.Namespace) -> bool:
    return sys.stdout.isatty() and not getattr(args, "no_color", False) and "NO_COLOR" not in os.environ


@contextlib.contextmanager
def _connected(args: argparse.Namespace, *, read_only: bool) -> Iterator[hv.Hypervisor]:
    """Yield a connection to ``args.connect`` as every one-shot command opens it: within ``--host-timeout``, with
    keepalives giving a silent libvirtd up after about as long (no call waits for ever), closed likewise."""
    from reconciler.runtime import connection

    with connection.opened(args.connect, read_only=read_only, timeout=_host_timeout(args)) as hypervisor:
        yield hypervisor


def _with_hypervisor(args: argparse.Namespace, shared: hv.Hypervisor | None, *, read_only: bool,
                     body: Callable[[hv.Hypervisor], int]) -> int:
    if shared is not None:
        return body(shared)
    with _connected(args, read_only=read_only) as hypervisor:
        return body(hypervisor)


def _write(text: str, output: str | None, written: str) -> None:
    """Write ``text`` to the file ``output`` (saying ``written`` on stderr), or to stdout."""
    from pathlib import Path

    if output:
        Path(output).write_text(text, encoding="utf-8")
        print(written, file=sys.stderr)
    else:
        sys.stdout.write(text)


def _host_lock(args: argparse.Namespace, uri: str):
    from reconciler.runtime import hostlock

    return hostlock.for_command(uri, state_dir=getattr(args, "state_dir", None), wait=getattr(args, "lock_timeout", 0.0),
                                on_wait=_say_waiting)


def _host_locks(args: argparse.Namespace):
    from reconciler.runtime import hostlock

    return lambda uris: hostlock.for_hosts(uris, state_dir=getattr(args, "state_dir", None),
                                           wait=getattr(args, "lock_timeout", 0.0), on_wait=_say_waiting)


def _say_waiting(holder: str) -> None:
    print(f"waiting for the host lock: {holder or 'held by another kvmops'} ...", file=sys.stderr, flush=True)


# --- validate ---------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace, shared: hv.Hypervisor | None = None) -> int:
    """Check the manifests; print one line per problem; exit 0 when all are valid.

    Offline by default. ``--connect URI`` (or ``--live``) also checks that host; in a fleet
    ``--live`` (or ``--host NAME``) checks each Host against its share of the manifests.
    """
    import json

    from reconciler.core import render
    from reconciler.runtime import reconcile, report

    desired = reconcile.load_desired(args.path)
    problems = list(desired.problems)
    live = bool(getattr(args, "live", False) or getattr(args, "host", None))
    checked = None
    if desired.is_fleet and shared is None and (live or args.connect):
        checked = _fleet_validate(args, desired)
        problems.extend(checked.problems)
    else:
        _refuse_fleet_options(args)
        if live or args.connect or shared is not None:
            args.connect = args.connect or default_uri()

            def check_host(hypervisor: hv.Hypervisor) -> int:
                problems.extend(reconcile.host_problems_on(desired, hypervisor))
                return EXIT_OK
            _with_hypervisor(args, shared, read_only=True, body=check_host)
    failed = bool(problems) or (checked is not None and checked.failed)
    if getattr(args, "output", "text") == "json":
        data = {
            "valid": not failed, "files": desired.files, "virtual_machines": len(desired.vms),
            "storage_pools": len(desired.pools), "networks": len(desired.networks), "images": len(desired.images),
            "problems": redaction.redact_value([render.problem_data(p) for p in problems]),
        }
        if checked is not None:
            data["hosts"] = [{
                "host": h.host, "uri": redaction.redact_url(h.uri), "unreachable": h.unreachable, "missing": h.missing,
                "problems": redaction.redact_value([render.problem_data(p) for p in h.problems]),
            } for h in checked.hosts]
        print(json.dumps(data, indent=2))
    else:
        for problem in problems:
            print(redaction.redact_text(str(problem)))  # a problem may quote a URL from the manifest
        if checked is not None:
            sys.stdout.write(report.host_checks_text(checked))
        counts = (f"{desired.files} file(s), {len(desired.vms)} VirtualMachine(s), {len(desired.pools)} StoragePool(s), "
                  f"{len(desired.networks)} Network(s), {len(desired.images)} Image(s)")
        if desired.is_fleet:  # only in a fleet: single-host output stays as it was
            counts += f", {len(desired.hosts)} Host(s)"
        where = ""
        if checked is not None:
            seen = [h.host for h in checked.hosts if h.unreachable is None]
            silent = [h.host for h in checked.hosts if h.unreachable is not None]
            where = f"; Hosts checked: {', '.join(seen) or 'none'}" + (f"; not checked: {', '.join(silent)}" if silent else "")
        found = len(problems) + (sum(len(h.problems) for h in checked.hosts) if checked is not None else 0)
        if failed:
            print(f"{found} problem(s) found in {args.path} ({counts} valid){where}")
        else:
            print(f"{args.path}: valid ({counts}){where}")
    return EXIT_ERROR if failed else EXIT_OK


def _fleet_validate(args: argparse.Namespace, desired: model.DesiredState) -> fleet.FleetCheck:
    """Check every Host of the fleet (``--host``: one) against its share of the manifests (``validate --live``)."""
    from reconciler.runtime import command_settings, fleet_reconcile

    if args.connect:
        raise errors.KvmopsError(
            f"--connect {redaction.redact_url(args.connect)}: the manifests declare Hosts, each reached at its own "
            f"spec.uri; drop --connect and give --live to check every Host (--host NAME: one of them)"
            + _connect_names_a_host(args.connect, desired)
        )
    fleet_reconcile.require_host(getattr(args, "host", None), desired)
    return fleet_reconcile.check_live(desired, settings=command_settings.scoped(args.scope, args.config),
                                      only_host=args.host,
                                      host_workers=args.parallel_hosts, host_timeout=_host_timeout(args))


# --- plan -------------------------------------------------------------------------------


def cmd_plan(args: argparse.Namespace, shared: hv.Hypervisor | None = None) -> int:
    """Print the plan; exit per ``--detailed-exitcode``."""
    from reconciler.runtime import reconcile

    if getattr(args, "state", None) and args.connect and shared is None:
        raise errors.KvmopsError(
            f"--state {args.state} and --connect {redaction.redact_url(args.connect)} contradict each other: --state "
            "plans against a snapshot, --connect against a live host; give one of them"
        )
    desired = None
    if shared is None and getattr(args, "state", None):
        from reconciler.runtime import snapshot_aside

        # A fleet snapshot is interpreted on the other core while the manifests are read (docs/design.md).
        with snapshot_aside.started(args.state) as aside:
            desired = _load(args.path)
            if desired.is_fleet:
                return _fleet_plan(args, desired, interpreted=aside.take() if aside is not None else None)
        _refuse_fleet_options(args)
    elif shared is None:
        from reconciler.runtime import early_look

        looked: early_look.Looked = {}
        if args.connect:
            desired = _load(args.path)
        else:  # the Hosts are looked at on the other core while the manifests are read (docs/design.md)
            desired, looked = early_look.read_while_looking(
                args.path, load=lambda: _load(args.path), host_workers=args.parallel_hosts,
                host_timeout=_host_timeout(args), only_host=getattr(args, "host", None))
        if desired.is_fleet:
            return _fleet_plan(args, desired, looked=looked)
        _refuse_fleet_options(args)
    if not args.connect:
        args.connect = default_uri()
    if getattr(args, "state", None):
        from reconciler.runtime import review, snapshots

        result = review.plan_from_snapshot(args.path, snapshots.read(args.state), settings=_settings(args))
        _print_plan(result.plan, args)
        return _plan_status(result.plan, args)

    def body(hypervisor: hv.Hypervisor) -> int:
        result = reconcile.make_plan(args.path, hypervisor, settings=_settings(args), desired=desired)
        _print_plan(result.plan, args)
        return _plan_status(result.plan, args)
    return _with_hypervisor(args, shared, read_only=True, body=body)


def _plan_status(plan, args: argparse.Namespace) -> int:
    if plan.problems:
        return EXIT_ERROR
    if args.detailed_exitcode and plan.has_changes:
        return EXIT_CHANGES
    return EXIT_OK


def _print_plan(plan, args: argparse.Namespace, *, title: str | None = None) -> None:
    from reconciler.runtime import report

    output = getattr(args, "output", "text")
    text = report.plan_text(plan, output=output, colour=_colour(args), source=args.path, title=title)
    sys.stdout.write(redaction.redact_text(text))  # a problem may quote a manifest's URL, token and all
    if output != "text":
        for problem in plan.problems:
            print(redaction.redact_text(str(problem)), file=sys.stderr)
    sys.stdout.flush()


def _print_fleet_plan(plan, args: argparse.Namespace, *, title: str | None = None) -> int:
    """Print a fleet plan (grouped per host) and return the exit status, as :func:`_print_plan` and :func:`_plan_status` do."""
    from reconciler.runtime import report

    output = getattr(args, "output", "text")
    sys.stdout.write(redaction.redact_text(
        report.fleet_plan_text(plan, output=output, colour=_colour(args), source=args.path, title=title)))
    problems = report.fleet_plan_problems(plan)
    if output != "text":
        for problem in problems:
            print(redaction.redact_text(str(problem)), file=sys.stderr)
    sys.stdout.flush()
    if problems or plan.unreachable:
        return EXIT_ERROR
    return EXIT_CHANGES if getattr(args, "detailed_exitcode", False) and plan.has_changes else EXIT_OK


# --- diff, state, schema ----------------------------------------------------------------


def cmd_diff(args: argparse.Namespace) -> int:
    """Compare two revisions of the manifests and print the plan between them."""
    from reconciler.runtime import command_settings, fleet_reconcile, review

    settings = command_settings.planning(
        args.path, no_prune=args.no_prune, allow_empty=args.allow_empty, virt_type=args.virt_type,
        shutdown_timeout=args.shutdown_timeout, scope=args.scope, config=args.config,
        allow_mass_prune=args.allow_mass_prune, single_file_stops_pruning=False)
    result = review.diff(args.path, args.base, args.head, settings=settings)
    title = f"kvmops diff {result.base_label} → {result.head_label}"
    if result.fleet is not None:
        fleet_reconcile.require_host(args.host, result.head)
        return _print_fleet_plan(fleet_reconcile.restricted(result.fleet, args.host), args, title=title)
    if args.host is not None:
        raise errors.KvmopsError(f"--host {args.host}: the manifests declare no Host, so there is only the one host")
    for problem in result.base.problems:
        _note(f"base: {problem}")
    _print_plan(result.plan_shown, args, title=title)
    return _plan_status(result.plan_shown, args)


def cmd_state_export(args: argparse.Namespace) -> int:
    """Write a JSON snapshot of the host, or of every Host of a fleet (``--manifests`` declaring Hosts)."""
    from reconciler.runtime import snapshots

    if args.manifests:
        desired = _load(args.manifests)
        if desired.is_fleet:
            _check_fleet_args(args, desired)
            taken = snapshots.take_fleet(desired, only_host=args.host, host_workers=args.parallel_hosts,
                                         host_timeout=_host_timeout(args))
            _write(snapshots.fleet_to_json(taken), args.output,
                   f"snapshot of {len(taken.hosts)} host(s) written to {args.output}")
            for name, error in sorted(taken.unreachable.items()):
                _error(f"host {name} unreachable, not in the snapshot: {error}")
            return EXIT_ERROR if taken.unreachable else EXIT_OK
    _refuse_fleet_options(args)
    args.connect = args.connect or default_uri()
    with _connected(args, read_only=True) as hypervisor:
        taken = snapshots.take(hypervisor)
    _write(snapshots.to_json(taken), args.output,
           f"snapshot of {taken.hostname} ({redaction.redact_url(args.connect)}) written to {args.output}")
    return EXIT_OK


def cmd_schema(args: argparse.Namespace) -> int:
    """Print one schema, or all of them as a JSON object keyed by kind."""
    import json

    files = {**validation.SCHEMA_FILES, "config": validation.CONFIG_SCHEMA, "metadata": "metadata.schema.json"}
    if args.kind is None:
        print(json.dumps({kind: validation.schemas()[name] for kind, name in files.items()}, indent=2))
        return EXIT_OK
    match = {k.lower(): v for k, v in files.items()}.get(args.kind.lower())
    if match is None:
        raise errors.KvmopsError(f"unknown kind {args.kind!r}; choose one of {', '.join(files)}")
    print(json.dumps(validation.schemas()[match], indent=2))
    return EXIT_OK


# --- apply ------------------------------------------------------------------------------


def cmd_apply(args: argparse.Namespace, shared: hv.Hypervisor | None = None) -> int:
    """Print the plan, carry it out, print what was done; exit 0 only when converged."""
    from reconciler.adapters import git
    from reconciler.runtime import reconcile, report

    desired = None
    if shared is None:
        desired = _load(args.path, revision=git.describe(args.path))
        if desired.is_fleet:
            return _fleet_apply(args, desired)
        _refuse_fleet_options(args)
    args.connect = args.connect or default_uri()

    def body(hypervisor: hv.Hypervisor) -> int:
        planned, result = reconcile.plan_and_apply(
            args.path, hypervisor, settings=_settings(args), show_plan=lambda plan: _show_plan_applied(plan, args),
            lock=_host_lock(args, hypervisor.uri), revision=git.describe(args.path), desired=desired,
            workers=args.parallel, step_timeout=_step_timeout(args))
        if result is None:
            return EXIT_ERROR if planned.plan.problems else EXIT_OK
        sys.stdout.write(redaction.redact_text(report.report_text(result)))
        return EXIT_OK if result.converged else EXIT_ERROR
    return _with_hypervisor(args, shared, read_only=False, body=body)


def _show_plan_applied(plan, args: argparse.Namespace) -> None:
    _print_plan(plan, args)
    if plan.has_changes:
        print("Applying...", flush=True)


# --- run --------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    """Run the controller until SIGTERM or SIGINT; SIGHUP re-reads the configuration file."""
    import signal

    # imported here: the controller's threads, HTTP server and watchdog are no business of one-shot commands
    from reconciler.runtime import configuration, controller

    config = configuration.read(args.config)
    if args.log_format is None or args.log_level is None:
        logconfig.configure(format=args.log_format or config.get("logFormat", "auto"),
                            level=args.log_level or config.get("logLevel", "info"))
    flags = vars(args)
    settings = configuration.controller_settings(flags, config)

    def reload() -> controller.ControllerSettings:
        return configuration.controller_settings(flags, configuration.read(args.config))

    from reconciler.runtime.controller import mode_switch

    runner = mode_switch.SwitchingController(settings, host=args.host, reload=reload if args.config else None)
    signal.signal(signal.SIGTERM, lambda *_: runner.request_stop())
    signal.signal(signal.SIGINT, lambda *_: runner.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: runner.request_reload())
    return runner.run()


# --- trash ------------------------------------------------------------------------------


def cmd_trash_list(args: argparse.Namespace) -> int:
    """Print every trash entry of the host's pools: volume, VM, when deleted, until when restorable."""
    import json
    import time

    from reconciler.runtime import command_settings, recovery, report

    retention = command_settings.trash_retention(args.config)
    with _connected(args, read_only=True) as hypervisor:
        found = recovery.listing(hypervisor)
    rows = recovery.rows(found, int(time.time()), retention)
    if args.output == "json":
        print(json.dumps({"entries": rows, "unreadable": list(found.unreadable)}, indent=2))
        return EXIT_OK
    for why in found.unreadable:
        print(f"warning: {why}", file=sys.stderr)
    if not rows:
        print(f"the trash is empty on {redaction.redact_url(args.connect)}")
        return EXIT_OK
    sys.stdout.write(report.trash_table(rows))
    return EXIT_OK


def cmd_trash_restore(args: argparse.Namespace) -> int:
    """Move a volume from its pool's trash back into the pool, under the host lock."""
    from reconciler.runtime import recovery, report

    with _connected(args, read_only=False) as hypervisor, _host_lock(args, hypervisor.uri):
        restored = recovery.restore(hypervisor, args.volume, args.pool)
    sys.stdout.write(report.restored_text(restored))
    return EXIT_OK


# --- status, wait, ssh, doctor ----------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    """Print every domain kvmops manages (in ``--scope``, or all scopes) with its conditions and addresses."""
    import json

    from reconciler.runtime import inspect, report

    if args.manifests:
        desired = _load(args.manifests)
        if desired.is_fleet:
            return _fleet_status(args, desired)
    _refuse_fleet_options(args)
    with _connected(args, read_only=True) as hypervisor:
        rows = inspect.status_rows_on(hypervisor, manifests=args.manifests, name=args.name, scope=args.scope,
                                      default_scope=DEFAULT_SCOPE)
    if args.name and not rows:
        raise errors.ObjectNotFound(f"no domain named {args.name} is managed by kvmops on {args.connect}")
    if args.output == "json":
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no domains managed by kvmops on {redaction.redact_url(args.connect)}")
        return EXIT_OK
    sys.stdout.write(report.status_table(rows, detailed=bool(args.name)))
    return EXIT_OK


def _fleet_status(args: argparse.Namespace, desired: model.DesiredState) -> int:
    import json

    from reconciler.runtime import command_settings, fleet_status, report

    args.connect = None  # the default URI means nothing in a fleet
    _check_fleet_args(args, desired)
    status = fleet_status.gather(desired, settings=command_settings.scoped(args.scope), name=args.name,
                                 scope=args.scope, only_host=args.host, host_workers=args.parallel_hosts,
                                 host_timeout=_host_timeout(args))
    if args.output == "json":
        print(json.dumps(fleet_status.to_data(status), indent=2))
    else:
        sys.stdout.write(report.fleet_status_text(status, detailed=bool(args.name)))
    return EXIT_ERROR if status.unreachable else EXIT_OK


def cmd_wait(args: argparse.Namespace) -> int:
    """Block until the VM has an address, runs, or is stopped; print what was seen."""
    from reconciler.runtime import inspect

    if args.manifests:
        desired = _load(args.manifests)
        if desired.is_fleet:
            _check_fleet_args(args, desired)
            print(inspect.wait_in_fleet(desired, args.name, args.condition, timeout=args.timeout, only_host=args.host,
                                        host_workers=args.parallel_hosts, host_timeout=_host_timeout(args)))
            return EXIT_OK
    _refuse_fleet_options(args)
    args.connect = args.connect or default_uri()
    with _connected(args, read_only=True) as hypervisor:
        print(inspect.wait(hypervisor, args.name, args.condition, timeout=args.timeout))
    return EXIT_OK


def cmd_ssh(args: argparse.Namespace) -> int:
    """Replace this process with ``ssh`` to the VM's first address (in a fleet, found on the Host that has the VM)."""
    from reconciler.runtime import inspect

    on = ""
    if args.manifests and (desired := _load(args.manifests)).is_fleet:
        from reconciler.runtime import deadlines, fleet_reconcile

        _check_fleet_args(args, desired)
        timeout = _host_timeout(args)
        with fleet_reconcile.connected_to_domain(desired, args.name, only_host=args.host,
                                                 host_workers=args.parallel_hosts, host_timeout=timeout) as (host, found):
            answer = deadlines.call_each({host: lambda: inspect.ssh_address(found, args.name)},
                                         timeout=deadlines.look_timeout(timeout),
                                         what=f"asked for the addresses of {args.name}")[host]
        if isinstance(answer, errors.KvmopsError):
            raise answer
        address, on = answer, f" on Host {host}"
    else:
        _refuse_fleet_options(args)
        args.connect = args.connect or default_uri()
        with _connected(args, read_only=True) as hypervisor:
            address = inspect.ssh_address(hypervisor, args.name)
    print(f"kvmops: ssh to {args.name}{on} at {address.ip} ({address.source})", file=sys.stderr, flush=True)
    try:
        os.execvp("ssh", inspect.ssh_argv(address.ip, args.user, list(args.ssh_args)))
    except FileNotFoundError as exc:
        raise errors.KvmopsError("ssh is not installed (apt-get install openssh-client)") from exc
    return EXIT_ERROR  # not reached


def cmd_doctor(args: argparse.Namespace) -> int:
    """Check the host; print one line per finding with what to fix; exit 1 on any failure."""
    from reconciler.runtime import command_settings, doctor, report

    if args.path:
        desired = _load(args.path)
        if desired.is_fleet:
            _check_fleet_args(args, desired)
            found = doctor.fleet_checks(desired, only_host=args.host,
                                        settings=command_settings.scoped(args.scope, args.config),
                                        host_timeout=_host_timeout(args))
            sys.stdout.write(report.fleet_checks_text(found))
            return EXIT_ERROR if found.failed else EXIT_OK
    _refuse_fleet_options(args)
    args.connect = args.connect or default_uri()
    scope, policy = command_settings.host_configuration(args.config, args.scope)
    checks = doctor.checks_on(args.connect, manifests=args.path, scope=scope, policy=policy,
                              host_timeout=_host_timeout(args))
    sys.stdout.write(report.checks_text(checks) + report.checks_summary(checks))
    return EXIT_ERROR if any(c.ok is False for c in checks) else EXIT_OK


# --- import, adopt ----------------------------------------------------------------------


def cmd_import(args: argparse.Namespace) -> int:
    """Write a manifest for an existing domain, ready for `kvmops adopt NAME --manifests`.

    In a fleet (``--manifests`` declaring Hosts) the domain is read from the Host that has it
    (``--host``), and the manifest pins it there (``placement.host``).
    """
    from reconciler.runtime import adoption

    if args.manifests and (desired := _load(args.manifests)).is_fleet:
        from reconciler.runtime import fleet_reconcile

        _check_fleet_args(args, desired)
        with fleet_reconcile.connected_to_domain(desired, args.name, only_host=args.host,
                                                 host_workers=args.parallel_hosts,
                                                 host_timeout=_host_timeout(args)) as (host, hypervisor):
            imported = adoption.import_manifest(hypervisor, args.name, redaction.redact_url(hypervisor.uri), host=host)
    else:
        _refuse_fleet_options(args)
        args.connect = args.connect or default_uri()
        with _connected(args, read_only=True) as hypervisor:
            imported = adoption.import_manifest(hypervisor, args.name, redaction.redact_url(args.connect))
    if imported.already_managed:
        print(f"kvmops: warning: {imported.already_managed}", file=sys.stderr)
    _write(imported.text, args.output, f"manifest for {args.name} written to {args.output}")
    for warning in imported.warnings:
        _note(warning)
    return EXIT_OK


def cmd_adopt(args: argparse.Namespace, shared: hv.Hypervisor | None = None) -> int:
    """Mark a foreign domain as kvmops' own, without changing anything else in it.

    With ``--manifests`` declaring Hosts, the domain on Host ``--host`` becomes the fleet's
    VM placed there (:func:`reconciler.runtime.adoption.adopt_in_fleet`).
    """
    from reconciler.core import planner
    from reconciler.runtime import adoption

    desired = _load(args.manifests) if args.manifests else None
    if desired is not None and desired.is_fleet and shared is None:
        _check_fleet_args(args, desired)
        if args.host is None:
            raise errors.KvmopsError(
                f"adopt {args.name}: the manifests declare Hosts; give --host NAME, the Host whose domain {args.name} "
                f"becomes the fleet's (Hosts: {', '.join(sorted(desired.hosts))})"
            )
        print(adoption.adopt_in_fleet(desired, args.name, args.host, scope=args.scope, manifests=args.manifests,
                                      lock=_host_locks(args), host_workers=args.parallel_hosts,
                                      host_timeout=_host_timeout(args)))
        return EXIT_OK
    _refuse_fleet_options(args)
    args.connect = args.connect or default_uri()

    def body(hypervisor: hv.Hypervisor) -> int:
        print(adoption.adopt(hypervisor, args.name, settings=planner.Settings(scope=args.scope), desired=desired,
                             manifests=args.manifests, host_lock=lambda: _host_lock(args, hypervisor.uri)))
        return EXIT_OK
    return _with_hypervisor(args, shared, read_only=False, body=body)


# --- demo -------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    """Run validate, plan, apply and plan again in one process, on libvirt's test driver.

    The test driver keeps its state inside the process that opened it, so the four
    steps must share one connection to show a real second, empty plan.
    """
    from reconciler.adapters import hypervisor as hv

    base = dict(path=args.path, connect=args.connect, no_prune=False, allow_empty=False,
                virt_type="auto", shutdown_timeout=5.0, no_color=False, detailed_exitcode=True,
                output="text", parallel=defaults.DEFAULT_WORKERS, scope=DEFAULT_SCOPE)
    with hv.Hypervisor.open(args.connect) as hypervisor:
        steps = [
            ("validate", cmd_validate, {EXIT_OK}),
            ("plan", cmd_plan, {EXIT_CHANGES}),
            ("apply", cmd_apply, {EXIT_OK}),
            ("plan", cmd_plan, {EXIT_OK}),
        ]
        for name, handler, expected in steps:
            print(f"\n$ kvmops {name} {args.path} --connect {args.connect}" + (" --detailed-exitcode" if name == "plan" else ""))
            status = handler(argparse.Namespace(**base), hypervisor)
            print(f"[exit status {status}]")
            if status not in expected:
                _error(f"demo step `{name}` exited {status}; expected {' or '.join(map(str, sorted(expected)))}")
                return EXIT_ERROR
    print("\nDemo complete: the second plan is empty, so applying again would change nothing.")
    return EXIT_OK


# --- fleet: manifests with kind: Host -------------------------------------------------


def _load(path: str, *, revision: str = "") -> model.DesiredState:
    from reconciler.runtime import reconcile

    with reconcile.gc_paused():
        return reconcile.load_desired(path, revision=revision)


def _refuse_fleet_options(args: argparse.Namespace) -> None:
    """Refuse ``--host`` where the manifests declare no Host: there is only the one host."""
    if getattr(args, "host", None):
        raise errors.KvmopsError(
            f"--host {args.host}: no Host manifests here, so there is only the one --connect host; --host picks one "
            "Host of a fleet (give the manifests declaring the Hosts)"
        )


def _check_fleet_args(args: argparse.Namespace, desired: model.DesiredState) -> None:
    """Refuse what contradicts a fleet: ``--connect`` (each Host has its URI) and an unknown ``--host``."""
    from reconciler.runtime import fleet_reconcile

    if getattr(args, "connect", None):
        raise errors.KvmopsError(
            f"--connect {redaction.redact_url(args.connect)}: the manifests declare Hosts, each reached at its own "
            "spec.uri; drop --connect (--host NAME restricts the command to one Host)"
            + _connect_names_a_host(args.connect, desired)
        )
    fleet_reconcile.require_host(getattr(args, "host", None), desired)


def _connect_names_a_host(uri: str, desired: model.DesiredState) -> str:
    """Return the hint that ``uri`` is a Host's ``spec.uri`` (so ``--host`` is what was meant), or ""."""
    named = sorted(name for name, host in desired.hosts.items() if host.uri == uri)
    return f"; {redaction.redact_url(uri)} is Host {named[0]}'s spec.uri: --host {named[0]}" if named else ""


def _fleet_plan(args: argparse.Namespace, desired: model.DesiredState, *, evacuate=frozenset(),
                title: str | None = None, interpreted=None, looked=None) -> int:
    """Print the fleet plan (live, or against a fleet snapshot with ``--state``); return the exit status.

    ``interpreted`` is the ``--state`` snapshot already interpreted (by a child process, see
    :mod:`reconciler.runtime.snapshot_aside`); without it the snapshot is read here.
    ``looked``: the Hosts looked at while the manifests were read (:mod:`reconciler.runtime.early_look`).
    """
    from reconciler.runtime import fleet_reconcile, reconcile, snapshots

    _check_fleet_args(args, desired)
    settings = _settings(args)
    only = getattr(args, "host", None)
    if getattr(args, "state", None):
        with reconcile.gc_paused():
            if interpreted is None:
                interpreted = fleet_reconcile.interpret_snapshot(snapshots.read_fleet(args.state))
            plan = fleet_reconcile.plan_from_snapshot(desired, interpreted, settings=settings, evacuate=evacuate,
                                                      only_host=only)
    else:
        plan = fleet_reconcile.plan_live(desired, settings=settings, evacuate=evacuate, only_host=only,
                                         host_workers=args.parallel_hosts, host_timeout=_host_timeout(args),
                                         looked=looked).plan
    return _print_fleet_plan(plan, args, title=title)


def _fleet_apply(args: argparse.Namespace, desired: model.DesiredState, *, evacuate=frozenset(),
                 title: str | None = None) -> int:
    """Print the fleet plan, carry it out on every reachable Host, print what was done; exit 0 only when converged."""
    from reconciler.runtime import fleet_reconcile, report

    _check_fleet_args(args, desired)
    shown: list[int] = []

    def show_plan(plan) -> None:
        shown.append(_print_fleet_plan(plan, args, title=title))
        if plan.has_changes:
            print("Applying...", flush=True)

    _planned, result = fleet_reconcile.plan_and_apply(
        desired, settings=_settings(args), show_plan=show_plan, lock=_host_locks(args), evacuate=evacuate,
        only_host=getattr(args, "host", None), workers=args.parallel, host_workers=args.parallel_hosts,
        host_timeout=_host_timeout(args), step_timeout=_step_timeout(args))
    if result is None:
        return shown[0]
    sys.stdout.write(redaction.redact_text(report.fleet_report_text(result)))
    return EXIT_OK if result.converged else EXIT_ERROR


def cmd_drain(args: argparse.Namespace) -> int:
    """Plan (``--apply``: carry out) the fleet with HOST cordoned: its VMs move to the other Hosts."""
    from reconciler.adapters import git
    from reconciler.runtime import drain

    desired = drain.load_fleet(args.path, args.host_name, "drain", revision=git.describe(args.path) if args.apply else "")
    args.host = None
    run = _fleet_apply if args.apply else _fleet_plan
    status = run(args, drain.cordoned(desired, args.host_name), title=drain.drain_title(args.host_name))
    _note(drain.cordon_note(args.host_name))
    return status


def cmd_evacuate(args: argparse.Namespace) -> int:
    """Plan (``--apply``: carry out) moving a dead Host's VMs elsewhere, if their disks are on shared pools."""
    from reconciler.adapters import git
    from reconciler.runtime import drain

    drain.refuse_unconfirmed_evacuation(args.host_name, confirmed=args.host_is_dead)
    desired = drain.load_fleet(args.path, args.host_name, "evacuate", revision=git.describe(args.path) if args.apply else "")
    args.host = None
    run = _fleet_apply if args.apply else _fleet_plan
    return run(args, desired, evacuate={args.host_name}, title=drain.evacuate_title(args.host_name))


def cmd_forget_host(args: argparse.Namespace) -> int:
    """Plan (``--apply``: carry out) removing HOST, declared by no Host manifest any more, from every mark of the fleet."""
    from reconciler.runtime import forget_host

    desired = forget_host.load_fleet(args.path, args.host_name)
    _check_fleet_args(args, desired)
    title = f"kvmops forget-host {args.host_name}: the fleet's marks stop naming it"
    if not args.apply:
        return _print_fleet_plan(forget_host.plan(desired, args.host_name, settings=_settings(args),
                                                  host_workers=args.parallel_hosts, host_timeout=_host_timeout(args)),
                                 args, title=title)
    shown: list[int] = []
    result = forget_host.apply(
        desired, args.host_name, settings=_settings(args), lock=_host_locks(args), workers=args.parallel,
        host_workers=args.parallel_hosts, host_timeout=_host_timeout(args), step_timeout=_step_timeout(args),
        show_plan=lambda plan: shown.append(_print_fleet_plan(plan, args, title=title)))
    if result is None:
        return shown[0]
    sys.stdout.write(redaction.redact_text(forget_host.report_text(result, args.host_name)))
    return EXIT_OK if result.done else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
