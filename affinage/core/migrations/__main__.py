"""``python -m affinage.core.migrations "what changed"``: autogenerate the next revision (see ``affinage.core.migrations``)."""

import sys

from affinage.core.migrations import new_revision

if len(sys.argv) != 2 or not sys.argv[1].strip():
    sys.exit('usage: python -m affinage.core.migrations "what changed"')
print(f"wrote {new_revision(sys.argv[1].strip())}")
