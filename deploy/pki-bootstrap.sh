#!/bin/sh
# The one-shot PKI job of the Compose network (deploy/compose.yaml).
#
# Creates the network CA, every server's TLS identity and credit-chain log key,
# and one database password per city, laid out for the services' mounts:
#
#   $PKI_DIR/ca/                 ca.pem ca.key              mounted by no service
#   $PKI_DIR/<city>/node/        cert.pem cert.key ca.pem logkey.pem logkey.key
#   $PKI_DIR/<city>/db/password  the city database's password (node and database)
#   $PKI_DIR/aggregator/         cert.pem cert.key ca.pem logkey.pem logkey.key
#
# Files that exist are kept, so running it again (every `docker compose up`
# does) never rotates a key or a password. Everything is written 0600/0700 for
# the user that runs it, the same uid as the servers.
set -eu

PKI_DIR=${PKI_DIR:-/var/lib/creditnet}
PKI_CITIES=${PKI_CITIES:-310000 320100 330100 340100 330400}
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

# logkey DIR NAME: DIR/logkey.pem and DIR/logkey.key, the Ed25519 log key of NAME.
logkey() {
    if [ -f "$1/logkey.pem" ] && [ -f "$1/logkey.key" ]; then
        echo "kept $1/logkey.pem"
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

for city in $PKI_CITIES; do
    identity "$PKI_DIR/$city/node" --role node --city "$city" --dns "node-$city"
    logkey "$PKI_DIR/$city/node" "$city"
    password "$PKI_DIR/$city/db/password"
done
identity "$PKI_DIR/aggregator" --role aggregator --dns aggregator
logkey "$PKI_DIR/aggregator" national

echo "pki-bootstrap: the CA and every identity are in $PKI_DIR"
