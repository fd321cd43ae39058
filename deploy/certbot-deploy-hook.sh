#!/bin/sh
# certbot deploy hook: after each issue or renewal, copy the certificate where flaskrtc reads
# it and make flaskrtc re-read it (SIGHUP via systemctl reload; no call is dropped).
#
#   install -m 0755 deploy/certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/flaskrtc
#   certbot certonly --standalone -d turn.example.org   # or --webroot, or --nginx
#
# certbot sets RENEWED_LINEAGE (/etc/letsencrypt/live/NAME). FLASKRTC_STATE_DIR and
# FLASKRTC_SERVICE change where it copies to and what it reloads (the tests use them).
set -eu
: "${RENEWED_LINEAGE:?run by certbot as a deploy hook (RENEWED_LINEAGE is not set)}"
state=${FLASKRTC_STATE_DIR:-/var/lib/flaskrtc}
service=${FLASKRTC_SERVICE:-flaskrtc}
if [ ! -d "$state" ]; then
  echo "flaskrtc deploy hook: $state does not exist: start $service once first" >&2
  exit 1
fi
dir=$state/configs/certs
# The service's user must read the files: they get the owner of the state directory, its
# DynamicUser's (systemd chowns the state directory to it at every start).
mkdir -p "$dir"
chown --reference="$state" "$state/configs" "$dir"
for pair in fullchain.pem:cert.pem privkey.pem:key.pem; do
  src=$RENEWED_LINEAGE/${pair%%:*}
  dst=$dir/${pair#*:}
  # Written beside the old file and renamed over it: flaskrtc never reads half a key.
  cp "$src" "$dst.new"
  chmod 0600 "$dst.new"
  chown --reference="$state" "$dst.new"
  mv -f "$dst.new" "$dst"
done
systemctl reload "$service"
