#!/bin/sh
# The one-shot PKI job of the Compose network (deploy/compose.yaml).
#
# Creates the network CA, every server's TLS identity and credit-chain log key,
# one database password per city and one for the national database, the network's routing key (docs/protocol.md,
# "Routing": members and the aggregator only), and the network's signed directory
# (protocol v2: governance keys gov-1..3, version 1 signed by 2 of them, its
# anchor), laid out for the services' mounts:
#
#   $PKI_DIR/ca/                 ca.pem ca.key              mounted by no service
#   $PKI_DIR/directory/          directory.json anchor.sha256, governance/ and
#                                logkeys/ (private keys)    mounted by no service
#   $PKI_DIR/routing.key         the routing key            mounted by no service
#   $PKI_DIR/<city>/node/        cert.pem cert.key ca.pem logkey.pem logkey.key
#                                directory.json anchor.sha256 routing.key
#   $PKI_DIR/<city>/db/password  the city database's password (node and database)
#   $PKI_DIR/national/db/password  the national database's password (aggregators and database)
#   $PKI_DIR/aggregator/         cert.pem cert.key ca.pem logkey.pem logkey.key
#                                directory.json anchor.sha256 routing.key
#
# Files that exist are kept, so running it again (every `docker compose up`
# does) never rotates a key or a password. Everything is written 0600/0700 for
# the user that runs it, the same uid as the servers.
set -eu

PKI_DIR=${PKI_DIR:-/var/lib/creditnet}
PKI_CITIES=${PKI_CITIES:-310000 320100 330100 340100 330400}
# Where the directory says each server is reached (the Compose services).
PKI_NODE_PORT=${PKI_NODE_PORT:-7443}
# The aggregator's replicas, comma-separated: the directory lists them all.
PKI_AGGREGATOR_ENDPOINT=${PKI_AGGREGATOR_ENDPOINT:-aggregator:7400,aggregator-2:7400}
umask 077

fail() {
    echo "pki-bootstrap: $*" >&2
    exit 1
}

[ -d "$PKI_DIR" ] && [ -w "$PKI_DIR" ] || fail "$PKI_DIR is not a directory writable by uid $(id -u)"

if [ ! -f "$PKI_DIR/ca/ca.key" ]; then
    creditnet pki init --ca-dir "$PKI_DIR/ca"
fi

# identity DIR ISSUE-OPTIONS…: DIR/cert.pem and DIR/cert.key.
identity() {
    dir=$1
    shift
    if [ -f "$dir/cert.pem" ] && [ -f "$dir/cert.key" ]; then
        echo "kept $dir/cert.pem"
    else
        creditnet pki issue --ca-dir "$PKI_DIR/ca" --out "$dir/cert" "$@"
    fi
    cp "$PKI_DIR/ca/ca.pem" "$dir/ca.pem"
}

# logkey DIR NAME: DIR/logkey.pem and DIR/logkey.key, the Ed25519 log key of NAME:
# the one the directory lists for NAME (made by `directory init`).
logkey() {
    if [ -f "$1/logkey.pem" ] && [ -f "$1/logkey.key" ]; then
        echo "kept $1/logkey.pem"
    elif [ -f "$PKI_DIR/directory/logkeys/$2.pem" ]; then
        mkdir -p "$1"
        cp "$PKI_DIR/directory/logkeys/$2.pem" "$1/logkey.pem"
        cp "$PKI_DIR/directory/logkeys/$2.key" "$1/logkey.key"
        echo "copied the directory's log key of $2 to $1"
    else
        creditnet pki issue --ca-dir "$PKI_DIR/ca" --role logkey --code "$2" --out "$1/logkey"
    fi
}

# password FILE: a random password, on one line.
password() {
    if [ -s "$1" ]; then
        echo "kept $1"
        return
    fi
    mkdir -p "$(dirname "$1")"
    python -c 'import secrets; print(secrets.token_urlsafe(32))' >"$1.tmp"
    mv "$1.tmp" "$1"
    echo "created $1"
}

# routing_key: the network's routing key (64 hex digits), made once.
routing_key() {
    if [ -s "$PKI_DIR/routing.key" ]; then
        echo "kept $PKI_DIR/routing.key"
        return
    fi
    python -c 'import secrets; print(secrets.token_hex(32))' >"$PKI_DIR/routing.key.tmp"
    mv "$PKI_DIR/routing.key.tmp" "$PKI_DIR/routing.key"
    echo "created $PKI_DIR/routing.key"
}

# code CITY: CITY itself, if it is a six-digit division code (as the directory names cities).
code() {
    case $1 in
        [0-9][0-9][0-9][0-9][0-9][0-9]) echo "$1" ;;
        *) fail "a city is named by its six-digit division code, not $1" ;;
    esac
}

# directory: the network's first signed directory, made once (governance keys
# and all); a second run keeps it, as the servers pin its anchor.
directory() {
    if [ -f "$PKI_DIR/directory/directory.json" ]; then
        echo "kept $PKI_DIR/directory/directory.json"
        return
    fi
    codes=""
    set --
    for city in $PKI_CITIES; do
        c=$(code "$city")
        codes="${codes:+$codes,}$c"
        set -- "$@" --endpoint "$c=node-$city:$PKI_NODE_PORT"
    done
    rm -rf "$PKI_DIR/directory.tmp"
    creditnet directory init --ca-dir "$PKI_DIR/ca" --out "$PKI_DIR/directory.tmp" --cities "$codes" \
        --aggregator-endpoint "$PKI_AGGREGATOR_ENDPOINT" "$@"
    mv "$PKI_DIR/directory.tmp" "$PKI_DIR/directory"
}

# pin DIR: the first directory and its anchor, and the routing key, for the server that mounts DIR.
pin() {
    cp "$PKI_DIR/directory/directory.json" "$1/directory.json"
    cp "$PKI_DIR/directory/anchor.sha256" "$1/anchor.sha256"
    cp "$PKI_DIR/routing.key" "$1/routing.key"
}

for city in $PKI_CITIES; do
    code "$city" >/dev/null
done
directory
routing_key
for city in $PKI_CITIES; do
    identity "$PKI_DIR/$city/node" --role node --city "$city" --dns "node-$city"
    logkey "$PKI_DIR/$city/node" "$city"
    password "$PKI_DIR/$city/db/password"
    pin "$PKI_DIR/$city/node"
done
# One identity for both replicas: banks check the aggregator's TLS server name, not the host.
identity "$PKI_DIR/aggregator" --role aggregator --dns aggregator --dns aggregator-2
password "$PKI_DIR/national/db/password"
logkey "$PKI_DIR/aggregator" national
pin "$PKI_DIR/aggregator"

echo "pki-bootstrap: the CA and every identity are in $PKI_DIR"
