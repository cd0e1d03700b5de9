#!/bin/sh
# Installs the real parts the integration tests use (Kamailio 5.6 + modules, RabbitMQ, SIPp,
# docker-compose to validate the compose file, promtool for the alert rules, headless Chromium)
# on Debian 12. Idempotent: does nothing when everything is installed, so `make test` can call it
# on every run, as any user. Installing needs root.
#
# The tests start their own private nodes on loopback (testenv), so the system services these
# packages bring must not run: they would hold ports 5060/5672 and eat CPU in CI. They are kept
# from starting during the install (policy-rc.d) and disabled afterwards.
set -eu

PACKAGES="kamailio kamailio-json-modules kamailio-kazoo-modules kamailio-rabbitmq-modules
kamailio-extra-modules kamailio-utils-modules rabbitmq-server sip-tester docker-compose prometheus chromium"
# epmd.socket: Debian's erlang-base starts a system-wide epmd on 4369 by socket activation; the
# tests run a private epmd per RabbitMQ node and do not need it.
SERVICES="kamailio rabbitmq-server epmd.socket epmd"

missing=""
for p in $PACKAGES; do
	if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != "installed" ]; then
		missing="$missing $p"
	fi
done
if [ -z "$missing" ]; then
	exit 0
fi
echo "testenv/install.sh: installing:$missing"

if [ "$(id -u)" -ne 0 ]; then
	echo "testenv/install.sh: need root to install:$missing" >&2
	echo "  run: sudo $0   (or: apt-get install -y$missing)" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	echo "testenv/install.sh: no apt-get; install by hand:$missing" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
APT="apt-get -o DPkg::Lock::Timeout=600 -y"

# Only refresh the package lists when apt does not know a package we need (fresh image,
# lists removed to slim it down).
need_update=""
for p in $missing; do
	cand=$(apt-cache policy "$p" 2>/dev/null | awk '/Candidate:/ {print $2}')
	if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
		need_update=1
	fi
done
if [ -n "$need_update" ]; then
	$APT update
fi

# Which services exist before the install: those we leave as the admin set them up.
preexisting=""
for s in $SERVICES; do
	unit=$s
	case $s in *.*) ;; *) unit=$s.service ;; esac
	if [ -e "/lib/systemd/system/$unit" ] || [ -e "/etc/init.d/$s" ]; then
		preexisting="$preexisting $s"
	fi
done

# policy-rc.d exit 101 = "action forbidden": invoke-rc.d/deb-systemd-invoke start nothing.
# Keep an existing one (Docker images ship one), remove ours on any exit.
ours_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
	printf '#!/bin/sh\n# testenv/install.sh: keep services from starting during the install\nexit 101\n' >/usr/sbin/policy-rc.d
	chmod 755 /usr/sbin/policy-rc.d
	ours_policy=1
fi
cleanup() {
	if [ -n "$ours_policy" ]; then
		rm -f /usr/sbin/policy-rc.d
	fi
}
trap cleanup EXIT INT TERM

# prometheus is only wanted for promtool, chromium only headless: without their recommends
# (node exporter, alertmanager, fonts and desktop bits).
with_rec="" without_rec=""
for p in $missing; do
	case $p in
	prometheus | chromium) without_rec="$without_rec $p" ;;
	*) with_rec="$with_rec $p" ;;
	esac
done
# shellcheck disable=SC2086 # word splitting of the package list is intended
if [ -n "$with_rec" ]; then $APT install $with_rec; fi
# shellcheck disable=SC2086
if [ -n "$without_rec" ]; then $APT install --no-install-recommends $without_rec; fi

for s in $SERVICES; do
	case " $preexisting " in *" $s "*) continue ;; esac
	if [ -d /run/systemd/system ]; then
		systemctl disable --now "$s" >/dev/null 2>&1 || true
	elif [ -x "/etc/init.d/$s" ]; then
		"/etc/init.d/$s" stop >/dev/null 2>&1 || true
		update-rc.d "$s" disable >/dev/null 2>&1 || true
	fi
done
echo "testenv/install.sh: done; the system services these packages bring (kamailio, rabbitmq-server, prometheus) are not running"
