"""Running an agent: reconcile the node, then serve plugin calls until SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal

from gingham.agent.cni_service import CniService
from gingham.agent.config import AgentConfig
from gingham.agent.node import reconcile_node
from gingham.agent.server import PluginServer

log = logging.getLogger("gingham.agent")


class Stop(Exception):
    pass


def _stop(signum, frame):
    raise Stop(signal.Signals(signum).name)


def run_agent(config: AgentConfig) -> None:
    facts = reconcile_node(config)
    server = PluginServer(config.socket_path, CniService(config, facts.mtu), config.workers)
    server.bind()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info("serving CNI calls on %s", config.socket_path)
    try:
        server.serve_forever()
    except Stop as why:
        log.info("stopping on %s", why)
    finally:
        server.stop()
