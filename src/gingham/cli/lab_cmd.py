"""`gingham lab ...`: build a cluster of namespaces, add pods to it, look inside, check it."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import re
import sys
import time

import click

from gingham.cli.agent_cmd import Network
from gingham.cli.table import format_table
from gingham.lab.plan import (
    DATASTORES,
    DEFAULT_BACKEND,
    DEFAULT_DATASTORE,
    DEFAULT_LAB,
    DEFAULT_POD_CIDR,
    check_lab_name,
)
from gingham.lab.state import LabFiles
from gingham.model.network import KNOWN_BACKENDS

RATE = re.compile(r"^(\d+(?:\.\d+)?)([kKmMgG]?)$")
RATE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}
# The bandwidth plugin takes the burst in bits. 1/80 s of traffic (1.25 Mbit at 100 Mbit/s)
# lets TCP ramp up without the bucket overshooting short runs: iperf3 through 100M measures
# ~96 Mbit/s of payload (the rest is the Ethernet/IP/TCP headers tbf also counts).
BURST_SECONDS = 1 / 80
# ...but never less than one 64 KiB GSO packet, which tbf would otherwise re-segment.
MIN_BURST_BITS = 64 * 1024 * 8
PORT = re.compile(r"^(\d+):(\d+)(?:/(tcp|udp|sctp))?$")


def lab_name_option(f):
    return click.option("--name", "lab", default=DEFAULT_LAB, show_default=True,
                        callback=lambda ctx, param, value: _lab_name(value),
                        help="Which lab.")(f)


def _lab_name(value: str) -> str:
    try:
        return check_lab_name(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


def _rate(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    found = RATE.match(value)
    if not found:
        raise click.BadParameter(f"{value!r} is not a rate like 100M (bits per second)")
    rate = int(float(found.group(1)) * RATE_UNITS[found.group(2).lower()])
    if rate <= 0:
        raise click.BadParameter("a rate must be more than 0 bits per second")
    return rate


def _burst(rate: int) -> int:
    return max(int(rate * BURST_SECONDS), MIN_BURST_BITS)


def _port(value: str):
    """A named container port (NAME=PORT[/PROTO], what policies name) or a host port
    mapping (HOSTPORT:CONTAINERPORT[/PROTO], portmap's)."""
    if "=" in value:
        from gingham.workloads.records import NamedPort, WorkloadDataError

        try:
            return NamedPort.parse(value)
        except WorkloadDataError as err:
            raise click.BadParameter(str(err)) from None
    found = PORT.match(value)
    if not found or not all(0 < int(found.group(i)) < 65536 for i in (1, 2)):
        raise click.BadParameter(f"{value!r} is not HOSTPORT:CONTAINERPORT[/tcp|udp|sctp]")
    return {"hostPort": int(found.group(1)), "containerPort": int(found.group(2)),
            "protocol": found.group(3) or "tcp"}


def _topology(path: str):
    from gingham.cli.yamlfile import load_yaml
    from gingham.lab.topology import parse_topology

    # A file that does not parse fails as one whose content is wrong: one line, exit 1.
    return parse_topology(load_yaml(path))


def _backend_option(value: str) -> tuple[str, object]:
    key, eq, raw = value.partition("=")
    if not eq or not key:
        raise click.BadParameter(f"backend option {value!r} is not KEY=VALUE")
    try:
        return key, json.loads(raw)  # true, 4, "x"
    except ValueError:
        return key, raw


def _label(value: str) -> tuple[str, str]:
    key, eq, val = value.partition("=")
    if not eq or not key:
        raise click.BadParameter(f"label {value!r} is not KEY=VALUE")
    return key, val


class LabGroup(click.Group):
    """Usage errors as the root command prints every other failure: one line on stderr.
    (Click's own format is three lines: usage, a hint, then the error.)"""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # `gingham lab pod`: show help
                raise
            where = err.ctx.command_path if err.ctx is not None else ctx.command_path
            click.echo(f"gingham: error: {err.format_message()} (see `{where} --help`)",
                       err=True)
            sys.exit(err.exit_code)


@click.group(cls=LabGroup)
def lab() -> None:
    """A lab cluster made of network namespaces on this machine."""


@lab.command()
@lab_name_option
@click.option("--nodes", type=click.IntRange(1, 200),
              help="Nodes on one segment (default 1); not with -f.")
@click.option("-f", "--file", "topology_file", type=click.Path(dir_okay=False, exists=True),
              help="Topology YAML: segments, routers, nodes, external (see examples/).")
@click.option("--pod-cidr", type=Network(), default=str(DEFAULT_POD_CIDR), show_default=True)
@click.option("--datastore", type=click.Choice(DATASTORES), default=DEFAULT_DATASTORE,
              show_default=True, help="etcd runs in LAB-control on the underlay.")
@click.option("--backend", type=click.Choice(KNOWN_BACKENDS), default=DEFAULT_BACKEND,
              show_default=True)
@click.option("--backend-option", "backend_options", multiple=True, metavar="KEY=VALUE",
              callback=lambda c, p, v: dict(map(_backend_option, v)),
              help="Backend key of net-conf.json, e.g. DirectRouting=true or VNI=4.")
@click.option("--ip-masq/--no-ip-masq", default=True, show_default=True,
              help="Agents masquerade pod traffic that leaves the cluster (calico: the "
                   "default pool's natOutgoing).")
@click.option("--mode", type=click.Choice(["flannel", "calico"]), default="flannel",
              show_default=True, help="calico: routed cali* pods, IP pools, block IPAM.")
@click.option("--encap", type=click.Choice(["none", "vxlan", "ipip"]), default=None,
              help="calico: the default pool's encapsulation (default none).")
@click.option("--cross-subnet", is_flag=True,
              help="calico: encapsulate only between nodes on different subnets.")
@click.option("--bgp", type=click.Choice(["on", "off"]), default=None,
              help="calico: every node runs BIRD and routes come by BGP (default on; off keeps "
                   "the datastore-driven routes).")
@click.option("--log", "log_denied", is_flag=True,
              help="Agents log the packets NetworkPolicy drops (`gingham lab flows`).")
@click.pass_context
def up(ctx: click.Context, lab: str, nodes: int | None, topology_file: str | None,
       pod_cidr: ipaddress.IPv4Network, datastore: str, backend: str,
       backend_options: dict, ip_masq: bool, mode: str, encap: str | None,
       cross_subnet: bool, bgp: str | None, log_denied: bool) -> None:
    """Build the lab: underlay, datastore, nodes running the agent, external host."""
    from gingham.lab import cluster
    from gingham.lab.plan import LabPlan

    if mode == "calico":
        given = [name for name in ("backend", "backend_options")
                 if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT]
        if given:
            raise click.UsageError(f"--{given[0].replace('_', '-')} is Flannel's; Calico "
                                   "mode takes --encap and --cross-subnet")
        if cross_subnet and encap in (None, "none"):
            raise click.UsageError("--cross-subnet needs --encap vxlan or ipip")
    elif encap is not None or cross_subnet or bgp is not None:
        raise click.UsageError("--encap, --cross-subnet and --bgp are for --mode calico")

    if topology_file is None:
        plan = LabPlan.single_segment(lab, nodes or 1, pod_cidr, datastore=datastore,
                                      backend=backend, backend_options=backend_options)
    else:
        if nodes is not None:
            raise click.UsageError("--nodes and -f exclude each other: the file lists the nodes")
        plan = LabPlan.from_topology(lab, _topology(topology_file), pod_cidr,
                                     datastore=datastore, backend=backend,
                                     backend_options=backend_options)
    plan = dataclasses.replace(plan, ip_masq=ip_masq, mode=mode, encap=encap or "none",
                               cross_subnet=cross_subnet,
                               bgp=mode == "calico" and bgp != "off", log_denied=log_denied)
    cluster.up(plan)  # removes what it built if it fails; an existing lab is left alone
    files = LabFiles(lab)
    for router in plan.routers:
        click.echo(f"{router.name}  " + "  ".join(f"{seg} {addr.ip}"
                                                   for seg, addr in router.ports))
    for node in plan.nodes:
        leased = (cluster.node_status(files, node.name) or {}).get("subnet", "?")
        click.echo(f"{node.name}  {node.address.ip}  pods {leased}")
    click.echo(f"external  {plan.external.address.ip}")
    if datastore == "etcd":
        click.echo(f"etcd      {plan.control.address.ip}")


@lab.command()
@lab_name_option
def down(lab: str) -> None:
    """Remove every namespace, process and file of the lab (idempotent)."""
    from gingham.lab import cluster

    removed = cluster.down(lab)
    click.echo(f"lab {lab}: removed {len(removed)} namespaces")


@lab.command()
@lab_name_option
@click.option("--json", "as_json", is_flag=True)
def status(lab: str, as_json: bool) -> None:
    """Nodes, their agents and pods."""
    from gingham.lab import cluster
    from gingham.lab.state import LabFiles

    files = LabFiles(lab)
    record = files.load()
    plan = cluster.plan_of(record)
    nodes = cluster.node_reports(files, record)
    if as_json:
        # A Flannel lab's status keeps its keys; a Calico lab's says how it routes.
        mode = {"mode": plan.mode, "encap": plan.encap, "crossSubnet": plan.cross_subnet,
                "bgp": plan.bgp} \
            if plan.mode == "calico" else {}
        click.echo(json.dumps({"name": lab, "podCidr": str(plan.pod_cidr),
                               "datastore": plan.datastore, "backend": plan.backend, **mode,
                               "ipMasq": plan.ip_masq,
                               "nodes": nodes, "external": str(plan.external.address.ip)},
                              indent=2))
        return
    how = (f"mode calico, encap {plan.encap}{' (cross-subnet)' if plan.cross_subnet else ''}"
           if plan.mode == "calico" else f"backend {plan.backend}")
    click.echo(f"lab {lab}: pod CIDR {plan.pod_cidr}, {how}, datastore "
               f"{plan.datastore}, ip-masq {'on' if plan.ip_masq else 'off'}, "
               f"underlay {plan.underlay}, external {plan.external.address.ip}")
    click.echo(format_table([("NODE", "ADDRESS", "POD SUBNET", "DATASTORE", "AGENT", "PID",
                              "RESTARTS", "PODS")] + [
        (n["name"], n["address"], n["podSubnet"], n["datastore"], n["agent"],
         str(n["agentPid"] or "-"), str(n["restarts"]), str(n["pods"])) for n in nodes]))
    _print_problems({n["name"]: n["problems"] for n in nodes})


@lab.command()
@lab_name_option
@click.option("--json", "as_json", is_flag=True)
def check(lab: str, as_json: bool) -> None:
    """Ping every pod from every pod and node, and the external host from every pod."""
    from gingham.lab import check as checks
    from gingham.lab import cluster
    from gingham.lab.state import LabFiles

    files = LabFiles(lab)
    record = files.load()
    plan = cluster.plan_of(record)
    results = checks.run_probes(checks.plan_probes(plan, record))
    failed = sum(1 for r in results if not r.ok)
    nodes = cluster.node_reports(files, record)
    problems = {n["name"]: n["problems"] for n in nodes}
    down = [f"{n['name']} ({n['agent']}" + (f", last {n['lastExit']}" if n["lastExit"] else "")
            + ")" for n in nodes if n["agent"] != "running"]
    troubled = [n["name"] for n in nodes if n["problems"]]
    if as_json:
        click.echo(json.dumps({"ok": failed == 0 and not down and not troubled,
                               "results": [r.to_json() for r in results],
                               "agentsDown": [n["name"] for n in nodes
                                              if n["agent"] != "running"],
                               "problems": problems}, indent=2))
    else:
        click.echo(format_table(checks.table_rows(results)))
        click.echo(f"{len(results) - failed}/{len(results)} reachable")
        _print_problems(problems)
    # The verdict also goes to stderr, so a failing check says why even with --json.
    verdict = []
    if not results:
        verdict.append(f"lab {lab} has no pods to check")
    if failed:
        verdict.append(f"{failed} of {len(results)} probes failed")
    if down:
        verdict.append("agent not running on " + ", ".join(down))
    if troubled:
        verdict.append("problems reported by " + ", ".join(troubled))
    if verdict:
        click.echo(f"gingham: error: {'; '.join(verdict)}", err=True)
        sys.exit(1)


def _probe_list(ctx: click.Context, param: click.Parameter, value: str) -> tuple:
    """--ports and --protocols: comma-separated lists."""
    from gingham.lab.probe_matrix import parse_ports, parse_protocols

    parse = parse_ports if param.name == "ports" else parse_protocols
    try:
        return parse(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None


@lab.command("probe")
@lab_name_option
@click.option("--ports", default="80,81", show_default=True, metavar="PORT,...",
              callback=_probe_list)
@click.option("--protocols", default="tcp,udp", show_default=True, metavar="PROTO,...",
              callback=_probe_list)
@click.option("--expect", is_flag=True,
              help="Compare with what the NetworkPolicies allow; exit 1 on a difference.")
@click.option("--json", "as_json", is_flag=True)
def probe(lab: str, ports: tuple[int, ...], protocols: tuple[str, ...], expect: bool,
          as_json: bool) -> None:
    """Serve TCP and UDP on PORTS in every pod and connect from every pod to every pod:
    one truth table per port and protocol, rows from, columns to, `.` allowed, `X` blocked."""
    from gingham.lab import probe as prober
    from gingham.lab import probe_matrix as matrix

    result = prober.run(LabFiles(lab).load(), ports, protocols, expect=expect)
    for problem in result.problems:
        click.echo(f"warning: {problem}", err=True)
    diffs = result.differences
    if as_json:
        click.echo(json.dumps(matrix.report(result.pods, ports, protocols, result.got,
                                            result.expected), indent=2))
    else:
        click.echo(matrix.tables(result.pods, ports, protocols, result.got))
        click.echo(f"\n{sum(result.got.values())}/{len(result.got)} allowed")
        if result.expected is not None:
            click.echo("\n".join(map(str, diffs)) if diffs else "all as expected")
    if diffs:
        click.echo(f"gingham: error: {len(diffs)} of {len(result.got)} cells differ from "
                   "what the NetworkPolicies allow", err=True)
        sys.exit(1)


@lab.command("log")
@lab_name_option
@click.argument("state", type=click.Choice(["on", "off"]))
def log_denied(lab: str, state: str) -> None:
    """Turn the agents' logging of packets NetworkPolicy drops on or off (`lab flows`);
    each agent is restarted with it, which drops no route."""
    from gingham.lab import cluster

    for node in cluster.set_log_denied(LabFiles(lab), state == "on"):
        click.echo(f"{node}: denied packets {'logged' if state == 'on' else 'not logged'}")


@lab.command("flows")
@lab_name_option
@click.option("--node", "nodes", multiple=True, help="Only this node (repeatable).")
@click.option("--tail", type=click.IntRange(1), default=50, show_default=True,
              help="The latest N denials.")
@click.option("--json", "as_json", is_flag=True)
def flows(lab: str, nodes: tuple[str, ...], tail: int, as_json: bool) -> None:
    """The packets NetworkPolicy dropped (a lab built with --log): who, to whom, port, and
    the policies that isolate the pod they were denied at."""
    from gingham.lab import cluster
    from gingham.policy.flowlog import FLOWS_FILE, read_denials

    files = LabFiles(lab)
    record = files.load()
    if not record.plan.get("log_denied"):
        raise click.ClickException(f"lab {lab} logs no denials: `gingham lab log on --name "
                                   f"{lab}` (or `lab up --log`)")
    names = nodes or [n.name for n in cluster.plan_of(record).nodes]
    pods = {p.ip: ref for ref, p in record.pods.items()}
    rows = sorted(((node, d) for node in names
                   for d in read_denials(files.node_dir(node) / "run" / FLOWS_FILE)),
                  key=lambda nd: nd[1].time)[-tail:]
    if as_json:
        click.echo(json.dumps([{"node": node, **dataclasses.asdict(d),
                                "srcPod": pods.get(d.src), "dstPod": pods.get(d.dst)}
                               for node, d in rows], indent=2))
        return
    for node, d in rows:
        when = time.strftime("%H:%M:%S", time.localtime(d.time))
        port = f"{d.protocol}/{d.port}" if d.port is not None else d.protocol
        click.echo(f"{when} {node} {pods.get(d.src, d.src)} -> {pods.get(d.dst, d.dst)} "
                   f"{port} denied: {d.direction} of {d.pod} ({d.policies})")


@lab.command(name="exec", context_settings={"ignore_unknown_options": True})
@lab_name_option
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(lab: str, target: str, command: tuple[str, ...]) -> None:
    """Run COMMAND in TARGET: a node, NAMESPACE/POD or `external`."""
    from gingham.lab import cluster, procs

    procs.exec_in(cluster.target_netns(lab, target), list(command))


@lab.group()
def node() -> None:
    """Nodes joining and leaving a running lab."""


@node.command("add")
@lab_name_option
@click.option("--segment", help="Which segment (default: the first).")
def node_add(lab: str, segment: str | None) -> None:
    """Add the next node (nodeK) and wait until its agent serves; prints its name."""
    from gingham.lab import cluster

    click.echo(cluster.add_node(lab, segment=segment).name)


@node.command("restart")
@lab_name_option
@click.argument("name")
def node_restart(lab: str, name: str) -> None:
    """Restart a node's agent now; prints the new agent's PID once it has resynced. Routes,
    rules and pods stay as they are meanwhile."""
    from gingham.lab import cluster

    click.echo(cluster.restart_agent(LabFiles(lab), name))


@node.command("stop")
@lab_name_option
@click.argument("name")
def node_stop(lab: str, name: str) -> None:
    """Stop a node's agent and its supervisor (nothing restarts it); its routes stay."""
    from gingham.lab import cluster

    cluster.stop_agent(LabFiles(lab), name)


@node.command("start")
@lab_name_option
@click.argument("name")
def node_start(lab: str, name: str) -> None:
    """Start a stopped node's agent under a supervisor; prints its PID once it serves."""
    from gingham.lab import cluster

    click.echo(cluster.resume_agent(LabFiles(lab), name))


@node.command("del")
@lab_name_option
@click.argument("name")
def node_del(lab: str, name: str) -> None:
    """Remove a node, its pods and its subnet lease."""
    from gingham.lab import cluster

    cluster.delete_node(lab, name)


@lab.group()
def pod() -> None:
    """Pods: namespaces wired by exec'ing the CNI plugins as a runtime does."""


@pod.command("add")
@lab_name_option
@click.argument("node")
@click.argument("ref", metavar="NAMESPACE/POD")
@click.option("--label", "labels", multiple=True, callback=lambda c, p, v: dict(map(_label, v)),
              help="K=V, repeatable.")
@click.option("--port", "ports", multiple=True, callback=lambda c, p, v: [_port(x) for x in v],
              help="NAME=PORT[/PROTO]: a named container port; HOSTPORT:CONTAINERPORT[/PROTO]: "
                   "a mapping on the node (portmap). Repeatable.")
@click.option("--ingress-rate", callback=_rate,
              help="Bandwidth limit into the pod, bits/s (e.g. 100M).")
@click.option("--egress-rate", callback=_rate, help="Bandwidth limit out of the pod, bits/s.")
def pod_add(lab: str, node: str, ref: str, labels: dict, ports: list, ingress_rate: int | None,
            egress_rate: int | None) -> None:
    """Create a pod on NODE and print its IP."""
    from gingham.lab import cluster
    from gingham.workloads.records import NamedPort

    capabilities: dict = {}
    named = [p for p in ports if isinstance(p, NamedPort)]
    mappings = [p for p in ports if not isinstance(p, NamedPort)]
    if mappings:
        capabilities["portMappings"] = mappings
    bandwidth: dict[str, int] = {}
    if ingress_rate:
        bandwidth |= {"ingressRate": ingress_rate, "ingressBurst": _burst(ingress_rate)}
    if egress_rate:
        bandwidth |= {"egressRate": egress_rate, "egressBurst": _burst(egress_rate)}
    if bandwidth:
        capabilities["bandwidth"] = bandwidth
    click.echo(cluster.add_pod(lab, node, ref, labels, capabilities, ports=named).ip)


@pod.command("del")
@lab_name_option
@click.argument("ref", metavar="NAMESPACE/POD")
def pod_del(lab: str, ref: str) -> None:
    """Remove a pod (CNI DEL through the chain, then its namespace)."""
    from gingham.lab import cluster

    cluster.delete_pod(lab, ref)


@pod.command("list")
@lab_name_option
@click.option("--json", "as_json", is_flag=True)
def pod_list(lab: str, as_json: bool) -> None:
    """The lab's pods."""
    from dataclasses import asdict

    from gingham.lab.state import LabFiles

    pods = sorted(LabFiles(lab).load().pods.values(), key=lambda p: p.ref)
    if as_json:
        click.echo(json.dumps([asdict(p) for p in pods], indent=2))
        return
    click.echo(format_table([("POD", "NODE", "IP", "NETNS", "LABELS")] + [
        (p.ref, p.node, p.ip or "-", p.netns,
         ",".join(f"{k}={v}" for k, v in sorted(p.labels.items())) or "-") for p in pods]))



def _print_problems(problems: dict[str, list[str]]) -> None:
    """What the agents say is wrong: the reason behind an unreachable pair."""
    lines = [f"  {node}: {p}" for node, items in problems.items() for p in items]
    if lines:
        click.echo("problems reported by the agents:\n" + "\n".join(lines))
