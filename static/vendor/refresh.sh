#!/bin/sh
# Refresh the page's vendored libraries from the npm registry: no CDN at run time and no
# build step. Pin versions here, run this, look at the diff, run the browser tests, commit.
#   static/vendor/refresh.sh            (needs npm; writes only into static/vendor/)
set -eu
MARKED=18.3.0
DOMPURIFY=3.5.0
HIGHLIGHT=11.12.0

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "marked@$MARKED" "dompurify@$DOMPURIFY" "@highlightjs/cdn-assets@$HIGHLIGHT" >/dev/null
for name in marked dompurify highlight; do mkdir "$name"; done
tar xzf "marked-$MARKED.tgz" -C marked
tar xzf "dompurify-$DOMPURIFY.tgz" -C dompurify
tar xzf "highlightjs-cdn-assets-$HIGHLIGHT.tgz" -C highlight

# The ES module builds, without their source-map comments (the maps are not shipped).
strip() { sed '/^\/\/# sourceMappingURL=/d' "$1" > "$2"; }
strip marked/package/lib/marked.esm.js "$here/marked.esm.js"
strip dompurify/package/dist/purify.es.mjs "$here/purify.es.mjs"
strip highlight/package/es/highlight.min.js "$here/highlight.min.js"
cp marked/package/LICENSE "$here/LICENSE.marked"
cp dompurify/package/LICENSE "$here/LICENSE.dompurify"
cp highlight/package/LICENSE "$here/LICENSE.highlight.js"

cat > "$here/VERSIONS" <<LIST
# Written by refresh.sh from the npm registry; see the LICENSE.* files beside it.
marked $MARKED (MIT): marked.esm.js
dompurify $DOMPURIFY (MPL-2.0 OR Apache-2.0, used under Apache-2.0): purify.es.mjs
@highlightjs/cdn-assets $HIGHLIGHT (BSD-3-Clause), common languages: highlight.min.js
LIST
echo "vendored: marked $MARKED, dompurify $DOMPURIFY, highlight.js $HIGHLIGHT"
