#!/usr/bin/env bash
# Moodbox installer. Safe to run again: it only does what is missing or changed.
#
#   ./install.sh                on a Raspberry Pi: install the box (sudo); elsewhere:
#                               make .venv with the runtime (any Linux, Python >= 3.11)
#   ./install.sh --dev          .venv plus test tools, .venv-tflite (numpy 1.26 +
#                               tflite-runtime), .venv-convert (TensorFlow), and as root
#                               or with sudo: mosquitto, libsystemd-dev, pkg-config...
#   sudo ./install.sh --pi      install the box even where no Pi is detected
#
# Box options: --with-raspotify  --with-mosquitto  --uninstall  --purge
#              --root DIR (fake root for tests: every system path is prefixed
#              with DIR and system commands are appended to DIR/commands.log)
# Run ./install.sh --help for details.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly REPO
readonly SERVICE=moodbox.service
readonly SERVICE_USER=moodbox
readonly DEVICE_GROUPS=(video i2c gpio)
readonly PREFIX=/opt/moodbox
readonly CONF_DIR=/etc/moodbox
readonly STATE_DIR=/var/lib/moodbox
readonly UNIT_DIR=/etc/systemd/system
readonly BOOT_CONFIG=/boot/firmware/config.txt
readonly RASPOTIFY_CONF=/etc/raspotify/conf
readonly RASPOTIFY_KEY=/usr/share/keyrings/raspotify_key.asc
readonly RASPOTIFY_CACHE=/var/cache/raspotify
# What of the checkout the box's package is built from.
readonly CODE=(device convert pyproject.toml README.md)
export DEBIAN_FRONTEND=noninteractive
export PIP_DISABLE_PIP_VERSION_CHECK=1

ROOT=""
DEV=0
FORCE_PI=0
ACTION=install
WITH_RASPOTIFY=0
WITH_MOSQUITTO=0
CHANGED=0
AS_ROOT=()
APT_UPDATED=0
NEED_REBOOT=0
RASPOTIFY_LOGIN=""

usage() {
    cat <<'EOF'
Usage: ./install.sh [--dev] [--pi] [--with-raspotify] [--with-mosquitto]
                    [--uninstall | --purge] [--root DIR]

Development (any Linux, Python >= 3.11; nothing outside the checkout unless --dev
runs apt as root or through sudo):
  (no option)       .venv with requirements/runtime.txt + demo.txt and the project (editable)
  --dev             also requirements/dev.txt, .venv-tflite (Python 3.11, numpy 1.26,
                    tflite-runtime 2.14), .venv-convert (TensorFlow, requirements/convert.txt)
                    and apt packages: mosquitto, libsystemd-dev, pkg-config, gcc, shellcheck

The box (Raspberry Pi OS Bookworm or Trixie, 64-bit; picked when
/proc/device-tree/model says "Raspberry Pi", or with --pi; needs root):
  apt packages, I2C on, a "moodbox" system user, a venv in /opt/moodbox, the
  config in /etc/moodbox/config.toml (an existing one is never overwritten),
  state in /var/lib/moodbox, and the moodbox.service unit, enabled and started.
  --with-raspotify  a Spotify Connect receiver on this Pi, named like
                    [spotify] device_name, that keeps its login across reboots
  --with-mosquitto  a local MQTT broker (and [mqtt] enabled in a new config)
  --uninstall       remove the service, /opt/moodbox and the unit; keep the
                    config, the history in /var/lib/moodbox and the user
  --purge           --uninstall, then clear the box's retained MQTT messages and
                    remove the config, the history and the user too
  --root DIR        fake root: system paths are prefixed with DIR and commands
                    (apt-get, systemctl, useradd, pip...) are logged to
                    DIR/commands.log instead of run; DIR/proc/device-tree/model and
                    DIR/etc/os-release are read; MOODBOX_ARCH overrides the CPU
                    architecture (e.g. armhf)
EOF
}

say() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
warn() { printf 'warning: %s\n' "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

# ---------------------------------------------------------------------------
# The system, real or fake.

# A system path on the target: under --root, inside DIR.
sys_path() { printf '%s%s' "$ROOT" "$1"; }

# Runs a command that changes the system outside the files this script writes.
# Under --root it is only logged, and the few effects later checks look at
# (users, groups, installed packages, I2C on, the venv) are mirrored in DIR so
# that a second run sees them, as it would on a real system.
sys() {
    if [[ -z $ROOT ]]; then
        "$@"
        return
    fi
    local arg line=()
    for arg in "$@"; do
        [[ $arg == *[[:space:]]* ]] && arg="'$arg'"
        line+=("$arg")
    done
    printf '%s\n' "${line[*]}" >>"$ROOT/commands.log"
    fake_effect "$@"
}

fake_effect() {
    local last=${*: -1}
    case $1 in
    useradd)
        printf '%s:x:999:999::%s:/usr/sbin/nologin\n' "$last" "$STATE_DIR" >>"$ROOT/etc/passwd"
        db_has group "$last" || printf '%s:x:999:\n' "$last" >>"$ROOT/etc/group"
        ;;
    groupadd) printf '%s:x:998:\n' "$last" >>"$ROOT/etc/group" ;;
    usermod) # usermod -a -G GROUP USER
        sed -i -E "s/^($4:[^:]*:[^:]*:)(.+)$/\\1\\2,$5/; s/^($4:[^:]*:[^:]*:)$/\\1$5/" "$ROOT/etc/group"
        ;;
    userdel)
        sed -i "/^$last:/d" "$ROOT/etc/passwd"
        sed -i -E "/^$last:/d; s/([:,])$last(,|$)/\\1/; s/,$//" "$ROOT/etc/group"
        ;;
    apt-get)
        if [[ $2 == install ]]; then
            local pkg
            for pkg in "${@:3}"; do
                [[ $pkg == -* ]] && continue
                printf 'Package: %s\nStatus: install ok installed\nMaintainer: fake\nVersion: 1\nArchitecture: all\nDescription: fake\n\n' \
                    "$pkg" >>"$ROOT/var/lib/dpkg/status"
            done
        fi
        ;;
    raspi-config)
        [[ $* == *"do_i2c 0"* ]] && printf 'dtparam=i2c_arm=on\n' >>"$(sys_path "$BOOT_CONFIG")"
        ;;
    /usr/bin/python3) # -m venv [--system-site-packages] DIR
        mkdir -p "$(sys_path "$last")/bin"
        touch "$(sys_path "$last")/bin/python"
        ;;
    esac
    return 0
}

# getent passwd|group NAME, or the fake root's files.
db_has() {
    if [[ -n $ROOT ]]; then
        grep -q "^$2:" "$ROOT/etc/$1" 2>/dev/null
    else
        getent "$1" "$2" >/dev/null
    fi
}

in_group() { # USER GROUP
    if [[ -n $ROOT ]]; then
        grep -Eq "^$2:[^:]*:[^:]*:(.*,)?$1(,|$)" "$ROOT/etc/group"
    else
        id -nG "$1" 2>/dev/null | tr ' ' '\n' | grep -qx "$2"
    fi
}

pkg_installed() {
    local admindir=()
    [[ -n $ROOT ]] && admindir=(--admindir="$ROOT/var/lib/dpkg")
    [[ $(dpkg-query "${admindir[@]}" -W -f='${db:Status-Status}' "$1" 2>/dev/null) == installed ]]
}

# apt-get install what is missing (apt-get update first, once per run).
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        pkg_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        note "apt packages already installed: $*"
        return 0
    fi
    say "apt-get install ${missing[*]}"
    if ((APT_UPDATED == 0)); then
        "${AS_ROOT[@]}" apt-get update -q
        APT_UPDATED=1
    fi
    "${AS_ROOT[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

