#!/bin/sh
# The images' entry point: `supportloop ARGS` (serve, schedule, db backup, ...) as the non-root user.
# The store is migrated by the command itself (serve and every training round migrate at start-up, one
# process at a time), so replicas that start together on a new image need nothing more.
set -eu
if [ "$#" -eq 0 ]; then
    set -- serve --host 0.0.0.0 --port 8000
fi
exec supportloop "$@"
