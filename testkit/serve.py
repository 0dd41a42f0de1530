"""The server's command line with the test hold attached: `python -m testkit.serve SOCKET ARGS`.

Exactly `python -m neuronpedia_graph ARGS`, except that the service reports its hook points
to the test's `HoldControl` listening on SOCKET. Production code reads no switch for this.
"""

from __future__ import annotations

import sys

from neuronpedia_graph.__main__ import main
from testkit.hold import SocketHooks

if __name__ == "__main__":
    sys.exit(main(sys.argv[2:], hooks=SocketHooks(sys.argv[1])))
