#!/usr/bin/env bash
# Installs the graph-relay .deb on this Debian machine and checks that install, remove and purge
# leave the system as README.md ("Install", "Run as a service") says, that the installed unit
# passes `systemd-analyze verify` and stays at or under exposure 3.0 in `systemd-analyze security`,
# and that the installed binary, run as the unit runs it (its ExecStart, user and umask), accepts
# a message over SMTP into /var/spool/graph-relay and reloads on SIGHUP.
#
#   packaging/test-deb.sh [DEB]     as root; DEB defaults to the newest target/debian/*.deb,
#                                   built with `cargo deb` when there is none
#
# Safe to run again, also after a failed run: a graph-relay package left by this script (marked
# with a file in its spool) is purged first; one installed by anybody else stops the script.
set -euo pipefail
cd "$(dirname "$0")/.."

max_exposure=3.0
unit=/usr/lib/systemd/system/graph-relay.service
spool=/var/spool/graph-relay
marker=$spool/.installed-by-test-deb
t0=$SECONDS

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { echo "ok: $*"; }
[ "$(id -u)" -eq 0 ] || fail "run as root (it installs and purges a package)"
command -v swaks >/dev/null || fail "swaks is needed (apt-get install swaks)"

# "mode owner:group" of a path, or "absent".
stat_of() { if [ -e "$1" ] || [ -L "$1" ]; then stat -c '%a %U:%G' "$1"; else echo absent; fi; }
expect_stat() {
    local got
    got=$(stat_of "$1")
    [ "$got" = "$2" ] || fail "$1: expected '$2', found '$got'"
    ok "$1 $2"
}
installed() { [ "$(dpkg-query -W -f='${db:Status-Abbrev}' graph-relay 2>/dev/null)" = "ii " ]; }
known() { dpkg-query -W graph-relay >/dev/null 2>&1; }

if known; then
    [ -e "$marker" ] || fail "graph-relay is installed here and not by this script; not touching it"
    echo "purging the graph-relay package a previous run left"
    dpkg --purge graph-relay >/dev/null
fi

deb=${1:-}
if [ -z "$deb" ]; then
    deb=$(ls -t target/debian/graph-relay_*.deb 2>/dev/null | head -n1 || true)
    if [ -z "$deb" ]; then
        t=$SECONDS
        cargo deb
        echo "timing: cargo deb $((SECONDS - t)) s"
        deb=$(ls -t target/debian/graph-relay_*.deb | head -n1)
    fi
fi
echo "package: $deb"
dpkg-deb --field "$deb" Package | grep -qx graph-relay || fail "$deb is not the graph-relay package"

# --- install -----------------------------------------------------------------------------------
t=$SECONDS
dpkg -i "$deb"
echo "timing: dpkg -i $((SECONDS - t)) s"
installed || fail "dpkg -i did not leave graph-relay installed"
touch "$marker"

expect_stat /usr/bin/graph-relay "755 root:root"
expect_stat /etc/graph-relay "750 root:graph-relay"
expect_stat /etc/graph-relay/relay.toml "640 root:graph-relay"
expect_stat $spool "700 graph-relay:graph-relay"
expect_stat $unit "644 root:root"
expect_stat /usr/share/doc/graph-relay/relay.toml.example "644 root:root"
dpkg-query -W -f='${Conffiles}\n' graph-relay | grep -q '^ /etc/graph-relay/relay.toml ' ||
    fail "/etc/graph-relay/relay.toml is not a conffile"
ok "relay.toml is a conffile"
wants=/etc/systemd/system/multi-user.target.wants/graph-relay.service
[ -L $wants ] && [ "$(readlink -f $wants)" = "$(readlink -f $unit)" ] ||
    fail "the unit is not enabled (no multi-user.target.wants link)"
