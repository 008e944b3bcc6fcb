#!/bin/sh
# Installs the Debian packages that tests run as real components, e.g.
#   tools/system-packages.sh haproxy:haproxy
# Each argument is COMMAND:PACKAGE; a package is installed only if its
# command is missing. As root this runs apt-get (without starting the
# package's service: tests start their own, on loopback); otherwise it prints
# the command to run. Under CI (CI=true) anything still missing is an error,
# so a test that needs it can never be skipped quietly.
set -eu

missing=""
for pair in "$@"; do
    command=${pair%%:*}
    package=${pair#*:}
    if ! command -v "$command" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$command" ]; then
        missing="$missing $package"
    fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Debian package(s):$missing"
    # A package's own service must not start: it would take the ports and
    # outlive the tests. policy-rc.d answering 101 tells invoke-rc.d "not now".
    policy=/usr/sbin/policy-rc.d
    added=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        added=yes
    fi
    status=0
    {
        DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    } || status=$?
    [ -n "$added" ] && rm -f "$policy"
    exit $status
fi

echo "missing Debian package(s) the tests use:$missing"
echo "install them with:  sudo apt-get install$missing"
if [ "${CI:-}" = true ]; then
    echo "CI=true: a missing test component is a failure, not a skip" >&2
    exit 1
fi
