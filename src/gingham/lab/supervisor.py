"""A lab node's agent supervisor: what systemd's `Restart=always` is on a real host.

    python -m gingham.lab.supervisor STATE.json -- AGENT-ARGV...

Runs the agent as its child and starts it again whenever it exits, after a pause that
doubles from RESTART_MIN to RESTART_MAX and falls back once an agent has run for STABLE
seconds. SIGHUP restarts the agent now (`gingham lab node restart`); SIGTERM or SIGINT
stops it and then the supervisor. The state file says which PID is the agent now, how often
it was restarted and why it last exited, for `lab status`.

Signals are blocked and taken with sigtimedwait, so nothing runs in a signal handler and
the supervisor sleeps in the kernel between events: idle, it costs nothing. Stdlib only, as
one runs per lab node.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

RESTART_MIN, RESTART_MAX = 0.2, 10.0
STABLE = 10.0
STOP_GRACE = 5.0
SIGNALS = {signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT}


def describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


class Supervisor:
    def __init__(self, state_path: str, argv: list[str]) -> None:
        self.state_path = state_path
        self.argv = argv
        self.state = {"supervisorPid": os.getpid(), "agentPid": None, "restarts": 0,
                      "exits": 0, "lastExit": None, "startedAt": None}

    def save(self, **changes) -> None:
        self.state.update(changes)
        tmp = f"{self.state_path}.tmp"
        with open(tmp, "w") as out:
            json.dump(self.state, out)
        os.replace(tmp, self.state_path)

    def spawn(self) -> int:
        # posix_spawnp, not subprocess: the child must not inherit the blocked signals (the
        # agent handles SIGTERM itself), and no Popen object may reap it behind our back.
        pid = os.posix_spawnp(self.argv[0], self.argv, os.environ, setsigmask=(),
                             file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)])
        self.save(agentPid=pid, startedAt=time.time())
        return pid

    def exited(self, why: str) -> None:
        self.save(agentPid=None, exits=self.state["exits"] + 1, lastExit=why)

    def reap(self, pid: int) -> int | None:
        """The child's wait status if it has exited, else None."""
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return 0
        return status if done else None

    def stop(self, pid: int) -> int:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while (status := self.reap(pid)) is None:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            signal.sigtimedwait({signal.SIGCHLD}, 0.1)
        return status

    def run(self) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        delay = RESTART_MIN
        pid = self.spawn()
        started = time.monotonic()
        while True:
            got = signal.sigwaitinfo(SIGNALS)
            if got.si_signo in (signal.SIGTERM, signal.SIGINT):
                self.exited(describe(self.stop(pid)))
                return 0
            if got.si_signo == signal.SIGHUP:
                why = "restarted on purpose (" + describe(self.stop(pid)) + ")"
                self.exited(why)
                delay = RESTART_MIN
            else:
                status = self.reap(pid)
                if status is None:
                    continue  # some other SIGCHLD
                why = describe(status)
                if time.monotonic() - started >= STABLE:
                    delay = RESTART_MIN
                self.exited(why)
                # The pause, cut short by a stop; a restart request ends it at once.
                woke = signal.sigtimedwait(SIGNALS - {signal.SIGCHLD}, delay)
                if woke is not None and woke.si_signo in (signal.SIGTERM, signal.SIGINT):
                    return 0
                delay = min(delay * 2, RESTART_MAX)
            self.save(restarts=self.state["restarts"] + 1)
            pid = self.spawn()
            started = time.monotonic()


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m gingham.lab.supervisor STATE.json -- AGENT-ARGV...",
              file=sys.stderr)
        return 2
    return Supervisor(args[0], args[2:]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