ok "unit enabled"
IFS=: read -r _ _ uid gid _ home shell < <(getent passwd graph-relay) || fail "no graph-relay user"
[ "$uid" -lt 1000 ] || fail "graph-relay is not a system user (uid $uid)"
[ "$(getent group graph-relay | cut -d: -f3)" = "$gid" ] || fail "graph-relay's group is not graph-relay"
[ "$home" = $spool ] || fail "graph-relay's home is $home"
case "$shell" in */nologin | */false) ;; *) fail "graph-relay can log in (shell $shell)" ;; esac
ok "system user graph-relay (uid $uid, home $home, shell $shell)"

# --- the unit ----------------------------------------------------------------------------------
systemd-analyze verify "$unit" || fail "systemd-analyze verify $unit"
ok "systemd-analyze verify"
security=$(systemd-analyze security --offline=true "$unit")
exposure=$(sed -n 's/.*Overall exposure level for graph-relay.service: \([0-9.]*\).*/\1/p' <<<"$security")
[ -n "$exposure" ] || fail "no exposure level in: $security"
awk -v e="$exposure" -v m="$max_exposure" 'BEGIN { exit !(e <= m) }' ||
    { echo "$security"; fail "exposure $exposure > $max_exposure"; }
ok "systemd-analyze security: exposure $exposure (at most $max_exposure)"

# --- the installed binary, run as the unit runs it ---------------------------------------------
unit_value() { sed -n "s/^$1=//p" "$unit" | tail -n1; }
read -ra exec_start <<<"$(unit_value ExecStart)"
user=$(unit_value User)
umask_=$(unit_value UMask)
[ "$user" = graph-relay ] || fail "the unit runs as '$user'"
as_service() { (umask "$umask_" && exec setpriv --reuid="$user" --regid="$user" --init-groups "$@"); }

# As installed, the packaged relay.toml names a secret file the admin has yet to write, and has
# no tenant: check lists both and exits 1 (serve still starts and holds mail). Once the secret is
# written (below), check --allow-incomplete passes with the tenant still to fill in.
check_out=$(as_service /usr/bin/graph-relay --config /etc/graph-relay/relay.toml check 2>&1) &&
    fail "check passed a packaged relay.toml that cannot deliver"
grep -q "^microsoft.client_secret_file: cannot read /etc/graph-relay/client_secret" <<<"$check_out" ||
    fail "check does not name the missing secret file: $check_out"
grep -q "cannot deliver: microsoft.tenant is not set" <<<"$check_out" ||
    fail "check does not say the tenant is missing: $check_out"
ok "graph-relay check on the packaged relay.toml lists what is still to do"

log=$(mktemp)
trace=$(mktemp)
trap 'rm -f "$log" "$log.swaks" "$trace"; [ -z "${relay_pid:-}" ] || kill "$relay_pid" 2>/dev/null || true' EXIT
# PID 1 is not always systemd (containers, CI), so the unit's sandbox cannot be started here. What
# can be checked: the relay runs with the unit's ExecStart, User and UMask; and under strace, so
# that every system call it makes can be held against the unit's SystemCallFilter below.
tracer=()
command -v strace >/dev/null && tracer=(strace -f -qq -o "$trace")
# Free ports (0) so a relay already on 2525/8025 does not matter; the ready line names them.
coproc RELAY {
    export GRAPH_RELAY__SMTP__LISTEN=127.0.0.1:0 GRAPH_RELAY__STATUS__LISTEN=127.0.0.1:0
    export RUST_LOG="$(unit_value Environment | sed -n 's/^RUST_LOG=//p')"
    umask "$umask_"
    exec "${tracer[@]}" setpriv --reuid="$user" --regid="$user" --init-groups "${exec_start[@]}" 2>"$log"
}
coproc_pid=$RELAY_PID  # bash unsets RELAY_PID once the coprocess ends
ready=""
while IFS= read -r -t 30 -u "${RELAY[0]}" line; do
    case "$line" in "graph-relay ready "*) ready=$line; break ;; esac
