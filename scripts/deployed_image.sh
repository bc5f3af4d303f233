#!/usr/bin/env bash
# Sets the selected stack's worker image config to the image it runs now (its workerImage
# output, repository:tag@digest), for a preview or a DR rebuild that deploy no new code. A
# stack with no output yet keeps the tag of its stack file. Needs `pulumi stack select` first.
set -euo pipefail
if image=$(pulumi stack output workerImage 2>/dev/null) && [ -n "$image" ]; then
  ref=${image%@*}
  pulumi config set tickstack:workerImageTag "${ref##*:}"
  pulumi config set tickstack:workerImageDigest "${image##*@}"
  echo "worker image: $image (deployed)"
else
  echo "worker image: none deployed yet; the stack file's tag"
fi
