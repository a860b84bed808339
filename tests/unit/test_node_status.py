"""`node status` from BIRD 2's `show protocols`: only Gingham's BGP sessions, typed by name."""

from __future__ import annotations

import pytest

from gingham.calico.node_status import PeerRow, parse_protocols, render_status

pytestmark = pytest.mark.unit
SHOWN = """BIRD 2.0.12 ready.
Name       Proto      Table      State  Since         Info
device1    Device     ---        up     23:03:18.192
kernel1    Kernel     master4    up     23:03:18.192
Mesh_192_168_50_12 BGP        ---        up     23:03:19.864  Established
Node_192_168_50_1 BGP   ---   start  23:03:18.192  Active        Socket: Connection refused
Global_10_0_0_1 BGP        ---        start  23:03:18.192  Connect
someone_else BGP        ---        up     23:03:18.192  Established
"""


def test_only_gingham_sessions_are_rows():
    assert parse_protocols(SHOWN) == [
        PeerRow("192.168.50.12", "node-to-node mesh", "up", "23:03:19", "Established"),
        PeerRow("192.168.50.1", "node specific", "start", "23:03:18",
                "Active Socket: Connection refused"),
        PeerRow("10.0.0.1", "global", "start", "23:03:18", "Connect")]


def test_no_peers_and_no_bird_are_said():
    assert "No IPv4 peers found." in render_status(True, [])
    assert render_status(False, None).startswith("Calico process is not running.")
    table = render_status(True, parse_protocols(SHOWN)[:1]).splitlines()
    assert table[3:7] == [
        "+---------------+-------------------+-------+----------+-------------+",
        "|  PEER ADDRESS |     PEER TYPE     | STATE |  SINCE   |     INFO    |",
        "+---------------+-------------------+-------+----------+-------------+",
        "| 192.168.50.12 | node-to-node mesh | up    | 23:03:19 | Established |"]