done
[ -n "$ready" ] || { cat "$log"; fail "serve did not print its ready line"; }
# Under strace the relay is strace's child; either way it is the process that printed the line.
relay_pid=$coproc_pid
[ ${#tracer[@]} -eq 0 ] || relay_pid=$(ps -o pid= --ppid "$coproc_pid" | tr -d ' ')
smtp=$(sed -n 's/.* smtp=\([^ ,]*\).*/\1/p' <<<"$ready")
ok "serve as $user: $ready"

swaks --server "$smtp" --from app@example.com --to someone@example.com \
    --header "Subject: graph-relay package test" --body "queued by packaging/test-deb.sh" \
    >"$log.swaks" 2>&1 || { cat "$log.swaks" "$log"; fail "swaks did not get its 250"; }
rm -f "$log.swaks"
shopt -s nullglob
queued=($spool/queue/*.json)
[ ${#queued[@]} -eq 1 ] || fail "expected 1 message in $spool/queue, found ${#queued[@]}"
for f in "${queued[@]}" "${queued[0]%.json}.eml"; do expect_stat "$f" "600 graph-relay:graph-relay"; done
expect_stat $spool/queue "700 graph-relay:graph-relay"
id=$(basename "${queued[0]}" .json)
as_service /usr/bin/graph-relay --config /etc/graph-relay/relay.toml queue list | grep -q "^$id[[:space:]]" ||
    fail "queue list does not show $id"
ok "message $id queued and listed"

# PHP's mail() and cron run the packaged sendmail link as some other user, who may read neither
# relay.toml (0640) nor the spool (0700): it hands the message to the relay over SMTP, and exits
# 0 only on the relay's 250. The environment names the relay's port, as it is not 2525 here.
[ "$(readlink -f /usr/lib/graph-relay/sendmail)" = /usr/bin/graph-relay ] ||
    fail "/usr/lib/graph-relay/sendmail does not lead to /usr/bin/graph-relay"
printf 'To: someone@example.com\nSubject: via sendmail\n\nqueued by sendmail as nobody\n' |
    GRAPH_RELAY__SMTP__LISTEN="$smtp" setpriv --reuid=nobody --regid=nogroup --clear-groups \
        /usr/lib/graph-relay/sendmail -t -i ||
    { cat "$log"; fail "sendmail as nobody did not hand the message over"; }
queued=($spool/queue/*.json)
[ ${#queued[@]} -eq 2 ] || fail "expected 2 messages in $spool/queue after sendmail, found ${#queued[@]}"
ok "sendmail as nobody: queued by the relay over SMTP"

# ExecReload sends SIGHUP: the relay must reload and keep running.
kill -HUP "$relay_pid"
for _ in $(seq 100); do grep -q "configuration reloaded" "$log" && break; sleep 0.1; done
grep -q "configuration reloaded" "$log" || { cat "$log"; fail "no reload after SIGHUP"; }
kill -0 "$relay_pid" || fail "the relay died on SIGHUP"
ok "SIGHUP reloads"
kill -TERM "$relay_pid"
status=0
wait "$coproc_pid" || status=$?
relay_pid=""
[ $status -eq 0 ] || { cat "$log"; fail "serve exited $status on SIGTERM"; }
ok "SIGTERM: exit 0"

# Every system call the relay made (after setpriv exec'd it) must pass the unit's filter:
# SystemCallFilter=@system-service, then ~@privileged @resources. A refused call returns EPERM.
syscalls_of() {
    systemd-analyze syscall-filter "$1" | tail -n +2 | sed 's/^ *//; /^#/d; /^$/d' |
        while read -r name; do
            case $name in @*) syscalls_of "$name" ;; *) echo "$name" ;; esac
        done
}
if [ ${#tracer[@]} -gt 0 ]; then
    allow=$(sed -n 's/^SystemCallFilter=\([^~].*\)/\1/p' "$unit")
    deny=$(sed -n 's/^SystemCallFilter=~//p' "$unit")
    # shellcheck disable=SC2086 # the filter values are word lists
    allowed=$(comm -23 <(for g in $allow; do syscalls_of "$g"; done | sort -u) \
        <(for g in $deny; do syscalls_of "$g"; done | sort -u))
    from=$(grep -n 'execve("/usr/bin/graph-relay"' "$trace" | head -n1 | cut -d: -f1)
    [ -n "$from" ] || fail "strace did not see graph-relay start"
    used=$(tail -n +"$from" "$trace" | sed -n 's/^[0-9]* *\([a-z0-9_]*\)(.*/\1/p' | sort -u)
    refused=$(comm -23 <(echo "$used") <(echo "$allowed"))
    [ -z "$refused" ] || fail "system calls the unit's SystemCallFilter refuses: $(echo $refused)"
    ok "all $(echo "$used" | wc -l) system calls the relay made pass SystemCallFilter"
else
    echo "skipped: the SystemCallFilter check (no strace)"
fi

# --- reinstall: an edited conffile and its modes survive ---------------------------------------
echo '# edited by test-deb' >>/etc/graph-relay/relay.toml
dpkg -i "$deb" >/dev/null
grep -q '^# edited by test-deb$' /etc/graph-relay/relay.toml || fail "reinstall replaced the edited relay.toml"
expect_stat /etc/graph-relay/relay.toml "640 root:graph-relay"
ok "reinstall keeps the edited relay.toml"

# --- remove: binary and unit go; configuration, spool and user stay ----------------------------
# The secret as README ("Run as a service") makes it: the service reads it, other users do not.
install -m 0640 -o root -g graph-relay /dev/null /etc/graph-relay/client_secret
printf '%s\n' test-secret >/etc/graph-relay/client_secret
as_service cat /etc/graph-relay/client_secret | grep -qx test-secret ||
    fail "the service user cannot read /etc/graph-relay/client_secret"
for f in /etc/graph-relay/relay.toml /etc/graph-relay/client_secret "${queued[0]}"; do
    ! setpriv --reuid=nobody --regid=nogroup --clear-groups test -r "$f" || fail "nobody can read $f"
done
ok "the service user reads the configuration and the secret; nobody else reads them or the spool"
as_service /usr/bin/graph-relay --config /etc/graph-relay/relay.toml check --allow-incomplete |
    grep -q "^configuration OK, but it cannot deliver yet" ||
    fail "with the secret written, the packaged relay.toml does not pass check --allow-incomplete"
ok "with the secret written, check --allow-incomplete passes"

dpkg -r graph-relay
[ "$(dpkg-query -W -f='${db:Status-Abbrev}' graph-relay)" = "rc " ] || fail "not in state rc after dpkg -r"
expect_stat /usr/bin/graph-relay absent
expect_stat $unit absent
[ ! -L /usr/lib/graph-relay/sendmail ] || fail "dpkg -r left /usr/lib/graph-relay/sendmail"
expect_stat /etc/graph-relay/relay.toml "640 root:graph-relay"
expect_stat "${queued[0]}" "600 graph-relay:graph-relay"
getent passwd graph-relay >/dev/null || fail "dpkg -r removed the graph-relay user"
ok "dpkg -r keeps relay.toml, the spool with the queued message, and the user"

# --- purge: configuration and spool go; the user stays -----------------------------------------
dpkg --purge graph-relay
! known || fail "dpkg still knows graph-relay after --purge"
expect_stat /etc/graph-relay absent
expect_stat $spool absent
expect_stat $wants absent
getent passwd graph-relay >/dev/null || fail "purge removed the graph-relay user (README says it stays)"
ok "dpkg --purge removes /etc/graph-relay and $spool, keeps the user"

echo "PASS: package test, exposure $exposure, $((SECONDS - t0)) s"
