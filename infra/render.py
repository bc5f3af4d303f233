"""`python -m infra.render`: the documented command for the offline render and preview diff.

The work is in infra/offline/render.py (offline tooling lives apart from the Pulumi program).
"""

import sys

from infra.offline.render import main

if __name__ == "__main__":
    sys.exit(main())