sha256_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# Value of KEY in [SECTION] of a TOML file (simple `key = "value"` lines only).
toml_get() {
    awk -v section="$1" -v key="$2" '
        /^[[:space:]]*\[/ { gsub(/^[[:space:]]*\[|\][[:space:]]*(#.*)?$/, ""); current = $0; next }
        current == section && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" {
            sub(/^[^=]*=[[:space:]]*/, ""); sub(/[[:space:]]+#.*$/, ""); gsub(/^"|"$/, ""); print; exit
        }' "$3"
}

# Set KEY in [SECTION] to the TOML literal VALUE, in place; the line must exist.
toml_set() {
    local tmp
    tmp=$(mktemp)
    awk -v section="$1" -v key="$2" -v value="$3" '
        /^[[:space:]]*\[/ { s = $0; gsub(/^[[:space:]]*\[|\][[:space:]]*(#.*)?$/, "", s); current = s }
        current == section && $0 ~ "^[[:space:]]*" key "[[:space:]]*=" { print key " = " value; done = 1; next }
        { print }
        END { if (!done) exit 3 }' "$4" >"$tmp" || {
        rm -f "$tmp"
        die "$4 has no '$2' in [$1]"
    }
    cat "$tmp" >"$4"
    rm -f "$tmp"
}

# ---------------------------------------------------------------------------
# Development machines: virtual environments in the checkout.

# venv_sync DIR PYTHON [--no-deps-project] REQUIREMENTS...: create DIR if needed and
# install the requirements and the project, skipping pip entirely when nothing
# it was built from has changed since the last successful run.
venv_sync() {
    local dir=$1 python=$2 project_deps=1
    shift 2
    if [[ ${1-} == --no-deps-project ]]; then
        project_deps=0
        shift
    fi
    local reqs=("$@") stamp version
    version=$("$python" -c 'import sys; print(sys.version)')
    stamp=$(printf '%s\n%s\n%s\n' "$version" "$project_deps" "$(sha256_of "${reqs[@]}" "$REPO/pyproject.toml")" | sha256sum | cut -d' ' -f1)
    if [[ -x $dir/bin/python && -f $dir/.moodbox-stamp && $(<"$dir/.moodbox-stamp") == "$stamp" ]]; then
        note "${dir#"$REPO"/} is up to date"
        return 0
    fi
    say "${dir#"$REPO"/}: $("$python" -c 'import sys; print("Python %d.%d" % sys.version_info[:2])') + ${reqs[*]#"$REPO"/}"
    [[ -x $dir/bin/python ]] || "$python" -m venv "$dir"
    local args=() req
    for req in "${reqs[@]}"; do args+=(-r "$req"); done
    "$dir/bin/python" -m pip install -q "${args[@]}"
    if ((project_deps)); then
        "$dir/bin/python" -m pip install -q -e "$REPO"
    else
        "$dir/bin/python" -m pip install -q --no-deps -e "$REPO"
    fi
    printf '%s\n' "$stamp" >"$dir/.moodbox-stamp"
}

python_at_least_311() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

dev_apt() {
    if ! have apt-get || ! have dpkg-query; then
        warn "no apt here: install mosquitto, libsystemd-dev, pkg-config, gcc and shellcheck yourself"
        return 0
    fi
    if ((EUID == 0)); then
        AS_ROOT=()
    elif have sudo; then
        AS_ROOT=(sudo)
    else
        warn "not root and no sudo: skipping apt packages (mosquitto, libsystemd-dev, pkg-config, gcc, shellcheck)"
        return 0
    fi
    local pkgs=(mosquitto libsystemd-dev pkg-config gcc shellcheck openssl)
    have systemd-analyze || pkgs+=(systemd)
    if ! "$1" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
        pkgs+=(python3-dev)
    fi
    apt_install "${pkgs[@]}"
}

dev_install() {
    local python=${PYTHON:-python3}
    have "$python" || die "$python not found: install Python 3.11 or newer (or set PYTHON=/path/to/python3)"
    python_at_least_311 "$python" || die "$python is $("$python" -V 2>&1): Moodbox needs Python 3.11 or newer"
    local reqs=("$REPO/requirements/runtime.txt" "$REPO/requirements/demo.txt")
    if ((DEV)); then
        dev_apt "$python"
        if pkg-config --exists libsystemd 2>/dev/null; then
            reqs+=("$REPO/requirements/dev.txt")
        else
            # systemd-python compiles against libsystemd; without it the journal tests skip.
            warn "libsystemd-dev missing: installing dev tools without systemd-python"
            mkdir -p "$REPO/.venv"
            grep -v '^systemd-python' "$REPO/requirements/dev.txt" >"$REPO/.venv/dev-no-systemd.txt"
            reqs+=("$REPO/.venv/dev-no-systemd.txt")
        fi
    fi
    venv_sync "$REPO/.venv" "$python" "${reqs[@]}"
    if ((DEV)); then
        local py311=${PYTHON311:-python3.11}
        if have "$py311" && "$py311" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
            venv_sync "$REPO/.venv-tflite" "$py311" --no-deps-project "$REPO/requirements/tflite.txt"
        else
            warn "python3.11 not found: skipping .venv-tflite (the tflite-runtime 2.14 tests will skip)"
        fi
        [[ -f $REPO/requirements/convert.txt ]] || die "requirements/convert.txt is missing"
        venv_sync "$REPO/.venv-convert" "$python" --no-deps-project "$REPO/requirements/convert.txt"
    fi
    if ((DEV)); then
        say "done. Try: .venv/bin/pytest"
    else
        say "done. Try: .venv/bin/moodbox demo"
    fi
}

# ---------------------------------------------------------------------------
# The box.

is_pi() { grep -aqs "Raspberry Pi" "$(sys_path /proc/device-tree/model)"; }

check_arch() {
    local arch=${MOODBOX_ARCH:-}
    if [[ -z $arch ]]; then
        arch=$(dpkg --print-architecture 2>/dev/null || uname -m)
    fi
    case $arch in
    arm64 | aarch64 | amd64 | x86_64) ;;
    *)
        die "this is a 32-bit system ($arch). Moodbox needs 64-bit Raspberry Pi OS (Bookworm or Trixie):" \
            "ai-edge-litert, tflite-runtime, numpy and OpenCV publish no armv7 wheels." \
            "Flash 'Raspberry Pi OS (64-bit)' with Raspberry Pi Imager (Pi 3, 4, 5, Zero 2 W)."
        ;;
    esac
}

os_codename() {
    local file
    file=$(sys_path /etc/os-release)
    [[ -r $file ]] || die "cannot read $file"
    sed -n 's/^VERSION_CODENAME=//p' "$file" | tr -d '"'"'"
}

pi_requirements() {
    case $1 in
    bookworm) printf '%s' "$REPO/requirements/runtime-bookworm.txt" ;;
    trixie) printf '%s' "$REPO/requirements/runtime.txt" ;;
    *) die "unsupported OS release '${1:-unknown}': Moodbox supports Raspberry Pi OS Bookworm (12) and Trixie (13), 64-bit" ;;
    esac
}

ensure_user() {
    if db_has passwd "$SERVICE_USER"; then
        note "user $SERVICE_USER exists"
    else
        say "creating system user $SERVICE_USER"
        sys useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "Moodbox daemon" "$SERVICE_USER"
    fi
    local group
    for group in "${DEVICE_GROUPS[@]}"; do
        # systemd refuses to start a unit whose SupplementaryGroups= names a missing group.
        db_has group "$group" || sys groupadd --system "$group"
        in_group "$SERVICE_USER" "$group" || sys usermod -a -G "$group" "$SERVICE_USER"
    done
}

enable_interfaces() {
    local boot
    boot=$(sys_path "$BOOT_CONFIG")
    if grep -Eqs '^[[:space:]]*dtparam=(i2c_arm|i2c)=on' "$boot"; then
        note "I2C is on"
    elif [[ -n $ROOT ]] || have raspi-config; then
        say "turning on I2C (takes effect after a reboot)"
        sys raspi-config nonint do_i2c 0
        NEED_REBOOT=1
    else
        warn "raspi-config not found: add 'dtparam=i2c_arm=on' to $BOOT_CONFIG and reboot for the OLED"
    fi
    # Bookworm and Trixie find Pi cameras by themselves (camera_auto_detect=1,
    # the default); raspi-config has no camera switch any more. Only say so if
    # someone turned it off without naming a sensor overlay.
    if grep -Eqs '^[[:space:]]*camera_auto_detect=0' "$boot" &&
        ! grep -Eqs '^[[:space:]]*dtoverlay=(imx|ov)[0-9]' "$boot"; then
        warn "camera_auto_detect=0 in $BOOT_CONFIG and no sensor dtoverlay: set camera_auto_detect=1 (or" \
            "add your sensor's dtoverlay) and reboot, or the Pi camera will not be found"
    fi
}

# Copy the repo's config.toml for the box, rewritten for its paths; never touch an existing one.
install_config() {
    local conf model
    conf=$(sys_path "$CONF_DIR/config.toml")
    install -d -m 0750 "$(sys_path "$CONF_DIR")"
    sys chown "root:$SERVICE_USER" "$CONF_DIR"
    if [[ -e $conf ]]; then
        note "keeping your $CONF_DIR/config.toml"
        return 0
    fi
    say "writing $CONF_DIR/config.toml"
    model=$(toml_get model path "$REPO/config.toml")
    local tmp
    tmp=$(mktemp)
    cp "$REPO/config.toml" "$tmp"
    toml_set state dir "\"$STATE_DIR\"" "$tmp"
    toml_set model path "\"$PREFIX/models/$(basename "$model")\"" "$tmp"
    if ((WITH_MOSQUITTO)); then
        toml_set mqtt enabled true "$tmp"
        toml_set mqtt host '"localhost"' "$tmp"
    fi
    install -m 0640 "$tmp" "$conf"
    rm -f "$tmp"
    sys chown "root:$SERVICE_USER" "$CONF_DIR/config.toml"
}

install_code() {
    local codename=$1 requirements venv_stamp code_stamp
    requirements=$(pi_requirements "$codename")
    local prefix
    prefix=$(sys_path "$PREFIX")
    if [[ ! -e $prefix/bin/python ]]; then
        say "creating the venv $PREFIX (with apt's picamera2 and libcamera visible)"
        sys /usr/bin/python3 -m venv --system-site-packages "$PREFIX"
    fi
    install -d "$prefix/models"
    install -m 0644 "$requirements" "$prefix/requirements.txt"
    venv_stamp=$(printf '%s %s' "$codename" "$(sha256_of "$requirements")")
    if [[ $(cat "$prefix/.requirements-stamp" 2>/dev/null) == "$venv_stamp" ]]; then
        note "Python packages are up to date ($(basename "$requirements"))"
    else
        say "installing Python packages from $(basename "$requirements")"
        sys "$PREFIX/bin/pip" install -q --disable-pip-version-check -r "$PREFIX/requirements.txt"
        printf '%s\n' "$venv_stamp" >"$prefix/.requirements-stamp"
        CHANGED=1
    fi
    code_stamp=$(cd "$REPO" && find "${CODE[@]}" -type f ! -name '*.pyc' -print0 | sort -z |
        xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
    if [[ $(cat "$prefix/.code-stamp" 2>/dev/null) == "$code_stamp" ]]; then
        note "moodbox code is up to date"
    else
        # Built from a copy in /opt/moodbox/src, so a root-run build leaves nothing in the checkout.
        say "installing the moodbox code into $PREFIX"
        rm -rf "$prefix/src"
        install -d "$prefix/src"
        (cd "$REPO" && cp -r "${CODE[@]}" "$prefix/src/")
        find "$prefix/src" -name __pycache__ -prune -exec rm -rf {} +
        sys "$PREFIX/bin/pip" install -q --disable-pip-version-check --no-deps "$PREFIX/src"
        printf '%s\n' "$code_stamp" >"$prefix/.code-stamp"
        CHANGED=1
    fi
    local found=0 file
    for file in "$REPO"/models/*.tflite "$REPO"/models/*.json; do
        [[ -e $file ]] || continue
        found=1
        if ! cmp -s "$file" "$prefix/models/$(basename "$file")"; then
            install -m 0644 "$file" "$prefix/models/"
            CHANGED=1
        fi
    done
    ((found)) || warn "no model in $REPO/models: the service will refuse to start until one is installed"
    [[ -f $REPO/README.md ]] && install -m 0644 "$REPO/README.md" "$prefix/README.md"
    install -d "$(sys_path /usr/local/bin)"
    ln -sfn "$PREFIX/bin/moodbox" "$(sys_path /usr/local/bin/moodbox)"
}

install_unit() {
    local unit
    unit=$(sys_path "$UNIT_DIR/$SERVICE")
    install -d "$(sys_path "$STATE_DIR")"
    chmod 0700 "$(sys_path "$STATE_DIR")"
    sys chown "$SERVICE_USER:$SERVICE_USER" "$STATE_DIR"
    install -d "$(sys_path "$UNIT_DIR")"
    if ! cmp -s "$REPO/systemd/$SERVICE" "$unit"; then
        install -m 0644 "$REPO/systemd/$SERVICE" "$unit"
        CHANGED=1
    fi
    sys systemctl daemon-reload
    # An upgrade restarts a running service; a first install just starts it.
    if ((CHANGED)); then sys systemctl try-restart "$SERVICE"; fi
    sys systemctl enable --now "$SERVICE"
}

# Set KEY=VALUE in raspotify's env-style conf (replacing a commented default); 0 if it changed.
conf_set() {
    local file=$1 key=$2 value=$3
    grep -qx "$key=$value" "$file" 2>/dev/null && return 1
    if grep -Eq "^#?[[:space:]]*$key=" "$file" 2>/dev/null; then
        sed -i -E "s|^#?[[:space:]]*$key=.*|$key=$value|" "$file"
    else
        printf '%s=%s\n' "$key" "$value" >>"$file"
    fi
}

install_raspotify() {
    local name conf changed=0
    name=$(toml_get spotify device_name "$(sys_path "$CONF_DIR/config.toml")")
    name=${name:-moodbox}
    if ! pkg_installed raspotify; then
        if [[ ! -s $(sys_path "$RASPOTIFY_KEY") ]]; then
            install -d "$(sys_path "$(dirname "$RASPOTIFY_KEY")")"
            sys curl -fsSL -o "$RASPOTIFY_KEY" https://dtcooper.github.io/raspotify/key.asc
        fi
        install -d "$(sys_path /etc/apt/sources.list.d)"
        printf 'deb [signed-by=%s] https://dtcooper.github.io/raspotify raspotify main\n' "$RASPOTIFY_KEY" \
            >"$(sys_path /etc/apt/sources.list.d/raspotify.list)"
        APT_UPDATED=0
    fi
    apt_install raspotify
    conf=$(sys_path "$RASPOTIFY_CONF")
    install -d "$(dirname "$conf")"
    # Named like [spotify] device_name, so the box finds its own speaker. Cached
    # credentials (from one OAuth login) let librespot log in by itself at boot:
    # a zeroconf-only receiver drops out of the Web API's device list after a
    # reboot until a phone on the LAN selects it again.
    conf_set "$conf" LIBRESPOT_NAME "\"$name\"" && changed=1
    conf_set "$conf" LIBRESPOT_DISABLE_CREDENTIAL_CACHE off && changed=1
    conf_set "$conf" LIBRESPOT_SYSTEM_CACHE "\"$RASPOTIFY_CACHE\"" && changed=1
    sys systemctl enable raspotify.service
    if ((changed)); then sys systemctl restart raspotify.service; fi
    if ! ls "$(sys_path "$RASPOTIFY_CACHE")"/credentials.json >/dev/null 2>&1; then
        RASPOTIFY_LOGIN=$name
    fi
}

box_install() {
    check_arch
    local codename
    codename=$(os_codename)
    pi_requirements "$codename" >/dev/null
    say "installing the box on Raspberry Pi OS ${codename^}${ROOT:+ (fake root $ROOT)}"
    local pkgs=(python3-venv python3-picamera2 python3-systemd i2c-tools libcap-dev)
    if ((WITH_MOSQUITTO)); then pkgs+=(mosquitto mosquitto-clients); fi
    apt_install "${pkgs[@]}"
    enable_interfaces
    ensure_user
    install_code "$codename"
    install_config
    if ((WITH_MOSQUITTO)); then sys systemctl enable --now mosquitto.service; fi
    if ((WITH_RASPOTIFY)); then install_raspotify; fi
    install_unit
    say "done: moodbox.service is enabled. Check it with: moodbox doctor   (logs: journalctl -u moodbox -f)"
    note "config: $CONF_DIR/config.toml (yours to edit; 'moodbox config check' validates it)"
    if [[ -n $RASPOTIFY_LOGIN ]]; then
        note "Log the Spotify receiver in once (OAuth; the credentials are cached):"
        note "  sudo systemctl stop raspotify"
        note "  sudo librespot --name '$RASPOTIFY_LOGIN' --system-cache $RASPOTIFY_CACHE --enable-oauth --oauth-port 0 --backend pipe --device /dev/null"
        note "  (open the link it prints on a phone or laptop, log in, paste back the address you land on,"
        note "   press Ctrl-C once it says it is authenticated)"
        note "  sudo systemctl start raspotify"
    fi
    if ((NEED_REBOOT)); then note "I2C was just turned on: reboot for the display (sudo reboot)."; fi
    return 0
}

box_uninstall() {
    local purge=$1
    say "removing the box${ROOT:+ (fake root $ROOT)}"
    if ((purge)) && [[ -x $(sys_path "$PREFIX/bin/moodbox") ]]; then
        # Retained Home Assistant discovery messages would leave ghost entities.
        sys "$PREFIX/bin/moodbox" mqtt forget --config "$CONF_DIR/config.toml" ||
            warn "could not clear the box's retained MQTT messages; remove them on the broker if needed"
    fi
    if [[ -e $(sys_path "$UNIT_DIR/$SERVICE") ]]; then
        sys systemctl disable --now "$SERVICE"
        rm -f "$(sys_path "$UNIT_DIR/$SERVICE")"
        sys systemctl daemon-reload
    fi
    rm -rf "$(sys_path "$PREFIX")"
    rm -f "$(sys_path /usr/local/bin/moodbox)"
    if ((purge)); then
        rm -rf "$(sys_path "$CONF_DIR")" "$(sys_path "$STATE_DIR")"
        if db_has passwd "$SERVICE_USER"; then sys userdel "$SERVICE_USER"; fi
        say "purged: config, history and the $SERVICE_USER user are gone"
    else
        note "kept: $CONF_DIR (your config), $STATE_DIR (history) and the $SERVICE_USER user; --purge removes them"
    fi
    note "apt packages (picamera2, raspotify, mosquitto...) stay installed; remove them with apt if unused"
}

# ---------------------------------------------------------------------------

main() {
    local args=("$@")
    while (($#)); do
        case $1 in
        --dev) DEV=1 ;;
        --pi) FORCE_PI=1 ;;
        --with-raspotify) WITH_RASPOTIFY=1 ;;
        --with-mosquitto) WITH_MOSQUITTO=1 ;;
        --uninstall) ACTION=uninstall ;;
        --purge) ACTION=purge ;;
        --root)
            (($# >= 2)) || die "--root needs a directory"
            ROOT=$(cd "$2" && pwd) || die "--root: no such directory: $2"
            shift
            ;;
        -h | --help)
            usage
            return 0
            ;;
        *) die "unknown option '$1' (see --help)" ;;
        esac
        shift
    done

    local box=0
    if ((FORCE_PI)) || { ((!DEV)) && is_pi; }; then box=1; fi
    if ((!box)); then
        [[ $ACTION == install ]] || die "--uninstall and --purge are for the box (add --pi off a Raspberry Pi)"
        [[ -z $ROOT ]] || die "--root is for the box install: add --pi, or fake DIR/proc/device-tree/model"
        ((WITH_RASPOTIFY + WITH_MOSQUITTO == 0)) || die "--with-raspotify/--with-mosquitto are for the box (add --pi)"
        dev_install
        return
    fi

    if [[ -n $ROOT ]]; then
        AS_ROOT=(sys)
        mkdir -p "$ROOT/etc" "$ROOT/var/lib/dpkg"
        touch "$ROOT/commands.log" "$ROOT/etc/passwd" "$ROOT/etc/group" "$ROOT/var/lib/dpkg/status"
    elif ((EUID != 0)); then
        have sudo || die "the box install needs root: run it as root"
        exec sudo -- "$0" "${args[@]}"
    else
        AS_ROOT=()
    fi
    case $ACTION in
    install) box_install ;;
    uninstall) box_uninstall 0 ;;
    purge) box_uninstall 1 ;;
    esac
}

main "$@"
