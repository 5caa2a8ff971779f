"""``python -m agent.migrations "what changed"``: autogenerate the next revision (see ``agent.migrations``)."""

import sys

from agent.migrations import new_revision

if len(sys.argv) != 2 or not sys.argv[1].strip():
    sys.exit('usage: python -m agent.migrations "what changed"')
print(f"wrote {new_revision(sys.argv[1].strip())}")
